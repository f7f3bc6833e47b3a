"""One client connection (proxy/client.py) without sockets: a fake transport and a fake pool.

The client is driven only through its public entry points (constructed as server.py does,
then ``connection_made``, ``data_received``, ``eof_received``, ``connection_lost``,
``pause_writing`` / ``resume_writing``) and observed only through what it does to them:

* ``FakeTransport`` keeps every byte written, the order of the calls made on it
  (``pause_reading``, ``resume_reading``, ``close``, ``abort``) and models an asyncio
  transport's write buffer: writes stay *unsent* until the test ``drain``s them, past the high
  mark it calls ``pause_writing`` and at or under the low mark ``resume_writing``, as asyncio and
  uvloop do. ``close`` and ``abort`` call ``connection_lost`` on the next loop turn.
* ``FakePool`` routes keys starting with ``a`` to target A and the rest to target B (B also
  offers the ``direct`` shortcut a one-lane server has), records every request sent to them,
  and lets the test complete each request's reply slot with raw RESP bytes, in any order.
  No Redis is faked: nothing answers unless the test says so.

Replies are flushed by the shared ``Flusher`` on a ``call_soon`` (as server.py wires it), so the
tests take a loop turn (``await turn()``) where the code defers a write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from proxy import acl, errors
from proxy.client import ClientConnection, ClientLimits
from proxy.config import ClientLimitsConfig, PoolConfig
from proxy.inflight import Flusher, ReplySlot
from proxy.metrics import PoolStats
from proxy.resp import RequestParser
from proxy.target import Parts, Placement, Route, Target
from proxy.upstream import Server

# --- RESP helpers (written out here, not borrowed from the code under test) ----------------


def _b(x: str | bytes) -> bytes:
    return x.encode() if isinstance(x, str) else x


def cmd(*args: str | bytes) -> bytes:
    """A request as a client library encodes it (multibulk)."""
    out = b"*%d\r\n" % len(args)
    for a in map(_b, args):
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def bulk(x: str | bytes) -> bytes:
    x = _b(x)
    return b"$%d\r\n%s\r\n" % (len(x), x)


def bulk_of_size(total: int) -> bytes:
    """A bulk string reply exactly ``total`` bytes long on the wire."""
    for body in range(total, -1, -1):
        raw = bulk(b"x" * body)
        if len(raw) == total:
            return raw
    raise ValueError(total)


OK = b"+OK\r\n"
PONG = b"+PONG\r\n"


def answer(payload: bytes) -> bytes:
    """What the test answers a request the pool received (a deterministic stand-in)."""
    (args, _), *more = list(RequestParser().commands(payload))
    assert not more, payload
    name, keys = args[0].upper(), args[1:]
    if name == b"GET":
        return bulk(b"v:" + keys[0])
    if name == b"SET":
        return OK
    if name == b"INCR":
        return b":1\r\n"
    if name == b"MGET":
        return b"*%d\r\n" % len(keys) + b"".join(bulk(b"v:" + k) for k in keys)
    if name in (b"DEL", b"EXISTS"):
        return b":%d\r\n" % len(keys)
    raise AssertionError(f"unexpected request {payload!r}")


# --- the fakes -----------------------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    """An asyncio transport in memory, with asyncio's write-buffer flow control."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()  # every byte written, in order
        self.calls: list[str] = []  # "write", "pause_reading", "resume_reading", "close", "abort"
        self.unsent = 0  # written, not yet taken by the peer (drain)
        self.high: int | None = None
        self.low = 0
        self.writing_paused = False  # pause_writing sent to the protocol, resume not yet
        self.reading = True
        self.closing = False
        self.aborted = False
        self.lost = False

    # flow control, as asyncio's _FlowControlMixin and uvloop do it
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        assert high is not None
        self.high = high
        self.low = low if low is not None else high // 4
        self._maybe_pause()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        assert self.high is not None
        return self.low, self.high

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def _maybe_pause(self) -> None:
        if self.high is not None and not self.writing_paused and self.unsent > self.high:
            self.writing_paused = True
            self.protocol.pause_writing()

    def drain(self, n: int | None = None) -> None:
        """The peer takes ``n`` unsent bytes (all by default)."""
        self.unsent -= self.unsent if n is None else n
        assert self.unsent >= 0
        if self.writing_paused and self.unsent <= self.low:
            self.writing_paused = False
            self.protocol.resume_writing()

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        assert not self.lost, "write after connection_lost"
        self.calls.append("write")
        self.written += data
        self.unsent += len(data)
        self._maybe_pause()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def pause_reading(self) -> None:
        assert self.reading, "pause_reading while paused"
        self.calls.append("pause_reading")
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading, "resume_reading while reading"
        self.calls.append("resume_reading")
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.calls.append("close")
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.lose, None)

    def abort(self) -> None:
        self.calls.append("abort")
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 6379)}.get(name, default)

    # what the event loop does
    def lose(self, exc: Exception | None) -> None:
        """The connection is gone (after close/abort, or the peer reset it): once."""
        if not self.lost:
            self.lost = self.closing = True
            self.protocol.connection_lost(exc)

    def feed_eof(self) -> None:
        """The peer half-closed: asyncio closes the transport unless eof_received says not to."""
        if not self.protocol.eof_received():
            self.close()


