"""Reply ordering (inflight) and fan-out split/merge, without any I/O."""

from __future__ import annotations

from proxy.fanout import Gather, array_items, split
from proxy.inflight import Flusher, ReplyQueue
from proxy.resp import encode_bulk


def _queue() -> tuple[ReplyQueue, list[list[bytes]], Flusher]:
    writes: list[list[bytes]] = []
    flusher = Flusher()
    return ReplyQueue(writes.append, flusher), writes, flusher


def test_replies_leave_in_request_order_whatever_order_they_complete() -> None:
    queue, writes, flusher = _queue()
    s1, s2, s3, s4 = (queue.push() for _ in range(4))
    s2.complete(b"+2\r\n")
    s4.complete(b"+4\r\n")
    flusher.run()
    assert writes == []  # r1 still owed: nothing may leave
    s1.complete(b"+1\r\n")
    flusher.run()
    assert writes == [[b"+1\r\n", b"+2\r\n"]]  # the head run, in one write
    s3.complete(b"+3\r\n")
    flusher.run()
    assert writes[-1] == [b"+3\r\n", b"+4\r\n"]
    assert len(queue) == 0


def test_a_slot_completes_exactly_once() -> None:
    queue, writes, flusher = _queue()
    slot = queue.push()
    slot.fail("ERR server x timed out")
    slot.complete(b"+late\r\n")
    flusher.run()
    assert writes == [[b"-ERR server x timed out\r\n"]]


def test_closed_queue_swallows_late_replies() -> None:
    queue, writes, flusher = _queue()
    slot = queue.push()
    queue.close()
    slot.complete(b"+OK\r\n")
    flusher.run()
    assert writes == []


def test_split_groups_keys_by_target_keeping_positions() -> None:
    where = {b"a": 1, b"b": 2, b"c": 1, b"d": 3}
    def locate(keys: list[bytes]) -> list[int]:
        return [where[k] for k in keys]

    parts = split([b"MGET", b"a", b"b", b"c", b"d", b"a"], locate)
    assert parts == [
        (1, [b"MGET", b"a", b"c", b"a"], [0, 2, 4]),
        (2, [b"MGET", b"b"], [1]),
        (3, [b"MGET", b"d"], [3]),
    ]
    mset = split([b"MSET", b"a", b"1", b"b", b"2", b"c", b"3"], locate)
    assert mset == [(1, [b"MSET", b"a", b"1", b"c", b"3"], [0, 2]), (2, [b"MSET", b"b", b"2"], [1])]


def _gather(name: bytes, nkeys: int, positions: list[list[int]]) -> tuple[Gather, list[list[bytes]], Flusher]:
    queue, writes, flusher = _queue()
    return Gather(queue.push(), name, nkeys, positions), writes, flusher


def test_mget_merge_restores_key_order_with_missing_keys() -> None:
    g, writes, flusher = _gather(b"MGET", 4, [[0, 2], [1, 3]])
    g.child(1).complete(b"*2\r\n$1\r\nb\r\n$-1\r\n")
    g.child(0).complete(b"*2\r\n$1\r\na\r\n$1\r\nc\r\n")  # parts finish in any order
    flusher.run()
    assert writes == [[b"*4\r\n" + encode_bulk(b"a") + encode_bulk(b"b") + encode_bulk(b"c") + b"$-1\r\n"]]


def test_mget_with_a_failed_part_is_one_error() -> None:
    g, writes, flusher = _gather(b"MGET", 2, [[0], [1]])
    g.child(0).complete(b"*1\r\n$1\r\na\r\n")
    g.child(1).fail("ERR server b unavailable: connection refused")
    flusher.run()
    assert writes == [[b"-ERR server b unavailable: connection refused\r\n"]]


def test_del_sums_and_mset_is_ok_or_first_error() -> None:
    g, writes, flusher = _gather(b"DEL", 3, [[0, 1], [2]])
    g.child(0).complete(b":2\r\n")
    g.child(1).complete(b":0\r\n")
    flusher.run()
    assert writes == [[b":2\r\n"]]
    g, writes, flusher = _gather(b"MSET", 2, [[0], [1]])
    g.child(0).complete(b"+OK\r\n")
    g.child(1).complete(b"-OOM command not allowed\r\n")
    flusher.run()
    assert writes == [[b"-OOM command not allowed\r\n"]]


def test_array_items() -> None:
    assert array_items(b"*2\r\n$1\r\na\r\n$-1\r\n") == [b"$1\r\na\r\n", b"$-1\r\n"]
    assert array_items(b"*0\r\n") == []
    assert array_items(b"+OK\r\n") is None
