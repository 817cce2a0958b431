"""The judge-model adapter over litellm: any provider, bounded retries, a per-provider concurrency
limit, usage and cost, and a JSON disk cache.

litellm is imported lazily (it takes seconds to import) and only after LITELLM_LOCAL_MODEL_COST_MAP
is set, so importing psyjudge never reaches the network for litellm's price list.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import os
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import Field, SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from judge.cache import JsonCache, cache_key
from judge.privacy import destination, endpoint_is_local
from judge.schema import Strict, Usage

if TYPE_CHECKING:
    from judge.privacy import Redacting

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

API_KEY_ENV = "PSYJUDGE_API_KEY"
API_BASE_ENV = "PSYJUDGE_API_BASE"
DEFAULT_REVIEW_BELOW = 0.75
"""Agreement under which a sampled verdict is flagged for review: 2 of 3 samples (0.67) is flagged,
3 of 4 (0.75) is not."""
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})


class JudgeConfig(Strict):
    """How to call the judge model. Only model and parameters enter the cache key; the rest
    (where it runs, concurrency, retries) cannot change an answer."""

    model: str = Field(min_length=1, description="Any litellm model string, e.g. openai/gpt-4o-mini.")
    api_base: str | None = None
    api_key: SecretStr | None = None
    temperature: float = 0.0
    samples: int = Field(default=1, ge=1, le=25, description="How many times the LLM tier asks the judge per "
                         "record and rubric; above 1 the label is the majority and its agreement is recorded.")
    sample_temperature: float = Field(default=0.7, gt=0, le=2, description="The temperature of each sample when "
                                      "samples > 1 (identical samples at temperature 0 would measure nothing); "
                                      "with one sample `temperature` applies.")
    review_below: float = Field(default=DEFAULT_REVIEW_BELOW, ge=0, le=1, description="A sampled verdict whose "
                                "agreement rate is under this (or whose labels tie) is flagged for human review.")
    max_tokens: int = Field(default=2048, ge=16)
    timeout_s: float = Field(default=120.0, gt=0)
    max_attempts: int = Field(default=4, ge=1, le=20)
    retry_initial_wait_s: float = Field(default=1.0, ge=0)
    retry_max_wait_s: float = Field(default=60.0, ge=0)
    concurrency: int = Field(default=8, ge=1, le=1024, description="In-flight calls per provider.")
    structured_output: bool = Field(default=True, description="Send a json_schema response_format.")
    compact_answers: bool = Field(
        default=False, description="Ask only for evidence and an answer per sub-question (no per-answer "
        "rationale or confidence): for small local models, where every output token costs time.")
    use_cache: bool = True
    cache_dir: Path | None = None
    local_only: bool = Field(default=False, description="Refuse, before any request, to call a model that is "
                             "not on loopback (127.0.0.0/8, ::1, localhost).")
    redact: bool = Field(default=False, description="Replace personal data in the messages sent with typed "
                         "placeholders (judge.redact); the mapping back stays in memory.")
    keep_pii: bool = Field(default=False, description="With redaction on, also return each request's mapping "
                           "(placeholder -> original) so that it is stored with the exchange. Off by default: "
                           "the mapping is personal data.")
    litellm_params: dict[str, Any] = Field(
        default_factory=dict, description="Extra litellm.acompletion arguments (top_p, seed, "
        "extra_headers, mock_response in tests). They can change answers, so they enter the cache key.")


@dataclass
class ModelReply:
    """A reply. With redaction on, `text` has the placeholders restored (so that evidence quotes
    match the judged text) and `received` is the reply as the provider sent it: that, not the
    restored text, is what the cache keeps."""

    text: str
    usage: Usage
    cached: bool
    key: str
    attempts: int
    received: str | None = None
    sent: list[dict[str, str]] | None = None
    """With redaction on: the messages as they left the machine (placeholders in place of personal data)."""
    mapping: dict[str, str] | None = None
    """With redaction on and keep_pii: the request's placeholder -> original mapping."""


