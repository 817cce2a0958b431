"""Which judge a run uses: a litellm model the user names, or the embedded local judge.

`--judge MODEL` takes any litellm model string. `--judge local` starts the embedded llama.cpp
judge; `--judge PATH.gguf` starts it on a model file the user names. With no `--judge`, the local
judge is used when no provider key is set and the `local` extra is installed; otherwise the run
stops and says exactly how to install the extra or name a model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from judge.local_judge import (
    GGUF_SHA256,
    INSTALL_HINT,
    MODEL_ALIAS,
    MissingExtraError,
    extra_installed,
    local_server,
    xllamacpp_available,
)
from judge.models import API_BASE_ENV, JudgeConfig
from judge.privacy import check_local_only, should_redact

# Provider keys litellm reads; any of them means the user has a hosted judge in mind.
PROVIDER_KEY_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "AZURE_API_KEY",
                     "MISTRAL_API_KEY", "GROQ_API_KEY", "TOGETHERAI_API_KEY", "OPENROUTER_API_KEY", "COHERE_API_KEY",
                     "DEEPSEEK_API_KEY", "FIREWORKS_AI_API_KEY", "XAI_API_KEY", "PSYJUDGE_API_KEY")
LOCAL_TIMEOUT_S = 900.0  # a CPU judge can take minutes on a long conversation
LOCAL_MAX_TOKENS = 1024


class JudgeSelectionError(ValueError):
    """No judge can be used as asked; the message says how to get one."""


@dataclass(frozen=True)
class JudgeChoice:
    kind: Literal["litellm", "local", "gguf"]
    model: str | None = None
    gguf: Path | None = None

    @property
    def description(self) -> str:
        if self.kind == "litellm":
            return f"{self.model} (litellm)"
        if self.kind == "gguf":
            return f"local llama.cpp on {self.gguf}"
        return f"local llama.cpp, embedded {MODEL_ALIAS} (sha256 {GGUF_SHA256[:12]}...)"


def provider_keys_set() -> list[str]:
    return [name for name in PROVIDER_KEY_VARS if os.environ.get(name)]


def choose_judge(judge: str | None) -> JudgeChoice:
    if judge is None:
        keys = provider_keys_set()
        if keys:
            raise JudgeSelectionError(
                f"{keys[0]} is set but no --judge was given: name the model, e.g. --judge openai/gpt-4o-mini "
                "(psyjudge does not guess a hosted model), or --judge local for the embedded judge")
        if not extra_installed():
            raise JudgeSelectionError(f"no judge: no --judge was given, no provider key is set, and the embedded "
                                      f"judge is not installed; {INSTALL_HINT}")
        return JudgeChoice("local")
    if judge == "local":
        if not extra_installed():
            raise JudgeSelectionError(f"--judge local: the embedded judge is not installed; {INSTALL_HINT}")
        return JudgeChoice("local")
    if judge.lower().endswith(".gguf"):
        if not xllamacpp_available():
            raise JudgeSelectionError(f"--judge {judge}: serving a GGUF file needs the xllamacpp package; "
                                      f"{INSTALL_HINT}")
        return JudgeChoice("gguf", gguf=Path(judge).expanduser())
    return JudgeChoice("litellm", model=judge)


@contextlib.contextmanager
def open_judge(choice: JudgeChoice, prompt_chars: int = 8000, **config: Any) -> Iterator[JudgeConfig]:
    """A JudgeConfig for the chosen judge; for a local judge the server runs for the block's life
    and is stopped however the block ends (normally, on an exception, or on Ctrl-C). `prompt_chars`
    is the longest rendered rubric prompt, which sizes the local server's context.

    `redact` may be None in `config`: it is then decided here, once the judge's endpoint is known
    (on for a remote judge, off for one on loopback). With `local_only`, a litellm judge that is not
    on loopback raises judge.privacy.LocalOnlyError before anything starts."""
    requested: bool | None = config.pop("redact", None)
    if choice.kind == "litellm":
        model = choice.model or ""
        api_base = config.get("api_base") or os.environ.get(API_BASE_ENV) or None
        if config.get("local_only"):
            check_local_only([("judge", model, api_base)])
        yield JudgeConfig(model=model, redact=should_redact(requested, model, api_base), **config)
        return
    try:
        with local_server(choice.gguf, prompt_chars=prompt_chars, max_tokens=LOCAL_MAX_TOKENS) as server:
            # One slot serves one request at a time, and compact answers halve the slow output tokens.
            local = {**config, "api_base": server.base_url, "concurrency": 1, "compact_answers": True,
                     "max_tokens": LOCAL_MAX_TOKENS, "timeout_s": max(config.get("timeout_s", 0), LOCAL_TIMEOUT_S),
                     "redact": should_redact(requested, server.model, server.base_url)}
            yield JudgeConfig(model=server.model, **local)
    except MissingExtraError as exc:
        raise JudgeSelectionError(str(exc)) from exc


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _classifier_check() -> Check:
    """Whether the shipped classifier loads here (informational: the tier is opt-in, so a run without
    the classifier extra still passes `doctor`)."""
    from judge.classifier.backends import ClassifierUnavailable
    from judge.classifier.bundle import BundleError
    from judge.classifier.model import check_loadable

    try:
        manifest = check_loadable()
    except (ClassifierUnavailable, BundleError) as exc:
        return Check("classifier", False, str(exc))
    shown = ", ".join(f"{k} {'never' if v is None else f'>= {v:.3f}'}"
                      for k, v in manifest.thresholds.threshold.items())
    return Check("classifier", True, f"{manifest.card.name} ({manifest.backend}); decides {shown}")


def diagnose(judge: str | None = None, start_server: bool = True) -> list[Check]:
    """What `psyjudge doctor` reports: the tiers, the judge a run would use, whether the embedded
    model verifies (a full sha256 check, not the cached one), and whether a server starts."""
    import time

    from judge.local_judge import LocalJudgeError, model_dir, part_files, sha256_file, verified_model_path
    from judge.tiers import TIERS
    from judge.tiers import classifier as _classifier  # noqa: F401  (registers the classifier tier)
    from judge.tiers import llm as _llm  # noqa: F401  (registers the llm tier)
    from judge.tiers import rules as _rules  # noqa: F401

    checks = [Check("tiers", True, "available: " + ", ".join(sorted(TIERS))), _classifier_check()]
    try:
        choice = choose_judge(judge)
        checks.append(Check("judge", True, choice.description))
    except JudgeSelectionError as exc:
        choice = None
        checks.append(Check("judge", False, str(exc)))

    try:
        part_files()
        path = verified_model_path()
        ok = sha256_file(path) == GGUF_SHA256
        checks.append(Check("model file", ok, f"{path} sha256 {'matches' if ok else 'DOES NOT match'} "
                            f"{GGUF_SHA256[:12]}..."))
    except LocalJudgeError as exc:
        checks.append(Check("model file", False, f"{exc} (cache folder {model_dir()})"))
    checks.append(Check("server package", xllamacpp_available(),
                        "xllamacpp installed" if xllamacpp_available() else f"xllamacpp missing; {INSTALL_HINT}"))

    if start_server and choice is not None and choice.kind != "litellm":
        started = time.perf_counter()
        try:
            with local_server(choice.gguf) as server:
                checks.append(Check("server", server.healthy(), f"started on {server.base_url} in "
                                    f"{time.perf_counter() - started:.1f} s, healthy, stopped"))
        except LocalJudgeError as exc:
            checks.append(Check("server", False, str(exc)))
    elif start_server:
        checks.append(Check("server", True, "not needed: the judge is a litellm model"))
    return checks
