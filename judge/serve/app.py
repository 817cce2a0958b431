"""The guardrail service: FastAPI over a built cascade.

POST /v1/judge judges one response (with its conversation) under the served rubrics, concurrently,
and answers the combined label, each rubric's verdict with its answers and evidence, the deciding
tier and the latency. /healthz says the process is alive, /readyz whether it can judge, /metrics
what it has done (Prometheus). The schema is at /openapi.json and /docs.

Every failure of the request is a 4xx with an ErrorBody naming what is wrong (400 body not JSON,
413 body too large, 422 a field out of its limits, 429 saturated, with Retry-After); a failure of
the judging is a verdict of ERROR, never SAFE.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from judge.cascade import TIER_ORDER, Cascade, combine_verdicts
from judge.models import JudgeModel
from judge.rubrics import Rubric
from judge.schema import Record, RecordMeta, Role, Strict, Turn, Verdict
from judge.serve.api import (
    AnswerOut,
    Check,
    ErrorBody,
    ErrorDetail,
    Health,
    JudgeResponse,
    Readiness,
    RubricVerdictOut,
    TierOut,
    request_model,
)
from judge.serve.budget import Budget, LatencyEstimates
from judge.serve.limits import ASGIApp, BodySizeLimit, ConcurrencyGate, Message, Receive, Saturated, Scope, Send
from judge.serve.metrics import ServeMetrics
from judge.serve.ready import JudgeProbe, warm_up


class ServeSettings(Strict):
    """The service's limits. The bind address and the cascade are the caller's (judge.cli_serve)."""

    max_concurrency: int = Field(default=8, ge=1, le=4096, description="Requests judging at once.")
    queue: int = Field(default=16, ge=0, le=100_000, description="Requests that may wait for a judging slot; "
                       "any more are answered 429 at once.")
    queue_wait_s: float = Field(default=10.0, ge=0, le=600, description="Longest wait for a slot before a 429.")
    max_body_bytes: int = Field(default=1_048_576, ge=256, le=64 * 1_048_576, description="Largest request body.")
    max_turns: int = Field(default=100, ge=0, le=10_000, description="Most conversation turns in a request.")
    max_chars: int = Field(default=32_000, ge=1, le=1_000_000, description="Most characters in one turn or in "
                           "the response.")
    expected_ms: dict[str, float] = Field(
        default_factory=dict, description="Starting latency estimate per tier (ms) for the budget, before any "
        "request has been measured (default: judge.serve.budget.DEFAULT_EXPECTED_MS).")

    @model_validator(mode="after")
    def _known_tiers(self) -> ServeSettings:
        bad = [t for t, ms in self.expected_ms.items() if t not in TIER_ORDER or not ms >= 0]
        if bad:
            raise ValueError(f"expected_ms: tiers are {', '.join(TIER_ORDER)} with a latency >= 0 ms; got "
                             f"{', '.join(f'{t}={self.expected_ms[t]}' for t in bad)}")
        return self


class _Service:
    """What a request needs: the cascade and the server's shared state."""

    def __init__(self, cascade: Cascade, rubrics: Sequence[Rubric], settings: ServeSettings,
                 judge: JudgeModel | None) -> None:
        self.cascade = cascade
        self.rubrics = {rb.id: rb for rb in rubrics}
        self.settings = settings
        self.tier_names = [t.name for t in cascade.tiers]
        self.estimates = LatencyEstimates(self.tier_names, settings.expected_ms)
        self.gate = ConcurrencyGate(settings.max_concurrency, settings.queue, settings.queue_wait_s)
        self.metrics = ServeMetrics()
        self.metrics.in_flight.set_function(lambda: self.gate.active)
        self.metrics.queued.set_function(lambda: self.gate.waiting)
        self.probe = JudgeProbe(judge if "llm" in self.tier_names else None)
        self.warm: Check = Check(name="warm-up", ok=False, detail="not run yet")
        self.started = time.monotonic()
        self._publish_estimates()

    def _publish_estimates(self) -> None:
        for tier in self.tier_names:
            self.metrics.expected.labels(tier).set(self.estimates.expected_s(tier))

    async def readiness(self) -> Readiness:
        rubrics = Check(name="rubrics", ok=bool(self.rubrics),
                        detail=", ".join(rb.key for rb in self.rubrics.values()) or "none loaded")
        checks = [rubrics, Check(name="tiers", ok=True, detail=", ".join(self.tier_names)), self.warm]
        if "classifier" in self.tier_names:
            tier = next(t for t in self.cascade.tiers if t.name == "classifier")
            model = getattr(getattr(tier, "classifier", None), "name", None)
            checks.append(Check(name="classifier", ok=model is not None,
                                detail=f"loaded: {model}" if model else "not loaded"))
        checks.append(await self.probe.check())
        return Readiness(ready=all(c.ok for c in checks), checks=checks)

    async def judge(self, body: Any, arrived: float) -> JudgeResponse:
        record = _record(body)
        chosen = [self.rubrics[name] for name in dict.fromkeys(body.rubrics or self.rubrics)]  # each once
        budget = Budget(body.max_latency_ms, self.estimates, started=arrived, first_tier=self.tier_names[0])
        queued = await self.gate.acquire()
        self.metrics.queue_seconds.observe(queued)
        started = time.perf_counter()
        try:
            parts = list(await asyncio.gather(*(
                self.cascade.judge(record, rb, deadline=budget.for_rubric(rb.key)) for rb in chosen)))
        finally:
            held = time.perf_counter() - started
            self.gate.release(held)
        self.metrics.judge_seconds.observe(held)
        for part in parts:
            self.estimates.observe_ledger(part.ledger)
        self._publish_estimates()
        combined = combine_verdicts(parts)
        self.metrics.record_verdicts(combined, parts)
        for tier in budget.stopped.values():
            self.metrics.budget_stops.labels(tier).inc()
        return _response(body, record.id, combined, parts, budget, queued)


