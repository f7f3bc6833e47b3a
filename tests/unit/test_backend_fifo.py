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


def _connection(loop: asyncio.AbstractEventLoop) -> tuple[BackendConnection, list[str]]:
    lost: list[str] = []
    conn = BackendConnection("s1", "p", loop, 1000, [], lambda c, why, failed: lost.append(why),
                             lambda: None)  # fmt: skip
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