@dataclass
class Sent:
    target: str
    payload: bytes
    slot: ReplySlot


class FakeTarget:
    """A pool's server: records requests (B also takes the one-lane ``direct`` shortcut)."""

    def __init__(self, name: str, sent: list[Sent], direct: bool) -> None:
        self.name = name
        self._sent = sent
        self.direct: Callable[[bytes, ReplySlot], None] | None = self._direct if direct else None

    def send(self, payload: bytes, slot: ReplySlot, *, resp3: bool = False, lane: int = 0) -> None:
        assert not resp3, "a RESP2 client's request"
        self._sent.append(Sent(self.name, payload, slot))

    def _direct(self, payload: bytes, slot: ReplySlot) -> None:
        self._sent.append(Sent(self.name, payload, slot))


class FakePool:
    """A ``pool.Pool``: keys ``a...`` on target A, the rest on B; requests only recorded."""

    route_read: Route | None = None
    unrouted = errors.no_server_for_key()
    strips = False

    def __init__(self, limits: ClientLimitsConfig) -> None:
        self.config = PoolConfig(name="p", listen=None, servers=(), client_limits=limits)
        self.name = "p"
        self.stats = PoolStats()
        self.servers: list[Server] = []
        self.sent: list[Sent] = []
        self.targets = {"A": FakeTarget("A", self.sent, False), "B": FakeTarget("B", self.sent, True)}
        self.route: Route = self._route

    def _route(self, key: bytes) -> Target | None:
        return self.targets["A" if key.startswith(b"a") else "B"]

    def strip(self, key: bytes) -> bytes:
        return key

    def route_many(self, keys: list[bytes], read: bool) -> Target | None | str:
        found = {self._route(k) for k in keys}
        return found.pop() if len(found) == 1 else errors.CROSS_SERVER

    def split_command(self, args: list[bytes]) -> Parts | None:
        return None  # the client splits with group_keys

    def group_keys(self, keys: list[bytes], read: bool) -> Sequence[tuple[Target | None, list[int]]]:
        groups: dict[Target | None, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(self._route(key), []).append(i)
        return list(groups.items())

    def place(self, keys: Sequence[bytes]) -> Placement | str:
        return "ERR not in this fake"

    def keyspace_servers(self, replicas: bool = False) -> list[Server] | str:
        return "ERR not in this fake"

    def pattern_servers(self) -> list[Server] | str:
        return "ERR not in this fake"

    def settle(self, then: Callable[[], None]) -> None:
        then()

    def map_changed(self) -> None:
        pass

    def start(self) -> None:
        pass

    async def ready(self, timeout_s: float) -> bool:
        return True

    def can_serve(self) -> tuple[bool, str]:
        return True, ""

    def close(self) -> None:
        pass

    # for the tests
    def payloads(self) -> list[tuple[str, bytes]]:
        return [(s.target, s.payload) for s in self.sent]

    def complete(self, i: int, raw: bytes | None = None) -> None:
        """Answer the ``i``-th request received (with ``answer``'s reply by default)."""
        sent = self.sent[i]
        sent.slot.complete(answer(sent.payload) if raw is None else raw)


class Harness:
    """A client connection as server.py makes it, on a fake transport and a fake pool."""

    def __init__(
        self,
        max_pending: int = 4096,
        max_reply_bytes: int = 4 * 1024 * 1024,
        client_limits: ClientLimitsConfig | None = None,
        users: tuple[acl.User, ...] = (),
    ) -> None:
        loop = asyncio.get_running_loop()
        self.pool = FakePool(client_limits or ClientLimitsConfig())
        self.pool.config = dataclasses.replace(self.pool.config, users=users)
        self.closed: list[ClientConnection] = []
        # (by keyword: the same call whether or not the parameters become keyword-only)
        self.client = ClientConnection(
            pool=self.pool,
            flusher=Flusher(loop.call_soon),  # as server.py: flushes at the end of a loop turn
            limits=ClientLimits(max_pending=max_pending, max_reply_bytes=max_reply_bytes),
            on_open=lambda c: True,
            on_close=self.closed.append,
        )
        self.transport = FakeTransport(self.client)
        self.client.connection_made(self.transport)

    def feed(self, data: bytes, cuts: Sequence[int] = ()) -> None:
        """``data`` as reads cut at ``cuts`` (offsets)."""
        start = 0
        for end in [*cuts, len(data)]:
            if end > start:
                self.client.data_received(data[start:end])
                start = end

    @property
    def out(self) -> bytes:
        return bytes(self.transport.written)


def closed_after_the_last_write(calls: list[str]) -> bool:
    """The transport was closed (not aborted), and nothing was written once it was."""
    return "close" in calls and "abort" not in calls and "write" not in calls[calls.index("close") :]


async def turn() -> None:
    """One event loop turn: what was call_soon'ed (the flusher's run, a close's connection_lost)."""
    await asyncio.sleep(0)


def chunkings(n: int) -> dict[str, list[int]]:
    """Ways to cut an n-byte stream into reads: whole, byte by byte, random cuts."""
    ways: dict[str, list[int]] = {"whole": [], "bytewise": list(range(1, n))}
    for seed in range(4):
        rng = random.Random(seed)
        ways[f"random{seed}"] = sorted(rng.sample(range(1, n), rng.randint(1, min(12, n - 1))))
    return ways


CUTS = ["whole", "bytewise", "random0", "random1", "random2", "random3"]


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A callback that raised in the loop, or the client's "internal error", fails the test."""
    yield
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, bad


# --- 1. one read or many: the same requests out, the same bytes back, in order ---------------

PIPELINE = [
    cmd("GET", "a1"),
    cmd("SET", "b1", "x"),
    cmd("PING"),
    cmd("MGET", "a2", "b2", "a3"),  # split over A and B, merged back
    b"ECHO hi\r\n",  # inline: the C framer stops here, Python frames the rest
    cmd("incr", "a4"),  # lower case: still the fast path
    cmd("DEL", "a5", "b5"),  # split, replies summed
    cmd("GET", "b6"),
    cmd("EXISTS", "a7", "a8"),  # a multi-key command on one server: not split
    cmd("PING", "hello"),
    cmd("GET", "a9"),
]
PIPELINE_SENT = [
    ("A", cmd("GET", "a1")),
    ("B", cmd("SET", "b1", "x")),
    ("A", cmd("MGET", "a2", "a3")),
    ("B", cmd("MGET", "b2")),
    ("A", cmd("incr", "a4")),
    ("A", cmd("DEL", "a5")),
    ("B", cmd("DEL", "b5")),
    ("B", cmd("GET", "b6")),
    ("A", cmd("EXISTS", "a7", "a8")),
    ("A", cmd("GET", "a9")),
]
PIPELINE_REPLIES = [
    bulk("v:a1"),
    OK,
    PONG,
    b"*3\r\n" + bulk("v:a2") + bulk("v:b2") + bulk("v:a3"),
    bulk("hi"),
    b":1\r\n",
    b":2\r\n",
    bulk("v:b6"),
    b":2\r\n",
    bulk("hello"),
    bulk("v:a9"),
]


@pytest.mark.parametrize("completion_seed", [0, 1, 2])
@pytest.mark.parametrize("cut", CUTS)
@pytest.mark.parametrize("inline", [True, False], ids=["with-inline", "all-multibulk"])
async def test_one_read_or_many_the_same_requests_and_the_same_replies_in_order(
    inline: bool, cut: str, completion_seed: int
) -> None:
    """All multibulk, a whole read is framed in one go (the C framer when built); with the
    inline ECHO, framing switches over midway; cut into reads, a request is resumed across them."""
    h = Harness()
    pipeline = PIPELINE if inline else [cmd("ECHO", "hi") if r == b"ECHO hi\r\n" else r for r in PIPELINE]
    stream = b"".join(pipeline)
    h.feed(stream, chunkings(len(stream))[cut])
    assert h.pool.payloads() == PIPELINE_SENT
    assert h.out == b""  # GET a1 is owed first: the PONG waits behind it
    rng = random.Random(completion_seed)
    order = list(range(len(h.pool.sent)))
    rng.shuffle(order)
    if order[0] == 0:  # the head last, at least once: everything waits on it
        order.reverse()
    for i in order:
        h.pool.complete(i)
        if rng.random() < 0.5:
            await turn()
    await turn()
    assert h.out == b"".join(PIPELINE_REPLIES)
    assert h.transport.calls.count("pause_reading") == 0 and not h.transport.closing


async def test_replies_leave_as_soon_as_the_head_run_is_complete() -> None:
    """Out-of-order completions are held back by the first reply still owed, no longer."""
    h = Harness()
    h.feed(cmd("GET", "a1") + cmd("GET", "b2") + cmd("PING") + cmd("GET", "a3"))
    h.pool.complete(1)  # b2: a1 still owed
    h.pool.complete(2)  # a3
    await turn()
    assert h.out == b""
    h.pool.complete(0)
    await turn()
    assert h.out == bulk("v:a1") + bulk("v:b2") + PONG + bulk("v:a3")


# --- 2. backpressure ------------------------------------------------------------------------


async def test_pending_requests_pause_reading_at_max_pending_and_resume_under_half() -> None:
    h = Harness(max_pending=8)
    calls = h.transport.calls
    h.feed(b"".join(cmd("GET", f"a{i}") for i in range(7)))
    assert "pause_reading" not in calls  # 7 owed: under the limit
    h.feed(cmd("GET", "a7"))
    assert calls == ["pause_reading"] and not h.transport.reading  # 8 owed: at it
    for i in range(4):
        h.pool.complete(i)
    await turn()
    assert h.out == b"".join(bulk(f"v:a{i}") for i in range(4))
    assert not h.transport.reading  # 4 owed: half, still paused
    h.pool.complete(4)
    await turn()
    assert calls[-1] == "resume_reading" and h.transport.reading  # 3 owed: under half
    assert calls.count("pause_reading") == 1 and calls.count("resume_reading") == 1


async def test_a_read_past_max_pending_is_served_whole_then_reading_pauses() -> None:
    h = Harness(max_pending=4)
    h.feed(b"".join(cmd("GET", f"a{i}") for i in range(10)))
    assert len(h.pool.sent) == 10  # (nothing of a read is left unserved)
    assert not h.transport.reading
    for i in range(10):
        h.pool.complete(i)
    await turn()
    assert h.transport.reading
    assert h.out == b"".join(bulk(f"v:a{i}") for i in range(10))


async def test_pending_local_replies_count_too() -> None:
    """Replies answered in place but owed behind a pool reply count against max_pending."""
    h = Harness(max_pending=4)
    h.feed(cmd("GET", "a1") + cmd("PING") + cmd("PING"))
    assert h.transport.reading
    h.feed(cmd("ECHO", "e"))
    assert not h.transport.reading
    h.pool.complete(0)
    await turn()
    assert h.transport.reading
    assert h.out == bulk("v:a1") + PONG + PONG + bulk("e")


@pytest.mark.parametrize(
    ("max_reply_bytes", "hard", "soft", "high"),
    [
        (100, 1000, 0, 100),  # the proxy's own pause point
        (100, 1000, 60, 60),  # the soft output limit first
        (4 << 20, 80, 0, 80),  # the hard output limit first
        (100, 0, 0, 100),  # limits off
    ],
)
async def test_the_write_buffer_high_mark_is_the_first_of_the_limits(
    max_reply_bytes: int, hard: int, soft: int, high: int
) -> None:
    h = Harness(
        max_reply_bytes=max_reply_bytes,
        client_limits=ClientLimitsConfig(output_hard_bytes=hard, output_soft_bytes=soft),
    )
    assert h.transport.high == high


async def test_pause_writing_stops_reading_and_resume_writing_resumes_it() -> None:
    h = Harness()
    h.client.pause_writing()
    assert h.transport.calls == ["pause_reading"]
    h.client.resume_writing()
    assert h.transport.calls == ["pause_reading", "resume_reading"]
    h.feed(cmd("GET", "a1"))  # and it serves requests as before
    h.pool.complete(0)
    await turn()
    assert h.out == bulk("v:a1")


async def test_unsent_reply_bytes_past_max_reply_bytes_pause_reading_until_drained() -> None:
    """The transport's high mark is max_reply_bytes: exactly at it reading goes on, one byte past
    it reading pauses (pause_writing); it resumes at the low mark (resume_writing)."""
    h = Harness(
        max_reply_bytes=100, client_limits=ClientLimitsConfig(output_hard_bytes=0, output_soft_bytes=0)
    )
    t = h.transport
    h.feed(cmd("GET", "a1") + cmd("GET", "a2"))
    h.pool.complete(0, bulk_of_size(100))
    await turn()
    assert t.unsent == 100 and t.reading  # at the high mark
    h.pool.complete(1, b":1\r\n")
    await turn()
    assert t.unsent == 104 and not t.reading  # past it
    t.drain(104 - 26)
    assert not t.reading  # 26 unsent: over the low mark (100 // 4)
    t.drain(1)
    assert t.reading and t.calls[-1] == "resume_reading"


async def test_resume_writing_does_not_resume_reading_while_requests_are_owed_past_half() -> None:
    h = Harness(max_pending=4, max_reply_bytes=100)
    t = h.transport
    h.feed(b"".join(cmd("GET", f"a{i}") for i in range(4)))  # at max_pending: paused
    assert not t.reading
    h.client.pause_writing()
    h.client.resume_writing()
    assert not t.reading  # 4 owed
    h.pool.complete(0)
    h.pool.complete(1)
    await turn()
    assert not t.reading  # 2 owed: half
    h.client.pause_writing()  # and now the writes back up
    h.pool.complete(2)
    await turn()
    assert not t.reading  # 1 owed, but writing is paused
    h.client.resume_writing()
    assert t.reading
    assert t.calls.count("pause_reading") == 1 and t.calls.count("resume_reading") == 1


async def test_owed_replies_past_the_hard_output_limit_close_the_client_at_once() -> None:
    """client_output_buffer_limit's hard bytes: at it the client stays, one past it it is
    aborted (what is unsent is dropped, as Redis does), and counted."""
    limits = ClientLimitsConfig(output_hard_bytes=300, output_soft_bytes=0)
    h = Harness(max_reply_bytes=100, client_limits=limits)
    t = h.transport
    h.feed(cmd("GET", "a1") + cmd("GET", "a2") + cmd("GET", "a3") + cmd("GET", "a4"))
    h.pool.complete(0, bulk_of_size(150))
    await turn()
    assert not t.reading and not t.aborted  # paused writing at 150 (> 100), under 300
    h.pool.complete(1, bulk_of_size(150))
    await turn()
    assert t.unsent == 300 and not t.aborted  # exactly at the hard limit
    h.pool.complete(2, b":1\r\n")
    await turn()
    assert t.aborted  # 304
    await turn()
    assert t.lost
    assert h.pool.stats.closed["output_buffer_limit"] == 1
    assert h.closed == [h.client]
    h.pool.complete(3)  # late: into nothing
    await turn()
    assert t.unsent == 304


async def test_soft_output_limit_with_no_grace_closes_one_byte_past_it() -> None:
    limits = ClientLimitsConfig(output_hard_bytes=0, output_soft_bytes=200, output_soft_seconds=0)
    h = Harness(max_reply_bytes=100, client_limits=limits)
    h.feed(cmd("GET", "a1") + cmd("GET", "a2"))
    h.pool.complete(0, bulk_of_size(200))
    await turn()
    assert not h.transport.reading and not h.transport.aborted  # paused, at the soft limit
    h.pool.complete(1, b":1\r\n")
    await turn()
    assert h.transport.aborted
    assert h.pool.stats.closed["output_buffer_limit"] == 1


async def test_unframed_request_bytes_past_the_query_buffer_limit_close_the_client() -> None:
    h = Harness(client_limits=ClientLimitsConfig(query_buffer_bytes=64))
    partial = cmd("SET", "a1", "v" * 100)[:64]
    h.feed(partial, list(range(1, 64)))
    assert not h.transport.aborted  # 64 bytes held: at the limit
    h.feed(b"v")
    assert h.transport.aborted  # 65
    assert h.pool.stats.closed["query_buffer_limit"] == 1
    assert h.pool.sent == []
    await turn()
    assert h.closed == [h.client]


# --- 3. closing after the replies owed --------------------------------------------------------


@pytest.mark.parametrize("after", [b"", cmd("GET", "a2")], ids=["quit-last", "request-after-quit"])
@pytest.mark.parametrize("cut", CUTS)
async def test_quit_after_pipelined_requests_writes_every_owed_reply_then_ok_then_closes(
    cut: str, after: bytes
) -> None:
    h = Harness()
    t = h.transport
    stream = cmd("GET", "a1") + cmd("GET", "b1") + cmd("PING") + cmd("QUIT") + after
    h.feed(stream, chunkings(len(stream))[cut])
    h.feed(cmd("GET", "b3"))  # a later read
    assert h.pool.payloads() == [("A", cmd("GET", "a1")), ("B", cmd("GET", "b1"))]
    assert not t.closing and not t.reading  # closing: reads no more, waits for the replies owed
    h.pool.complete(1)
    await turn()
    assert h.out == b"" and not t.closing
    h.pool.complete(0)
    assert h.out == bulk("v:a1") + bulk("v:b1") + PONG + OK
    assert closed_after_the_last_write(t.calls)
    h.feed(cmd("GET", "a4"))
    await turn()
    assert t.lost and h.closed == [h.client]
    assert len(h.pool.sent) == 2 and closed_after_the_last_write(t.calls)
    assert h.pool.stats.client_eof == 1 and h.pool.stats.client_err == 0


async def test_quit_with_nothing_owed_closes_after_ok() -> None:
    h = Harness()
    h.feed(cmd("QUIT") + cmd("GET", "a1"))
    assert h.out == OK and closed_after_the_last_write(h.transport.calls)
    assert h.pool.sent == []


@pytest.mark.parametrize(
    ("bad", "text"),
    [
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*1\r\n$abc\r\n", "invalid bulk length"),
        (b"*-5\r\n*1\r\nX\r\n", "expected '$', got 'X'"),  # (*-5: an empty request, as in Redis)
    ],
)
@pytest.mark.parametrize("cut", CUTS)
async def test_a_protocol_error_after_pipelined_requests_closes_after_the_owed_replies(
    cut: str, bad: bytes, text: str
) -> None:
    h = Harness()
    t = h.transport
    good = cmd("GET", "a1") + cmd("ECHO", "x") + cmd("GET", "b1")
    stream = good + bad + cmd("GET", "a2")
    h.feed(stream, chunkings(len(stream))[cut])
    assert h.pool.payloads() == [("A", cmd("GET", "a1")), ("B", cmd("GET", "b1"))]
    assert not t.closing
    h.pool.complete(0)
    await turn()
    assert h.out == bulk("v:a1") + bulk("x") and not t.closing
    h.pool.complete(1)
    error = b"-ERR Protocol error: " + text.encode() + b"\r\n"
    assert h.out == bulk("v:a1") + bulk("x") + bulk("v:b1") + error
    assert closed_after_the_last_write(t.calls)
    h.feed(cmd("GET", "a3"))
    await turn()
    assert len(h.pool.sent) == 2 and t.lost
    assert h.pool.stats.client_err == 1 and h.pool.stats.client_eof == 0


async def test_connection_lost_with_replies_outstanding_drops_them_quietly() -> None:
    h = Harness()
    t = h.transport
    h.feed(cmd("GET", "a1") + cmd("MGET", "a2", "b2") + cmd("PING") + cmd("GET", "b3"))
    sent = h.pool.payloads()
    assert [p for _, p in sent] == [cmd("GET", "a1"), cmd("MGET", "a2"), cmd("MGET", "b2"), cmd("GET", "b3")]
    h.pool.complete(0)
    await turn()
    assert h.out == bulk("v:a1")
    h.pool.complete(3)  # b3
    h.pool.complete(2)  # MGET's B part
    t.lose(ConnectionResetError(104, "Connection reset by peer"))
    assert h.closed == [h.client]
    assert h.pool.stats.client_err == 1
    h.pool.complete(1)  # MGET's A part: the merge completes into a closed queue
    for i in range(4):
        h.pool.complete(i, b"-ERR late\r\n")  # and again: ignored
    await turn()
    assert h.out == bulk("v:a1")
    assert t.calls == ["write"]  # no pause, no close: nothing more happened to the transport


async def test_eof_from_the_client_closes_and_late_replies_are_dropped() -> None:
    """A client that half-closes is closed (as Redis frees it): its owed replies are dropped."""
    h = Harness()
    t = h.transport
    h.feed(cmd("GET", "a1") + cmd("GET", "b1"))
    t.feed_eof()
    assert t.closing
    await turn()
    assert t.lost and h.closed == [h.client] and h.pool.stats.client_eof == 1
    h.pool.complete(0)
    h.pool.complete(1)
    await turn()
    assert h.out == b""


# --- 4. local commands keep their place in the order ----------------------------------------


@pytest.mark.parametrize("cut", CUTS)
async def test_local_commands_interleaved_with_pool_commands_keep_order(cut: str) -> None:
    h = Harness()
    stream = (
        cmd("PING")
        + cmd("GET", "a1")
        + cmd("ECHO", "hello")
        + cmd("ping", "msg")
        + cmd("FOO", "bar")
        + cmd("GET", "b1")
        + cmd("SELECT", "0")
        + cmd("ECHO")
        + cmd("echo", "x")
    )
    h.feed(stream, chunkings(len(stream))[cut])
    assert h.pool.payloads() == [("A", cmd("GET", "a1")), ("B", cmd("GET", "b1"))]
    assert h.out == PONG  # nothing owed before it: written at once
    h.pool.complete(1)
    await turn()
    assert h.out == PONG
    h.pool.complete(0)
    await turn()
    assert h.out == (
        PONG
        + bulk("v:a1")
        + bulk("hello")
        + bulk("msg")
        + b"-ERR unknown command 'FOO', with args beginning with: 'bar' \r\n"
        + bulk("v:b1")
        + OK
        + b"-ERR wrong number of arguments for 'echo' command\r\n"
        + bulk("x")
    )
    assert h.pool.stats.commands["ping"].requests == 2


# --- ACL users: every command of a user with limited rights is checked --------------------

APP = acl.make_user("app", passwords=[acl.digest("pw")], commands=["+@read", "+@write"], keys=["a*"])
READER = acl.make_user("app", passwords=[acl.digest("pw")], commands=["+@read"], keys=["a*"])


async def test_a_limited_user_pipeline_is_checked_command_by_command_and_key_by_key() -> None:
    h = Harness(users=(APP,))
    # AUTH and a split command in one read: the split one is checked as the new user's
    h.feed(cmd("GET", "a1") + cmd("AUTH", "app", "pw") + cmd("MGET", "a0", "b0"))
    h.feed(cmd("GET", "a1") + cmd("GET", "b1") + cmd("MGET", "a2", "b2") + cmd("MGET", "a3", "a4"))
    h.feed(cmd("PING") + cmd("SET", "a5", "x") + cmd("MSET", "a6", "1", "b6", "2"))
    await turn()
    # only the allowed ones reached the pool: nothing before AUTH, no key outside a*
    assert h.pool.payloads() == [
        ("A", cmd("GET", "a1")),
        ("A", cmd("MGET", "a3", "a4")),
        ("A", cmd("SET", "a5", "x")),
    ]
    for i in range(3):
        h.pool.complete(i)
    await turn()
    noperm_key = b"-" + acl.NOPERM_KEY.encode() + b"\r\n"
    assert h.out == (
        b"-" + errors.NOAUTH.encode() + b"\r\n"
        + OK
        + noperm_key
        + bulk("v:a1")
        + noperm_key
        + noperm_key
        + b"*2\r\n" + bulk("v:a3") + bulk("v:a4")
        + b"-NOPERM this user has no permissions to run the 'ping' command\r\n"
        + OK
        + noperm_key
    )  # fmt: skip
    assert h.pool.stats.acl_denials == 5


async def test_a_reload_gives_connected_clients_their_users_new_rights_or_closes_them() -> None:
    h = Harness(users=(APP,))
    h.feed(cmd("AUTH", "app", "pw") + cmd("SET", "a1", "x"))
    await turn()
    assert len(h.pool.sent) == 1
    h.pool.complete(0)
    h.pool.config = dataclasses.replace(h.pool.config, users=(READER,))
    h.client.set_pool(h.pool)  # what a reload does to the front's clients
    h.feed(cmd("SET", "a2", "x") + cmd("GET", "a2"))
    await turn()
    assert h.pool.payloads()[1:] == [("A", cmd("GET", "a2"))]  # write rights gone at once
    assert b"'set' command" in h.out
    h.pool.config = dataclasses.replace(h.pool.config, users=())
    h.client.set_pool(h.pool)  # the user is gone: closed once its replies are written
    h.pool.complete(1)
    await turn()
    await turn()
    assert h.closed == [h.client] and closed_after_the_last_write(h.transport.calls)
    assert h.pool.stats.closed["user_removed"] == 1