def _record(body: Any) -> Record:
    turns = [Turn(role=Role.SYSTEM if m.role == "developer" else Role(m.role), content=m.content)
             for m in body.messages]
    # A client that sends the whole conversation, judged reply included, has not sent it twice.
    if turns and turns[-1].role is Role.ASSISTANT and turns[-1].content == body.response:
        turns.pop()
    return Record(id=body.id or f"req-{uuid.uuid4().hex}", turns=turns, response=body.response,
                  meta=RecordMeta(region=body.region))


def _rubric_out(verdict: Verdict, stopped_before: str | None) -> RubricVerdictOut:
    source = next((t for t in verdict.tiers if t.tier == verdict.decided_by), None)
    rule = None
    if source is not None:
        rule = source.fallback_rule if verdict.degraded else source.fired_rule
    answers = [AnswerOut(question_id=a.question_id, value=a.value, evidence=a.evidence,
                         evidence_verified=a.evidence_verified, rationale=a.rationale, confidence=a.confidence,
                         source=a.source) for a in (source.answers if source is not None else [])]
    tiers = [TierOut(tier=e.tier, outcome=e.outcome, label=e.label.value if e.label else None,
                     confidence=e.confidence, ms=round(e.seconds * 1000.0, 3)) for e in verdict.ledger]
    return RubricVerdictOut(rubric=verdict.rubric, label=verdict.label_name, applicable=verdict.applicable,
                            decided_by=verdict.decided_by, rule=rule, degraded=verdict.degraded, error=verdict.error,
                            stopped_before=stopped_before, answers=answers, tiers=tiers)


def _deciding_tier(combined: Verdict, parts: Sequence[Verdict]) -> tuple[str | None, str | None]:
    """(tier, rubric) that set the label. When no rubric applies, the label rests on every rubric's
    finding that its topic is absent: the costliest tier that found so speaks for it."""
    if combined.decided_by:
        rubric, _, tier = combined.decided_by.rpartition("/")
        return tier, rubric
    if combined.is_error:
        return None, None
    found = [p.decided_by for p in parts if p.decided_by in TIER_ORDER]
    return max(found, key=TIER_ORDER.index, default=None), None


def _response(body: Any, record_id: str, combined: Verdict, parts: Sequence[Verdict], budget: Budget,
              queued_s: float) -> JudgeResponse:
    tier, rubric = _deciding_tier(combined, parts)
    stops = [budget.stopped[p.rubric] for p in parts if p.rubric in budget.stopped]
    first_stop = min(stops, key=TIER_ORDER.index) if stops else None
    return JudgeResponse(
        id=record_id, label=combined.label_name, degraded=combined.degraded, deciding_tier=tier,
        deciding_rubric=rubric, budget_exhausted=bool(stops), stopped_before=first_stop,
        max_latency_ms=body.max_latency_ms, latency_ms=round(budget.elapsed_s() * 1000.0, 3),
        queued_ms=round(queued_s * 1000.0, 3), error=combined.error,
        rubrics=[_rubric_out(p, budget.stopped.get(p.rubric)) for p in parts])


