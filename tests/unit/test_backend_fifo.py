"""A backend connection's reply FIFO, without sockets: replies meet their own requests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from proxy.backend import BackendConnection
from proxy.inflight import ReplySlot


class Sent:
    """An in-memory transport: keeps what the connection writes."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.out.extend(data)

    def abort(self) -> None: ...

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default  # (no socket, no TLS)


class Got:
    def __init__(self) -> None:
        self.replies: list[bytes] = []

    def slot_done(self, slot: Any) -> None:
        self.replies.append(slot.data)


class Broken:
    def slot_done(self, slot: Any) -> None:
        raise RuntimeError("a bug in a sink")


@pytest.fixture()
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _unconnected(loop: asyncio.AbstractEventLoop, timeout_ms: int) -> tuple[BackendConnection, list[str]]:
    """A connection to server s1 of pool p, not connected yet; the reasons it was lost."""
    lost: list[str] = []
    conn = BackendConnection(
        "s1",
        "p",
        loop,
        timeout_ms=timeout_ms,
        init_commands=[],
        on_lost=lambda c, why, loss: lost.append(why),
        on_ready=lambda: None,
    )
    return conn, lost


def _connection(loop: asyncio.AbstractEventLoop) -> tuple[BackendConnection, list[str]]:
    conn, lost = _unconnected(loop, 1000)
    conn.connection_made(Sent())  # type: ignore[arg-type]
    return conn, lost


def test_a_sink_that_raises_does_not_shift_the_replies_after_it(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    conn, lost = _connection(loop)
    got = Got()
    conn.send(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n", ReplySlot(got))
    conn.send(b"*2\r\n$3\r\nGET\r\n$1\r\nb\r\n", ReplySlot(Broken()))
    conn.send(b"*2\r\n$3\r\nGET\r\n$1\r\nc\r\n", ReplySlot(got))
    conn.data_received(b"$1\r\nA\r\n$1\r\nB\r\n")
    conn.data_received(b"$1\r\nC\r\n")
    assert got.replies == [b"$1\r\nA\r\n", b"$1\r\nC\r\n"]  # c's reply is c's
    assert "handing on a reply failed" in caplog.text
    assert not lost and conn.in_flight() == 0


def test_a_reply_without_a_request_closes_the_connection(loop: asyncio.AbstractEventLoop) -> None:
    conn, lost = _connection(loop)
    got = Got()
    conn.send(b"*1\r\n$4\r\nPING\r\n", ReplySlot(got))
    conn.data_received(b"+PONG\r\n+PONG\r\n")
    assert lost == ["reply without a request"]


from proxy.resp import STREAM_MIN_BYTES  # noqa: E402


def test_a_big_reply_framed_whole_leaves_no_stream_for_the_replies_after_it() -> None:
    """A big bulk reply that could not stream (its client owed an earlier reply) and was then
    completed by a later read must not make the next read stream other clients' replies to
    whoever is first (found in review: client C got D's reply, then the connection desynced)."""
    import asyncio

    from proxy.inflight import Flusher, ReplyQueue

    class Sink:
        def __init__(self) -> None:
            self.out = bytearray()

        def write(self, data: bytes) -> None:
            self.out += data

        def writelines(self, data: list[bytes]) -> None:
            self.out += b"".join(data)

        def is_closing(self) -> bool:
            return False

        def get_extra_info(self, name: str) -> None:
            return None

        def abort(self) -> None:
            pass

    async def run() -> dict[str, bytes]:
        loop = asyncio.get_running_loop()
        flusher = Flusher()  # run by hand, as the loop runs it after a poll phase's reads
        queues = {}
        for name in "ACD":
            queue, sink = ReplyQueue(flusher), Sink()
            queue.attach(sink, None)
            queues[name] = (queue, sink)
        conn, lost = _unconnected(loop, 2000)
        slots = [queues["A"][0].push(), queues["A"][0].push(), queues["C"][0].push(), queues["D"][0].push()]
        for slot in slots:
            conn.send(b"x", slot)
        conn.connection_made(Sink())  # type: ignore[arg-type]
        big = STREAM_MIN_BYTES + 10
        reply = b"$%d\r\n" % big + b"B" * big + b"\r\n"
        conn.data_received(b"$1\r\ns\r\n" + reply[:1000])  # A owes its first reply: no stream
        conn.data_received(reply[1000:])  # the big reply, framed whole
        conn.data_received(b"$6\r\nfor-C!\r\n$8\r\nSECRET-D\r\n")
        flusher.run()
        assert not lost, lost
        return {name: bytes(sink.out) for name, (_, sink) in queues.items()}

    out = asyncio.run(run())
    assert out["C"] == b"$6\r\nfor-C!\r\n"
    assert out["D"] == b"$8\r\nSECRET-D\r\n"
    big = STREAM_MIN_BYTES + 10
    assert out["A"] == b"$1\r\ns\r\n" + b"$%d\r\n" % big + b"B" * big + b"\r\n"
