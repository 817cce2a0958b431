"""A real loopback OpenAI-compatible HTTP server for tests, benchmarks and demos.

Why a real server instead of mocking the client: the judge talks to providers
through HTTP clients (``openai``, ``litellm``, ``httpx``) whose retry, timeout,
keep-alive and concurrency behaviour is exactly what we want to test.  Mocks
bypass all of that; a socket on 127.0.0.1 does not.

Standard library only, so the test suite needs nothing beyond pytest.

Usage in a test::

    with FakeOpenAIServer(latency=0.05) as server:
        server.script(Status(429, retry_after=0.1), Reply('{"score": 3}'))
        ... point the client at server.base_url ...
        assert server.calls == 2

Usage from a shell (benchmarks, demos)::

    python -m tests.fakes.openai_server --port 0 --latency 0.2
    # prints "READY http://127.0.0.1:PORT/v1", serves until SIGTERM/SIGINT
"""

from __future__ import annotations

import argparse
import importlib
import json
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import types
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, cast

__all__ = [
    "Behaviour",
    "Delay",
    "FakeOpenAIServer",
    "Hang",
    "Malformed",
    "Reply",
    "Responder",
    "Status",
    "default_responder",
    "estimate_tokens",
    "main",
    "prompt_text",
]

# The only interface we ever bind: tests must never be reachable from outside.
HOST = "127.0.0.1"

Responder = Callable[[dict[str, Any]], str]


