"""Rules-tier quality against human labels.

1. The project's labelled data (datasets/<rubric>/examples.jsonl, plus each rubric's own examples):
   per sub-question precision and recall of the tier's answers (an abstention lowers coverage and
   recall, never precision), the tier's own HARMFUL decisions, and its degraded fallback labels.
2. Refusal detection on third-party data: ../shared/data/external/xstest_response_refusal_wildguard.csv
   (human COMPLIANCE / REFUSAL labels): how often the `refusal` check's "bare refusal" finding is
   right, and how many refusals it finds.
3. False alarms on third-party data: the rules tier's own HARMFUL decisions on responses that humans
   labelled SAFE (xstest_response_wildguard.csv, beavertails_30k_test.csv), under every rubric.

    python bench/rules_quality.py [--out bench/results]

Writes rules_quality.json and rules_quality.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from judge.checks import CheckEnv, Subject, compile_checks  # noqa: E402
from judge.datasets import example_cases, labelled_cases, read_labelled  # noqa: E402
from judge.rubrics import available_rubrics, load_rubric  # noqa: E402
from judge.schema import Label, Record, SubQuestion  # noqa: E402
from judge.tiers.rules import evaluate_rules, judge_with_rules  # noqa: E402

EXTERNAL = ROOT.parent / "shared" / "data" / "external"


def own_data() -> dict[str, Any]:
    out = {}
    for rubric_id in sorted(available_rubrics()):
        path = ROOT / "datasets" / rubric_id / "examples.jsonl"
        if not path.exists():
            continue
        rubric = load_rubric(rubric_id)
        cases = [*example_cases(rubric), *labelled_cases(read_labelled(path), str(path))]
        out[rubric_id] = evaluate_rules(rubric, cases)
    return out


def refusal_detection() -> dict[str, Any] | None:
    path = EXTERNAL / "xstest_response_refusal_wildguard.csv"
    if not path.exists():
        return None
    frame = pd.read_csv(path).dropna(subset=["response"])
    question = SubQuestion(id="refused", text="Does the response refuse the request?", rationale="benchmark question",
                           source="benchmark")
    (check,) = compile_checks([{"id": "refusal", "kind": "refusal", "question": "refused", "answer": "yes",
                                "why": "bare refusal detection"}], CheckEnv({"refused": question}, {}))
    found = [check.run(Subject(Record(id=str(i), response=str(r)))) is not None
             for i, r in zip(frame["id"], frame["response"], strict=True)]
    gold = (frame["gold_label"] == "REFUSAL").tolist()
    hits = sum(found)
    right = sum(f and g for f, g in zip(found, gold, strict=True))
    return {"file": path.name, "rows": len(frame), "gold_refusals": sum(gold), "bare_refusals_found": hits,
            "precision": right / hits if hits else None, "recall_of_refusals": right / sum(gold) if sum(gold) else None}


def false_alarms() -> dict[str, Any]:
    out: dict[str, Any] = {}
    rubrics = [load_rubric(r) for r in sorted(available_rubrics())]
    for name in ("xstest_response_wildguard.csv", "beavertails_30k_test.csv"):
        path = EXTERNAL / name
        if not path.exists():
            continue
        frame = pd.read_csv(path).dropna(subset=["response"])
        stats = {"rows": len(frame), "by_gold": {}}
        for gold, group in frame.groupby("gold_label"):
            decided = 0
            for row in group.itertuples():
                record = Record(id=str(row.id), turns=[{"role": "user", "content": str(row.prompt)}]
                                if isinstance(row.prompt, str) and row.prompt.strip() else [],
                                response=str(row.response) if str(row.response).strip() else "(empty)")
                if any(judge_with_rules(record, rb).label is Label.HARMFUL for rb in rubrics):
                    decided += 1
            stats["by_gold"][str(gold)] = {"rows": len(group), "rules_decided_harmful": decided}
        out[name] = stats
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    results = {"own_labelled_data": own_data(), "refusal_detection": refusal_detection(),
               "false_alarms_external": false_alarms()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rules_quality.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = ["# Rules-tier quality against human labels", ""]
    for rubric_id, r in results["own_labelled_data"].items():
        lines += [f"## {r['rubric']} ({r['rows']} rows: the rubric's examples and datasets/{rubric_id})", "",
                  f"Own decisions: {r['decided']} HARMFUL, {r['decided_correct']} right. Degraded fallback label "
                  f"agrees with gold on {pct(r['fallback_agreement'])} of rows "
                  f"(gold -> fallback: {json.dumps(r['fallback_by_gold'])}).", "",
                  "| sub-question | gold yes/no | coverage | P(yes) | R(yes) | P(no) | R(no) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for q in r["questions"]:
            lines.append(f"| {q['question']} | {q['gold_yes']}/{q['gold_no']} | {q['coverage']:.2f} | "
                         f"{pct(q['precision_yes'])} | {pct(q['recall_yes'])} | {pct(q['precision_no'])} | "
                         f"{pct(q['recall_no'])} |")
        lines.append("")
    ref = results["refusal_detection"]
    if ref:
        lines += ["## Refusal detection (XSTest responses, human refusal labels)", "",
                  f"{ref['rows']} responses, {ref['gold_refusals']} refusals. Bare refusals found: "
                  f"{ref['bare_refusals_found']}, precision {pct(ref['precision'])}, share of all refusals found "
                  f"{pct(ref['recall_of_refusals'])}.", ""]
    for name, stats in results["false_alarms_external"].items():
        parts = ", ".join(f"gold {g}: {s['rules_decided_harmful']} of {s['rows']}" for g, s in stats["by_gold"].items())
        lines += [f"## Rules tier's own HARMFUL decisions on {name} (any rubric)", "", parts, ""]
    (args.out / "rules_quality.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
