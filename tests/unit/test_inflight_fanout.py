"""Reply ordering (inflight) and fan-out split/merge, without any I/O."""

from __future__ import annotations

import gc
import random
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from proxy import _inflight, _speedups, inflight, resp
from proxy.fanout import merge, split
from proxy.inflight import Flusher
from proxy.resp import encode_bulk


class Recorder:
    """A transport that records each write: a list of the reply bytes it carried."""

    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []
        self.calls: list[str] = []

    def write(self, data: bytes) -> None:
        self.writes.append([data])
        self.calls.append("write")

    def writelines(self, data: list[bytes]) -> None:
        self.writes.append(list(data))
        self.calls.append("writelines")


class Row:
    """A metrics row (metrics.CommandStats' shape) that records its latency observations."""

    __slots__ = ("requests", "errors", "seen", "__weakref__")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.seen: list[float] = []

    def observe(self, seconds: float) -> None:
        self.seen.append(seconds)


class Bytes:
    def __init__(self) -> None:
        self.bytes_out = 0


# Both twins side by side, whatever RESPROXY_PURE selects for the proxy (the C build must exist).
IMPLS = {
    "c": (_inflight.ReplyQueue, _inflight.ReplySlot),
    "python": (inflight.PyReplyQueue, inflight.PyReplySlot),
}


@pytest.fixture(params=sorted(IMPLS))
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _queue(
    impl: str = "c", clock: Callable[[], float] | None = None
) -> tuple[Any, list[list[bytes]], Flusher]:
    recorder = Recorder()
    flusher = Flusher()
    queue = IMPLS[impl][0](flusher, clock)
    queue.attach(recorder, Bytes())
    return queue, recorder.writes, flusher


def test_replies_leave_in_request_order_whatever_order_they_complete(impl: str) -> None:
    queue, writes, flusher = _queue(impl)
    s1, s2, s3, s4 = (queue.push() for _ in range(4))
    s2.complete(b"+2\r\n")
    s4.complete(b"+4\r\n")
    flusher.run()
    assert writes == []  # r1 still owed: nothing may leave
    s1.complete(b"+1\r\n")
    flusher.run()
    assert writes == [[b"+1\r\n", b"+2\r\n"]]  # the head run, in one write
    s3.complete(b"+3\r\n")  # the last one owed: written at once, without the flusher
    assert writes[-1] == [b"+3\r\n", b"+4\r\n"]
    assert len(queue) == 0


def test_a_slot_completes_exactly_once(impl: str) -> None:
    queue, writes, flusher = _queue(impl)
    slot = queue.push()
    slot.fail("ERR server x timed out\r\nsecond line")
    slot.complete(b"+late\r\n")
    slot.fail("ERR again")
    flusher.run()
    assert writes == [[b"-ERR server x timed out  second line\r\n"]]
    assert slot.data == b"-ERR server x timed out  second line\r\n"


def test_closed_queue_swallows_late_replies(impl: str) -> None:
    queue, writes, flusher = _queue(impl)
    slot = queue.push()
    queue.close()
    assert slot.sink is None and queue.closed and len(queue) == 0
    slot.complete(b"+OK\r\n")
    flusher.run()
    queue.flush()
    assert writes == []


def test_one_write_per_run_and_the_flusher_only_while_replies_are_owed(impl: str) -> None:
    queue, writes, flusher = _queue(impl)
    rec = queue._transport if impl == "python" else None
    a, b = queue.push(), queue.push()
    a.complete(b"+a\r\n")  # b still owed: the queue waits for the flusher's turn
    assert writes == []
    flusher.run()
    assert writes == [[b"+a\r\n"]]
    b.complete(b"+b\r\n")  # nothing else owed: written now
    assert writes == [[b"+a\r\n"], [b"+b\r\n"]]
    queue.push_reply(b"+PONG\r\n")
    queue.push_error("ERR x")
    queue.flush()
    assert writes[-1] == [b"+PONG\r\n", b"-ERR x\r\n"]
    assert queue.stats.bytes_out == len(b"+a\r\n+b\r\n+PONG\r\n-ERR x\r\n")
    if rec is not None:
        assert rec.calls == ["write", "write", "writelines"]


def test_rows_count_requests_and_errors_and_the_label_fills_in(impl: str) -> None:
    queue, writes, flusher = _queue(impl)
    get, set_, slow = Row(), Row(), Row()
    slots = [queue.push(get), queue.push(get), queue.push(set_), queue.push(get)]
    for slot, reply in zip(slots, [b"$1\r\nv\r\n", b"-WRONGTYPE x\r\n", b"+OK\r\n", b"!3\r\nerr\r\n"]):
        slot.complete(reply)
    assert (get.requests, get.errors, set_.requests, set_.errors) == (3, 2, 1, 0)
    queue.label = slow
    queue.push_error("ERR unknown command")
    queue.push_reply(b"+OK\r\n")
    queue.push().complete(b":1\r\n")
    queue.label = None
    queue.push_reply(b"+OK\r\n")
    queue.flush()
    assert (slow.requests, slow.errors) == (3, 1)
    assert (get.requests, set_.requests) == (3, 1)  # the unlabelled reply counted nowhere


