"""The per-request latency budget: how long each tier is expected to take, and whether the next one
still fits.

A tier's expected time starts at a configured value and follows an exponentially weighted moving
average of its measured wall time (each verdict's ledger says what every tier that ran took). A
request with `max_latency_ms` lets a tier start only while `elapsed + expected(tier) <= budget`; a
tier that has started is never cut short (a half-finished judge call is no answer, and its cost is
already spent), so a request can still finish past its budget when a tier is slower than expected.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping

from judge.schema import LedgerEntry

DEFAULT_EXPECTED_MS: dict[str, float] = {"rules": 5.0, "classifier": 100.0, "llm": 3000.0}
"""The starting estimates before any request has been measured: the rules tier runs in about a
millisecond per rubric (bench/results/rules_throughput.md), the classifier batches on CPU in tens of
milliseconds, and an LLM judge takes seconds."""

ALPHA = 0.2
"""Weight of the newest measurement: about the last ten requests shape the estimate."""

RAN = frozenset({"decided", "abstained", "error", "compared"})


class LatencyEstimates:
    """Expected wall time per tier (EWMA), shared by every request of a server."""

    def __init__(self, tiers: Iterable[str], configured_ms: Mapping[str, float] | None = None,
                 alpha: float = ALPHA) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        configured = dict(configured_ms or {})
        names = list(tiers)
        unknown = set(configured) - set(names)
        if unknown:
            raise ValueError(f"expected latency for tier(s) not served: {', '.join(sorted(unknown))}; "
                             f"tiers are {', '.join(names)}")
        self.alpha = alpha
        self._seconds = {t: configured.get(t, DEFAULT_EXPECTED_MS.get(t, 1000.0)) / 1000.0 for t in names}
        self._measured = dict.fromkeys(names, 0)
        # Requests finish on the event loop, but a server may also be driven from threads (tests).
        self._lock = threading.Lock()

    def expected_s(self, tier: str) -> float:
        return self._seconds[tier]

    def observe(self, tier: str, seconds: float) -> None:
        if tier not in self._seconds or not math.isfinite(seconds) or seconds < 0:
            return
        with self._lock:
            if self._measured[tier] == 0:
                self._seconds[tier] = seconds  # the first measurement replaces the configured guess
            else:
                self._seconds[tier] += self.alpha * (seconds - self._seconds[tier])
            self._measured[tier] += 1

    def observe_ledger(self, ledger: Iterable[LedgerEntry]) -> None:
        for entry in ledger:
            if entry.outcome in RAN:
                self.observe(entry.tier, entry.seconds)

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        with self._lock:
            return {t: {"expected_ms": round(s * 1000.0, 3), "measured": self._measured[t]}
                    for t, s in self._seconds.items()}


class Budget:
    """One request's budget. A rubric's cascade asks it through a view (`for_rubric`), so that the
    response can say, per rubric, which tier was not run."""

    def __init__(self, max_latency_ms: int | None, estimates: LatencyEstimates, started: float | None = None,
                 first_tier: str | None = None) -> None:
        self.limit_s = None if max_latency_ms is None else max_latency_ms / 1000.0
        self.estimates = estimates
        self.first_tier = first_tier
        """The cascade's cheapest tier: it always runs."""
        self.started = time.perf_counter() if started is None else started
        self.stopped: dict[str, str] = {}
        """rubric key -> the tier the budget did not allow."""

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    def allows(self, tier: str) -> bool:
        if self.limit_s is None or tier == self.first_tier:
            return True
        return self.elapsed_s() + self.estimates.expected_s(tier) <= self.limit_s

    def for_rubric(self, rubric_key: str) -> _RubricBudget:
        return _RubricBudget(self, rubric_key)


class _RubricBudget:
    """judge.cascade.Deadline for one rubric's cascade."""

    def __init__(self, budget: Budget, rubric_key: str) -> None:
        self.budget, self.rubric_key = budget, rubric_key

    def allows(self, tier: str) -> bool:
        if self.budget.allows(tier):
            return True
        self.budget.stopped.setdefault(self.rubric_key, tier)
        return False
