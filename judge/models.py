"""The judge-model adapter over litellm: any provider, bounded retries, a per-provider concurrency
limit, usage and cost, and a JSON disk cache.

litellm is imported lazily (it takes seconds to import) and only after LITELLM_LOCAL_MODEL_COST_MAP
is set, so importing psyjudge never reaches the network for litellm's price list.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from judge.cache import JsonCache, cache_key
from judge.schema import Strict, Usage

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
    litellm_params: dict[str, Any] = Field(
        default_factory=dict, description="Extra litellm.acompletion arguments (top_p, seed, "
        "extra_headers, mock_response in tests). They can change answers, so they enter the cache key.")


@dataclass
class ModelReply:
    text: str
    usage: Usage
    cached: bool
    key: str
    attempts: int


class JudgeCallError(Exception):
    """The provider kept failing (or failed in a way retrying cannot fix)."""

    def __init__(self, message: str, attempts: int, status: int | None, usage: Usage) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status
        self.usage = usage


def load_litellm() -> Any:
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback" banners in a batch log
    litellm.telemetry = False
    return litellm


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


class JudgeModel:
    """One judge model. Safe to share across concurrent tasks in one event loop."""

    def __init__(self, config: JudgeConfig, cache: JsonCache | None = None) -> None:
        self.config = config
        self.cache = cache if cache is not None else (JsonCache(config.cache_dir) if config.use_cache else None)
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self.calls = 0  # requests that reached the provider, retries included
        self.cache_hits = 0

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
        remember() once it has validated it, so that a malformed reply is never served from the cache."""
        params = self.params(response_format, temperature)
        key = cache_key(model=self.config.model, messages=messages, params=params, scope=scope)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None and isinstance(hit.get("text"), str):
                self.cache_hits += 1
                return ModelReply(hit["text"], Usage(cached_calls=1), cached=True, key=key, attempts=0)

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
                    async with self._semaphore():
                        self.calls += 1
                        response = await litellm.acompletion(
                            model=self.config.model,
                            messages=messages,
                            api_base=self.api_base,
                            api_key=self._api_key(),
                            timeout=self.config.timeout_s,
                            max_retries=0,  # tenacity owns retries; the openai client must not add its own
                            num_retries=0,
                            **params,
                        )
        except Exception as exc:  # every provider failure becomes one typed error; none is a grade
            spent = Usage(calls=attempts, seconds=time.perf_counter() - started)
            kind = type(exc).__name__
            raise JudgeCallError(f"{kind} after {attempts} attempt(s): {str(exc)[:500]}", attempts,
                                 _status(exc), spent) from exc

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
        return ModelReply(text, spent, cached=False, key=key, attempts=attempts)

    def remember(self, reply: ModelReply, key: str | None = None) -> None:
        """Cache a reply that has passed validation. Errors and malformed replies never get here.
        `key` stores it under another request's key: a valid answer to a re-ask is also the answer
        to the original request, so a rerun does not pay for the malformed first reply again."""
        if self.cache is not None and not reply.cached:
            self.cache.put(key or reply.key, {"model": self.config.model, "text": reply.text,
                                       "input_tokens": reply.usage.input_tokens,
                                       "output_tokens": reply.usage.output_tokens,
                                       "cost_usd": reply.usage.cost_usd})
