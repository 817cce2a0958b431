"""The chatbot under test (the target) and the user simulator, called through litellm.

Both reuse the judge's adapter (judge.models.JudgeModel): any provider, bounded retries with
backoff and retry-after, a per-provider concurrency limit, usage and cost, and a JSON disk cache.
Each keeps its own cache folder (`<cache>/target`, `<cache>/simulator`) apart from the judge's, so a
target's replies and the judge's grades never share a key space, and clearing one leaves the other.

Neither reads the judge's environment variables (PSYJUDGE_API_KEY, PSYJUDGE_API_BASE): a target on
another provider must not be sent the judge's key. The target reads PSYJUDGE_TARGET_API_KEY and
PSYJUDGE_TARGET_API_BASE, the simulator PSYJUDGE_SIMULATOR_API_KEY and PSYJUDGE_SIMULATOR_API_BASE,
and otherwise the provider's own variable (OPENAI_API_KEY, ...).

A target failure is a fact about the target, never an answer: a call that fails after its retries,
and an empty reply, come back as `TargetReply.error` and are counted, never judged (and so never SAFE).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr

from judge.cache import CACHE_DIR_ENV, JsonCache, default_cache_dir
from judge.models import JudgeCallError, JudgeConfig, JudgeModel
from judge.schema import Strict, Usage

if TYPE_CHECKING:
    from judge.privacy import Redacting

Role = Literal["target", "simulator"]


class EndpointConfig(Strict):
    """How to call a chat model that is not the judge: the target, or the user simulator.

    Model, temperature, max_tokens and litellm_params enter the cache key; where it runs,
    concurrency and retries do not (they cannot change an answer)."""

    model: str = Field(min_length=1, description="Any litellm model string, e.g. openai/gpt-4o-mini.")
    api_base: str | None = None
    api_key: SecretStr | None = None
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=16)
    timeout_s: float = Field(default=120.0, gt=0)
    max_attempts: int = Field(default=4, ge=1, le=20)
    retry_initial_wait_s: float = Field(default=1.0, ge=0)
    retry_max_wait_s: float = Field(default=60.0, ge=0)
    concurrency: int = Field(default=8, ge=1, le=1024)
    use_cache: bool = True
    cache_dir: Path | None = None
    local_only: bool = Field(default=False, description="Refuse, before any request, to call the model if it is "
                             "not on loopback.")
    redact: bool = Field(default=False, description="Replace personal data in the conversation sent with typed "
                         "placeholders (judge.redact).")
    litellm_params: dict[str, object] = Field(default_factory=dict)


class _EndpointModel(JudgeModel):
    """JudgeModel with its own credentials: the judge's variables are never read."""

    def __init__(self, config: JudgeConfig, role: Role, cache: JsonCache | None,
                 redactor: Redacting | None = None) -> None:
        self.role = role
        super().__init__(config, cache, redactor)

    @property
    def role_name(self) -> str:
        return self.role

    @property
    def api_base(self) -> str | None:
        return self.config.api_base or os.environ.get(f"PSYJUDGE_{self.role.upper()}_API_BASE") or None

    def _api_key(self) -> str | None:
        if self.config.api_key is not None:
            return self.config.api_key.get_secret_value()
        own = os.environ.get(f"PSYJUDGE_{self.role.upper()}_API_KEY")
        if own:
            return own
        if self.api_base and self.config.model.startswith("openai/") and not os.environ.get("OPENAI_API_KEY"):
            return "no-key-needed"  # a self-hosted OpenAI-compatible server; never a real key
        return None


@dataclass
class TargetReply:
    """One reply of the target (or the simulator): text, or the reason there is none."""

    text: str | None
    error: str | None
    usage: Usage
    cached: bool

    @property
    def failed(self) -> bool:
        return self.error is not None


def cache_folder(cache_dir: Path | None, role: Role) -> Path:
    """Where a role's replies are cached: a sibling of the judge's default cache
    (~/.cache/psyjudge/target), or a subfolder of the folder the user names (--cache-dir,
    PSYJUDGE_CACHE_DIR). The judge's entries sit in two-hex-digit subfolders, so neither can
    collide with `target` or `simulator`."""
    if cache_dir is not None:
        return cache_dir.expanduser() / role
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser() / role
    return default_cache_dir().parent / role


class ChatEndpoint:
    """A chat model called with a conversation; replies cached once they are usable (non-empty)."""

    def __init__(self, config: EndpointConfig, role: Role, redactor: Redacting | None = None) -> None:
        self.config = config
        self.role = role
        cache = JsonCache(cache_folder(config.cache_dir, role)) if config.use_cache else None
        judge_config = JudgeConfig(
            model=config.model, api_base=config.api_base, api_key=config.api_key, temperature=config.temperature,
            max_tokens=config.max_tokens, timeout_s=config.timeout_s, max_attempts=config.max_attempts,
            retry_initial_wait_s=config.retry_initial_wait_s, retry_max_wait_s=config.retry_max_wait_s,
            concurrency=config.concurrency, structured_output=False, use_cache=cache is not None,
            local_only=config.local_only, redact=config.redact, litellm_params=dict(config.litellm_params))
        self._model = _EndpointModel(judge_config, role, cache, redactor)

    @property
    def calls(self) -> int:
        return self._model.calls

    @property
    def cache_hits(self) -> int:
        return self._model.cache_hits

    async def reply(self, messages: list[dict[str, str]]) -> TargetReply:
        try:
            answer = await self._model.complete(messages, None, scope=self.role)
        except JudgeCallError as exc:
            return TargetReply(None, f"{self.role} call failed: {exc}", exc.usage, cached=False)
        if not answer.text.strip():
            # An empty reply is the target failing to answer, not a refusal and not SAFE. It is not
            # cached, so a rerun asks again.
            return TargetReply(None, f"{self.role} gave an empty reply", answer.usage, answer.cached)
        self._model.remember(answer)
        return TargetReply(answer.text, None, answer.usage, answer.cached)
