"""The cost ledger of a run: which tier decided how many records, what each tier spent, how many LLM
calls the cheaper tiers saved, and what 1,000 records cost against asking the LLM about every one.

Every verdict carries its own ledger (judge.schema.LedgerEntry, one line per tier of the plan); this
module only adds them up, so the summary of a run is a pure function of its results.jsonl. The same
goes for the agreement of sampled verdicts (judge.schema.Agreement): summarise_agreement adds it up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from judge.schema import Strict


@dataclass(frozen=True, slots=True)
class TierSpend:
    """One ledger line, as little of it as a summary needs (a run may hold millions)."""

    tier: str
    outcome: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cost_known: bool
    seconds: float

    @property
    def ran(self) -> bool:
        return self.outcome != "skipped"


def spends_of(row: Mapping[str, Any]) -> tuple[TierSpend, ...]:
    """The ledger of a verdict row (a results.jsonl line as a dict). A row written before ledgers
    existed has none: its tiers are read from `tiers`, each as having run, and the deciding one decided."""
    ledger = row.get("ledger") or []
    if ledger:
        return tuple(TierSpend(e["tier"], e["outcome"], int(e.get("calls", 0)), int(e.get("input_tokens", 0)),
                               int(e.get("output_tokens", 0)), float(e.get("cost_usd", 0.0)),
                               bool(e.get("cost_known", True)), float(e.get("seconds", 0.0)))
                     for e in ledger)
    out = []
    for t in row.get("tiers") or []:
        u = t.get("usage") or {}
        outcome = "error" if t.get("error") else "decided" if t.get("tier") == row.get("decided_by") else "abstained"
        out.append(TierSpend(t["tier"], outcome, int(u.get("calls", 0)), int(u.get("input_tokens", 0)),
                             int(u.get("output_tokens", 0)), float(u.get("cost_usd", 0.0)),
                             bool(u.get("cost_known", True)), float(u.get("seconds", 0.0))))
    return tuple(out)


class TierSummary(Strict):
    tier: str
    ran: int = Field(description="Verdicts on which the tier ran.")
    decided: int = Field(description="Verdicts whose label it gave.")
    decided_share: float = Field(description="decided / all verdicts of the run.")
    abstained: int
    errors: int
    compared: int = Field(description="Mode `all`: ran after the decision, for comparison only.")
    skipped: int = Field(description="Not asked: an earlier tier decided.")
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cost_complete: bool = Field(description="False when a price was missing from litellm's cost map.")
    seconds: float


class PerThousand(Strict):
    """What 1,000 records cost (a record judged under several rubrics counts once)."""

    cost_usd: float
    input_tokens: float
    output_tokens: float
    llm_calls: float
    seconds: float = Field(description="Tier seconds, summed: compute time, not wall time.")


class CascadeSummary(Strict):
    mode: str
    tiers: list[str]
    verdicts: int
    records: int
    by_tier: list[TierSummary]
    llm_in_plan: bool
    llm_verdicts: int = Field(description="Verdicts on which the LLM tier ran.")
    llm_share: float | None = Field(description="llm_verdicts / verdicts.")
    llm_records: int = Field(description="Records on which the LLM was asked at least once (any rubric).")
    llm_record_share: float | None
    llm_calls_avoided: int = Field(description="Verdicts on which the LLM was in the plan but not asked.")
    per_1k_records: PerThousand | None
    llm_only_per_1k_records: PerThousand | None = Field(
        description="The same records with the LLM asked on every verdict, at the prices paid in this run: "
        "measured in mode `all`, otherwise estimated from the mean spend of the verdicts the LLM judged.")
    llm_only_basis: str
    cost_saving_share: float | None = Field(description="1 - cost / LLM-only cost, when both are known and > 0.")


@dataclass
class _Acc:
    ran: int = 0
    decided: int = 0
    abstained: int = 0
    errors: int = 0
    compared: int = 0
    skipped: int = 0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    seconds: float = 0.0

    def add(self, s: TierSpend) -> None:
        self.ran += s.ran
        self.decided += s.outcome == "decided"
        self.abstained += s.outcome == "abstained"
        self.errors += s.outcome == "error"
        self.compared += s.outcome == "compared"
        self.skipped += s.outcome == "skipped"
        self.calls += s.calls
        self.input_tokens += s.input_tokens
        self.output_tokens += s.output_tokens
        self.cost_usd += s.cost_usd
        self.cost_known = self.cost_known and s.cost_known
        self.seconds += s.seconds


def summarise_ledgers(ledgers: Iterable[tuple[str, Sequence[TierSpend]]], *, mode: str,
                      tiers: Sequence[str]) -> CascadeSummary:
    """Sum the ledgers of a run: `(record id, ledger)` per verdict."""
    acc: dict[str, _Acc] = {t: _Acc() for t in tiers}
    verdicts = 0
    records: set[str] = set()
    llm_records: set[str] = set()
    llm_verdicts = avoided = 0
    for record_id, ledger in ledgers:
        verdicts += 1
        records.add(record_id)
        for spend in ledger:
            acc.setdefault(spend.tier, _Acc()).add(spend)
            if spend.tier == "llm":
                if spend.ran:
                    llm_verdicts += 1
                    llm_records.add(record_id)
                else:
                    avoided += 1
    n_records = len(records)
    by_tier = [TierSummary(tier=t, ran=a.ran, decided=a.decided,
                           decided_share=a.decided / verdicts if verdicts else 0.0,
                           abstained=a.abstained, errors=a.errors, compared=a.compared, skipped=a.skipped,
                           calls=a.calls, input_tokens=a.input_tokens, output_tokens=a.output_tokens,
                           cost_usd=round(a.cost_usd, 8), cost_complete=a.cost_known, seconds=round(a.seconds, 6))
               for t, a in acc.items()]
    llm = acc.get("llm")
    per_1k = None
    llm_only = None
    basis = "no LLM tier in the plan"
    if n_records:
        k = 1000.0 / n_records
        per_1k = PerThousand(cost_usd=sum(a.cost_usd for a in acc.values()) * k,
                             input_tokens=sum(a.input_tokens for a in acc.values()) * k,
                             output_tokens=sum(a.output_tokens for a in acc.values()) * k,
                             llm_calls=(llm.calls if llm else 0) * k,
                             seconds=sum(a.seconds for a in acc.values()) * k)
        if llm is not None and llm_verdicts:
            # LLM-only asks the LLM on every verdict: its mean spend per judged verdict, times all verdicts.
            scale = verdicts / llm_verdicts * k
            llm_only = PerThousand(cost_usd=llm.cost_usd * scale, input_tokens=llm.input_tokens * scale,
                                   output_tokens=llm.output_tokens * scale, llm_calls=llm.calls * scale,
                                   seconds=llm.seconds * scale)
            basis = ("measured: the LLM ran on every verdict" if llm_verdicts == verdicts else
                     f"estimated from the mean spend of the {llm_verdicts} verdicts the LLM judged")
            if llm.calls == 0:
                basis += " (every reply came from the cache: no spend was measured)"
        elif llm is not None:
            basis = "unknown: the LLM judged no verdict in this run"
    saving = None
    if per_1k and llm_only and llm_only.cost_usd > 0 and (llm is None or llm.cost_known):
        saving = 1.0 - per_1k.cost_usd / llm_only.cost_usd
    return CascadeSummary(
        mode=mode, tiers=list(tiers), verdicts=verdicts, records=n_records, by_tier=by_tier,
        llm_in_plan="llm" in tiers, llm_verdicts=llm_verdicts,
        llm_share=llm_verdicts / verdicts if verdicts else None,
        llm_records=len(llm_records), llm_record_share=len(llm_records) / n_records if n_records else None,
        llm_calls_avoided=avoided, per_1k_records=per_1k, llm_only_per_1k_records=llm_only,
        llm_only_basis=basis, cost_saving_share=saving)


# --- sampled verdicts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SampleVote:
    """A sampled verdict's agreement, as little of it as a summary needs."""

    rate: float
    review: bool
    tie: bool
    failed: int


