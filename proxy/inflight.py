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

``ReplySlot``, ``ReplyQueue`` and ``Gather`` are the C objects of ``_inflight.c`` when it is
built, else the Python classes here (``PyReplySlot``...), which stay the reference: the unit
tests run every behaviour against both.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from proxy import accel


class Stat(Protocol):
    """A (pool, command) counter row (metrics.CommandStats): counted as replies are written."""

    requests: int
    errors: int

    def observe(self, seconds: float) -> None: ...


class ReplySink(Protocol):
    def slot_done(self, slot: ReplySlot) -> None: ...


def _error_bytes(text: str) -> bytes:
    # resp.encode_error's twin: inflight is pure and imports no codec (tests/unit/test_layering.py).
    return b"-" + text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + b"\r\n"


class PyReplySlot:
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


class Transport(Protocol):
    """Where a queue writes its replies (an asyncio transport)."""

    def write(self, data: bytes) -> None: ...

    def writelines(self, data: list[bytes]) -> None: ...


class ByteCounter(Protocol):
    """The pool's counters (metrics.PoolStats): bytes written to clients."""

    bytes_out: int


class PyReplyQueue:
    """One client's requests in arrival order; writes the completed head run.

    ``attach(transport, stats)`` names where replies go (one ``write``, or one ``writelines``
    for a run of several) and whose ``bytes_out`` counts them; until then, and after
    ``close()``, nothing is written.

    Accounting happens here, once per written reply: the slot's ``stat`` row counts the request
    and, for an error reply, the error; a slot pushed without a stat takes the queue's ``label``
    (the slow path sets it for the command it dispatches). ``mark(t0)`` tags the newest slot
    with the time its client read was parsed; when that reply is written, ``clock() - t0`` is
    observed as the read's latency (one observation per client read, not per request).
    """

    __slots__ = (
        "_slots",
        "_flusher",
        "_listed",
        "closed",
        "on_flushed",
        "_marks",
        "_clock",
        "_waiting",
        "_pushed",
        "_popped",
        "_transport",
        "stats",
        "label",
    )

    def __init__(self, flusher: Flusher, clock: Callable[[], float] | None = None) -> None:
        self._slots: deque[PyReplySlot] = deque()
        self._waiting = 0  # slots pushed and not completed yet
        self._pushed = 0  # arrival numbers: the newest slot is number _pushed
        self._popped = 0
        self._flusher = flusher
        self._listed = False  # already registered with the flusher
        self.closed = False
        self.on_flushed: Callable[[], None] | None = None
        self._marks: deque[tuple[int, float]] = deque()  # (arrival number, t0)
        self._clock = clock
        self._transport: Transport | None = None
        self.stats: ByteCounter | None = None
        self.label: Stat | None = None

    @property
    def pushed(self) -> int:
        """How many slots were ever pushed: a later request makes it grow."""
        return self._pushed

    def __len__(self) -> int:
        return len(self._slots)

    def attach(self, transport: Transport | None, stats: ByteCounter | None) -> None:
        self._transport = transport
        self.stats = stats

    def push(self, stat: Stat | None = None) -> PyReplySlot:
        """A new slot at the tail, for a request just parsed."""
        slot = PyReplySlot(self, stat if stat is not None else self.label)
        self._slots.append(slot)
        self._pushed += 1
        self._waiting += 1
        return slot

    def push_reply(self, raw: bytes, stat: Stat | None = None) -> None:
        """A request answered in place (local command, refusal): queued already complete."""
        slot = PyReplySlot(None, stat if stat is not None else self.label)
        slot.data = raw
        self._slots.append(slot)
        self._pushed += 1

    def push_error(self, text: str, stat: Stat | None = None) -> None:
        self.push_reply(_error_bytes(text), stat)

    def mark(self, t0: float) -> None:
        """Observe the newest slot's latency from ``t0`` when its reply is written."""
        if self._slots and self._clock is not None:
            self._marks.append((self._pushed, t0))

    def slot_done(self, slot: PyReplySlot) -> None:
        waiting = self._waiting = self._waiting - 1
        if waiting:
            if not self._listed and not self.closed and self._slots and self._slots[0] is slot:
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
        slots = self._slots
        out: list[bytes] = []
        run: list[PyReplySlot] = []
        while slots and (data := slots[0].data) is not None:
            out.append(data)
            run.append(slots.popleft())
        if not out:
            return
        first = self._popped + 1
        self._popped += len(run)
        marks = self._marks
        for seq, slot in enumerate(run, first):
            stat = slot.stat
            if stat is not None:
                stat.requests += 1
                data = out[seq - first]
                if data[:1] in (b"-", b"!"):  # error, RESP3 blob error (resp.is_error)
                    stat.errors += 1
            while marks and marks[0][0] <= seq:
                marked, t0 = marks.popleft()
                if marked == seq and stat is not None and self._clock is not None:
                    stat.observe(self._clock() - t0)
        transport = self._transport
        if transport is not None:
            if len(out) == 1:
                transport.write(out[0])
            else:
                transport.writelines(out)
            if self.stats is not None:
                self.stats.bytes_out += sum(map(len, out))
        if self.on_flushed is not None:
            self.on_flushed()

    def stream_head(self, slot: PyReplySlot) -> Transport | None:
        """Where ``slot``'s reply may be written piece by piece as it arrives (a big reply,
        backend.py): the client's transport when every reply before it is written; else None.
        The slot is then completed with b"" (its bytes are out already)."""
        if self.closed or not self._slots or self._slots[0] is not slot:
            return None
        return self._transport

    def close(self) -> None:
        """The client is gone: drop its slots; late replies complete into nothing."""
        self.closed = True
        for slot in self._slots:
            slot.sink = None
        self._slots.clear()
        self._marks.clear()
        self._transport = None


