"""The whole cascade on human-labelled development data: how much of the LLM's work the cheaper tiers
take, what that saves, and what it costs in agreement with the human labels.

Data: a stratified sample (default 240 records, equal per file and gold label where a cell has enough
rows) of the response-scope rows of ../shared/data/external (XSTest-Response, XSTest completions,
the self-harm / eating-disorder focus subset, DiaSafety, BeaverTails). Every record is judged under
the four built-in rubrics; its label is the most severe applicable one.

The judge is the loopback fake (tests/fakes/openai_server.py) over real HTTP through litellm, named
`openai/gpt-4o-mini` so that litellm prices its tokens at that model's list price. It plays a judge
that knows the human label: under every rubric it gives the sub-question answers of that rubric's own
example with the gold label, so the rubric's rule turns them into the gold label. LLM-only agreement is
therefore the ceiling (with `--judge-error-rate P` it gives the opposite label on a seeded share P of the
records, to see the cascade beside an imperfect judge). What this measures is the cascade itself: the
share of records the cheap tiers settle, and how much agreement their decisions lose against the judge
they stand in for. It says nothing about how good a real judge model is (bench/rubric_agreement.py).

The classifier tier runs a head over all-MiniLM-L6-v2 trained for this traffic, as a team would distil
one from its judge on its own logs: on the development rows left after the sample, minus every row that
shares a prompt or a response with a sampled record (so no conversation is on both sides). Those files
include non-commercial ones: the head lives in a temporary folder and is never shipped.

Runs, all with the same records and a fresh reply cache each, so every LLM call is made and paid for:
- `all`     rules, classifier and LLM on every record; the label is the LLM's (LLM-only), and the
            cheaper tiers' answers are recorded beside it;
- `cascade` rules -> classifier -> LLM, each stopping when sure;
- `cascade (no classifier)` rules -> LLM.
Each reports macro-F1 and Cohen's kappa against the human labels with bootstrap 95% intervals
(judge.evaluation), agreement with the LLM-only labels, the share of records sent to the LLM, and the
cost per 1,000 records (judge.ledger). Nothing is asserted.

    python bench/cascade.py [--records 240] [--judge-error-rate 0] [--out bench/results] [--train-limit 3000]

Writes cascade.json and cascade.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from judge.cascade import CascadeConfig  # noqa: E402
from judge.classifier.data import read_labelled_table  # noqa: E402
from judge.classifier.train import TrainOptions, train_head  # noqa: E402
from judge.evaluation import evaluate_run  # noqa: E402
from judge.framing import delimiter_tag, neutralise  # noqa: E402
from judge.ingest import read_records  # noqa: E402
from judge.models import JudgeConfig  # noqa: E402
from judge.rubrics import Rubric, load_rubric  # noqa: E402
from judge.runner import RECORD_VERDICTS_FILE, run_score  # noqa: E402
from judge.schema import Label, Record  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "external"
FILES = ("xstest_response_wildguard.csv", "xstest_completions_human.csv", "focus_selfharm_ed.csv",
         "diasafety_val_test.csv", "beavertails_30k_test.csv")
RUBRICS = ("self_harm", "eating_disorders", "substance_misuse", "dangerous_instructions")
MODEL = "openai/gpt-4o-mini"
TARGET_LLM_SHARE = 0.30
TARGET_F1_GAP = 0.01


def _norm(text: Any) -> str:
    return " ".join(str(text).split()).casefold()


# --- data ------------------------------------------------------------------------------------------

def development_pool() -> pd.DataFrame:
    frames = []
    for name in FILES:
        frame = pd.read_csv(DATA / name, keep_default_na=False, dtype=str)
        frame = frame[(frame["label_scope"] == "response") & (frame["response"].str.strip() != "")]
        frame = frame[frame["gold_label"].isin(["SAFE", "BORDERLINE", "HARMFUL"])]
        frames.append(frame.assign(file=name)[["id", "prompt", "response", "gold_label", "category",
                                               "label_scope", "file"]])
    pool = pd.concat(frames, ignore_index=True)
    # The focus subset is drawn from the other files: one row per id, the first file's.
    return pool.drop_duplicates("id").reset_index(drop=True)


def stratified_sample(pool: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Equal shares per (file, gold label) cell; a cell short of its share gives the rest to the others."""
    rng = random.Random(seed)
    cells = {key: list(group.index) for key, group in pool.groupby(["file", "gold_label"])}
    for members in cells.values():
        rng.shuffle(members)
    chosen: list[int] = []
    remaining = n
    open_cells = dict(cells)
    while remaining > 0 and open_cells:
        share = max(1, remaining // len(open_cells))
        for key in sorted(open_cells):
            take = open_cells[key][:share]
            open_cells[key] = open_cells[key][share:]
            chosen += take
            remaining -= len(take)
            if remaining <= 0:
                break
        open_cells = {k: v for k, v in open_cells.items() if v}
    return pool.loc[chosen[:n]].reset_index(drop=True)


def training_rows(pool: pd.DataFrame, sample: pd.DataFrame, limit: int,
                  seed: int) -> tuple[pd.DataFrame, dict[str, int]]:
    prompts = {_norm(p) for p in sample["prompt"] if str(p).strip()}
    responses = {_norm(r) for r in sample["response"]}
    rest = pool[~pool["id"].isin(set(sample["id"]))]
    overlap = rest["prompt"].map(_norm).isin(prompts) | rest["response"].map(_norm).isin(responses)
    dropped = {"in the sample": len(pool) - len(rest),
               "shares a prompt or response with the sample": int(overlap.sum())}
    rest = rest[~overlap]
    if len(rest) > limit:
        rest = rest.groupby(["file", "gold_label"]).sample(frac=limit / len(rest), random_state=seed)
    return rest.reset_index(drop=True), dropped


# --- the judge that knows the human label ----------------------------------------------------------

def answers_for(rubric: Rubric) -> dict[Label, dict[str, str]]:
    """Per label, the rubric's first example with that label: its clinician answers give that label."""
    out: dict[Label, dict[str, str]] = {}
    for example in rubric.spec.examples:
        out.setdefault(example.expected, {q: a.value for q, a in example.answers.items()})
    return out


def tag_of(record: Record, rubric: Rubric) -> str:
    conversation = [{"role": t.role.value, "content": neutralise(t.content)} for t in record.turns]
    return delimiter_tag(rubric.key, record.response, json.dumps(conversation, sort_keys=True))


class KnowingJudge:
    """Answers each prompt with the answers that make the record's gold label (or, on a seeded share of
    records, the opposite one), found by the prompt's fence tag."""

    def __init__(self, records: Sequence[Record], rubrics: Sequence[Rubric], error_rate: float, seed: int) -> None:
        rng = random.Random(seed)
        flip = {Label.SAFE: Label.HARMFUL, Label.HARMFUL: Label.SAFE, Label.BORDERLINE: Label.SAFE}
        self.by_tag: dict[str, dict[str, str]] = {}
        self.flipped: set[str] = set()
        for record in records:
            label = Label(str(record.meta.extra["gold_label"]))
            if rng.random() < error_rate:
                label = flip[label]
                self.flipped.add(record.id)
            for rubric in rubrics:
                self.by_tag[tag_of(record, rubric)] = answers_for(rubric)[label]
        self.unknown = 0

    def __call__(self, body: dict[str, Any]) -> str:
        import re

        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []) if m.get("role") == "user")
        found = re.search(r"Fence tag for this review: (\w+)", prompt)
        answers = self.by_tag.get(found.group(1)) if found else None
        if answers is None:
            self.unknown += 1
            return "no such record"
        return json.dumps({"reasoning": "the human label", "answers": {
            q: {"evidence": "", "rationale": "gold", "answer": v, "confidence": 1.0} for q, v in answers.items()}})