def test_latency_is_observed_for_marked_slots_only(impl: str) -> None:
    now = [10.0]
    queue, writes, flusher = _queue(impl, lambda: now[0])
    row = Row()
    a = queue.push(row)
    queue.mark(9.5)  # a's read began at 9.5
    b, c = queue.push(row), queue.push(row)
    queue.mark(9.75)  # c's
    for slot in (c, b, a):
        slot.complete(b"+OK\r\n")
    assert row.seen == [0.5, 0.25]
    queue.mark(1.0)  # nothing queued: no mark
    d = queue.push(row)
    d.complete(b"+OK\r\n")
    assert row.seen == [0.5, 0.25]


def test_long_runs_and_a_wrapping_queue_keep_order(impl: str) -> None:
    queue, writes, flusher = _queue(impl)
    rng = random.Random(5)
    expected: list[bytes] = []
    owed: list[tuple[Any, bytes]] = []
    for i in range(3000):
        if rng.random() < 0.6 or not owed:
            reply = b":%d\r\n" % i
            owed.append((queue.push(), reply))
            expected.append(reply)
        else:
            slot, reply = owed.pop(rng.randrange(len(owed)))
            slot.complete(reply)
        if rng.random() < 0.1:
            flusher.run()
    for slot, reply in owed:
        slot.complete(reply)
    flusher.run()
    assert [r for w in writes for r in w] == expected
    assert max(len(w) for w in writes) > 16  # runs longer than the C stack buffer


def test_on_flushed_runs_after_each_write_and_may_push(impl: str) -> None:
    queue, writes, flusher = _queue(impl)
    seen: list[int] = []

    def after() -> None:
        seen.append(len(writes))
        if len(seen) == 1:
            queue.push_reply(b"+again\r\n")  # a callback that queues more
            queue.flush()

    queue.on_flushed = after
    queue.push().complete(b"+first\r\n")
    assert writes == [[b"+first\r\n"], [b"+again\r\n"]]
    assert seen == [1, 2]


def test_a_slot_sink_is_called_and_cycles_are_collected(impl: str) -> None:
    slot_cls = IMPLS[impl][1]
    got: list[Any] = []

    class Sink:
        def slot_done(self, slot: Any) -> None:
            got.append(slot.data)

    slot = slot_cls(Sink())
    slot.complete(b"+x\r\n")
    assert got == [b"+x\r\n"]
    if impl == "c":  # the C queue reads the bytes it writes
        with pytest.raises(TypeError):
            slot_cls(None).complete("text")  # type: ignore[arg-type]
    queue, _, _ = _queue(impl)
    pending = queue.push()  # queue -> slot -> queue: a cycle the GC must free
    queue.label = witness = Row()  # held only by the cycle once we let go
    ref = weakref.ref(witness)
    del queue, pending, witness
    gc.collect()
    assert ref() is None


def test_python_callbacks_may_drop_what_the_queue_is_using(impl: str) -> None:
    """Callbacks run during a flush (observe, the stats row) may let go of the queue, the slot's
    row or the stats object: the flush finishes with its own references (C: no use after free;
    checked under valgrind when written)."""
    holder: dict[str, Any] = {}

    class Fickle:
        __slots__ = ("requests", "errors")

        def __init__(self) -> None:
            self.requests = 0
            self.errors = 0

        def observe(self, seconds: float) -> None:
            holder["slot"].sink = None  # the only reference to the queue
            holder["next"].stat = None  # the next slot's row
            holder["queue_stats"] = None

    recorder = Recorder()
    queue = IMPLS[impl][0](Flusher(), lambda: 1.0)
    holder["queue_stats"] = Bytes()
    queue.attach(recorder, holder["queue_stats"])
    row = Fickle()
    first = queue.push(row)
    queue.mark(0.0)
    second = queue.push(Row())
    holder["slot"], holder["next"] = first, second
    second.complete(b"+2\r\n")
    del queue
    first.complete(b"+1\r\n")
    assert recorder.writes == [[b"+1\r\n", b"+2\r\n"]]
    assert row.requests == 1


def test_a_gather_hands_out_its_slots_read_only(impl: str) -> None:
    g, writes, flusher = _gather(impl, b"MGET", 2, [[0], [1]])
    with pytest.raises(TypeError):
        g.slots[0] = "not a slot"
    assert len(g.slots) == 2


