"""Where conversation text may go: local-only mode and the automatic redaction default.

Chat logs about self-harm and eating disorders are health data. Two switches decide what leaves the
machine:

- `local_only`: every model (judge, target, simulator) must be on loopback (127.0.0.0/8, ::1,
  localhost). It is checked when a run starts, so that a remote model stops it before anything is
  read, and again before every call (judge.models.JudgeModel.complete), so that no request leaves
  the machine even when a config is built by other code.
- `redact`: the text sent is passed through judge.redact.Redactor first. Unless the user says
  otherwise it is on for a remote endpoint and off for a loopback one (redaction costs a little
  judging signal, and a local model sees nothing that leaves the machine).

An endpoint is judged by where litellm would send the request. With an api_base that is the
api_base. Without one it is the provider's own default, which is on loopback only for the few
providers that serve on this machine by default (ollama, llamafile); every other provider, and any
provider this module does not know, counts as remote.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "localhost."})

# Providers whose litellm default endpoint is this machine: prefix -> (environment variable that
# overrides it in litellm, litellm's default). Checked against litellm 1.102: main.py and
# llms/ollama/common_utils.py default to http://localhost:11434 after OLLAMA_API_BASE;
# llms/llamafile/chat/transformation.py to http://127.0.0.1:8080/v1 after LLAMAFILE_API_BASE.
LOCAL_DEFAULT_PROVIDERS: dict[str, tuple[str, str]] = {
    "ollama": ("OLLAMA_API_BASE", "http://localhost:11434"),
    "ollama_chat": ("OLLAMA_API_BASE", "http://localhost:11434"),
    "llamafile": ("LLAMAFILE_API_BASE", "http://127.0.0.1:8080/v1"),
}


class Redacting(Protocol):
    """What a model adapter needs of judge.redact.Redactor."""

    mapping: dict[str, str]

    def redact_messages(self, messages: list[dict[str, str]]) -> list[dict[str, str]]: ...

    def restore(self, text: str) -> str: ...


class LocalOnlyError(ValueError):
    """A model would send conversation text off this machine while local-only mode is on."""

    def __init__(self, role: str, model: str, destination: str) -> None:
        self.role = role
        self.model = model
        self.destination = destination
        super().__init__(
            f"--local-only: the {role} model {model!r} would send conversation text to {destination}, which is "
            f"not this machine (allowed: 127.0.0.0/8, ::1, localhost). Use a model served on loopback (--judge "
            f"local, or an OpenAI-compatible server on 127.0.0.1 named with its --api-base option), or leave "
            f"out --local-only.")


def _host(url: str) -> str | None:
    text = url.strip()
    if "://" not in text:
        text = f"http://{text}"  # "127.0.0.1:8080" names a host, not a URL scheme
    try:
        return urlsplit(text).hostname
    except ValueError:
        return None


def is_loopback_url(url: str | None) -> bool:
    """Whether a URL's host is this machine: an address in 127.0.0.0/8, ::1 (or an IPv4-mapped
    loopback), or the name localhost. Any other name counts as remote, even one that resolves to
    127.0.0.1 today: DNS can change between the check and the call."""
    if not url:
        return False
    host = _host(url)
    return bool(host) and is_loopback_host(host or "")


def is_loopback_host(host: str) -> bool:
    """Whether a host (an address, `[::1]`, or a name) is this machine; see is_loopback_url. Also what
    the studio and the guardrail service check before listening anywhere else."""
    host = host.strip().strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def provider_of(model: str) -> str | None:
    """The litellm provider prefix of a model string ("openai/gpt-4o" -> "openai"), None without one."""
    return model.split("/", 1)[0].lower() if "/" in model else None


def effective_api_base(model: str, api_base: str | None) -> str | None:
    """Where litellm sends a request for `model`: the api_base when given, the default of a provider
    that serves on this machine, or None (the provider's own hosted endpoint)."""
    if api_base:
        return api_base
    local = LOCAL_DEFAULT_PROVIDERS.get(provider_of(model) or "")
    if local is None:
        return None
    variable, default = local
    return os.environ.get(variable) or default


def endpoint_is_local(model: str, api_base: str | None) -> bool:
    """Whether a request for `model` (with `api_base`, if any) stays on this machine. Unknown
    providers without an api_base are remote."""
    return is_loopback_url(effective_api_base(model, api_base))


def destination(model: str, api_base: str | None) -> str:
    """Where a request would go, in words, for error messages."""
    base = effective_api_base(model, api_base)
    if base:
        return base
    provider = provider_of(model)
    return f"{provider}'s hosted endpoint (no api_base given)" if provider else \
        "the provider's hosted endpoint (no api_base given)"


def check_local_only(endpoints: Sequence[tuple[str, str, str | None]]) -> None:
    """Raise LocalOnlyError for the first (role, model, api_base) that is not on loopback."""
    for role, model, api_base in endpoints:
        if not endpoint_is_local(model, api_base):
            raise LocalOnlyError(role, model, destination(model, api_base))


def should_redact(requested: bool | None, model: str, api_base: str | None) -> bool:
    """The redaction decision: what the user asked (--redact / --no-redact), else on for a remote
    endpoint and off for a loopback one."""
    if requested is not None:
        return requested
    return not endpoint_is_local(model, api_base)