def vote_of(row: Mapping[str, Any]) -> SampleVote | None:
    """The agreement of a verdict row (a results.jsonl line as a dict); None when the judge was not
    sampled, or for a row written before agreements existed."""
    found = row.get("agreement")
    if not isinstance(found, Mapping):
        return None
    return SampleVote(float(found["rate"]), bool(found.get("review", False)), bool(found.get("tie", False)),
                      int(found.get("failed", 0)))


class AgreementSummary(Strict):
    """How reproducible the sampled verdicts of a run are."""

    samples: int = Field(description="Samples per LLM judgement asked for in this run (1: not sampled).")
    sampled_verdicts: int = Field(description="Verdicts that the sampled LLM judge decided.")
    mean_rate: float | None = Field(description="Mean agreement rate over them; None when there are none.")
    below_threshold: int = Field(description="Sampled verdicts flagged for review: agreement under review_below, "
                                 "or a tie.")
    review_below: float
    ties: int = Field(description="Sampled verdicts whose top labels tied (the most severe was taken).")
    failed_samples: int = Field(description="Samples that gave no vote (call failed, or the reply stayed malformed).")
    by_rate: dict[str, int] = Field(description="Agreement rate (2 decimals) -> verdicts, highest first.")


def summarise_agreement(votes: Iterable[SampleVote | None], *, samples: int,
                        review_below: float) -> AgreementSummary:
    """Sum the agreements of a run's verdicts (None for a verdict that was not sampled)."""
    sampled = [v for v in votes if v is not None]
    by_rate: dict[float, int] = {}
    for vote in sampled:
        key = round(vote.rate, 2)
        by_rate[key] = by_rate.get(key, 0) + 1
    return AgreementSummary(
        samples=samples, sampled_verdicts=len(sampled),
        mean_rate=round(sum(v.rate for v in sampled) / len(sampled), 6) if sampled else None,
        below_threshold=sum(v.review for v in sampled), review_below=review_below,
        ties=sum(v.tie for v in sampled), failed_samples=sum(v.failed for v in sampled),
        by_rate={str(rate): count for rate, count in sorted(by_rate.items(), reverse=True)})