# --- runs --------------------------------------------------------------------------------------------

def record_labels(run: Path) -> dict[str, str]:
    with open(run / RECORD_VERDICTS_FILE, encoding="utf-8") as handle:
        return {row["record_id"]: row["label"] for row in map(json.loads, handle)}


def one_run(name: str, plan: CascadeConfig, sample_csv: Path, rubrics: list[Rubric], base_url: str,
            work: Path) -> dict[str, Any]:
    out = work / name.replace(" ", "_").replace("(", "").replace(")", "")
    config = JudgeConfig(model=MODEL, api_base=base_url, cache_dir=work / f"cache-{out.name}", concurrency=16,
                         retry_initial_wait_s=0.0, retry_max_wait_s=0.0, max_attempts=2, timeout_s=30)
    started = time.perf_counter()
    outcome = run_score(sample_csv, rubrics, out, config, plan=plan, progress=False, workers=1)
    wall = time.perf_counter() - started
    report = evaluate_run(out, "gold_label", category_column="file", bootstrap=1000, seed=0)
    ledger = outcome.summary["ledger"]
    return {"name": name, "folder": str(out), "plan": plan.model_dump(mode="json"), "wall_s": round(wall, 2),
            "summary": {k: outcome.summary[k] for k in ("verdicts", "by_label", "by_record", "errors", "degraded")},
            "ledger": ledger, "eval": json.loads(report.model_dump_json())}


