"""Agreement of a tier's sub-question answers and labels with gold (human) answers.

An abstention is not an answer: it lowers coverage, never precision. A gold 'n/a' is left out of
the yes/no figures. scikit-learn computes the precision and recall.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

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