class Merge(Protocol):
    """fanout.merge: what a single Redis would have answered, from a split command's parts."""

    def __call__(
        self, name: bytes, parts: Sequence[tuple[Any, ...]], nkeys: int, datas: list[bytes]
    ) -> bytes: ...


class PyGather:
    """Collects the sub-replies of one split command, then completes the client's slot once.

    ``slots`` has one child slot per part, in order; when the last one is in, the client's slot
    gets ``merge(name, parts, nkeys, datas)``. The children then let go of the gather, so it is
    freed at once instead of by the cyclic GC (a visible cost under load).
    """

    __slots__ = ("_parent", "_merge", "_name", "_nkeys", "_parts", "slots", "_left")

    def __init__(
        self,
        parent: ReplySlot,
        merge: Merge,
        name: bytes,
        nkeys: int,
        parts: Sequence[tuple[Any, ...]],
    ) -> None:
        self._parent = parent
        self._merge = merge
        self._name = name
        self._nkeys = nkeys
        self._parts = parts
        self.slots = tuple(PyReplySlot(self) for _ in parts)
        self._left = len(parts)

    def slot_done(self, slot: ReplySlot) -> None:
        self._left -= 1
        if not self._left:
            slots = self.slots
            datas = [s.data or b"" for s in slots]
            for child in slots:
                child.sink = None
            self._parent.complete(self._merge(self._name, self._parts, self._nkeys, datas))


# The C twins (proxy/_inflight.c) when built: the same objects, a third of the Python work of
# an unpipelined GET and most of a fan-out's bookkeeping. Both implementations pass
# tests/unit/test_inflight_fanout.py.
if TYPE_CHECKING:
    ReplySlot = PyReplySlot
    ReplyQueue = PyReplyQueue
    Gather = PyGather
else:
    _inflight = accel.c_module("_inflight")  # unless RESPROXY_PURE=1 or not built
    if _inflight is not None:
        ReplySlot, ReplyQueue, Gather = _inflight.ReplySlot, _inflight.ReplyQueue, _inflight.Gather
    else:
        ReplySlot, ReplyQueue, Gather = PyReplySlot, PyReplyQueue, PyGather