class JudgeCallError(Exception):
    """The provider kept failing (or failed in a way retrying cannot fix)."""

    def __init__(self, message: str, attempts: int, status: int | None, usage: Usage) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status
        self.usage = usage


class LocalOnlyCallError(JudgeCallError):
    """Local-only mode refused a call to a model that is not on loopback; no request was made."""


LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


def load_litellm() -> Any:
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback" banners in a batch log
    litellm.telemetry = False
    # Conversation text must not reach a log: litellm's own request logging off, its exceptions
    # without the messages (litellm appends them to some error texts otherwise), its loggers quiet.
    litellm._logging.set_verbose = False  # what `litellm.set_verbose` re-exports; debug printing reads it
    vars(litellm)["set_verbose"] = False
    litellm.turn_off_message_logging = True
    litellm.redact_messages_in_exceptions = True
    litellm.log_raw_request_response = False
    for name in LITELLM_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return litellm


_BODY_MARKER = re.compile(
    r"""request[ _]?body|["'`](?:messages|prompt|input|contents)["'`]\s*[:=]|\bmessages\s*[:=]""",
    re.IGNORECASE)
REMOVED = "[request text removed]"


def _fragments(messages: list[dict[str, str]]) -> list[str]:
    """The pieces of conversation text an error might echo: each message's content and each of its
    lines, plain and JSON-escaped, longest first (so a whole message goes before its lines)."""
    pieces: set[str] = set()
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str):
            continue
        for piece in [content, *content.splitlines()]:
            piece = piece.strip()
            if len(piece) >= 8:
                pieces.update({piece, json.dumps(piece)[1:-1], repr(piece)[1:-1]})
    return sorted(pieces, key=len, reverse=True)


def scrub_error(text: str, *conversations: list[dict[str, str]], limit: int = 500) -> str:
    """A provider error's text without the request: cut at the first sign of an echoed request body
    ("messages": ..., request body ...), then any remaining piece of the conversation replaced. The
    exception type and status are kept by the caller; the provider's own message before the body
    stays, since it says what went wrong."""
    marker = _BODY_MARKER.search(text)
    if marker is not None:
        text = text[:marker.start()].rstrip(" :,{(\n") + f" {REMOVED}"
    for conversation in conversations:
        for piece in _fragments(conversation):
            if piece in text:
                text = text.replace(piece, REMOVED)
    return text[:limit]


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, ConnectionError)):
        return True
    status = _status(exc)
    if status is not None:
        return status in RETRYABLE_STATUS
    name = type(exc).__name__
    return name in {"APIConnectionError", "Timeout", "APITimeoutError", "ServiceUnavailableError",
                    "InternalServerError", "RateLimitError"}


def retry_after_seconds(exc: BaseException) -> float | None:
    """The wait the provider asked for, from `retry-after-ms` or `retry-after` (seconds or an HTTP
    date), found on litellm's exception headers or the raw httpx response."""
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms") is not None:
            return max(0.0, float(headers["retry-after-ms"]) / 1000.0)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, KeyError):
        return None


def _cost(litellm: Any, response: Any) -> tuple[float, bool]:
    """The call's price in USD and whether litellm knew it. litellm has usually priced the call
    already (in _hidden_params); asking completion_cost again is the fallback."""
    hidden = getattr(response, "_hidden_params", None) or {}
    if isinstance(hidden.get("response_cost"), int | float):
        return float(hidden["response_cost"]), True
    try:
        return float(litellm.completion_cost(completion_response=response)), True
    except Exception:  # litellm raises for models missing from its price map (local, custom)
        return 0.0, False


class CallLimiter(Protocol):
    """A limit on provider requests shared beyond this process (judge.ratelimit holds the one a Ray
    run shares across its workers). acquire() waits for room for one request and returns a permit;
    release(permit) gives the room back once the reply (or the failure) is in."""

    async def acquire(self) -> Any: ...

    async def release(self, permit: Any) -> None: ...


