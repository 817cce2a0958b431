"""Shared fixtures. No test reaches the internet: every socket connect to a non-loopback address
fails loudly, so a test that would call a real provider breaks instead of spending money."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from judge.judges import PROVIDER_KEY_VARS
from judge.models import JudgeConfig
from judge.rubrics import Rubric, load_rubric
from tests.fakes.keyword_judge import respond
from tests.fakes.openai_server import FakeOpenAIServer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
REPO = Path(__file__).resolve().parent.parent
DEMO_LOG = REPO / "datasets" / "demo" / "chat_log.jsonl"

_real_connect = socket.socket.connect


def _loopback_only(sock: socket.socket, address: Any) -> Any:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise RuntimeError(f"test tried to reach the network: {address!r}")
    return _real_connect(sock, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)
    # Keep every run's cache and keys out of the developer's home directory and environment.
    monkeypatch.setenv("PSYJUDGE_CACHE_DIR", str(tmp_path / "judge-cache"))
    for var in (*PROVIDER_KEY_VARS, "PSYJUDGE_API_BASE", "PSYJUDGE_RUBRICS_PATH", "PSYJUDGE_TARGET_API_BASE",
                "PSYJUDGE_TARGET_API_KEY", "PSYJUDGE_SIMULATOR_API_BASE", "PSYJUDGE_SIMULATOR_API_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    """A loopback OpenAI-compatible server answering as a keyword-reading judge."""
    with FakeOpenAIServer(responder=respond) as fake:
        yield fake


@pytest.fixture
def config(server: FakeOpenAIServer, tmp_path: Path) -> JudgeConfig:
    """A judge config pointed at the loopback server, with retry waits zeroed."""
    return JudgeConfig(model="openai/fake-judge", api_base=server.base_url, cache_dir=tmp_path / "cache",
                       retry_initial_wait_s=0.0, retry_max_wait_s=0.0, max_attempts=3, timeout_s=10)


@pytest.fixture(scope="session")
def self_harm() -> Rubric:
    return load_rubric("self_harm")
