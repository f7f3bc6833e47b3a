"""A subscriber that stops reading is bounded like any slow client: closed at its output limit,
the proxy's memory bounded, the publisher and other subscribers served."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import hiredis
import pytest

from tests.integration.harness.clients import RawClient, encode
from tests.integration.harness.metrics import Metrics
from tests.integration.harness.process import proc_status
from tests.integration.harness.proxyproc import ResProxy, start_ring_proxy
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[ResProxy, RedisServer]]:
    with (
        RedisServer().start() as server,
        start_ring_proxy([server], name="p", metrics=True, client_output_buffer_limit="1mb 512kb 1") as proxy,
    ):
        yield proxy, server


def test_a_subscriber_that_stops_reading_is_closed_and_others_are_served(
    setup: tuple[ResProxy, RedisServer],
) -> None:
    proxy, _ = setup
    stalled = socket.create_connection(("127.0.0.1", proxy.port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader = socket.create_connection(("127.0.0.1", proxy.port))
    reader.settimeout(10)
    try:
        for s in (stalled, reader):
            s.sendall(encode("SUBSCRIBE", "flood"))
        replies = hiredis.Reader()
        while (first := replies.gets()) is False:
            replies.feed(reader.recv(65536))
        assert first == [b"subscribe", b"flood", 1]
        stalled.settimeout(10)
        assert stalled.recv(65536)  # (its confirmation; from now on it reads nothing)
        rss_before = proc_status(proxy.pid, "VmRSS")
        payload = b"x" * 16384
        closed = False
        with RawClient(proxy.port) as pub:
            for i in range(3000):  # 48 MB published, far past the 1 MB hard limit
                pub.call("PUBLISH", "flood", payload)
                while (msg := replies.gets()) is not False:  # the reading one keeps up
                    assert msg[0] == b"message"
                reader.setblocking(False)
                try:
                    replies.feed(reader.recv(1 << 20))
                except BlockingIOError:
                    pass
                reader.setblocking(True)
                if i % 100 == 99:
                    m = Metrics(proxy.metrics_port)
                    if m.value("resproxy_client_closed_total", pool="p", reason="output_buffer_limit") >= 1:
                        closed = True
                        break
            assert closed, "the stalled subscriber was not closed at its output limit"
            assert pub.call("PING") == b"PONG"
            assert pub.call("PUBLISH", "flood", "still") >= 1  # the reading subscriber
        growth = proc_status(proxy.pid, "VmRSS") - rss_before
        assert growth < 32 * 1024 * 1024, growth  # bounded by the limit, not by what was sent
        poll_until(
            lambda: Metrics(proxy.metrics_port).value("resproxy_pubsub_subscribers", pool="p") == 1,
            "only the reading subscriber left",
            10,
        )
    finally:
        stalled.close()
        reader.close()
