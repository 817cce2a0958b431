"""Train the classifier tier's shipped default: a linear head over all-MiniLM-L6-v2, trained only on
the project's own labelled data (datasets/<rubric>/examples.jsonl, written for psyjudge and
redistributable with it), written to judge/classifier/default/.

    python scripts/train_default_classifier.py            # from the repository root

Retraining on your own data is the same thing through the CLI; see docs in README ("The classifier tier").
"""

from __future__ import annotations

import argparse
from pathlib import Path

from judge.classifier.data import read_labelled_table
from judge.classifier.model import DEFAULT_MODEL_DIR
from judge.classifier.train import TrainOptions, train

ROOT = Path(__file__).resolve().parent.parent

INTENDED_USE = (
    "The middle tier of psyjudge's cascade on a fresh install: it decides SAFE or HARMFUL only where its calibrated "
    "confidence clears the threshold chosen for 0.95 precision on held-out rows, and passes everything else to the "
    "LLM judge. It is a starting point; retrain it on your own labelled data or distil it from your judge's "
    "verdicts (`psyjudge classifier train --distil RUN`).")
LIMITATIONS = [
    "Trained on 372 rows written for the project (four rubrics); the thresholds rest on few rows (see the Wilson "
    "bounds) and the model has not seen the variety of real chatbot traffic. Out-of-domain figures are in "
    "bench/results/classifier.md.",
    "Topic-agnostic: it scores harm in general, so under one rubric it may decide HARMFUL for harm that belongs to "
    "another (the combined record label is unaffected).",
    "English only. Never decides BORDERLINE (no target): those records go to the LLM judge.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = sorted((ROOT / "datasets").glob("*/examples.jsonl"))
    loaded = [read_labelled_table(p) for p in files]
    for item in loaded:  # record repository-relative paths in the card, not this machine's
        item.path = str(Path(item.path).resolve().relative_to(ROOT))
        item.rows = [r.__class__(r.input, r.label, item.path, r.id) for r in item.rows]
    options = TrainOptions(name="psyjudge-default-minilm-head", seed=args.seed, intended_use=INTENDED_USE,
                           limitations=LIMITATIONS, licence="Apache-2.0 (head trained here; all-MiniLM-L6-v2 is "
                           "Apache-2.0; training data are the project's own)")
    trained = train(loaded, args.out, options)
    print(f"wrote {trained.folder}")


if __name__ == "__main__":
    main()