def _error(status: int, kind: str, message: str, details: list[ErrorDetail] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody.model_validate({"error": kind, "message": message, "details": details or []})
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _where(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body is not valid JSON."},
    413: {"model": ErrorBody, "description": "The body is larger than the server accepts."},
    422: {"model": ErrorBody, "description": "A field is missing, of the wrong type, unknown, or out of its limits."},
    429: {"model": ErrorBody, "description": "Every judging slot and queue place is taken; retry after the "
          "Retry-After header's seconds.",
          "headers": {"Retry-After": {"description": "Seconds to wait before retrying.",
                                      "schema": {"type": "integer", "minimum": 1}}}},
}


def create_app(cascade: Cascade, rubrics: Sequence[Rubric], settings: ServeSettings | None = None,
               judge: JudgeModel | None = None) -> FastAPI:
    """The service over a built cascade. `judge` is the LLM tier's model, probed by /readyz."""
    settings = settings or ServeSettings()
    ids = [rb.id for rb in rubrics]
    if len(set(ids)) != len(ids):
        raise ValueError(f"a rubric is served twice: {', '.join(ids)}")
    service = _Service(cascade, rubrics, settings, judge)
    JudgeRequest = request_model(ids, settings.max_turns, settings.max_chars)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.warm = await warm_up(cascade.tiers, rubrics)
        try:
            yield
        finally:
            for tier in cascade.tiers:
                close = getattr(tier, "close", None)
                if callable(close):
                    close()

    app = FastAPI(title="psyjudge guardrail", version="1", lifespan=lifespan,
                  description="Checks a chatbot response for psychological-safety harm (self-harm and suicide, "
                  "eating disorders, substance misuse, dangerous instructions) before it is shown: SAFE, "
                  "BORDERLINE or HARMFUL with the evidence, or ERROR, which is never SAFE.")
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            service.metrics.errors.labels("invalid_request").inc()
            reason = (bad_json.get("ctx") or {}).get("error", "invalid JSON")
            position = bad_json["loc"][-1] if len(bad_json["loc"]) > 1 else "?"
            return _error(400, "invalid_json", f"the body is not valid JSON: {reason} at position {position}")
        details = [ErrorDetail(loc=[p for p in e["loc"] if isinstance(p, str | int)], msg=str(e["msg"]),
                               type=str(e["type"])) for e in errors]
        service.metrics.errors.labels("invalid_request").inc()
        message = "; ".join(f"{_where(d.loc)}: {d.msg}" for d in details[:10])
        return _error(422, "invalid_request", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 404:
            return _error(404, "not_found", f"no endpoint at {request.url.path}; see /docs")
        if exc.status_code == 405:
            allowed = (headers or {}).get("Allow", "")
            return _error(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path} "
                          f"(allowed: {allowed})", headers=headers)
        return _error(exc.status_code, "invalid_request", str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        # A bug, not a verdict: the client gets no label, and the error is counted and logged.
        service.metrics.errors.labels("internal").inc()
        return _error(500, "internal", f"internal error ({type(exc).__name__}); no verdict was given")

    async def judge_endpoint(body: Any) -> JudgeResponse | JSONResponse:
        """Judge a chatbot response under the served rubrics and answer its label with the evidence."""
        arrived = time.perf_counter()
        try:
            return await service.judge(body, arrived)
        except Saturated as exc:
            service.metrics.errors.labels("saturated").inc()
            return _error(429, "saturated", str(exc), headers={"Retry-After": str(exc.retry_after_s)})

    # The body's model is built at run time, so its annotation is set here, where FastAPI reads it
    # (a string annotation could not name a local class).
    judge_endpoint.__annotations__["body"] = JudgeRequest
    app.add_api_route("/v1/judge", judge_endpoint, methods=["POST"], response_model=JudgeResponse,
                      responses=ERRORS, summary="Judge a response")

    @app.get("/healthz", response_model=Health, summary="The process is alive")
    async def healthz() -> Health:
        return Health(status="ok", uptime_s=round(time.monotonic() - service.started, 3))

    @app.get("/readyz", response_model=Readiness, summary="The service can judge",
             responses={503: {"model": Readiness, "description": "Not ready: the failing checks say why."}})
    async def readyz() -> JSONResponse:
        found = await service.readiness()
        return JSONResponse(found.model_dump(mode="json"), status_code=200 if found.ready else 503)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    # The body limit answers before FastAPI parses anything; the metrics wrap it, to count its 413s.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes,
                       on_refused=lambda: service.metrics.errors.labels("too_large").inc())
    paths = {getattr(r, "path", "") for r in app.routes}
    app.add_middleware(HTTPMetrics, metrics=service.metrics, paths=paths)
    return app


class HTTPMetrics:
    """Counts every HTTP request by route template, method and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics, paths: set[str]) -> None:
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app fails before it starts a response

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", None)
            # A request refused before routing (413) is still counted under its endpoint when it names one.
            endpoint = route or (scope["path"] if scope["path"] in self.paths else "unmatched")
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(time.perf_counter() - started)
