"""Reply slots and the per-client ordered reply queue (pure: no asyncio, no sockets).

Every request a client sends gets one ``ReplySlot`` the moment it is parsed, appended to that
client's ``ReplyQueue``. Whoever answers the request — a backend connection, a fan-out merge, the
client itself for local commands, a failure path — calls ``slot.complete(raw)`` exactly once
(later calls are ignored, so a late reply after a timeout cannot answer twice). Replies leave in
request order however they complete:

    client requests:   r1  r2  r3  r4          (slots queued in arrival order)
    completions:           r2      r4  r1      (any order, from any backend)
    written:                           r1 r2   (the completed head run; r3 holds r4 back)

A queue whose head run became ready registers itself with the shared ``Flusher``; the I/O layer
runs the flusher once per batch (end of a backend read, a timer, a client read), so one client
gets one write per batch of replies, not one per reply.

A slot's ``sink`` is whoever waits for it: a client's ReplyQueue, or a fan-out gather (fanout.py)
that merges sub-replies before completing the client's own slot. When a client goes away its
queue is closed: slots still held by backends complete into nothing, and the shared backend
connection is never disturbed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol


class Stat(Protocol):
    """A (pool, command) counter row (metrics.CommandStats): counted as replies are written."""

    requests: int
    errors: int

    def observe(self, seconds: float) -> None: ...


class ReplySink(Protocol):
    def slot_done(self, slot: ReplySlot) -> None: ...


def _error_bytes(text: str) -> bytes:
    # resp.encode_error's twin: inflight is pure and imports no codec (ARCHITECTURE's table).
    return b"-" + text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + b"\r\n"


class ReplySlot:
    """The place one request's reply goes; completed exactly once."""

    __slots__ = ("data", "sink", "stat")

    def __init__(self, sink: ReplySink | None, stat: Stat | None = None) -> None:
        self.data: bytes | None = None
        self.sink = sink
        self.stat = stat  # the client's requests only: counted when the reply is written

    def complete(self, raw: bytes) -> None:
        """Deliver the reply (raw RESP bytes); ignored if the slot already has one."""
        if self.data is None:
            self.data = raw
            sink = self.sink
            if sink is not None:
                sink.slot_done(self)

    def fail(self, text: str) -> None:
        """Deliver an error reply with ``text`` (from errors.py)."""
        if self.data is None:
            self.complete(_error_bytes(text))


class Flusher:
    """Collects the reply queues whose head became ready; ``run`` writes each one once.

    With a ``schedule`` hook (the event loop's ``call_soon``) the first queue that becomes
    ready schedules one run for the end of the current loop turn, after every socket that was
    readable has been read: a client whose pipeline was served by three servers gets one
    write, not three (twemproxy batches the same way, writing on the next epoll turn).
    """

    __slots__ = ("_ready", "_schedule", "_scheduled")

    def __init__(self, schedule: Callable[[Callable[[], None]], object] | None = None) -> None:
        self._ready: list[ReplyQueue] = []
        self._schedule = schedule
        self._scheduled = False

    def add(self, queue: ReplyQueue) -> None:
        self._ready.append(queue)
        if self._schedule is not None and not self._scheduled:
            self._scheduled = True
            self._schedule(self.run)

    def run(self) -> None:
        self._scheduled = False
        while self._ready:
            ready, self._ready = self._ready, []
            for queue in ready:
                queue.flush()


class ReplyQueue:
    """One client's requests in arrival order; writes the completed head run.

    Accounting happens here, once per written reply: the slot's ``stat`` row counts the request
    and, for an error reply, the error. ``mark(t0)`` tags the newest slot with the time its
    client read was parsed; when that reply is written, ``clock() - t0`` is observed as the
    read's latency (one observation per client read, not per request).
    """

    __slots__ = ("slots", "_write", "_flusher", "_listed", "closed", "on_flushed", "_marks",
                 "_clock", "_waiting")  # fmt: skip

    def __init__(
        self,
        write: Callable[[list[bytes]], None],
        flusher: Flusher,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.slots: deque[ReplySlot] = deque()  # read-only outside: len() is the pending count
        self._waiting = 0  # slots pushed and not completed yet
        self._write = write
        self._flusher = flusher
        self._listed = False  # already registered with the flusher
        self.closed = False
        self.on_flushed: Callable[[], None] | None = None
        self._marks: deque[tuple[ReplySlot, float]] = deque()
        self._clock = clock

    def __len__(self) -> int:
        return len(self.slots)

    def push(self, stat: Stat | None = None) -> ReplySlot:
        """A new slot at the tail, for a request just parsed."""
        slot = ReplySlot(self, stat)
        self.slots.append(slot)
        self._waiting += 1
        return slot

    def push_reply(self, raw: bytes, stat: Stat | None = None) -> None:
        """A request answered in place (local command, refusal): queued already complete."""
        slot = ReplySlot(None, stat)
        slot.data = raw
        self.slots.append(slot)

    def push_error(self, text: str, stat: Stat | None = None) -> None:
        self.push_reply(_error_bytes(text), stat)

    def label_last(self, stat: Stat) -> None:
        """Count the newest slot under ``stat`` (the slow path learns the command late)."""
        if self.slots:
            self.slots[-1].stat = stat

    def mark(self, t0: float) -> None:
        """Observe the newest slot's latency from ``t0`` when its reply is written."""
        if self.slots and self._clock is not None:
            self._marks.append((self.slots[-1], t0))

    def slot_done(self, slot: ReplySlot) -> None:
        waiting = self._waiting = self._waiting - 1
        if waiting:
            if not self._listed and self.slots[0] is slot and not self.closed:
                self._listed = True
                self._flusher.add(self)
        elif not self.closed:
            # Every reply owed is in: nothing more can join this batch, so write it now
            # instead of at the end of the loop turn (the same single write, less bookkeeping).
            self.flush()

    def flush(self) -> None:
        """Write the completed head run (one write), if any."""
        self._listed = False
        if self.closed:
            return
        slots = self.slots
        if not slots or slots[0].data is None:
            return
        out: list[bytes] = []
        marks = self._marks
        mark = marks[0][0] if marks else None
        while slots:
            slot = slots[0]
            data = slot.data
            if data is None:
                break
            out.append(data)
            slots.popleft()
            stat = slot.stat
            if stat is not None:
                stat.requests += 1
                if data[0] == 45 or data[0] == 33:  # "-" error, "!" RESP3 blob error
                    stat.errors += 1
            if slot is mark:
                t0 = marks.popleft()[1]
                if stat is not None and self._clock is not None:
                    stat.observe(self._clock() - t0)
                mark = marks[0][0] if marks else None
        self._write(out)
        if self.on_flushed is not None:
            self.on_flushed()

    def close(self) -> None:
        """The client is gone: drop its slots; late replies complete into nothing."""
        self.closed = True
        for slot in self.slots:
            slot.sink = None
        self.slots.clear()
        self._marks.clear()
