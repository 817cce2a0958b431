"""What `psyjudge classifier evaluate` reports, and what the model card keeps of its validation rows:
precision, recall and F1 per label (of the model's best guess on every row), the coverage and
precision of the decisions it would actually make at its thresholds, and a reliability table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from judge.classifier.calibration import coverage_report, reliability_table
from judge.schema import Label


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return None if np.isnan(value) else round(value, 4)
    return value


def evaluation_report(probs: np.ndarray, y: np.ndarray, labels: Sequence[Label],
                      threshold: Mapping[str, float | None], bins: int = 10) -> dict[str, Any]:
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    names = [str(x) for x in labels]
    guess = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=int)
    index = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(y, guess, labels=index, zero_division=0)
    per_label = {name: {"precision": _round(float(precision[i])), "recall": _round(float(recall[i])),
                        "f1": _round(float(f1[i])), "support": int(support[i])} for i, name in enumerate(names)}
    report: dict[str, Any] = {
        "rows": len(y),
        "per_label": per_label,
        # Over the labels the gold rows have: a label nobody labelled would add an F1 of 0 for nothing.
        "macro_f1": _round(float(f1_score(y, guess, labels=sorted({int(v) for v in y}) or index, average="macro",
                                          zero_division=0))),
    }
    if "HARMFUL" in names:
        # Harmful against everything else: the figure guard-model papers report.
        h = names.index("HARMFUL")
        report["harmful_f1"] = _round(float(f1_score(y == h, guess == h, zero_division=0)))
    report["at_thresholds"] = coverage_report(probs, y, names, threshold)
    table, ece = reliability_table(probs, y, bins)
    report["ece"] = _round(float(ece))
    report["reliability"] = [{k: _round(v) if isinstance(v, float) else v for k, v in row.items()}
                             for row in table.to_dict(orient="records")]
    return report


def _f(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def format_report(report: Mapping[str, Any]) -> str:
    """The report as text for a terminal."""
    lines = [f"rows: {report['rows']}; macro-F1 {_f(report['macro_f1'])}"
             + (f"; harmful-vs-rest F1 {_f(report['harmful_f1'])}" if "harmful_f1" in report else ""),
             "", f"{'label':<11} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for name, m in report["per_label"].items():
        lines.append(f"{name:<11} {_f(m['precision']):>9} {_f(m['recall']):>7} {_f(m['f1']):>7} {m['support']:>8}")
    at = report["at_thresholds"]
    lines += ["", f"at the thresholds: coverage {_f(at.get('coverage'))} ({at.get('decided')} of {report['rows']} "
              "decided; the rest go to the LLM judge)"]
    for name, m in at.get("labels", {}).items():
        lines.append(f"  {name:<11} decided {m.get('decided')}, precision {_f(m.get('precision'))} "
                     f"(Wilson 95% lower {_f(m.get('precision_lower'))}), recall {_f(m.get('recall'))}")
    lines += ["", f"reliability (ECE {_f(report['ece'])}):",
              f"  {'bin':<9} {'count':>6} {'confidence':>10} {'accuracy':>8}"]
    for row in report["reliability"]:
        if row["count"]:
            lines.append(f"  {row['bin']:<9} {row['count']:>6} {_f(row['mean_confidence']):>10} "
                         f"{_f(row['accuracy']):>8}")
    return "\n".join(lines)