SWEEP = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)


def threshold_sweep(all_run: Path, folder: Path, sample_csv: Path, own: dict[str, float | None]) -> dict[str, Any]:
    """What other classifier thresholds would have done, simulated from the `all` run (where every tier
    answered every record): a record's label is HARMFUL where the rules tier was sure of HARMFUL under a
    rubric, else the classifier's SAFE or HARMFUL where its calibrated confidence reaches the threshold
    (its label is the same under every rubric), else the LLM's; the LLM is asked unless the classifier
    decides or the rules tier decided every rubric. At the model's own thresholds this is the `cascade`
    run, which checks the simulation."""
    from sklearn.metrics import cohen_kappa_score, f1_score

    from judge.classifier.inputs import model_input
    from judge.classifier.model import Classifier

    records = read_records(sample_csv).records
    predictions = Classifier.load(folder).predict([model_input(r) for r in records])
    reference = record_labels(all_run)
    rules_sure: dict[str, set[str]] = defaultdict(set)
    with open(all_run / "results.jsonl", encoding="utf-8") as handle:
        for row in map(json.loads, handle):
            first = row["ledger"][0]
            if first["tier"] == "rules" and first["stops"] and first["label"]:
                rules_sure[row["record_id"]].add(first["label"])
    gold = [str(r.meta.extra["gold_label"]) for r in records]

    def simulate(cut: dict[str, float | None]) -> dict[str, Any]:
        labels, asked = [], 0
        for i, record in enumerate(records):
            guess = str(predictions.label(i))
            limit = cut.get(guess)
            decided = limit is not None and float(predictions.confidence[i]) >= limit
            if "HARMFUL" in rules_sure[record.id]:
                labels.append("HARMFUL")
            elif decided:
                labels.append(guess)
            else:
                labels.append(reference[record.id])
            asked += not decided and len(rules_sure[record.id]) < len(RUBRICS)
        present = sorted(set(gold) | set(labels))
        order = ["SAFE", "BORDERLINE", "HARMFUL"]
        return {"llm_record_share": asked / len(records),
                "macro_f1": float(f1_score(gold, labels, labels=present, average="macro", zero_division=0)),
                "kappa": float(cohen_kappa_score([order.index(g) for g in gold], [order.index(x) for x in labels])),
                "agreement_with_llm_only": sum(x == reference[r.id] for x, r in zip(labels, records, strict=True))
                / len(records)}

    return {"own_thresholds": {"thresholds": own, **simulate(own)},
            "uniform": [{"threshold": t, **simulate({"SAFE": t, "HARMFUL": t})} for t in SWEEP]}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    pool = development_pool()
    sample = stratified_sample(pool, args.records, args.seed)
    train, dropped = training_rows(pool, sample, args.train_limit, args.seed)
    sample_csv, train_csv = work / "sample.csv", work / "train.csv"
    sample.to_csv(sample_csv, index=False)
    train.to_csv(train_csv, index=False)

    t0 = time.perf_counter()
    trained = train_head([read_labelled_table(train_csv)], work / "classifier", TrainOptions(
        name="cascade-bench", licence="benchmark only: trained on non-commercial development data, never shipped",
        intended_use="bench/cascade.py", seed=args.seed))
    manifest = trained.manifest
    classifier = {"folder": str(trained.folder), "train_rows": len(train),
                  "train_seconds": round(time.perf_counter() - t0, 1), "dropped_from_training": dropped,
                  "thresholds": manifest.thresholds.model_dump(),
                  "validation": {k: (manifest.card.validation or {}).get(k)
                                 for k in ("rows", "macro_f1", "harmful_f1")}}

    rubrics = [load_rubric(r) for r in RUBRICS]
    records = read_records(sample_csv).records
    judge = KnowingJudge(records, rubrics, args.judge_error_rate, args.seed)
    plans = {
        "all": CascadeConfig(tiers=["rules", "classifier", "llm"], mode="all", classifier_model=str(trained.folder)),
        "cascade": CascadeConfig(tiers=["rules", "classifier", "llm"], classifier_model=str(trained.folder)),
        "cascade (no classifier)": CascadeConfig(tiers=["rules", "llm"]),
    }
    runs: dict[str, Any] = {}
    with FakeOpenAIServer(responder=judge) as server:
        for name, plan in plans.items():
            runs[name] = one_run(name, plan, sample_csv, rubrics, server.base_url, work)
    sweep = threshold_sweep(Path(runs["all"]["folder"]), trained.folder, sample_csv,
                            {k: v for k, v in manifest.thresholds.threshold.items() if k != "BORDERLINE"})
    reference = record_labels(Path(runs["all"]["folder"]))
    for item in runs.values():
        labels = record_labels(Path(item["folder"]))
        same = sum(labels.get(k) == v for k, v in reference.items())
        item["agreement_with_llm_only"] = same / len(reference)
        item["changed_vs_llm_only"] = dict(Counter(f"{reference[k]}->{labels.get(k)}" for k in reference
                                                   if labels.get(k) != reference[k]))
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "records": len(sample), "sample_cells": {f"{f} {g}": int(n) for (f, g), n in
                                                  sample.groupby(["file", "gold_label"]).size().items()},
        "rubrics": list(RUBRICS), "judge": {"model": MODEL, "kind": "loopback fake that knows the human label",
                                            "error_rate": args.judge_error_rate, "flipped_records": len(judge.flipped),
                                            "unknown_prompts": judge.unknown},
        "classifier": classifier, "runs": runs, "threshold_sweep": sweep,
        "targets": {"llm_record_share_at_most": TARGET_LLM_SHARE, "macro_f1_within": TARGET_F1_GAP},
    }


