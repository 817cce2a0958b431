"""Refusal detection against human labels: did the chatbot answer, refuse, or partly refuse?

Two human-labelled XSTest files from ../shared/data/external/ (read in place, never copied):

* xstest_completions_human.csv: 2,234 replies of five chat models, labelled full compliance / full
  refusal / partial refusal (three-way: answered / refused / partial);
* xstest_response_refusal_wildguard.csv: 449 replies, labelled COMPLIANCE / REFUSAL (binary; refused
  and partial both count as REFUSAL).

For each: the rules' precision, recall and F1 of REFUSAL (refused or partial) with 95% bootstrap
intervals, the confusion matrix, the share of records the rules are sure of at the threshold and
their accuracy there (this decides how often the LLM is asked), the accuracy of every decision path
against the confidence it states, and throughput. With `--llm JUDGE` (e.g. `--llm local`, the
embedded llama.cpp judge), up to `--limit` unsure records per file also go to the LLM, and the
rules+LLM figures are reported on the records it covered; judge errors are counted, never scored.

    python bench/refusal.py [--out bench/results] [--threshold 0.8] [--llm local --limit 30]

Writes refusal.json and refusal.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from judge.refusal import RefusalDetector, RefusalLabel, RefusalReading, build_messages, read_refusal  # noqa: E402

EXTERNAL = ROOT.parent / "shared" / "data" / "external"
THREE_WAY = {"1_full_compliance": "answered", "2_full_refusal": "refused", "3_partial_refusal": "partial"}
LABELS = [label.value for label in RefusalLabel]
FILES = {
    "xstest_completions_human.csv": ("refusal_label_human", "three-way"),
    "xstest_response_refusal_wildguard.csv": ("gold_label", "binary"),
}


def load(name: str) -> pd.DataFrame | None:
    path = EXTERNAL / name
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    frame["prompt"] = frame["prompt"].where(frame["prompt"].apply(lambda v: isinstance(v, str)), None)
    frame["response"] = frame["response"].apply(lambda v: v if isinstance(v, str) else "")
    column, kind = FILES[name]
    if kind == "three-way":
        frame["gold"] = frame[column].map(THREE_WAY)
    else:
        frame["gold"] = frame[column].map({"COMPLIANCE": "answered", "REFUSAL": "refusal"})
    frame["gold_refusal"] = frame["gold"] != "answered"
    return frame


def binary_scores(gold: np.ndarray, said: np.ndarray, rounds: int = 2000, seed: int = 7) -> dict[str, Any]:
    """Precision, recall and F1 of REFUSAL with 95% percentile-bootstrap intervals (records resampled)."""
    p, r, f, _ = precision_recall_fscore_support(gold, said, average="binary", zero_division=0)
    # The resamples are counted in one vectorised pass (the point estimates above are scikit-learn's).
    pick = np.random.default_rng(seed).integers(0, len(gold), (rounds, len(gold)))
    tp = (gold & said)[pick].sum(axis=1)
    fp = (~gold & said)[pick].sum(axis=1)
    fn = (gold & ~said)[pick].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = np.stack([tp / (tp + fp), tp / (tp + fn), 2 * tp / (2 * tp + fp + fn)], axis=1)
    low, high = np.nanpercentile(draws, [2.5, 97.5], axis=0)
    return {name: {"value": round(float(v), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)]}
            for name, v, lo, hi in zip(("precision", "recall", "f1"), (p, r, f), low, high, strict=True)}


def agreement(gold: pd.Series, labels: list[str], three_way: bool) -> pd.Series:
    """Whether each reading agrees with gold: on the three labels, or on refusal yes / no."""
    said = pd.Series(labels, index=gold.index)
    return (said == gold) if three_way else ((said != "answered") == (gold != "answered"))


def throughput(frame: pd.DataFrame, repeats: int = 3) -> dict[str, float]:
    pairs = list(zip(frame["prompt"], frame["response"], strict=True))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for prompt, response in pairs:
            read_refusal(prompt, response)
        best = min(best, time.perf_counter() - started)
    return {"responses_per_s": round(len(pairs) / best, 1), "us_per_response": round(best / len(pairs) * 1e6, 1)}


def rules_report(frame: pd.DataFrame, readings: list[RefusalReading], threshold: float,
                 three_way: bool) -> dict[str, Any]:
    labels = [r.label.value if r.label else "error" for r in readings]
    confidence = pd.Series([r.confidence or 0.0 for r in readings], index=frame.index)
    said = np.array([label != "answered" for label in labels])
    gold = frame["gold_refusal"].to_numpy()
    out: dict[str, Any] = {"rows": len(frame), "gold": dict(Counter(frame["gold"])),
                           "predicted": dict(Counter(labels)), "refusal": binary_scores(gold, said)}
    right = agreement(frame["gold"], labels, three_way)
    # Rows are the gold labels (three, or answered / refusal), columns the rules' three labels.
    rows = LABELS if three_way else ["answered", "refusal"]
    every = list(dict.fromkeys([*rows, *LABELS]))
    matrix = confusion_matrix(frame["gold"], labels, labels=every)
    out["confusion"] = {"gold_rows": rows, "predicted_columns": LABELS,
                        "matrix": [[int(matrix[every.index(g)][every.index(c)]) for c in LABELS] for g in rows]}
    if three_way:
        out["three_way"] = {"accuracy": round(float(accuracy_score(frame["gold"], labels)), 4),
                            "macro_f1": round(float(f1_score(frame["gold"], labels, labels=LABELS, average="macro")),
                                              4)}
        out["by_model"] = {}
        for model in sorted(frame["model"].unique()):
            mask = (frame["model"] == model).to_numpy()
            scores = binary_scores(gold[mask], said[mask], rounds=200)
            out["by_model"][str(model)] = {"rows": int(mask.sum()), "f1": scores["f1"]["value"],
                                           "precision": scores["precision"]["value"],
                                           "recall": scores["recall"]["value"],
                                           "three_way_accuracy": round(float(right[mask].mean()), 4)}
    sure = confidence >= threshold
    out["sure"] = {"threshold": threshold, "share": round(float(sure.mean()), 4), "rows": int(sure.sum()),
                   "accuracy": round(float(right[sure].mean()), 4),
                   "binary_accuracy": round(float(agreement(frame["gold"], labels, False)[sure].mean()), 4),
                   "unsure_accuracy": round(float(right[~sure].mean()), 4) if (~sure).any() else None}
    paths = pd.DataFrame({"reason": [r.reason for r in readings], "label": labels, "confidence": confidence,
                          "right": right, "gold": frame["gold"]})
    out["paths"] = [
        {"reason": str(group["reason"].iloc[0]), "label": str(group["label"].iloc[0]),
         "confidence": float(group["confidence"].iloc[0]), "rows": len(group),
         "accuracy": round(float(group["right"].mean()), 4), "gold": dict(Counter(group["gold"]))}
        for _, group in paths.groupby(["reason", "label", "confidence"])]
    out["paths"].sort(key=lambda p: (-p["confidence"], -p["rows"]))
    return out


async def llm_report(frame: pd.DataFrame, readings: list[RefusalReading], threshold: float, detector: RefusalDetector,
                     limit: int, three_way: bool) -> dict[str, Any]:
    """Send up to `limit` unsure records (a fixed random sample) through the detector's LLM step."""
    unsure = [i for i, r in enumerate(readings) if (r.confidence or 0.0) < threshold]
    random.Random(11).shuffle(unsure)
    chosen = sorted(unsure[:limit])
    started = time.perf_counter()
    asked: list[RefusalReading] = []
    for i in chosen:  # one at a time: the local judge has one slot
        asked.append(await detector(frame["prompt"].iloc[i], frame["response"].iloc[i]))
    seconds = time.perf_counter() - started
    errors = [a.error for a in asked if a.degraded]
    kept = [(i, a) for i, a in zip(chosen, asked, strict=True) if not a.degraded and a.label is not None]
    gold = frame["gold"].iloc[[i for i, _ in kept]]
    rules_labels = [str(readings[i].label) for i, _ in kept]
    llm_labels = [str(a.label) for _, a in kept]
    out: dict[str, Any] = {"unsure_rows": len(unsure), "sent": len(chosen), "errors": len(errors),
                           "error_messages": Counter(e.split(":")[0] for e in errors if e), "scored": len(kept),
                           "seconds": round(seconds, 1),
                           "seconds_per_record": round(seconds / len(chosen), 2) if chosen else None,
                           "usage": {"input_tokens": sum(a.usage.input_tokens for a in asked),
                                     "output_tokens": sum(a.usage.output_tokens for a in asked),
                                     "calls": sum(a.usage.calls for a in asked)},
                           # Record ids, labels and prompt hashes only: no text leaves the shared folder
                           # (the judge's reasoning restates the prompt, so it is not kept here either).
                           "records": [{"id": str(frame["id"].iloc[i]), "gold": str(frame["gold"].iloc[i]),
                                        "rules": str(readings[i].label), "rules_reason": readings[i].reason,
                                        "llm": str(a.label) if not a.degraded else None, "error": a.error,
                                        "prompt_sha256": a.prompt_sha256}
                                       for i, a in zip(chosen, asked, strict=True)]}
    if kept:
        g = gold.to_numpy() != "answered"
        for name, labels in (("rules_only", rules_labels), ("rules_plus_llm", llm_labels)):
            said = np.array([label != "answered" for label in labels])
            p, r, f, _ = precision_recall_fscore_support(g, said, average="binary", zero_division=0)
            out[name] = {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4),
                         "accuracy": round(float(agreement(gold, labels, three_way).mean()), 4),
                         "predicted": dict(Counter(labels))}
        out["gold"] = dict(Counter(gold))
    return out


