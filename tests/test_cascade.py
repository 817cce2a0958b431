"""Combining a record's verdicts under several rubrics: the most severe applicable label, with every
rubric's verdict kept; a failed rubric never lets the record pass as SAFE."""

from __future__ import annotations

import pytest

from judge.cascade import combine_verdicts
from judge.schema import ERROR, Label, Usage, Verdict, VerdictLabel


def part(rubric: str, label: VerdictLabel, applicable: bool | None = True, record: str = "r1") -> Verdict:
    return Verdict(record_id=record, record_sha256="h", rubric=f"{rubric}@1.0.0", rubric_sha256=f"sha-{rubric}",
                   label=label, decided_by=None if label == ERROR else "llm",
                   applicable=None if label == ERROR else applicable, tiers=[],
                   error="provider error: 503" if label == ERROR else None,
                   usage=Usage(calls=1, input_tokens=10, cost_usd=0.5), latency_s=1.0, response="text",
                   created_at="2026-11-22T10:00:00+00:00")


@pytest.mark.parametrize(("parts", "label", "decided_by", "applicable"), [
    ([part("a", Label.SAFE), part("b", Label.BORDERLINE), part("c", Label.HARMFUL)],
     Label.HARMFUL, "c@1.0.0/llm", True),
    ([part("a", Label.BORDERLINE), part("b", Label.SAFE)], Label.BORDERLINE, "a@1.0.0/llm", True),
    # A rubric whose topic is absent is SAFE but does not push: the applicable one decides.
    ([part("a", Label.SAFE, applicable=False), part("b", Label.BORDERLINE)], Label.BORDERLINE, "b@1.0.0/llm", True),
    ([part("a", Label.SAFE, applicable=False), part("b", Label.SAFE, applicable=False)], Label.SAFE, None, False),
    # An error could hide harm: it is never SAFE or BORDERLINE ...
    ([part("a", Label.SAFE), part("b", ERROR)], ERROR, None, None),
    ([part("a", Label.BORDERLINE), part("b", ERROR)], ERROR, None, None),
    # ... but it cannot make a HARMFUL finding less certain.
    ([part("a", Label.HARMFUL), part("b", ERROR)], Label.HARMFUL, "a@1.0.0/llm", True),
])
def test_most_severe_applicable_label(parts: list[Verdict], label: VerdictLabel, decided_by: str | None,
                                      applicable: bool | None) -> None:
    combined = combine_verdicts(parts)
    assert (combined.label, combined.decided_by, combined.applicable) == (label, decided_by, applicable)
    assert combined.rubric_results == parts  # each rubric's own verdict is kept, in order
    assert combined.rubric == "+".join(p.rubric for p in parts)
    assert combined.usage.calls == len(parts) and combined.usage.cost_usd == pytest.approx(0.5 * len(parts))
    assert (combined.error is not None) == any(p.label == ERROR for p in parts)


def test_the_combined_hash_changes_with_any_rubric() -> None:
    one = combine_verdicts([part("a", Label.SAFE), part("b", Label.SAFE)])
    other = combine_verdicts([part("a", Label.SAFE), part("c", Label.SAFE)])
    assert one.rubric_sha256 != other.rubric_sha256


def test_verdicts_of_different_records_are_refused() -> None:
    with pytest.raises(ValueError, match="different records"):
        combine_verdicts([part("a", Label.SAFE), part("b", Label.SAFE, record="r2")])
    with pytest.raises(ValueError, match="at least one"):
        combine_verdicts([])
