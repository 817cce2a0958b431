"""Redaction: what it catches, what it wrongly hides, how fast, and whether judging suffers.

1. datasets/pii/spans.jsonl (synthetic, written for the project): per kind, recall of the expected
   spans (every character of the span hidden, by any kind) and typed recall (hidden under the right
   kind); false positives on the hard negatives (crisis numbers, helpline URLs, ordinary dates, doses)
   and extra spans in positive texts that no expected span explains.
2. Judging quality: the rules tier on the project's labelled examples (datasets/<rubric>/examples.jsonl
   plus each rubric's own examples), with and without the response and turns redacted: agreement of
   the tier's label (decided HARMFUL, else its fallback label) with the gold label both ways, and how
   many labels change.
3. Speed: texts per second of Redactor.redact on ~1 KB texts.

    python bench/redaction.py [--out bench/results]

Writes redaction.json and redaction.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from judge.datasets import example_cases, labelled_cases, read_labelled  # noqa: E402
from judge.redact import Redactor  # noqa: E402
from judge.rubrics import available_rubrics, load_rubric  # noqa: E402
from judge.schema import Record  # noqa: E402
from judge.tiers.rules import judge_with_rules  # noqa: E402

EXAMPLES = ROOT / "datasets" / "pii" / "spans.jsonl"
UNSEEN = ROOT / "datasets" / "pii" / "unseen_spans.jsonl"
"""Examples written after the patterns were finished, which were not changed to fit them: the honest
recall figure (spans.jsonl was written alongside the patterns, so its recall is an upper bound)."""


def load_examples(path: Path = EXAMPLES) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def detection(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"spans": 0, "caught": 0, "typed": 0})
    missed: list[dict[str, str]] = []
    negatives = {"texts": 0, "texts_with_a_span": 0, "spans": 0}
    wrong: list[dict[str, str]] = []
    extra = 0
    for row in rows:
        text = row["text"]
        found = Redactor().redact(text).found
        hidden: set[int] = set()
        for f in found:
            hidden.update(range(f.start, f.end))
        expected = []
        for span in row["spans"]:
            start = text.index(span["text"])
            end = start + len(span["text"])
            expected.append((start, end))
            stats = per_kind[span["kind"]]
            stats["spans"] += 1
            caught = all(i in hidden for i in range(start, end))
            stats["caught"] += caught
            stats["typed"] += any(f.kind == span["kind"] and f.start < end and f.end > start for f in found)
            if not caught:
                missed.append({"id": row["id"], "kind": span["kind"], "text": span["text"]})
        unexplained = [f for f in found if not any(f.start < e and f.end > s for s, e in expected)]
        if not row["spans"]:
            negatives["texts"] += 1
            negatives["texts_with_a_span"] += bool(found)
            negatives["spans"] += len(found)
        else:
            extra += len(unexplained)
        wrong += [{"id": row["id"], "kind": f.kind.value, "text": text[f.start:f.end], "source": f.source}
                  for f in unexplained]
    kinds = {k: {**v, "recall": v["caught"] / v["spans"], "typed_recall": v["typed"] / v["spans"]}
             for k, v in sorted(per_kind.items())}
    total = sum(v["spans"] for v in kinds.values())
    caught_all = sum(v["caught"] for v in kinds.values())
    return {"examples": len(rows), "per_kind": kinds, "recall_overall": caught_all / total if total else None,
            "negatives": negatives, "extra_spans_in_positive_texts": extra, "missed": missed,
            "false_positives": wrong}


def _redacted(record: Record, redactor: Redactor) -> Record:
    turns = [t.model_copy(update={"content": redactor.redact(t.content).text}) for t in record.turns]
    return record.model_copy(update={"response": redactor.redact(record.response).text, "turns": turns})


def judging_quality() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rubric_id in sorted(available_rubrics()):
        rubric = load_rubric(rubric_id)
        path = ROOT / "datasets" / rubric_id / "examples.jsonl"
        cases = [*example_cases(rubric), *(labelled_cases(read_labelled(path), str(path)) if path.exists() else [])]
        plain_right = red_right = changed = touched = 0
        changes: list[dict[str, str | None]] = []
        for case in cases:
            redactor = Redactor()
            red = _redacted(case.record, redactor)
            touched += bool(redactor.mapping)
            a, b = judge_with_rules(case.record, rubric), judge_with_rules(red, rubric)
            la, lb = a.label or a.fallback_label, b.label or b.fallback_label
            plain_right += la == case.label
            red_right += lb == case.label
            if la != lb:
                changed += 1
                changes.append({"id": case.id, "gold": case.label.value, "plain": la and la.value,
                                "redacted": lb and lb.value, "hidden": ", ".join(sorted(redactor.mapping.values()))})
        n = len(cases)
        out[rubric_id] = {"cases": n, "records_with_redactions": touched, "agreement_plain": plain_right / n,
                          "agreement_redacted": red_right / n, "labels_changed": changed, "changes": changes}
    return out


PERSONAL_TURN = ("Hi, I'm Daniel Whitmore. You can reach me at daniel.whitmore@example.com or 07700 900123, "
                 "I live at 14 Harrow Lane.")
"""Written for this measurement: a user turn full of personal data, put before each sampled record's
conversation, so that the judge reads placeholders where it would read a name, an email and a phone."""


def llm_judging(per_rubric: int) -> dict[str, Any]:
    """The embedded judge on `per_rubric` labelled examples per rubric (the first of each label, in turn),
    each with PERSONAL_TURN prepended: its labels with redaction off, then on (loopback, so forced)."""
    import asyncio

    from judge.judges import JudgeChoice, open_judge
    from judge.models import JudgeModel
    from judge.schema import Role, Turn
    from judge.tiers.llm import LLMTier, prompt_chars

    rubrics = [load_rubric(r) for r in sorted(available_rubrics())]
    chosen = []
    for rubric in rubrics:
        path = ROOT / "datasets" / rubric.id / "examples.jsonl"
        cases = labelled_cases(read_labelled(path), str(path)) if path.exists() else []
        by_label: dict[str, list[Any]] = defaultdict(list)
        for case in cases:
            by_label[case.label.value].append(case)
        picked: list[Any] = []
        while len(picked) < per_rubric and any(by_label.values()):
            for label in sorted(by_label):
                if by_label[label] and len(picked) < per_rubric:
                    picked.append(by_label[label].pop(0))
        for case in picked:
            record = case.record.model_copy(update={"turns": [Turn(role=Role.USER, content=PERSONAL_TURN),
                                                              *case.record.turns]})
            chosen.append((rubric, case, record))
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with open_judge(JudgeChoice("local"), prompt_chars(rubrics), use_cache=False) as config:
        async def judge_all() -> None:  # one event loop for every call (litellm's workers keep to it)
            for redact in (False, True):
                tier = LLMTier(JudgeModel(config.model_copy(update={"redact": redact})))
                for i, (rubric, case, record) in enumerate(chosen):
                    result = await tier(record, rubric)
                    if not redact:
                        rows.append({"rubric": rubric.id, "id": case.id, "gold": case.label.value})
                    rows[i]["redacted" if redact else "plain"] = result.label.value if result.label else "ERROR"

        asyncio.run(judge_all())
    n = len(rows)
    plain = sum(r["plain"] == r["gold"] for r in rows)
    red = sum(r["redacted"] == r["gold"] for r in rows)
    return {"judge": "embedded local judge", "records": n, "agreement_plain": plain / n if n else None,
            "agreement_redacted": red / n if n else None,
            "labels_changed": sum(r["plain"] != r["redacted"] for r in rows),
            "seconds": time.perf_counter() - started, "rows": rows}


def speed(seconds: float = 3.0) -> dict[str, Any]:
    sentence = ("I'm Megan and I haven't eaten properly since March. My therapist Dr Okafor wants me to call "
                "116 123 or text SHOUT to 85258 when it gets bad; my mum's number is 07911 123456. ")
    text = (sentence * 8)[:1024]
    redactor = Redactor()
    redactor.redact(text)  # the first call builds the analyzer
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        redactor.redact(text)
        n += 1
    elapsed = time.perf_counter() - started
    return {"text_chars": len(text), "texts": n, "seconds": elapsed, "texts_per_s": n / elapsed}


def detection_lines(d: dict[str, Any], title: str) -> list[str]:
    lines = [title, "", "| kind | spans | recall (hidden) | typed recall |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['spans']} | {v['recall']:.2f} | {v['typed_recall']:.2f} |" for k, v in d["per_kind"].items()]
    neg = d["negatives"]
    lines += ["", f"Overall recall: {d['recall_overall']:.3f}. Hard negatives: {neg['texts_with_a_span']} of "
              f"{neg['texts']} texts had something hidden ({neg['spans']} spans). Extra spans in positive texts: "
              f"{d['extra_spans_in_positive_texts']}.", ""]
    if d["missed"]:
        lines += ["Missed:", ""] + [f"- {m['id']} ({m['kind']}): `{m['text']}`" for m in d["missed"]] + [""]
    if d["false_positives"]:
        lines += ["Hidden but not expected:", ""]
        lines += [f"- {m['id']}: `{m['text']}` as {m['kind']} ({m['source']})" for m in d["false_positives"]] + [""]
    return lines


def markdown(result: dict[str, Any]) -> str:
    d, u = result["detection"], result["detection_unseen"]
    lines = ["# Redaction", "", f"Machine: {result['machine']}", ""]
    lines += detection_lines(u, "## Detection on examples written after the patterns "
                                f"(datasets/pii/unseen_spans.jsonl, {u['examples']} texts)")
    lines += detection_lines(d, f"## Detection on the development examples (datasets/pii/spans.jsonl, "
                                f"{d['examples']} texts; written alongside the patterns, so an upper bound)")
    lines += ["## Rules-tier judging with and without redaction", "",
              "| rubric | cases | records redacted | agreement plain | agreement redacted | labels changed |",
              "|---|---|---|---|---|---|"]
    for rid, q in result["judging"].items():
        lines.append(f"| {rid} | {q['cases']} | {q['records_with_redactions']} | {q['agreement_plain']:.3f} | "
                     f"{q['agreement_redacted']:.3f} | {q['labels_changed']} |")
    if result.get("llm"):
        q = result["llm"]
        lines += ["", f"## The {q['judge']} with and without redaction", "",
                  f"{q['records']} labelled examples (taken in turn by gold label from each rubric's file), each "
                  "with a user turn of personal data put before it (a name, an email, a phone number, an address), "
                  f"judged with redaction off and then on: agreement with gold {q['agreement_plain']:.3f} off, "
                  f"{q['agreement_redacted']:.3f} on; {q['labels_changed']} label(s) changed "
                  f"({q['seconds']:.0f} s in all).", "",
                  "| rubric | id | gold | plain | redacted |", "|---|---|---|---|---|"]
        lines += [f"| {r['rubric']} | {r['id']} | {r['gold']} | {r['plain']} | {r['redacted']} |" for r in q["rows"]]
    s = result["speed"]
    lines += ["", "## Speed", "", f"{s['texts_per_s']:.0f} texts/s on {s['text_chars']}-character texts "
              "(one process, one thread).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--llm-per-rubric", type=int, default=0, help="Also judge this many labelled examples per "
                        "rubric with the embedded judge, redaction off and on (about 30 s a record on 2 cores).")
    args = parser.parse_args()
    result = {"machine": f"{platform.platform()}, python {platform.python_version()}",
              "detection": detection(load_examples()), "detection_unseen": detection(load_examples(UNSEEN)),
              "judging": judging_quality(), "speed": speed(),
              "llm": llm_judging(args.llm_per_rubric) if args.llm_per_rubric else None}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "redaction.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (args.out / "redaction.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
