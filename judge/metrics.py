"""Agreement of a tier's sub-question answers and labels with gold (human) answers.

An abstention is not an answer: it lowers coverage, never precision. A gold 'n/a' is left out of
the yes/no figures. scikit-learn computes the precision and recall.

Calibration: `reliability_table` bins a tier's confidence and compares it with its accuracy; its
expected calibration error is what the classifier's calibration step reports before and after fitting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.metrics import precision_score, recall_score

from judge.schema import AnswerValue, Label

Answers = Mapping[str, AnswerValue]


@dataclass(frozen=True)
class QuestionAgreement:
    question: str
    gold_yes: int
    gold_no: int
    answered: int  # rows with a gold yes/no where the tier answered yes or no
    agreed: int  # of those, the rows where it gave the gold answer
    said_yes: int
    precision_yes: float | None  # of the tier's "yes" answers, the share gold calls yes
    recall_yes: float | None  # of gold "yes", the share the tier answered "yes"
    precision_no: float | None
    recall_no: float | None

    @property
    def coverage(self) -> float:
        total = self.gold_yes + self.gold_no
        return self.answered / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "coverage": self.coverage}


def _ratio(defined: bool, key: str, gold: Sequence[str], said: Sequence[str], fn: Any) -> float | None:
    if not defined:
        return None
    # Three values occur (yes, no, abstain): score the one label asked for.
    return float(fn(gold, said, labels=[key], average=None, zero_division=0)[0])


def answer_agreement(predicted: Sequence[Answers], gold: Sequence[Answers],
                     questions: Sequence[str]) -> list[QuestionAgreement]:
    """Per sub-question agreement of predicted answers (missing = abstained) with gold answers."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted rows for {len(gold)} gold rows")
    out = []
    for q in questions:
        golds: list[str] = []
        saids: list[str] = []
        gold_yes = gold_no = 0
        for p, g in zip(predicted, gold, strict=True):
            truth = g.get(q)
            if truth not in (AnswerValue.YES, AnswerValue.NO):
                continue
            gold_yes += truth is AnswerValue.YES
            gold_no += truth is AnswerValue.NO
            said = p.get(q)
            golds.append(truth.value)
            # An abstention counts against recall (the gold answer was not found) and not against precision.
            saids.append(said.value if said in (AnswerValue.YES, AnswerValue.NO) else "abstain")
        answered = sum(s != "abstain" for s in saids)
        said_yes, said_no = saids.count("yes"), saids.count("no")
        out.append(QuestionAgreement(
            question=q, gold_yes=gold_yes, gold_no=gold_no, answered=answered,
            agreed=sum(s == g for s, g in zip(saids, golds, strict=True)), said_yes=said_yes,
            precision_yes=_ratio(said_yes > 0, "yes", golds, saids, precision_score),
            recall_yes=_ratio(gold_yes > 0, "yes", golds, saids, recall_score),
            precision_no=_ratio(said_no > 0, "no", golds, saids, precision_score),
            recall_no=_ratio(gold_no > 0, "no", golds, saids, recall_score),
        ))
    return out


@dataclass(frozen=True)
class DecisionAgreement:
    """How often a tier's own label decisions (not abstentions) match the gold label."""

    rows: int
    decided: int
    correct: int
    by_label: dict[str, tuple[int, int]]  # label -> (decided, correct)

    @property
    def precision(self) -> float | None:
        return self.correct / self.decided if self.decided else None


def decision_agreement(decided: Sequence[Label | None], gold: Sequence[Label]) -> DecisionAgreement:
    by: dict[str, tuple[int, int]] = {}
    for d, g in zip(decided, gold, strict=True):
        if d is None:
            continue
        n, ok = by.get(d.value, (0, 0))
        by[d.value] = (n + 1, ok + (d is g))
    return DecisionAgreement(len(gold), sum(n for n, _ in by.values()), sum(ok for _, ok in by.values()), by)


def _decimals(edges: npt.NDArray[np.float64]) -> int:
    # Enough decimals to print every edge exactly ("0.9-1.0" for 10 bins, "0.25-0.50" for 4).
    for d in range(1, 7):
        if np.allclose(np.round(edges, d), edges, rtol=0, atol=1e-12):
            return d
    return 6


def reliability_table(probs: npt.ArrayLike, y: npt.ArrayLike, bins: int = 10) -> tuple[pd.DataFrame, float]:
    """Bin rows by confidence (the top probability) and compare each bin's mean confidence with its accuracy.

    Equal-width bins over [0, 1], each [low, high) except the last, which holds 1.0. Every bin is a row,
    empty ones with count 0 and NaN means, so tables from different runs line up. Returns the table and
    the expected calibration error: the count-weighted mean of |accuracy - mean confidence|.
    """
    p = np.asarray(probs, dtype=np.float64)
    gold = np.asarray(y)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"probs must be a non-empty (rows, classes) array, got shape {p.shape}")
    if gold.shape != (p.shape[0],):
        raise ValueError(f"y must have shape ({p.shape[0]},) to match probs {p.shape}, got {gold.shape}")
    if not np.issubdtype(gold.dtype, np.integer):
        raise ValueError(f"y must hold integer class indices, got dtype {gold.dtype}")
    if gold.min() < 0 or gold.max() >= p.shape[1]:
        raise ValueError(f"y holds class indices outside 0..{p.shape[1] - 1}")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or infinite values")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == gold).astype(np.float64)
    # arange / bins, not linspace: 3 / 10 is exactly the double 0.3, so a confidence of 0.3 lands in "0.3-0.4".
    edges = np.arange(bins + 1, dtype=np.float64) / bins
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=bins) / count
    gap = accuracy - mean_conf
    d = _decimals(edges)
    table = pd.DataFrame({
        "bin": [f"{edges[i]:.{d}f}-{edges[i + 1]:.{d}f}" for i in range(bins)],
        "low": edges[:-1], "high": edges[1:], "count": count.astype(np.int64),
        "mean_confidence": mean_conf, "accuracy": accuracy, "gap": gap,
    })
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(gap[filled])) / p.shape[0])
    return table, ece