class JudgeModel:
    """One judge model. Safe to share across concurrent tasks in one event loop."""

    def __init__(self, config: JudgeConfig, cache: JsonCache | None = None,
                 redactor: Redacting | None = None, limiter: CallLimiter | None = None) -> None:
        self.config = config
        self.cache = cache if cache is not None else (JsonCache(config.cache_dir) if config.use_cache else None)
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._redactor = redactor
        self.limiter = limiter
        """When set, every request (each retry too) waits on it instead of this process's semaphore."""
        self.calls = 0  # requests that reached the provider, retries included
        self.cache_hits = 0

    def request_redactor(self) -> Redacting:
        """The redactor of one request: a fresh one each time, so placeholders are numbered within the
        request alone. The same record is then redacted the same way whatever else the run judged
        before it, in whatever order, and its cache key holds across runs and workers. (The
        recognisers are loaded once per process; a Redactor is only a mapping.) A redactor handed in
        by the caller is used for every request instead."""
        if self._redactor is not None:
            return self._redactor
        from judge.redact import Redactor

        return Redactor()

    def check_local(self) -> None:
        """Under local-only mode, refuse (before any request) an endpoint that is not on loopback."""
        if self.config.local_only and not endpoint_is_local(self.config.model, self.api_base):
            from judge.privacy import LocalOnlyError

            raise LocalOnlyCallError(str(LocalOnlyError(self.role_name, self.config.model,
                                                        destination(self.config.model, self.api_base))),
                                     attempts=0, status=None, usage=Usage())

    @property
    def role_name(self) -> str:
        return "judge"

    def outgoing(self, messages: list[dict[str, str]], redactor: Redacting | None) -> list[dict[str, str]]:
        """The messages as they leave the machine: redacted when the config says so."""
        return redactor.redact_messages(messages) if redactor is not None else messages

    @property
    def provider(self) -> str:
        """Requests are limited per provider endpoint: the provider prefix plus the api_base."""
        prefix = self.config.model.split("/", 1)[0] if "/" in self.config.model else "default"
        return f"{prefix}@{self.api_base or ''}"

    @property
    def api_base(self) -> str | None:
        return self.config.api_base or os.environ.get(API_BASE_ENV) or None

    def _api_key(self) -> str | None:
        if self.config.api_key is not None:
            return self.config.api_key.get_secret_value()
        if os.environ.get(API_KEY_ENV):
            return os.environ[API_KEY_ENV]
        # A self-hosted OpenAI-compatible server (llama.cpp, vLLM, a test server) needs no key, but
        # the openai client refuses to start without one: give it a placeholder, never a real key.
        if self.api_base and self.config.model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
            return "no-key-needed"
        return None  # litellm reads the provider's own variable (OPENAI_API_KEY, ...)

    def _semaphore(self) -> asyncio.Semaphore:
        sem = self._semaphores.get(self.provider)
        if sem is None:
            sem = self._semaphores[self.provider] = asyncio.Semaphore(self.config.concurrency)
        return sem

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """Room for one provider request: the shared limiter when there is one (it holds the run's
        concurrency and rate across processes and machines), else this process's per-provider semaphore."""
        if self.limiter is None:
            async with self._semaphore():
                yield
            return
        permit = await self.limiter.acquire()
        try:
            yield
        finally:
            await self.limiter.release(permit)

    def params(self, response_format: dict[str, Any] | None, temperature: float | None = None) -> dict[str, Any]:
        """The parameters that change an answer, and so enter the cache key. `temperature` overrides
        the configured one (the LLM tier's samples use `sample_temperature`)."""
        params: dict[str, Any] = {"temperature": self.config.temperature if temperature is None else temperature,
                                  "max_tokens": self.config.max_tokens, **self.config.litellm_params}
        if response_format is not None and self.config.structured_output:
            params["response_format"] = response_format
        return params

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after_seconds(exc) if exc is not None else None
        if asked is not None:
            return min(asked, self.config.retry_max_wait_s)
        backoff: float = self.config.retry_initial_wait_s * 2.0 ** (state.attempt_number - 1)
        return min(backoff * (0.5 + random.random()), self.config.retry_max_wait_s)

    async def complete(
        self, messages: list[dict[str, str]], response_format: dict[str, Any] | None, scope: str,
        temperature: float | None = None,
    ) -> ModelReply:
        """One judged answer. `scope` (the rubric id@version, and the sample index of a sampled
        judgement) enters the cache key. The reply is not cached here: the caller stores it with
        remember() once it has validated it, so that a malformed reply is never served from the cache.

        Under local-only mode a model off loopback raises LocalOnlyCallError before anything is sent.
        With redaction on, the messages sent (and the cache key) are the redacted ones, and the
        reply's placeholders are restored from the in-memory mapping."""
        self.check_local()
        redactor = self.request_redactor() if self.config.redact else None
        sent = self.outgoing(messages, redactor)
        params = self.params(response_format, temperature)
        key = cache_key(model=self.config.model, messages=sent, params=params, scope=scope)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None and isinstance(hit.get("text"), str):
                self.cache_hits += 1
                return self._reply(hit["text"], Usage(cached_calls=1), cached=True, key=key, attempts=0,
                                   redactor=redactor, sent=sent)

        litellm = load_litellm()
        attempts = 0
        started = time.perf_counter()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_attempts),
            wait=self._wait,
            retry=retry_if_exception(_is_retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    async with self._slot():
                        self.calls += 1
                        response = await litellm.acompletion(
                            model=self.config.model,
                            messages=sent,
                            api_base=self.api_base,
                            api_key=self._api_key(),
                            timeout=self.config.timeout_s,
                            max_retries=0,  # tenacity owns retries; the openai client must not add its own
                            num_retries=0,
                            **params,
                        )
        except Exception as exc:  # every provider failure becomes one typed error; none is a grade
            spent = Usage(calls=attempts, seconds=time.perf_counter() - started)
            kind, status = type(exc).__name__, _status(exc)
            # Some providers echo the request in their error; the error is stored with the results.
            detail = scrub_error(str(exc), messages, sent)
            where = f" (status {status})" if status is not None else ""
            raise JudgeCallError(f"{kind} after {attempts} attempt(s){where}: {detail}", attempts,
                                 status, spent) from None

        text = response.choices[0].message.content or ""
        usage = getattr(response, "usage", None)
        cost, known = _cost(litellm, response)
        spent = Usage(
            calls=attempts,
            input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            cached_input_tokens=int(getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cost_usd=cost,
            cost_known=known,
            seconds=time.perf_counter() - started,
        )
        return self._reply(text, spent, cached=False, key=key, attempts=attempts, redactor=redactor, sent=sent)

    def _reply(self, received: str, usage: Usage, cached: bool, key: str, attempts: int,
               redactor: Redacting | None, sent: list[dict[str, str]] | None = None) -> ModelReply:
        if redactor is None:
            return ModelReply(received, usage, cached=cached, key=key, attempts=attempts)
        return ModelReply(redactor.restore(received), usage, cached=cached, key=key, attempts=attempts,
                          received=received, sent=sent,
                          mapping=dict(redactor.mapping) if self.config.keep_pii else None)

    def remember(self, reply: ModelReply, key: str | None = None) -> None:
        """Cache a reply that has passed validation. Errors and malformed replies never get here.
        `key` stores it under another request's key: a valid answer to a re-ask is also the answer
        to the original request, so a rerun does not pay for the malformed first reply again."""
        if self.cache is not None and not reply.cached:
            text = reply.received if reply.received is not None else reply.text  # never restored text
            self.cache.put(key or reply.key, {"model": self.config.model, "text": text,
                                       "input_tokens": reply.usage.input_tokens,
                                       "output_tokens": reply.usage.output_tokens,
                                       "cost_usd": reply.usage.cost_usd})
