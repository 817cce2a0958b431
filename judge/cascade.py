"""Routing across tiers, cheapest first, and the cost ledger of each verdict.

Each tier answers with a label and a confidence, abstains, or fails. The first tier whose label is
at least as confident as its threshold decides; the last tier decides with any label it gives. A
failed or abstaining tier escalates. When no tier gives a label, the fallback labels of the tiers
that abstained (the rules tier's answers read through the verdict rule, the classifier's best guess)
give the most severe of them, and the verdict is marked degraded; with no fallback either, or with
`strict` after a tier failed, the verdict is ERROR, never SAFE.

Every verdict carries a ledger: one line per tier of the plan, saying whether it ran, what it said,
and what it cost (calls, tokens, money, seconds). judge.ledger sums the ledgers of a run.

A caller with a latency budget (judge.serve) hands `Cascade.judge` a Deadline: asked before each
tier starts, it can stop the escalation there. The tiers not run are `skipped` in the ledger and the
verdict is the fallback of those that ran, marked degraded (ERROR when they offer none), exactly as
when the last tier fails. Without a deadline nothing changes.

A record judged under several rubrics gets one combined verdict: the most severe label among the
rubrics that apply to it, with every rubric's own verdict kept inside.

When the LLM judge is sampled (JudgeConfig.samples > 1) and decides, the verdict carries its
agreement (judge.schema.Agreement); samples change nothing else here: the cheaper tiers run once,
and in mode `all` the LLM still decides.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal, Protocol

from pydantic import Field, model_validator

from judge.rubrics import Rubric
from judge.schema import (
    ERROR,
    SEVERITY,
    Agreement,
    Label,
    LedgerEntry,
    LedgerOutcome,
    Record,
    Strict,
    TierResult,
    Usage,
    Verdict,
    VerdictLabel,
    sha256_json,
)
from judge.tiers.base import Tier

TierName = Literal["rules", "classifier", "llm"]
TIER_ORDER: tuple[TierName, ...] = ("rules", "classifier", "llm")
DEFAULT_TIERS: tuple[TierName, ...] = ("rules", "llm")
"""The classifier tier runs when asked for (`--tiers rules,classifier,llm`) or when a model is named
(`--classifier-model`). It is not on by default: the shipped head, trained on the project's 372 rows,
falls well short of its 0.95 precision target out of domain (bench/results/classifier.md: on
XSTest-Response it would clear a third of the harmful responses as SAFE), so it is a starting point to
retrain, not a tier to trust unasked."""

Mode = Literal["cascade", "all", "rules", "classifier", "llm"]
"""How the tiers run. `cascade`: cheapest first, stopping at the first tier sure enough. `all`: every
tier on every record, so that the tiers can be compared; the label is the last (most capable) tier's,
and each ledger line says whether that tier would have stopped the cascade. A tier name: that tier
alone, whose label decides whatever its confidence."""


class CascadeConfig(Strict):
    """Which tiers run, cheapest first, how, and how confident each must be to decide."""

    tiers: list[TierName] = Field(default_factory=lambda: list(DEFAULT_TIERS), min_length=1)
    mode: Mode = Field(default="cascade", description="cascade, all, or one tier's name to run it alone.")
    strict: bool = Field(default=False, description="A failed tier leaves the record ERROR instead of falling "
                         "back, degraded, to a cheaper tier's answer.")
    thresholds: dict[TierName, float] = Field(
        default_factory=dict, description="Minimum confidence for a tier's label to stop the cascade (default: "
        "rules 0.9); the last tier decides with any label it gives.")
    programs: bool = Field(default=True, description="Run the rubrics' saved judging programs in the rules tier.")
    classifier_model: str | None = Field(default=None, description="The classifier tier's model folder "
                                         "(default: the shipped head over all-MiniLM-L6-v2).")
    classifier_runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        default="torch", description="Run the classifier on torch, or on its ONNX export (fp32 or int8).")

    @model_validator(mode="after")
    def _known(self) -> CascadeConfig:
        if len(set(self.tiers)) != len(self.tiers):
            raise ValueError(f"a tier is listed twice: {', '.join(self.tiers)}")
        order = [n for n in TIER_ORDER if n in self.tiers]
        if order != list(self.tiers):
            raise ValueError(f"tiers run cheapest first: {', '.join(order)}, not {', '.join(self.tiers)}")
        if self.mode in TIER_ORDER and self.tiers != [self.mode]:
            raise ValueError(f"mode {self.mode} runs the {self.mode} tier alone, but the tiers are "
                             f"{', '.join(self.tiers)}")
        extra = set(self.thresholds) - set(self.tiers)
        if extra:
            raise ValueError(f"thresholds for tier(s) not in the cascade: {', '.join(sorted(extra))}")
        return self

    @property
    def uses_llm(self) -> bool:
        return "llm" in self.tiers

    @property
    def run_mode(self) -> RunMode:
        if self.mode == "cascade" or self.mode == "all":
            return self.mode
        return "single"

    def effective_thresholds(self) -> dict[str, float]:
        merged: dict[str, float] = {t: DEFAULT_THRESHOLDS[t] for t in self.tiers if t in DEFAULT_THRESHOLDS}
        merged.update((str(k), v) for k, v in self.thresholds.items())
        return merged


RunMode = Literal["cascade", "all", "single"]

DEFAULT_THRESHOLDS: dict[str, float] = {"rules": 0.9}
"""The rules tier decides only through high-precision checks (confidence 0.9 and up by convention)."""


class Deadline(Protocol):
    """A per-call limit on escalation: asked, before each tier starts, whether it may still run."""

    def allows(self, tier: str) -> bool: ...


def _entry(result: TierResult, outcome: LedgerOutcome, seconds: float, stops: bool) -> LedgerEntry:
    u = result.usage
    return LedgerEntry(tier=result.tier, outcome=outcome, label=result.label, confidence=result.confidence,
                       stops=stops, calls=u.calls, input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                       cost_usd=u.cost_usd, cost_known=u.cost_known, seconds=seconds)


class Cascade:
    """Runs a record through its tiers under one rubric and keeps the ledger of what each cost.

    In mode `cascade` the first tier whose label is at least as confident as its threshold decides;
    the last tier decides with any label it gives; a failed or abstaining tier escalates. In mode
    `all` every tier runs and the last tier that gives a label decides (the most capable one: the
    reference the cascade is measured against); if it fails, the tier the cascade would have stopped
    at decides. `single` is a cascade of one tier.
    """

    def __init__(self, tiers: Sequence[Tier], thresholds: Mapping[str, float] | None = None, *,
                 mode: RunMode = "cascade", strict: bool = False) -> None:
        if not tiers:
            raise ValueError("a cascade needs at least one tier")
        if mode == "single" and len(tiers) != 1:
            raise ValueError(f"mode single runs one tier, not {len(tiers)}")
        self.tiers = list(tiers)
        self.mode: RunMode = mode
        self.strict = strict
        self.thresholds = dict(thresholds or {})
        unknown = set(self.thresholds) - {t.name for t in self.tiers}
        if unknown:
            raise ValueError(f"thresholds for unknown tier(s): {', '.join(sorted(unknown))}; "
                             f"tiers are {', '.join(t.name for t in self.tiers)}")

    async def _run(self, tier: Tier, record: Record, rubric: Rubric) -> tuple[TierResult, float]:
        started = time.perf_counter()
        try:
            result = await tier(record, rubric)
        except Exception as exc:  # a bug in one tier escalates like any other failure
            result = TierResult(tier=tier.name, error=f"tier crashed: {type(exc).__name__}: {exc}")
        if result.label is not None and result.error is not None:
            # The contract says an error is never a grade; enforce it rather than trust it.
            result = result.model_copy(update={"label": None})
        return result, time.perf_counter() - started

    async def judge(self, record: Record, rubric: Rubric, deadline: Deadline | None = None) -> Verdict:
        """The verdict of one record under one rubric. With a `deadline`, a tier it does not allow is
        not run, nor any after it."""
        started = time.perf_counter()
        results: list[TierResult] = []
        seconds: list[float] = []
        stops: list[bool] = []
        first_sure: int | None = None  # the tier the cascade stops at
        stopped_before: str | None = None  # the tier the deadline did not allow
        for position, tier in enumerate(self.tiers):
            if first_sure is not None and self.mode != "all":
                break
            if deadline is not None and not deadline.allows(tier.name):
                stopped_before = tier.name
                break
            result, took = await self._run(tier, record, rubric)
            results.append(result)
            seconds.append(took)
            last = position == len(self.tiers) - 1
            sure = result.confidence is not None and result.confidence >= self.thresholds.get(tier.name, 0.0)
            stops.append(result.label is not None and (last or sure))
            if stops[-1] and first_sure is None:
                first_sure = position
        decided_at = first_sure
        if self.mode == "all":
            # The reference label: the last tier that gave one (the LLM, when it answered).
            labelled = [i for i, r in enumerate(results) if r.label is not None]
            if labelled and labelled[-1] == len(self.tiers) - 1:
                decided_at = labelled[-1]
        decided = results[decided_at] if decided_at is not None else None
        usage = sum((r.usage for r in results), Usage())
        errors = [f"{r.tier}: {r.error}" for r in results if r.error]
        label: VerdictLabel = ERROR
        if decided is not None and decided.label is not None:
            label = decided.label
        fallback = None
        if decided is None and not (self.strict and errors):
            # The tiers' own results stay as they were; only the verdict takes the fallback label:
            # the most severe any tier offers (a guess must not talk a warning down), the later
            # tier's on a tie. With --strict a failed tier leaves ERROR instead.
            offered = [r for r in results if r.fallback_label is not None and r.error is None]
            fallback = max(reversed(offered), key=lambda r: SEVERITY[r.fallback_label or Label.SAFE], default=None)
            if fallback is not None and fallback.fallback_label is not None:
                label = fallback.fallback_label
        source = decided or fallback
        ledger: list[LedgerEntry] = []
        for i, tier in enumerate(self.tiers):
            if i >= len(results):
                ledger.append(LedgerEntry(tier=tier.name, outcome="skipped"))
                continue
            r = results[i]
            outcome: LedgerOutcome
            if r.error is not None:
                outcome = "error"
            elif i == decided_at:
                outcome = "decided"
            elif (decided_at is not None and i > decided_at) or (self.mode == "all" and stops[i]):
                outcome = "compared"
            else:
                outcome = "abstained"
            ledger.append(_entry(r, outcome, seconds[i], stops[i]))
        error = None
        if decided is None:
            error = "; ".join(errors) or "no tier gave a label"
            if stopped_before is not None:
                error = f"stopped before the {stopped_before} tier by the deadline; {error}"
            if self.strict and errors:
                error = f"strict: no fallback after a tier failed: {error}"
        return Verdict(
            record_id=record.id,
            record_sha256=record.content_hash(),
            rubric=rubric.key,
            rubric_sha256=rubric.sha256,
            label=label,
            decided_by=source.tier if source else None,
            applicable=source.applicable if source else None,
            tiers=results,
            error=error,
            degraded=fallback is not None,
            usage=usage,
            latency_s=time.perf_counter() - started,
            response=record.response,
            meta=record.meta,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            mode=self.mode,
            ledger=ledger,
            # Only a deciding tier's agreement describes the label; a fallback is not the sampled judge's.
            agreement=decided.agreement if decided is not None else None,
        )


def combine_verdicts(parts: Sequence[Verdict]) -> Verdict:
    """One verdict for a record from its verdicts under several rubrics (in the order given).

    The label is the most severe among the rubrics that apply; a rubric whose topic is absent does
    not push it. A failed rubric makes the record ERROR unless another rubric already found it
    HARMFUL: the failure could hide harm, so it cannot pass as SAFE or BORDERLINE, but it cannot
    make a HARMFUL finding less certain either. With no rubric applicable the record is SAFE."""
    if not parts:
        raise ValueError("combine_verdicts needs at least one verdict")
    ids = {p.record_id for p in parts}
    if len(ids) != 1:
        raise ValueError(f"verdicts of different records cannot be combined: {', '.join(sorted(ids))}")
    graded = [p for p in parts if not p.is_error]
    applicable = [p for p in graded if p.applicable is not False]
    worst = max(applicable, key=lambda p: SEVERITY[Label(p.label)], default=None)
    failed = [p for p in parts if p.is_error]
    if worst is not None and worst.label is Label.HARMFUL:
        label: VerdictLabel = Label.HARMFUL
    elif failed:
        label = ERROR
    else:
        label = worst.label if worst is not None else Label.SAFE
    deciding = worst if label != ERROR and worst is not None else None
    first = parts[0]
    return Verdict(
        record_id=first.record_id,
        record_sha256=first.record_sha256,
        rubric="+".join(p.rubric for p in parts),
        rubric_sha256=sha256_json([p.rubric_sha256 for p in parts]),
        label=label,
        decided_by=f"{deciding.rubric}/{deciding.decided_by}" if deciding else None,
        applicable=bool(applicable) if not failed or label == Label.HARMFUL else None,
        tiers=[],
        error="; ".join(f"{p.rubric}: {p.error}" for p in failed) or None,
        usage=sum((p.usage for p in parts), Usage()),
        latency_s=sum(p.latency_s for p in parts),
        response=first.response,
        meta=first.meta,
        created_at=max(p.created_at for p in parts),
        rubric_results=list(parts),
        degraded=any(p.degraded for p in parts),
        agreement=_combined_agreement(parts),
    )


def _combined_agreement(parts: Sequence[Verdict]) -> Agreement | None:
    """The least reproducible rubric verdict speaks for the record: the agreement with the lowest
    rate, flagged for review when any rubric verdict is."""
    sampled = [p.agreement for p in parts if p.agreement is not None]
    if not sampled:
        return None
    lowest = min(sampled, key=lambda a: a.rate)
    return lowest.model_copy(update={"review": any(a.review for a in sampled)})
