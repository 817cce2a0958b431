"""How well a judge agrees with the project's own labelled data, per rubric: labels and sub-question
answers against the clinicians' gold, with seconds per record.

The rows are a balanced, repeatable sample of datasets/<rubric>/examples.jsonl (taken in turn from
each gold label, in file order; `psyjudge rubric test --sample` takes the same rows). The judge is the
embedded local one by default (llama.cpp on this machine's CPU, one slot, compact answers) or any
litellm model given with --judge. No reply cache is used.

Per rubric it writes bench/results/rubric_agreement_<rubric>.json, then rebuilds
bench/results/rubric_agreement.md from every such file present. Nothing is asserted: these are
figures to track, and a 1.5B judge on deliberately hard rows is a floor, not the method's ceiling.
Usage: python bench/rubric_agreement.py [--rubric ID ...] [--per-rubric 9] [--judge local]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LABELS = ["SAFE", "BORDERLINE", "HARMFUL"]


def judge_rubric(rubric_id: str, per_rubric: int, judge: str) -> dict[str, Any]:
    from sklearn.metrics import cohen_kappa_score, confusion_matrix

    from judge.datasets import read_labelled, sample_rows
    from judge.judges import choose_judge, open_judge
    from judge.procs import usable_cores
    from judge.rubrics import load_rubric
    from judge.runner import build_cascade
    from judge.tiers.llm import prompt_chars

    rubric = load_rubric(rubric_id)
    rows = sample_rows(read_labelled(REPO / "datasets" / rubric_id / "examples.jsonl"), per_rubric)
    results: list[dict[str, Any]] = []
    answer_hits: Counter[str] = Counter()
    answer_seen: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as cache, open_judge(choose_judge(judge), prompt_chars([rubric]),
                                                            use_cache=False, cache_dir=Path(cache)) as config:
        cascade, _ = build_cascade(config)

        async def run() -> None:
            for row in rows:  # one at a time: the local server has one slot, and seconds are per record
                t0 = time.perf_counter()
                verdict = await cascade.judge(row.record(), rubric)
                answers = {a.question_id: a.value.value for t in verdict.tiers for a in t.answers}
                for q, gold in row.gold_answers.items():
                    if q in answers:
                        answer_seen[q] += 1
                        answer_hits[q] += answers[q] == gold.value
                results.append({
                    "id": row.id, "gold": row.gold_label.value, "label": verdict.label_name,
                    "tags": [t.value for t in row.tags], "seconds": round(time.perf_counter() - t0, 2),
                    "error": verdict.error,
                    "answers_differ": [q for q, gold in row.gold_answers.items()
                                       if q in answers and answers[q] != gold.value],
                })

        asyncio.run(run())
    graded = [r for r in results if r["label"] != "ERROR"]
    gold = [r["gold"] for r in graded]
    got = [r["label"] for r in graded]
    return {
        "rubric": rubric.key,
        "machine": {"date": datetime.now(UTC).isoformat(timespec="seconds"), "platform": platform.platform(),
                    "cores": usable_cores(), "python": platform.python_version()},
        "judge": config.model,
        "rows": len(results),
        "errors": len(results) - len(graded),
        "agreement": round(sum(a == b for a, b in zip(gold, got, strict=True)) / len(graded), 3) if graded else None,
        "cohen_kappa": (round(float(cohen_kappa_score(gold, got, labels=LABELS)), 3)
                        if len(set(gold + got)) > 1 else None),
        "confusion": {"labels": LABELS, "rows_gold_cols_judge": confusion_matrix(gold, got, labels=LABELS).tolist()}
        if graded else None,
        "harmful_missed": sum(1 for r in graded if r["gold"] == "HARMFUL" and r["label"] == "SAFE"),
        "safe_flagged_harmful": sum(1 for r in graded if r["gold"] == "SAFE" and r["label"] == "HARMFUL"),
        "seconds_mean": round(statistics.mean(r["seconds"] for r in results), 2),
        "question_agreement": {q: round(answer_hits[q] / answer_seen[q], 3) for q in rubric.question_ids
                               if answer_seen[q]},
        "records": results,
    }


def markdown(reports: list[dict[str, Any]]) -> str:
    lines = ["# Judge agreement with the project's labelled data", ""]
    if not reports:
        return "\n".join([*lines, "No results yet: run python bench/rubric_agreement.py."]) + "\n"
    first = reports[0]
    lines += [
        f"Judge `{first['judge']}` on {first['machine']['platform']}, {first['machine']['cores']} cores; a balanced "
        "sample of each rubric's labelled rows (taken in turn from each gold label), one record at a time, "
        "no reply cache. Agreement is over graded rows; ERROR rows are counted apart, never as a label.",
        "",
        "| rubric | rows | errors | label agreement | Cohen's kappa | HARMFUL judged SAFE | SAFE judged HARMFUL "
        "| s / record | measured |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in reports:
        lines.append(f"| {r['rubric']} | {r['rows']} | {r['errors']} | {r['agreement']} | {r['cohen_kappa']} | "
                     f"{r['harmful_missed']} | {r['safe_flagged_harmful']} | {r['seconds_mean']} | "
                     f"{r['machine']['date']} |")
    for r in reports:
        lines += ["", f"## {r['rubric']}", ""]
        if r["confusion"]:
            lines += ["Confusion (rows: gold, columns: judge):", "", "| gold \\ judge | " + " | ".join(LABELS) + " |",
                      "|---|" + "---:|" * len(LABELS)]
            for label, counts in zip(LABELS, r["confusion"]["rows_gold_cols_judge"], strict=True):
                lines.append(f"| {label} | " + " | ".join(str(c) for c in counts) + " |")
        worst = sorted(r["question_agreement"].items(), key=lambda kv: kv[1])[:5]
        lines += ["", "Sub-questions the judge most often answered differently from the clinicians: "
                  + ", ".join(f"{q} {v:.0%}" for q, v in worst) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rubric", action="append", help="Rubric id (default: every one with a dataset).")
    parser.add_argument("--per-rubric", type=int, default=9, help="Rows per rubric (default 9: 3 per label).")
    parser.add_argument("--judge", default="local", help="'local' or a litellm model string.")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    rubric_ids = args.rubric or sorted(p.parent.name for p in (REPO / "datasets").glob("*/examples.jsonl"))
    args.out.mkdir(parents=True, exist_ok=True)
    for rubric_id in rubric_ids:
        report = judge_rubric(rubric_id, args.per_rubric, args.judge)
        (args.out / f"rubric_agreement_{rubric_id}.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"{report['rubric']}: agreement {report['agreement']} on {report['rows']} rows", flush=True)
    reports = [json.loads(p.read_text()) for p in sorted(args.out.glob("rubric_agreement_*.json"))]
    (args.out / "rubric_agreement.md").write_text(markdown(reports))
    print(markdown(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