# --------------------------------------------------------------------------
# Scripted behaviours
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A normal 200 chat.completion whose assistant message is ``content``.

    Token counts default to the same len//4 estimate the default path uses;
    set them explicitly to test cost/usage accounting.
    """

    content: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class Malformed:
    """A 200 reply whose content is not valid JSON.

    Behaves exactly like ``Reply(content)``; it exists as its own type so a
    test script reads as intent ("the model returned junk") not as data.
    """

    content: str = "this is not json {"


@dataclass(frozen=True)
class Status:
    """An HTTP error with an OpenAI-style ``{"error": {...}}`` body.

    ``retry_after`` (seconds) is sent both as ``Retry-After`` and as
    ``retry-after-ms`` because the ``openai`` client prefers the latter and
    other clients only know the former.  ``error_type``/``error_code``
    override the values derived from ``code`` when a test needs a specific one.
    """

    code: int
    retry_after: float | None = None
    message: str = "simulated error from the fake OpenAI server"
    error_type: str | None = None
    error_code: str | None = None


@dataclass(frozen=True)
class Delay:
    """Sleep ``seconds`` and then perform ``then`` (default responder if None).

    The sleep ends early if the server stops; the connection is then dropped
    without a response, like a provider going away mid-request.
    """

    seconds: float
    then: Behaviour | None = None


@dataclass(frozen=True)
class Hang:
    """Never answer (for up to ``seconds``), so client timeouts can be tested.

    The sleep wakes as soon as the server stops, so ``stop()`` stays prompt.
    When it ends, the connection is closed without any response bytes.
    """

    seconds: float = 30.0


Behaviour = Reply | Malformed | Status | Delay | Hang


# --------------------------------------------------------------------------
# Helpers shared by the server and by tests that want to predict usage
# --------------------------------------------------------------------------


def default_responder(body: dict[str, Any]) -> str:
    """Return an empty JSON object: valid JSON, but with no verdict in it."""
    del body  # the default ignores the request on purpose
    return "{}"


def estimate_tokens(text: str) -> int:
    """Rough token count (len//4, at least 1), good enough for usage fields."""
    return max(1, len(text) // 4)


def prompt_text(body: dict[str, Any]) -> str:
    """All message contents of a request joined by newlines.

    Exported so tests can compute the expected ``prompt_tokens`` with the same
    rule the server uses.  Handles both plain-string content and the list-of-
    parts form (``[{"type": "text", "text": ...}]``) that newer clients send.
    """
    parts: list[str] = []
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        parts.append(part["text"])
    return "\n".join(parts)


def _format_seconds(value: float) -> str:
    # "1" rather than "1.0" so integer-only parsers of Retry-After still work,
    # while fractional values like "0.25" survive for clients that accept them.
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"


def _error_type_for(code: int) -> str:
    if code == 429:
        return "rate_limit_error"
    if code >= 500:
        return "server_error"
    if code == 401:
        return "authentication_error"
    if code == 403:
        return "permission_error"
    if code == 404:
        return "not_found_error"
    return "invalid_request_error"


def _error_code_for(code: int) -> str:
    # Real OpenAI uses string codes; mirror the common ones.
    if code == 429:
        return "rate_limit_exceeded"
    if code >= 500:
        return "server_error"
    return str(code)


def _error_body(message: str, error_type: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


class _BadRequest(Exception):
    """The request body could not be read or parsed; answer 400 and close."""


# --------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    # Daemon handler threads, and no joining on close: a Hang in progress must
    # not keep stop() (or interpreter exit) waiting.  Python 3.11 joins even
    # daemon threads in server_close() unless block_on_close is False.
    daemon_threads = True
    block_on_close = False
    # The socketserver default backlog is 5; 32+ clients connecting at once
    # would overflow it and pay a ~1 s SYN retransmit, skewing timings.
    request_queue_size = 256

    def __init__(self, fake: FakeOpenAIServer, port: int) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((HOST, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which does a reverse
        # DNS lookup that can stall for seconds in sandboxes.  We know the name.
        socketserver.TCPServer.server_bind(self)
        self.server_name = HOST
        self.server_port = int(self.server_address[1])

    def track(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(conn)

    def close_all_connections(self) -> None:
        # Idle keep-alive handler threads sit in readline() forever; shutting
        # their sockets down wakes them so nothing outlives stop().
        with self._connections_lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or disconnect are a normal part of these tests;
        # a traceback on stderr for each would only be noise.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)) or self.fake.stopping:
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so clients can keep connections alive; every response therefore
    # carries Content-Length (see _send_json).
    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenAI/1.0"
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle
    # plus the client's delayed ACK adds ~40 ms to requests on reused sockets.
    disable_nagle_algorithm = True

    @property
    def _server(self) -> _HTTPServer:
        return cast(_HTTPServer, self.server)

    @property
    def _fake(self) -> FakeOpenAIServer:
        return self._server.fake

    # -- connection lifecycle -------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self._server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        # Silence the default per-request stderr logging; it drowns test output.
        return

    # -- routing --------------------------------------------------------------

    def _route(self) -> str:
        # Ignore query strings (e.g. Azure's ?api-version=) and trailing slashes.
        path = self.path.split("?", 1)[0].rstrip("/")
        return path or "/"

    def do_POST(self) -> None:
        path = self._route()
        if path in ("/v1/chat/completions", "/chat/completions"):
            self._handle_chat()
        elif path in _GET_PATHS:
            self._discard_body()
            self._send_error_json(405, f"method POST not allowed on {path}")
        else:
            self._discard_body()
            self._send_error_json(404, f"unknown path {path}")

    def do_GET(self) -> None:
        path = self._route()
        fake = self._fake
        if path in ("/health", "/v1/health"):
            self._send_json(200, {"status": "ok"})
        elif path in ("/v1/models", "/models"):
            self._send_json(200, {"object": "list", "data": [fake.model_card()]})
        elif path.startswith(("/v1/models/", "/models/")):
            model_id = path.split("/models/", 1)[1]
            if model_id == fake.model_name:
                self._send_json(200, fake.model_card())
            else:
                self._send_error_json(404, f"model {model_id!r} does not exist")
        elif path in ("/v1/chat/completions", "/chat/completions"):
            self._send_error_json(405, f"method GET not allowed on {path}")
        else:
            self._send_error_json(404, f"unknown path {path}")

    def _method_not_allowed(self) -> None:
        self._discard_body()
        self._send_error_json(405, f"method {self.command} not allowed")

    do_PUT = _method_not_allowed
    do_PATCH = _method_not_allowed
    do_DELETE = _method_not_allowed

    # -- chat completions -------------------------------------------------------

    def _handle_chat(self) -> None:
        fake = self._fake
        fake._enter_call()
        try:
            try:
                body = self._read_json_body()
            except _BadRequest as exc:
                # The stream position is unknown after a bad body; never reuse it.
                self.close_connection = True
                self._send_error_json(400, str(exc))
                return
            fake._record(body)
            if body.get("stream") is True:
                self._send_error_json(400, "stream=true is not supported by the fake OpenAI server")
                return
            self._perform(fake._next_behaviour(), body)
        finally:
            fake._exit_call()

    def _perform(self, behaviour: Behaviour | None, body: dict[str, Any]) -> None:
        fake = self._fake
        if behaviour is None:
            try:
                content = fake.responder(body)
            except Exception as exc:  # a broken test responder shows up as a 500
                self._send_error_json(500, f"responder raised {type(exc).__name__}: {exc}")
                return
            if not isinstance(content, str):
                self._send_error_json(500, f"responder returned {type(content).__name__}, expected str")
                return
            self._send_completion(body, content, None, None)
        elif isinstance(behaviour, Reply):
            self._send_completion(
                body,
                behaviour.content,
                behaviour.prompt_tokens,
                behaviour.completion_tokens,
            )
        elif isinstance(behaviour, Malformed):
            self._send_completion(body, behaviour.content, None, None)
        elif isinstance(behaviour, Status):
            self._send_status(behaviour)
        elif isinstance(behaviour, Delay):
            if self._sleep(behaviour.seconds):
                self._perform(behaviour.then, body)
            else:
                self.close_connection = True
        elif isinstance(behaviour, Hang):
            self._sleep(behaviour.seconds)
            # Whether it timed out, the client left or the server is stopping:
            # say nothing.
            self.close_connection = True
        else:  # pragma: no cover - guarded by the type checker
            raise TypeError(f"unknown behaviour {behaviour!r}")

    def _send_completion(
        self,
        body: dict[str, Any],
        content: str,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> None:
        fake = self._fake
        if not self._sleep(fake.latency):
            # Stopping, or nobody is listening any more: drop the connection.
            self.close_connection = True
            return
        pt = prompt_tokens if prompt_tokens is not None else estimate_tokens(prompt_text(body))
        ct = completion_tokens if completion_tokens is not None else estimate_tokens(content)
        model = body.get("model")
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model if isinstance(model, str) and model else fake.model_name,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": pt,
                "completion_tokens": ct,
                "total_tokens": pt + ct,
            },
        }
        self._send_json(200, payload)

    def _send_status(self, status: Status) -> None:
        headers: dict[str, str] = {}
        if status.retry_after is not None:
            headers["Retry-After"] = _format_seconds(status.retry_after)
            headers["retry-after-ms"] = _format_seconds(status.retry_after * 1000.0)
        body = _error_body(
            status.message,
            status.error_type or _error_type_for(status.code),
            status.error_code or _error_code_for(status.code),
        )
        self._send_json(status.code, body, headers)

    # -- waiting ------------------------------------------------------------------

    def _sleep(self, seconds: float) -> bool:
        """Wait like a slow provider; True if the whole time passed.

        Returns False early when the server is stopping or the client has hung
        up.  Watching for the client matters: a Hang whose client timed out
        would otherwise sit "in flight" for 30 s and inflate in_flight and
        max_in_flight for every later test on the same server.
        """
        stop = self._fake._stop_requested
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            if stop.is_set() or self._client_gone():
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            stop.wait(min(remaining, _WAIT_SLICE))

    def _client_gone(self) -> bool:
        """True if the peer closed its end (EOF or error on the socket)."""
        conn: socket.socket = self.connection
        try:
            readable, _, _ = select.select([conn], [], [], 0)
            if not readable:
                return False
            peek_flags = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)
            # Readable with no bytes means EOF; readable with bytes would be a
            # pipelined request, which means the client is still there.
            peeked: bytes = conn.recv(1, peek_flags)
            return peeked == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        except ValueError:
            # select() cannot watch fds >= FD_SETSIZE; assume still connected.
            return False

    # -- request bodies ---------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        try:
            length = int(raw_length)
        except ValueError:
            raise _BadRequest(f"invalid Content-Length {raw_length!r}") from None
        if length < 0:
            raise _BadRequest(f"invalid Content-Length {raw_length!r}")
        data = self.rfile.read(length)
        if len(data) != length:
            raise _BadRequest("request body shorter than Content-Length")
        return data

    def _read_chunked(self) -> bytes:
        # Rare for JSON clients, but cheap to support and avoids desyncing a
        # keep-alive connection if some client does use it.
        chunks: list[bytes] = []
        while True:
            size_line = self.rfile.readline(65537).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _BadRequest("invalid chunk size") from None
            if size == 0:
                # Skip optional trailers up to the terminating blank line.
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(65537)  # CRLF after each chunk

    def _read_json_body(self) -> dict[str, Any]:
        raw = self._read_body()
        try:
            parsed = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _BadRequest(f"request body is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise _BadRequest("request body must be a JSON object")
        return parsed

    def _discard_body(self) -> None:
        # Unread body bytes would be parsed as the next request on a kept-alive
        # connection; read them, or give up on the connection.
        try:
            self._read_body()
        except _BadRequest:
            self.close_connection = True

    # -- responses ----------------------------------------------------------------

    def _send_json(self, code: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", f"req_{uuid.uuid4().hex}")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except (ConnectionError, TimeoutError):
            # The client gave up (e.g. its own timeout); nothing left to do.
            self.close_connection = True

    def _send_error_json(self, code: int, message: str) -> None:
        self._send_json(code, _error_body(message, _error_type_for(code), _error_code_for(code)))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Protocol-level errors (bad request line, unsupported method) get the
        # same JSON shape as everything else instead of http.server's HTML page.
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self._send_error_json(code, message or explain or phrase)


# How often a sleeping handler checks whether its client hung up.
_WAIT_SLICE = 0.05

_GET_PATHS = frozenset({"/health", "/v1/health", "/v1/models", "/models"})


# --------------------------------------------------------------------------
# Public server object
# --------------------------------------------------------------------------


class FakeOpenAIServer:
    """A threaded OpenAI-compatible server on 127.0.0.1 with a scripted queue.

    Each ``POST /v1/chat/completions`` consumes one scripted behaviour (FIFO);
    with the queue empty, ``responder(request_body)`` supplies the content.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        latency: float = 0.0,
        model_name: str = "fake-judge",
        *,
        port: int = 0,
    ) -> None:
        # port=0 (the default) lets the OS pick a free port; the CLI passes a
        # fixed one so a benchmark can be pointed at a known URL.
        self._requested_port = port
        self.responder: Responder = responder if responder is not None else default_responder
        self.latency = latency
        self.model_name = model_name
        self._lock = threading.Lock()
        # Signalled whenever a call starts or ends, so tests can wait for
        # "n calls arrived" or "idle" instead of polling with sleeps.
        self._calls_changed = threading.Condition(self._lock)
        self._queue: deque[Behaviour] = deque()
        self._calls = 0
        self._requests: list[dict[str, Any]] = []
        self._in_flight = 0
        self._max_in_flight = 0
        # Set by stop(); every sleep in a handler waits on it so that Hang,
        # Delay and latency all end the moment the server is asked to stop.
        self._stop_event = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._created = int(time.time())

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> Self:
        """Bind 127.0.0.1 on a free port and serve in a background thread."""
        if self._httpd is not None:
            raise RuntimeError("FakeOpenAIServer is already running")
        self._stop_event = threading.Event()
        httpd = _HTTPServer(self, self._requested_port)
        self._httpd = httpd
        # A short poll interval keeps shutdown() (and so stop()) prompt.
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-openai-server:{httpd.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; returns promptly even while requests are hanging.

        Idempotent.  In-progress Hang/Delay/latency sleeps wake up and their
        connections are closed without a response.
        """
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stop_event.set()
        httpd.shutdown()
        httpd.close_all_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=2.0)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        """True once stop() has begun (handlers use it to stay quiet)."""
        return self._stop_event.is_set()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeOpenAIServer is not running; call start() first")
        return int(self._httpd.server_port)

    @property
    def base_url(self) -> str:
        """The URL to give an OpenAI client as ``base_url`` (ends in /v1)."""
        return f"http://{HOST}:{self.port}/v1"

    # -- scripting and observation ----------------------------------------------

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours; each chat-completions call consumes one, FIFO."""
        with self._lock:
            self._queue.extend(behaviours)

    @property
    def pending(self) -> int:
        """Scripted behaviours not yet consumed."""
        with self._lock:
            return len(self._queue)

    @property
    def calls(self) -> int:
        """Number of POST chat-completions requests received (any outcome)."""
        with self._lock:
            return self._calls

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Parsed JSON bodies of chat-completions requests, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def in_flight(self) -> int:
        """Chat-completions requests being handled right now."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """Highest number of chat-completions requests handled at one moment."""
        with self._lock:
            return self._max_in_flight

    def wait_for_calls(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` calls have arrived; False on timeout."""
        with self._calls_changed:
            return self._calls_changed.wait_for(lambda: self._calls >= n, timeout=timeout)

    def wait_until_idle(self, timeout: float = 5.0) -> bool:
        """Block until no chat-completions request is in flight; False on timeout.

        A client can read its response before the handler thread has finished
        its bookkeeping, so tests should wait here rather than assert
        ``in_flight == 0`` immediately.
        """
        with self._calls_changed:
            return self._calls_changed.wait_for(lambda: self._in_flight == 0, timeout=timeout)

    def reset(self) -> None:
        """Forget the script, the call count, the requests and max_in_flight.

        ``max_in_flight`` restarts from the number currently in flight, so a
        reset in the middle of traffic does not under-report.
        """
        with self._lock:
            self._queue.clear()
            self._calls = 0
            self._requests.clear()
            self._max_in_flight = self._in_flight

    def model_card(self) -> dict[str, Any]:
        """The /v1/models entry for ``model_name``."""
        return {
            "id": self.model_name,
            "object": "model",
            "created": self._created,
            "owned_by": "psyjudge-tests",
        }

    # -- used by the handler -------------------------------------------------------

    def _enter_call(self) -> None:
        with self._lock:
            self._calls += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._calls_changed.notify_all()

    def _exit_call(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._calls_changed.notify_all()

    def _record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(body)

    def _next_behaviour(self) -> Behaviour | None:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    @property
    def _stop_requested(self) -> threading.Event:
        return self._stop_event


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def _load_responder(spec: str) -> Responder:
    """Import ``module:function`` (the attribute may be dotted)."""
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"--responder must look like 'module:function', got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        obj = getattr(obj, attr)
    if not callable(obj):
        raise TypeError(f"{spec!r} is not callable")
    return cast(Responder, obj)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.openai_server",
        description="Serve a fake OpenAI-compatible API on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per reply")
    parser.add_argument("--model-name", default="fake-judge")
    parser.add_argument("--responder", default=None, help="module:function returning the reply content")
    args = parser.parse_args(argv)

    responder = _load_responder(args.responder) if args.responder else None
    server = FakeOpenAIServer(
        responder=responder,
        latency=args.latency,
        model_name=args.model_name,
        port=args.port,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: types.FrameType | None) -> None:
        # Only flag it here: stopping from inside a signal handler could
        # deadlock on locks the interrupted main thread holds.
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    server.start()
    print(f"READY {server.base_url}", flush=True)
    try:
        # A timed wait keeps the main thread responsive to signals everywhere.
        while not stop.wait(0.2):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
