"""What keeps one client from taking the server down: a limit on the body's bytes, and a limit on
the requests judging at once with a small bounded queue in front of it.

The body limit is plain ASGI middleware, in front of FastAPI's parser: a declared Content-Length
over the limit is refused before a byte is read, and a chunked body is read only up to the limit
(the bytes are then replayed to the app). Field limits (turns, characters) are the request model's.

The concurrency gate admits `limit` requests to the cascade; up to `queue` more wait, each for at
most `wait_s`; any other request is refused at once with 429 and a Retry-After that estimates when
a slot frees up. An unbounded queue would only turn overload into timeouts for every caller.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuse HTTP request bodies over `max_bytes` with 413 and a JSON error naming the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_refused: Callable[[], None] | None = None) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.app, self.max_bytes, self.on_refused = app, max_bytes, on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, f"the request body is {declared} bytes; this server accepts at most "
                               f"{self.max_bytes} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, f"the request body is over {self.max_bytes} bytes, the most this "
                                   "server accepts")
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, message: str) -> None:
        if self.on_refused is not None:
            self.on_refused()
        payload = json.dumps({"error": "too_large", "message": message, "details": []}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed header before we see it
    return None


class Saturated(Exception):
    """Every slot and every queue place is taken, or the wait for a slot ran out."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ConcurrencyGate:
    """At most `limit` holders at once; at most `queue` waiting, each for at most `wait_s`."""

    def __init__(self, limit: int, queue: int, wait_s: float) -> None:
        if limit < 1 or queue < 0 or wait_s < 0:
            raise ValueError(f"need limit >= 1, queue >= 0, wait_s >= 0; got {limit}, {queue}, {wait_s}")
        self.limit, self.queue, self.wait_s = limit, queue, wait_s
        self.active = 0
        self.waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._mean_hold_s = 1.0
        """A running average of how long a request holds a slot: it sizes Retry-After."""

    def _semaphore(self) -> asyncio.Semaphore:
        # Bound to the loop that serves: a test client may start a loop per test.
        loop = asyncio.get_running_loop()
        if self._slots is None or loop is not self._loop:
            self._loop, self._slots = loop, asyncio.Semaphore(self.limit)
            self.active = self.waiting = 0
        return self._slots

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free: the queue ahead drains `limit` at a time."""
        rounds = (self.waiting + 1) / self.limit
        return max(1, math.ceil(self._mean_hold_s * rounds))

    async def acquire(self) -> float:
        """Take a slot; returns the seconds spent waiting for it, or raises Saturated."""
        slots = self._semaphore()
        if not slots.locked():
            await slots.acquire()  # free: returns at once
            self.active += 1
            return 0.0
        if self.waiting >= self.queue:
            raise Saturated(f"all {self.limit} judging slots are busy and the queue ({self.queue}) is full",
                            self.retry_after_s())
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.waiting += 1
        try:
            await asyncio.wait_for(slots.acquire(), self.wait_s)
        except TimeoutError:
            raise Saturated(f"no judging slot came free within {self.wait_s:g} s", self.retry_after_s()) from None
        finally:
            self.waiting -= 1
        self.active += 1
        return loop.time() - started

    def release(self, held_s: float) -> None:
        self.active -= 1
        self._mean_hold_s += 0.2 * (held_s - self._mean_hold_s)
        assert self._slots is not None
        self._slots.release()
