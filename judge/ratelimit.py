"""One limit on judge calls for a whole distributed run: at most `concurrency` calls in flight, and at
most `max_calls` calls in any window of `window_s` seconds (`--rps`: so many per second), however many
workers share the run. Each worker asking its own limiter would spend the limit N times over.

SharedLimit is the state, in plain asyncio. judge.ray_engine runs it inside one Ray actor that every
worker asks before each provider request (ActorLimiter is the worker's side, the
judge.models.CallLimiter that JudgeModel waits on); nothing here imports Ray.

The rate rule, and why it holds at the provider
------------------------------------------------
The limiter cannot see when a request reaches the provider, only that it happens after the grant and
before the release (the worker releases once the reply is in). So a call holds its rate slot from its
grant until `window_s` after its release, and a grant at time t is given only when fewer than
`max_calls` calls hold a slot at t. Then no window [s, s + window_s) can hold more than `max_calls`
arrivals at the provider, whatever the network delays: take the call k granted last among those
arriving in the window; every other one was granted before t_k and released after s > t_k - window_s,
so it held a slot when k was granted, and k was granted only because fewer than `max_calls` did.

A slot held for the call's own latency beyond the window costs throughput: the rate reaches at most
max_calls / (window_s + latency) calls per second. That is the price of a limit that holds at the
provider without trusting clocks or network timing.

A worker that dies holding a slot cannot release it: every grant is a lease, reclaimed `lease_s`
after the grant (the caller sets it above the request timeout, so a live call is never reclaimed).
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from judge.schema import Strict


class LimitStats(Strict):
    """What the shared limit saw over a run."""

    concurrency: int
    max_calls: int | None
    window_s: float
    granted: int = 0
    """Provider requests let through (retries included): the run's model calls."""
    max_in_flight: int = 0
    waited_s: float = 0.0
    """Seconds that requests spent waiting for room, summed."""
    expired_leases: int = 0
    """Grants reclaimed because their holder never released them (a worker died mid-call)."""
    abandoned: int = 0


def rate_window(rps: float) -> tuple[int, float]:
    """`rps` requests per second as (calls, window): 8.5 -> 8 per second (never more than asked),
    0.25 -> 1 per 4 seconds."""
    if not rps > 0 or math.isinf(rps):
        raise ValueError(f"rps must be a positive number, got {rps!r}")
    return (math.floor(rps), 1.0) if rps >= 1 else (1, 1.0 / rps)


class SharedLimit:
    """Concurrency and rate for every caller of one event loop (the limiter actor's). Grants are
    first come, first served: a waiting caller is never overtaken."""

    def __init__(self, concurrency: int, rps: float | None = None, lease_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if not lease_s > 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        self.max_calls: int | None
        self.window_s: float
        self.max_calls, self.window_s = rate_window(rps) if rps is not None else (None, 1.0)
        self.concurrency = concurrency
        self.lease_s = lease_s
        self._clock = clock
        self._held: dict[str, float] = {}  # ticket -> lease deadline
        self._released: deque[float] = deque()  # release times of calls that still hold a rate slot
        self._queue: deque[str] = deque()  # tickets waiting, oldest first
        self._abandoned: set[str] = set()
        self._changed = asyncio.Condition()
        self.stats = LimitStats(concurrency=concurrency, max_calls=self.max_calls, window_s=self.window_s)

    async def acquire(self, ticket: str) -> bool:
        """Wait for room for one request. False when the caller abandoned the ticket meanwhile."""
        started = self._clock()
        async with self._changed:
            if ticket in self._abandoned:  # the caller gave up before this request even arrived
                self._abandoned.discard(ticket)
                return False
            self._queue.append(ticket)
            try:
                while True:
                    if ticket in self._abandoned:
                        self._abandoned.discard(ticket)
                        return False
                    now = self._clock()
                    wait = self._wait(now) if self._queue[0] == ticket else None
                    if wait == 0.0:
                        break
                    try:
                        await asyncio.wait_for(self._changed.wait(), timeout=wait)
                    except TimeoutError:
                        pass  # time alone may have made room: look again
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()  # the next in line looks, whether this one went or gave up
            self._held[ticket] = now + self.lease_s
            self.stats.granted += 1
            self.stats.max_in_flight = max(self.stats.max_in_flight, len(self._held))
            self.stats.waited_s += now - started
            return True

    async def release(self, ticket: str) -> None:
        async with self._changed:
            if self._held.pop(ticket, None) is not None:
                self._released.append(self._clock())
                self._changed.notify_all()

    async def abandon(self, ticket: str) -> None:
        """The caller stopped waiting (its task was cancelled): drop the ticket, or release its grant."""
        async with self._changed:
            self.stats.abandoned += 1
            if ticket in self._held:
                del self._held[ticket]
                self._released.append(self._clock())
            else:
                self._abandoned.add(ticket)
            self._changed.notify_all()

    def snapshot(self) -> dict[str, Any]:
        return self.stats.model_dump(mode="json")

    def _wait(self, now: float) -> float | None:
        """0 when a request may start now; otherwise how long until time alone could make room (a
        rate slot or a lease running out), or None when only a release can."""
        for ticket, deadline in list(self._held.items()):
            if deadline <= now:  # its holder is gone: the slot counts as released now
                del self._held[ticket]
                self._released.append(now)
                self.stats.expired_leases += 1
        while self._released and self._released[0] + self.window_s <= now:
            self._released.popleft()
        in_flight = len(self._held)
        if in_flight < self.concurrency and (
                self.max_calls is None or in_flight + len(self._released) < self.max_calls):
            return 0.0
        later = [min(self._held.values())] if self._held else []
        if in_flight < self.concurrency and self._released:
            later.append(self._released[0] + self.window_s)
        # A floor keeps a rounding error from turning the wait into a busy loop.
        return max(1e-3, min(later) - now) if later else None


class ActorLimiter:
    """A worker's side of the shared limit (a judge.models.CallLimiter): each request waits on the
    limiter actor, and gives its room back however the request ended."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    async def acquire(self) -> str:
        ticket = uuid.uuid4().hex
        try:
            granted = await self._actor.acquire.remote(ticket)
        except asyncio.CancelledError:
            # The grant may still come: tell the limiter, so that a slot nobody uses is not held.
            self._actor.abandon.remote(ticket)
            raise
        if not granted:
            raise RuntimeError(f"the shared rate limit refused ticket {ticket}, which this worker never abandoned")
        return ticket

    async def release(self, permit: str) -> None:
        await self._actor.release.remote(permit)
