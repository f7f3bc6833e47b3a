"""Following servers that move, for the cluster and sentinel pools: a redirected or refused
request's retry (``Redirected``: MOVED/ASK in a cluster, -READONLY from a demoted master) and
the background look-up of where the servers are (``Refresher``: the slot map, the master).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from proxy.inflight import ReplySlot

RETRY_MIN_S = 0.01
RETRY_MAX_S = 0.2


class Redirected:
    """The sink of a request sent again (redirect or retry): counts its tries, forwards its reply.

    ``track`` wraps a request's slot the first time it comes back for another try; its
    ``deadline`` is the request's own ``timeout``, so retries never outlive it.
    """

    __slots__ = ("target", "attempts", "deadline")

    def __init__(self, target: ReplySlot, deadline: float) -> None:
        self.target = target
        self.attempts = 0
        self.deadline = deadline

    def slot_done(self, slot: ReplySlot) -> None:
        if slot.data is not None:
            self.target.complete(slot.data)

    @staticmethod
    def track(slot: ReplySlot, now: float, timeout_s: float) -> tuple[ReplySlot, Redirected]:
        """(the slot to send the retry with, its tracker), one more attempt counted."""
        sink = slot.sink
        if isinstance(sink, Redirected):
            retry = sink
        else:
            retry = Redirected(slot, now + timeout_s)
            slot = ReplySlot(retry)
        retry.attempts += 1
        return slot, retry

    def next_delay(self, now: float, max_attempts: int) -> float | None:
        """When to try again: 10 ms doubling to 200 ms with the number of tries; None when
        that would pass the request's deadline or ``max_attempts``."""
        delay = float(min(RETRY_MIN_S * 2 ** (self.attempts - 1), RETRY_MAX_S))
        if now + delay >= self.deadline or self.attempts > max_attempts:
            return None
        return delay


class Refresher:
    """A pool's background look-up of where its servers are (a cluster's slot map, the master
    the sentinels name): one run at a time, a request during a run queues at most one more
    (``gap_s`` after it), and after each series the next run is scheduled ``interval()``
    seconds later."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        run: Callable[[], Awaitable[None]],
        interval: Callable[[], float],
        gap_s: float = 0.0,
    ) -> None:
        self._loop = loop
        self._run = run
        self._interval = interval
        self._gap_s = gap_s
        self._running = False
        self._again = False
        self._periodic: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def request(self, again: bool = True) -> None:
        """Run now, or once more after the running one when ``again`` (False: the running one
        answers this request too)."""
        if self._closed:
            return
        if self._running:
            self._again = self._again or again
            return
        self._running = True
        self._task = self._loop.create_task(self._series())

    async def _series(self) -> None:
        try:
            while not self._closed:
                self._again = False
                await self._run()
                if not self._again:
                    break
                if self._gap_s:
                    await asyncio.sleep(self._gap_s)  # rate limit under a storm of requests
        finally:
            self._running = False
            self._schedule()

    def _schedule(self) -> None:
        if self._closed:
            return
        if self._periodic is not None:
            self._periodic.cancel()
        self._periodic = self._loop.call_later(self._interval(), self.request, False)

    def close(self) -> None:
        self._closed = True
        if self._periodic is not None:
            self._periodic.cancel()
        if self._task is not None:
            self._task.cancel()
