"""Prometheus metrics of one server, in a registry of its own (never prometheus_client's global
one: two apps in one process, as in tests, must not share or clash over counters).

Endpoint labels are route templates, never raw paths, so a scan of random URLs cannot grow the
number of series; rubric and tier labels come from the server's own configuration.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from judge.schema import Verdict

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0)
"""Seconds, from a rules-tier answer (well under a millisecond) to a slow LLM judge."""


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("psyjudge_http_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "method", "status"], registry=r)
        self.request_seconds = Histogram("psyjudge_http_request_seconds", "HTTP request wall time, by endpoint.",
                                         ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.labels = Counter("psyjudge_labels", "Labels answered by /v1/judge (the combined label of a request).",
                              ["label"], registry=r)
        self.rubric_labels = Counter("psyjudge_rubric_labels", "Per-rubric verdict labels; degraded: a cheaper "
                                     "tier's fallback.", ["rubric", "label", "degraded"], registry=r)
        self.decisions = Counter("psyjudge_tier_decisions", "Which tier set each rubric verdict's label "
                                 "('none' on ERROR).", ["rubric", "tier"], registry=r)
        self.tier_outcomes = Counter("psyjudge_tier_outcomes", "Each tier's ledger outcome per rubric verdict "
                                     "(decided, abstained, error, compared, skipped).", ["tier", "outcome"],
                                     registry=r)
        self.judge_seconds = Histogram("psyjudge_judge_seconds", "Time to judge a request (queue excluded).",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.tier_seconds = Histogram("psyjudge_tier_seconds", "Wall time of a tier for one rubric verdict.",
                                      ["tier"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_seconds = Histogram("psyjudge_queue_wait_seconds", "Time a request waited for a judging slot.",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.budget_stops = Counter("psyjudge_budget_stops", "Rubric cascades stopped by a request's latency "
                                    "budget, by the tier that was not run.", ["tier"], registry=r)
        self.errors = Counter("psyjudge_errors", "Errors by kind: verdict_error (label ERROR), tier_error (a tier "
                              "failed), internal, invalid_request, too_large, saturated.", ["kind"], registry=r)
        self.in_flight = Gauge("psyjudge_judging", "Requests judging now.", registry=r)
        self.queued = Gauge("psyjudge_queued", "Requests waiting for a judging slot.", registry=r)
        self.expected = Gauge("psyjudge_tier_expected_seconds", "The latency budget's current estimate per tier.",
                              ["tier"], registry=r)

    def record_verdicts(self, combined: Verdict, parts: list[Verdict]) -> None:
        self.labels.labels(combined.label_name).inc()
        if combined.is_error:
            self.errors.labels("verdict_error").inc()
        for part in parts:
            self.rubric_labels.labels(part.rubric, part.label_name, str(part.degraded).lower()).inc()
            self.decisions.labels(part.rubric, part.decided_by or "none").inc()
            for entry in part.ledger:
                self.tier_outcomes.labels(entry.tier, entry.outcome).inc()
                if entry.outcome == "error":
                    self.errors.labels("tier_error").inc()
                if entry.outcome != "skipped":
                    self.tier_seconds.labels(entry.tier).observe(entry.seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
