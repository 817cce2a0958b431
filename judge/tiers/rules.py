"""The rules tier: the rubric's programmatic checks and its saved judging programs, in microseconds
and at no cost.

It answers the sub-questions its checks and programs cover, each with evidence in the original
text, and decides a label in one case only: when the rubric's rule makes the record HARMFUL from
answers of checks marked high-precision (read in three-valued logic, so every unanswered question
is unknown). It never decides SAFE or BORDERLINE: absence of a keyword is not absence of harm. Its
answers, all of them, read through the same rule, are also the fallback label that the cascade uses,
marked degraded, when no later tier gives a label (the LLM failed, or only this tier was asked);
where they do not settle the rule, the fallback is BORDERLINE, for a person to review.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from judge.checks import Finding, Subject
from judge.programs.runtime import RubricPrograms
from judge.programs.store import ProgramError
from judge.rubrics import NOT_APPLICABLE_RULE, Decision, Rubric
from judge.schema import Answer, AnswerValue, Label, Record, TierResult, Usage
from judge.tiers.base import register_tier

if TYPE_CHECKING:
    from judge.datasets import Case

UNDETERMINED_RULE = "undetermined_needs_review"
"""The fallback rule name when the rules tier's answers do not settle the rubric's rule."""


@dataclass(frozen=True)
class RulesOutcome:
    findings: list[Finding]
    answers: dict[str, Finding]


def merge(findings: Iterable[Finding]) -> dict[str, Finding]:
    """One answer per question: a "yes" outranks a "no" (a hit is evidence, an absence is not), a
    high-precision finding outranks a normal one, then the more confident one wins."""
    best: dict[str, Finding] = {}
    for f in findings:
        held = best.get(f.question)
        rank = (f.value is AnswerValue.YES, f.high_precision, f.confidence)
        if held is None or rank > (held.value is AnswerValue.YES, held.high_precision, held.confidence):
            best[f.question] = f
    return best


def run_checks(record: Record, rubric: Rubric, extra: Iterable[Finding] = ()) -> RulesOutcome:
    subject = Subject(record)
    findings = [f for check in rubric.checks if (f := check.run(subject)) is not None]
    findings.extend(extra)
    return RulesOutcome(findings, merge(findings))


def _answer(f: Finding) -> Answer:
    precision = "high-precision " if f.high_precision else ""
    rationale = f"{precision}{f.check}: {f.note}" if f.note else f"{precision}{f.check}"
    return Answer(question_id=f.question, value=f.value, evidence=f.evidence, rationale=rationale,
                  confidence=f.confidence, evidence_verified=True if f.evidence else None,
                  where=f.where, span=f.span, source=f.check)


def _fallback(rubric: Rubric, answers: dict[str, Finding]) -> Decision:
    """The label the answers support when no judge gives one. Settled by the rule where the answers
    settle it. Otherwise: a record whose topic the checks find absent (no topic term in any turn,
    after de-obfuscation) and in which no harm was found is SAFE and not applicable; any other
    record is BORDERLINE, for review. Never SAFE for a record on the rubric's topic."""
    values = {q: f.value for q, f in answers.items()}
    decision = rubric.decide_partial(values)
    if decision is not None:
        return decision
    if rubric.applies_partial(values) is False:
        return Decision(Label.SAFE, NOT_APPLICABLE_RULE, [q for q in rubric.question_ids if q in answers],
                        applicable=False)
    unknown = [q for q in rubric.question_ids if q not in answers]
    return Decision(Label.BORDERLINE, UNDETERMINED_RULE, unknown)


def judge_with_rules(record: Record, rubric: Rubric, extra: Iterable[Finding] = ()) -> TierResult:
    """The rules tier's result for one record, synchronously (the tier wraps it)."""
    started = time.perf_counter()
    outcome = run_checks(record, rubric, extra)
    sure = {q: f.value for q, f in outcome.answers.items() if f.high_precision and f.value is AnswerValue.YES}
    decision = rubric.decide_partial(sure) if sure else None
    label = decision.label if decision is not None and decision.label is Label.HARMFUL else None
    fallback = _fallback(rubric, outcome.answers)
    confidence = None
    if label is not None and decision is not None:
        confidence = min(outcome.answers[q].confidence for q in decision.because) if decision.because else None
    return TierResult(
        tier="rules",
        label=label,
        confidence=confidence,
        answers=[_answer(outcome.answers[q]) for q in rubric.question_ids if q in outcome.answers],
        fired_rule=decision.rule if label is not None and decision is not None else None,
        applicable=decision.applicable if label is not None and decision is not None else fallback.applicable,
        usage=Usage(seconds=time.perf_counter() - started),
        fallback_label=fallback.label,
        fallback_rule=fallback.rule,
    )


@register_tier("rules")
class RulesTier:
    """Checks run inline (microseconds of pure CPU: cheaper than a hop to a thread). Saved programs,
    when a rubric has them and `programs` is on, run in a sandbox worker, off the event loop."""

    name = "rules"

    def __init__(self, programs: bool = True) -> None:
        self.use_programs = programs
        self._programs: dict[str, RubricPrograms | None] = {}

    def programs_for(self, rubric: Rubric) -> RubricPrograms | None:
        key = f"{rubric.key}:{rubric.sha256}"
        if key not in self._programs:
            self._programs[key] = RubricPrograms.load(rubric) if self.use_programs else None
        return self._programs[key]

    async def __call__(self, record: Record, rubric: Rubric) -> TierResult:
        try:
            programs = self.programs_for(rubric)
        except ProgramError as exc:
            return TierResult(tier=self.name, error=f"saved programs unusable: {exc}")
        extra: list[Finding] = []
        if programs is not None:
            extra = await asyncio.to_thread(programs.findings, record)
        return judge_with_rules(record, rubric, extra)

    def close(self) -> None:
        for programs in self._programs.values():
            if programs is not None:
                programs.close()


def evaluate_rules(rubric: Rubric, cases: Sequence[Case]) -> dict[str, Any]:
    """The rules tier against gold answers: per sub-question precision and recall (an abstention
    lowers coverage and recall, never precision), its own label decisions, and its fallback labels."""
    from judge.metrics import answer_agreement, decision_agreement

    predicted: list[dict[str, AnswerValue]] = []
    decided: list[Label | None] = []
    fallback: list[Label | None] = []
    gold_labels: list[Label] = []
    for case in cases:
        result = judge_with_rules(case.record, rubric)
        predicted.append({a.question_id: a.value for a in result.answers})
        decided.append(result.label)
        fallback.append(result.fallback_label)
        gold_labels.append(case.label)
    questions = answer_agreement(predicted, [c.gold for c in cases], rubric.question_ids)
    decisions = decision_agreement(decided, gold_labels)
    fallback_ok = sum(f is g for f, g in zip(fallback, gold_labels, strict=True))
    return {
        "rubric": rubric.key,
        "rows": len(cases),
        "decided": decisions.decided,
        "decided_correct": decisions.correct,
        "decided_by_label": {k: {"decided": n, "correct": ok} for k, (n, ok) in decisions.by_label.items()},
        "fallback_agreement": fallback_ok / len(cases) if cases else None,
        "fallback_by_gold": _confusion(gold_labels, fallback),
        "questions": [q.as_dict() for q in questions],
    }


def _confusion(gold: Sequence[Label], got: Sequence[Label | None]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for g, f in zip(gold, got, strict=True):
        row = table.setdefault(g.value, {})
        key = f.value if f is not None else "none"
        row[key] = row.get(key, 0) + 1
    return table