def test_split_groups_keys_by_target_keeping_positions() -> None:
    where = {b"a": 1, b"b": 2, b"c": 1, b"d": 3}

    def group(keys: list[bytes]) -> list[tuple[int, list[int]]]:
        groups: dict[int, list[int]] = {}
        for pos, key in enumerate(keys):
            groups.setdefault(where[key], []).append(pos)
        return list(groups.items())

    parts = split([b"MGET", b"a", b"b", b"c", b"d", b"a"], group)
    assert parts == [
        (1, [b"MGET", b"a", b"c", b"a"], [0, 2, 4]),
        (2, [b"MGET", b"b"], [1]),
        (3, [b"MGET", b"d"], [3]),
    ]
    mset = split([b"MSET", b"a", b"1", b"b", b"2", b"c", b"3"], group)
    assert mset == [(1, [b"MSET", b"a", b"1", b"c", b"3"], [0, 2]), (2, [b"MSET", b"b", b"2"], [1])]


GATHERS = {"c": _inflight.Gather, "python": inflight.PyGather}


def _gather(
    impl: str, name: bytes, nkeys: int, positions: list[list[int]]
) -> tuple[Any, list[list[bytes]], Flusher]:
    queue, writes, flusher = _queue(impl)
    parts = [(None, b"", p) for p in positions]
    return GATHERS[impl](queue.push(), merge, name, nkeys, parts), writes, flusher


def test_mget_merge_restores_key_order_with_missing_keys(impl: str) -> None:
    g, writes, flusher = _gather(impl, b"MGET", 4, [[0, 2], [1, 3]])
    g.slots[1].complete(b"*2\r\n$1\r\nb\r\n$-1\r\n")
    g.slots[0].complete(b"*2\r\n$1\r\na\r\n$1\r\nc\r\n")  # parts finish in any order
    flusher.run()
    assert writes == [[b"*4\r\n" + encode_bulk(b"a") + encode_bulk(b"b") + encode_bulk(b"c") + b"$-1\r\n"]]


def test_mget_with_a_failed_part_is_one_error(impl: str) -> None:
    g, writes, flusher = _gather(impl, b"MGET", 2, [[0], [1]])
    g.slots[0].complete(b"*1\r\n$1\r\na\r\n")
    g.slots[1].fail("ERR server b unavailable: connection refused")
    flusher.run()
    assert writes == [[b"-ERR server b unavailable: connection refused\r\n"]]


def test_del_sums_and_mset_is_ok_or_first_error(impl: str) -> None:
    g, writes, flusher = _gather(impl, b"DEL", 3, [[0, 1], [2]])
    g.slots[0].complete(b":2\r\n")
    g.slots[1].complete(b":0\r\n")
    flusher.run()
    assert writes == [[b":2\r\n"]]
    assert all(child.sink is None for child in g.slots)  # no cycle left behind
    g, writes, flusher = _gather(impl, b"EXISTS", 2, [[0], [1]])
    g.slots[0].complete(b":1\r\n")
    g.slots[1].complete(b"+QUEUED\r\n")
    assert writes[0][0].startswith(b"-ERR")  # not what a sum is made of
    g, writes, flusher = _gather(impl, b"MSET", 2, [[0], [1]])
    g.slots[0].complete(b"+OK\r\n")
    g.slots[1].complete(b"-OOM command not allowed\r\n")
    flusher.run()
    assert writes == [[b"-OOM command not allowed\r\n"]]


@pytest.mark.parametrize("impl", ["c", "python"])
def test_merge_arrays_reassembles_key_order_or_refuses_a_misfit(
    impl: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    merge = resp._py_merge_arrays if impl == "python" else _speedups.merge_arrays
    rng = random.Random(7)
    for _ in range(200):
        nkeys = rng.randrange(1, 30)
        items = [rng.choice([b"$-1\r\n", b"_\r\n", b"$%d\r\n%s\r\n" % (i, b"x" * i)]) for i in range(nkeys)]
        order = list(range(nkeys))
        rng.shuffle(order)
        cut = sorted(rng.sample(range(1, nkeys), min(2, nkeys - 1))) if nkeys > 1 else []
        groups = [order[a:b] for a, b in zip([0, *cut], [*cut, nkeys])]
        parts = [b"*%d\r\n" % len(g) + b"".join(items[k] for k in g) for g in groups]
        split = [(None, b"", g) for g in groups]  # the split's tuples: positions come last
        assert merge(parts, split, nkeys) == b"*%d\r\n" % nkeys + b"".join(items)
    assert merge([b"*1\r\n$1\r\na\r\n"], [([0, 1],)], 2) is None  # too few items
    assert merge([b"-ERR x\r\n"], [([0],)], 1) is None  # not an array
    assert merge([b"*1\r\n$1\r\na\r\n", b"*1\r\n$1\r\nb\r\n"], [([0],), ([0],)], 2) is None
    assert merge([b"*1\r\n$1\r\na\r\n"], [([0],), ([1],)], 2) is None  # a reply missing


def test_c_and_python_encoders_agree() -> None:
    rng = random.Random(3)
    for n in range(1, 40):
        args = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))) for _ in range(n)]
        assert _speedups.encode_command(args) == resp._py_encode_command(args)
    with pytest.raises(TypeError):
        _speedups.encode_command([b"GET", 1])  # type: ignore[list-item]