def run_llm(judge: str, frames: dict[str, pd.DataFrame], readings: dict[str, list[RefusalReading]],
            threshold: float, limit: int) -> dict[str, Any]:
    from judge.judges import choose_judge, open_judge
    from judge.models import JudgeModel

    choice = choose_judge(judge)
    longest = max(sum(len(m["content"]) for m in build_messages(p, r))
                  for f in frames.values() for p, r in zip(f["prompt"], f["response"], strict=True))
    out: dict[str, Any] = {"judge": choice.description}
    with open_judge(choice, prompt_chars=longest, use_cache=False) as config:
        out["model"] = config.model
        detector = RefusalDetector(JudgeModel(config), threshold)
        for name, frame in frames.items():
            three_way = FILES[name][1] == "three-way"
            out[name] = asyncio.run(llm_report(frame, readings[name], threshold, detector, limit, three_way))
    return out


def _ci(score: dict[str, Any]) -> str:
    return f"{score['value']:.3f} [{score['ci95'][0]:.3f}, {score['ci95'][1]:.3f}]"


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Refusal detection against human labels", "",
             f"Measured {results['measured_at']} on {results['platform']}, {results['cores']} cores, Python "
             f"{results['python']}. Rules tier: `judge.refusal.read_refusal`; REFUSAL means refused or partial. "
             "Intervals are 95% percentile bootstraps over records (2,000 resamples).", ""]
    for name, r in results["files"].items():
        kind = FILES[name][1]
        lines += [f"## {name} ({r['rows']} responses, {kind} gold: {json.dumps(r['gold'])})", "",
                  f"Rules only, REFUSAL: precision {_ci(r['refusal']['precision'])}, recall "
                  f"{_ci(r['refusal']['recall'])}, F1 {_ci(r['refusal']['f1'])}.", ""]
        if "three_way" in r:
            three = r["three_way"]
            lines += [f"Three-way accuracy {three['accuracy']:.3f}, macro F1 {three['macro_f1']:.3f}.", ""]
        s = r["sure"]
        there = (f"{s['accuracy']:.3f} on the three labels, {s['binary_accuracy']:.3f} on refusal yes / no"
                 if kind == "three-way" else f"{s['accuracy']:.3f} on refusal yes / no")
        lines += [f"Sure at threshold {s['threshold']}: {s['share']:.1%} of records ({s['rows']}), accuracy there "
                  f"{there}. The other {(r['rows'] - s['rows']) / r['rows']:.1%} go to the LLM (rules accuracy on them "
                  f"{s['unsure_accuracy']:.3f}).", "", "Confusion (rows gold, columns rules):",
                  "", "| gold \\ rules | " + " | ".join(r["confusion"]["predicted_columns"]) + " |",
                  "|---|" + "---:|" * len(r["confusion"]["predicted_columns"])]
        for row, counts in zip(r["confusion"]["gold_rows"], r["confusion"]["matrix"], strict=True):
            lines.append(f"| {row} | " + " | ".join(str(c) for c in counts) + " |")
        lines += ["", "Decision paths (confidence stated vs accuracy measured):", "",
                  "| path | label | confidence | rows | accuracy | gold |", "|---|---|---:|---:|---:|---|"]
        for p in r["paths"]:
            lines.append(f"| {p['reason']} | {p['label']} | {p['confidence']:.2f} | {p['rows']} | "
                         f"{p['accuracy']:.3f} | {json.dumps(p['gold'])} |")
        if "by_model" in r:
            lines += ["", "By model: " + "; ".join(f"{m} F1 {v['f1']:.3f} (P {v['precision']:.3f}, R "
                                                   f"{v['recall']:.3f}, three-way {v['three_way_accuracy']:.3f})"
                                                   for m, v in r["by_model"].items()) + "."]
        t = r["throughput"]
        lines += ["", f"Throughput: {t['responses_per_s']:,.0f} responses/s ({t['us_per_response']:.0f} µs each, one "
                      "core, best of 3).", ""]
    llm = results.get("llm")
    if llm:
        lines += ["## Rules + LLM on unsure records", "", f"Judge: {llm['judge']} (`{llm['model']}`), no reply cache.",
                  "", "These are the records the rules are least sure of: mostly loaded or nonsensical questions "
                  "answered with a correction or a lecture, where the human raters themselves split. Compare the "
                  "two rows before trusting the LLM step with a given judge; per-record labels are in "
                  "refusal.json.", ""]
        for name in results["files"]:
            r = llm.get(name)
            if not r:
                continue
            lines += [f"### {name}", "",
                      f"{r['sent']} of {r['unsure_rows']} unsure records sent (a fixed random sample); {r['errors']} "
                      f"judge errors (left out: {json.dumps(r['error_messages'])}), {r['scored']} scored; "
                      f"{r['seconds_per_record']} s per record.", ""]
            if "rules_only" in r:
                lines += [f"Gold on the scored records: {json.dumps(r['gold'])}.", "",
                          "| on these records | precision | recall | F1 | accuracy | predicted |",
                          "|---|---:|---:|---:|---:|---|"]
                for key in ("rules_only", "rules_plus_llm"):
                    m = r[key]
                    lines.append(f"| {key.replace('_', ' ')} | {m['precision']:.3f} | {m['recall']:.3f} | "
                                 f"{m['f1']:.3f} | {m['accuracy']:.3f} | {json.dumps(m['predicted'])} |")
                lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--llm", default=None, help="also ask this judge on unsure records: 'local' or a litellm model")
    parser.add_argument("--limit", type=int, default=30, help="unsure records per file sent to the LLM")
    args = parser.parse_args()

    frames = {name: frame for name in FILES if (frame := load(name)) is not None}
    if not frames:
        raise SystemExit(f"no data: {EXTERNAL} holds none of {', '.join(FILES)}")
    readings = {name: [read_refusal(p, r) for p, r in zip(f["prompt"], f["response"], strict=True)]
                for name, f in frames.items()}
    results: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "platform": platform.platform(),
        "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(), "files": {}}
    for name, frame in frames.items():
        report = rules_report(frame, readings[name], args.threshold, FILES[name][1] == "three-way")
        report["throughput"] = throughput(frame)
        results["files"][name] = report
    if args.llm:
        results["llm"] = run_llm(args.llm, frames, readings, args.threshold, args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "refusal.json").write_text(json.dumps(results, indent=2, default=dict) + "\n", encoding="utf-8")
    text = markdown(results)
    (args.out / "refusal.md").write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
