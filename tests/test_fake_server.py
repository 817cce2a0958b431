"""Tests for the loopback fake OpenAI server, over real HTTP (stdlib clients only)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_server import (
    Delay,
    FakeOpenAIServer,
    Hang,
    Malformed,
    Reply,
    Status,
    estimate_tokens,
    prompt_text,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

CHAT_BODY: dict[str, Any] = {
    "model": "gpt-test",
    "messages": [
        {"role": "system", "content": "You are a judge."},
        {"role": "user", "content": "Rate this answer from 1 to 5."},
    ],
}


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


def post_chat(
    base_url: str, body: dict[str, Any] | None = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST a chat completion; return (status, headers, parsed body) even for errors."""
    req = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=json.dumps(body if body is not None else CHAT_BODY).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), json.loads(err.read())


def test_scripted_reply_has_openai_shape(server: FakeOpenAIServer) -> None:
    server.script(Reply('{"score": 4}', prompt_tokens=11, completion_tokens=3))
    status, headers, body = post_chat(server.base_url)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "gpt-test"
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": '{"score": 4}'}
    assert body["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 3,
        "total_tokens": 14,
    }
    assert server.requests == [CHAT_BODY]


def test_default_responder_and_estimated_usage(server: FakeOpenAIServer) -> None:
    status, _, body = post_chat(server.base_url)
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "{}"
    expected_prompt = estimate_tokens(prompt_text(CHAT_BODY))
    assert body["usage"] == {
        "prompt_tokens": expected_prompt,
        "completion_tokens": 1,
        "total_tokens": expected_prompt + 1,
    }


def test_custom_responder_and_malformed() -> None:
    with FakeOpenAIServer(responder=lambda b: f"echo:{b['model']}") as srv:
        srv.script(Malformed())
        _, _, first = post_chat(srv.base_url)
        _, _, second = post_chat(srv.base_url)
    assert first["choices"][0]["message"]["content"] == "this is not json {"
    assert second["choices"][0]["message"]["content"] == "echo:gpt-test"


def test_429_carries_retry_after(server: FakeOpenAIServer) -> None:
    server.script(Status(429, retry_after=1.5))
    status, headers, body = post_chat(server.base_url)
    assert status == 429
    assert headers["Retry-After"] == "1.5"
    assert headers["retry-after-ms"] == "1500"
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["message"]


def test_500_body(server: FakeOpenAIServer) -> None:
    server.script(Status(500, message="boom"))
    status, headers, body = post_chat(server.base_url)
    assert status == 500
    assert "Retry-After" not in headers
    assert body == {
        "error": {
            "message": "boom",
            "type": "server_error",
            "param": None,
            "code": "server_error",
        }
    }
    # The queue is drained, so the next call falls back to the default responder.
    assert post_chat(server.base_url)[0] == 200


def test_delay_then_behaviour(server: FakeOpenAIServer) -> None:
    server.script(Delay(0.3, then=Reply("late")))
    started = time.monotonic()
    status, _, body = post_chat(server.base_url)
    elapsed = time.monotonic() - started
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "late"
    assert 0.3 <= elapsed < 2.0


def test_calls_counting_and_reset(server: FakeOpenAIServer) -> None:
    server.script(Reply("a"), Status(503), Reply("c"))
    results = [post_chat(server.base_url)[0] for _ in range(4)]
    assert results == [200, 503, 200, 200]
    assert server.calls == 4
    assert len(server.requests) == 4
    server.script(Reply("left over"))
    server.reset()
    assert server.calls == 0
    assert server.requests == []
    assert server.pending == 0


def test_stream_is_rejected(server: FakeOpenAIServer) -> None:
    status, _, body = post_chat(server.base_url, {**CHAT_BODY, "stream": True})
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"


def test_other_endpoints(server: FakeOpenAIServer) -> None:
    root = server.base_url.removesuffix("/v1")
    for url in (f"{root}/health", f"{server.base_url}/health"):
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert json.loads(resp.read()) == {"status": "ok"}
    with urllib.request.urlopen(f"{server.base_url}/models", timeout=5) as resp:
        models = json.loads(resp.read())
    assert [m["id"] for m in models["data"]] == ["fake-judge"]
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{root}/nope", timeout=5)
    with info.value as err:
        assert err.code == 404
        assert "error" in json.loads(err.read())


def test_keep_alive_reuses_connection(server: FakeOpenAIServer) -> None:
    # urllib always sends "Connection: close", so use http.client for reuse.
    server.script(Reply("one"), Status(429, retry_after=0.1), Reply("three"))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        contents: list[Any] = []
        sockets: list[object] = []
        for _ in range(3):
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=json.dumps(CHAT_BODY),
                headers={"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            payload = json.loads(resp.read())
            ok = resp.status == 200
            contents.append(payload["choices"][0]["message"]["content"] if ok else resp.status)
            # http.client drops conn.sock when the server asks to close.
            assert conn.sock is not None, "server closed a keep-alive connection"
            sockets.append(conn.sock)
    finally:
        conn.close()
    assert contents == ["one", 429, "three"]
    assert all(sock is sockets[0] for sock in sockets)


def test_max_in_flight_with_parallel_requests() -> None:
    with FakeOpenAIServer(latency=0.2) as srv:
        statuses: list[int] = []
        lock = threading.Lock()

        def worker() -> None:
            status = post_chat(srv.base_url)[0]
            with lock:
                statuses.append(status)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=5)
        elapsed = time.monotonic() - started
        assert statuses == [200] * 8
        assert srv.calls == 8
        assert srv.max_in_flight >= 4
        assert srv.wait_until_idle(timeout=2.0)
        assert elapsed < 1.5  # parallel, not 8 * 0.2 s in series


def test_sustains_32_concurrent_slow_requests() -> None:
    with FakeOpenAIServer(latency=0.2) as srv:
        results: list[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(32)

        def worker() -> None:
            barrier.wait(timeout=5)
            status = post_chat(srv.base_url)[0]
            with lock:
                results.append(status)

        threads = [threading.Thread(target=worker) for _ in range(32)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=5)
        elapsed = time.monotonic() - started
    assert results == [200] * 32
    assert srv.max_in_flight >= 16
    assert elapsed < 2.0  # 32 * 0.2 s would be 6.4 s in series


def test_stop_is_prompt_during_hang() -> None:
    srv = FakeOpenAIServer().start()
    srv.script(Hang())
    outcome: list[BaseException | int] = []

    def client() -> None:
        try:
            outcome.append(post_chat(srv.base_url, timeout=10)[0])
        except BaseException as exc:  # the failure is the point
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    assert srv.wait_for_calls(1, timeout=5)
    assert srv.in_flight == 1
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2.0
    thread.join(timeout=2.0)
    assert not thread.is_alive()
    # The hung request is dropped without a response, not answered.
    assert len(outcome) == 1 and isinstance(outcome[0], Exception)


def test_client_timeout_against_hang(server: FakeOpenAIServer) -> None:
    server.script(Hang())
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        post_chat(server.base_url, timeout=0.3)
    # The server notices the client hung up and stops counting it as in flight,
    # so later max_in_flight checks on the same server are not inflated.
    assert server.wait_until_idle(timeout=2.0)
    assert post_chat(server.base_url)[0] == 200


def test_cli_prints_ready_and_exits_on_sigterm() -> None:
    # Make "tests" importable in the child regardless of how pytest was launched.
    pythonpath = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in pythonpath if p)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.openai_server",
            "--port",
            "0",
            "--latency",
            "0",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:"), line
        base_url = line.split(" ", 1)[1]
        assert base_url.endswith("/v1")
        assert post_chat(base_url)[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