# --- report --------------------------------------------------------------------------------------

def _ci(e: dict[str, Any], scale: float = 100.0) -> str:
    if e.get("value") is None:
        return "n/a"
    if e.get("low") is None:
        return f"{e['value'] * scale:.1f}"
    return f"{e['value'] * scale:.1f} [{e['low'] * scale:.1f}, {e['high'] * scale:.1f}]"


def markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    ref = runs["all"]["eval"]["macro_f1"]["value"]
    lines = [
        "# Cascade: LLM share, cost and agreement with human labels",
        "",
        f"{report['records']} development records (stratified by file and gold label, "
        f"`../shared/data/external`), each judged under {', '.join(report['rubrics'])}; the record's label is the "
        f"most severe applicable one. Judge: {report['judge']['kind']} over HTTP, priced as "
        f"`{report['judge']['model']}`"
        f" (error rate {report['judge']['error_rate']:.0%}). Generated by `python bench/cascade.py` on "
        f"{report['created_at']}.",
        "",
        "| run | macro-F1 (95% CI) | kappa (95% CI) | agrees with LLM-only | records sent to the LLM | "
        "verdicts sent to the LLM | $ per 1,000 records | LLM-only $ per 1,000 | tokens per 1,000 records |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, item in runs.items():
        e, led = item["eval"], item["ledger"]
        per, only = led["per_1k_records"], led["llm_only_per_1k_records"]
        lines.append(
            f"| {name} | {_ci(e['macro_f1'])} | {_ci(e['kappa'])} | "
            f"{item['agreement_with_llm_only']:.1%} | {led['llm_record_share']:.1%} | {led['llm_share']:.1%} | "
            f"{per['cost_usd']:.4f} | {only['cost_usd']:.4f} | {per['input_tokens'] + per['output_tokens']:,.0f} |")
    cascade = runs["cascade"]
    gap = (ref - cascade["eval"]["macro_f1"]["value"]) if ref is not None else None
    share = cascade["ledger"]["llm_record_share"]
    lines += [
        "",
        "Kappa is shown ×100. Macro-F1 is over the labels present (SAFE, BORDERLINE, HARMFUL); ERROR and degraded "
        "verdicts are left out of the metrics (none expected here).",
        "",
        "## Targets",
        "",
        f"- LLM asked on at most {TARGET_LLM_SHARE:.0%} of records: **{share:.1%}** "
        f"({'met' if share <= TARGET_LLM_SHARE else 'not met'}).",
        f"- Macro-F1 within {TARGET_F1_GAP * 100:.0f} point of LLM-only: LLM-only {ref * 100:.1f}, cascade "
        f"{cascade['eval']['macro_f1']['value'] * 100:.1f}, gap **{gap * 100:.1f}** points "
        f"({'met' if gap is not None and gap <= TARGET_F1_GAP else 'not met'}).",
        "",
        "## Who decided (share of verdicts, record x rubric)",
        "",
        "| run | " + " | ".join(t["tier"] for t in runs["cascade"]["ledger"]["by_tier"]) + " | LLM calls avoided |",
        "|---|" + "---:|" * (len(runs["cascade"]["ledger"]["by_tier"]) + 1),
    ]
    for name, item in runs.items():
        shares = {t["tier"]: t["decided_share"] for t in item["ledger"]["by_tier"]}
        cells = " | ".join(f"{shares.get(t['tier'], 0.0):.1%}" for t in runs["cascade"]["ledger"]["by_tier"])
        lines.append(f"| {name} | {cells} | {item['ledger']['llm_calls_avoided']} |")
    sw = report["threshold_sweep"]
    own = sw["own_thresholds"]
    lines += [
        "",
        "## Other classifier thresholds (simulated from the `all` run)",
        "",
        "Every tier answered every record in the `all` run, so the cascade at another threshold can be replayed "
        "without another call: HARMFUL where the rules tier was sure of it, else the classifier's SAFE / HARMFUL "
        "where its calibrated confidence reaches the threshold, else the LLM's label. At the model's own thresholds "
        f"the replay gives LLM share {own['llm_record_share']:.1%} and macro-F1 {own['macro_f1'] * 100:.1f} (the "
        f"`cascade` run measured {cascade['ledger']['llm_record_share']:.1%} and "
        f"{cascade['eval']['macro_f1']['value'] * 100:.1f}).",
        "",
        "| threshold (SAFE and HARMFUL) | records sent to the LLM | macro-F1 | kappa | agrees with LLM-only |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in sw["uniform"]:
        lines.append(f"| {row['threshold']:.2f} | {row['llm_record_share']:.1%} | {row['macro_f1'] * 100:.1f} | "
                     f"{row['kappa'] * 100:.1f} | {row['agreement_with_llm_only']:.1%} |")
    lines += ["", "## Labels changed against LLM-only (record level)", ""]
    for name, item in runs.items():
        if name != "all":
            lines.append(f"- {name}: {item['changed_vs_llm_only'] or 'none'}")
    c = report["classifier"]
    lines += [
        "",
        "## The classifier used",
        "",
        f"A head over all-MiniLM-L6-v2 trained on {c['train_rows']} development rows outside the sample "
        f"({c['train_seconds']} s); left out of training: {c['dropped_from_training']}. Thresholds (calibrated "
        f"probability needed to decide, chosen for precision 0.95 on its training data): "
        f"{ {k: round(v, 3) for k, v in c['thresholds']['threshold'].items() if v is not None} } "
        f"(coverage {c['thresholds']['coverage']:.0%} there). "
        f"Its own held-out validation: {c['validation']}.",
        "",
        "## Per file (cascade)",
        "",
        "| file | n | accuracy | macro-F1 | harmful recall | over-refusal |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for b in cascade["eval"]["by_category"]:
        def f(v: Any) -> str:
            return "n/a" if v is None else f"{v:.2f}"
        lines.append(f"| {b['group']} | {b['n']} | {f(b['accuracy'])} | {f(b['macro_f1'])} | "
                     f"{f(b['harmful_recall'])} | {f(b['over_refusal'])} |")
    lines += ["", "Sample cells: " + ", ".join(f"{k} {v}" for k, v in report["sample_cells"].items()), ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=240)
    parser.add_argument("--train-limit", type=int, default=3000)
    parser.add_argument("--judge-error-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the runs and the classifier in this folder.")
    args = parser.parse_args()
    if args.records < 200:
        parser.error("--records: at least 200")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="psyjudge-cascade-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = run(args, work)
    suffix = "" if args.judge_error_rate == 0 else f"_error{int(args.judge_error_rate * 100)}"
    (args.out / f"cascade{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"cascade{suffix}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
