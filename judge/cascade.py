"""Routing across tiers, cheapest first, and the cost ledger of each verdict.

Each tier answers with a label and a confidence, abstains, or fails. The first tier whose label is
at least as confident as its threshold decides; the last tier decides with any label it gives. A
failed or abstaining tier escalates. When no tier gives a label the verdict is ERROR, never SAFE.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from judge.rubrics import Rubric
from judge.schema import ERROR, Record, TierResult, Usage, Verdict
from judge.tiers.base import Tier


class Cascade:
    def __init__(self, tiers: Sequence[Tier], thresholds: Mapping[str, float] | None = None) -> None:
        if not tiers:
            raise ValueError("a cascade needs at least one tier")
        self.tiers = list(tiers)
        self.thresholds = dict(thresholds or {})
        unknown = set(self.thresholds) - {t.name for t in self.tiers}
        if unknown:
            raise ValueError(f"thresholds for unknown tier(s): {', '.join(sorted(unknown))}; "
                             f"tiers are {', '.join(t.name for t in self.tiers)}")

    async def judge(self, record: Record, rubric: Rubric) -> Verdict:
        started = time.perf_counter()
        results: list[TierResult] = []
        decided: TierResult | None = None
        for position, tier in enumerate(self.tiers):
            try:
                result = await tier(record, rubric)
            except Exception as exc:  # a bug in one tier escalates like any other failure
                result = TierResult(tier=tier.name, error=f"tier crashed: {type(exc).__name__}: {exc}")
            if result.label is not None and result.error is not None:
                # The contract says an error is never a grade; enforce it rather than trust it.
                result = result.model_copy(update={"label": None})
            results.append(result)
            last = position == len(self.tiers) - 1
            sure = result.confidence is not None and result.confidence >= self.thresholds.get(tier.name, 0.0)
            if result.label is not None and (last or sure):
                decided = result
                break
        usage = sum((r.usage for r in results), Usage())
        errors = [f"{r.tier}: {r.error}" for r in results if r.error]
        return Verdict(
            record_id=record.id,
            record_sha256=record.content_hash(),
            rubric=rubric.key,
            rubric_sha256=rubric.sha256,
            label=decided.label if decided and decided.label else ERROR,
            decided_by=decided.tier if decided else None,
            tiers=results,
            error=None if decided else ("; ".join(errors) or "no tier gave a label"),
            usage=usage,
            latency_s=time.perf_counter() - started,
            response=record.response,
            meta=record.meta,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
