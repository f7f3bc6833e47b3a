"""A subscriber that stops reading is bounded like any slow client: closed at its output limit,
the proxy's memory bounded, the publisher and other subscribers served."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import hiredis
import pytest

from tests.integration.harness import (
    Metrics,
    RawClient,
    RedisServer,
    ResProxy,
    encode,
    free_port,
    native_config,
    poll_until,
    pool_yaml,
    proc_status,
    running_redis_servers,
)


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[ResProxy, RedisServer]]:
    with running_redis_servers(1) as servers:
        port, mport = free_port(), free_port()
        text = native_config(
            pool_yaml(
                "p", port, [f"127.0.0.1:{servers[0].port}:1 s0"], client_output_buffer_limit="1mb 512kb 1"
            )
        )
        text += f"metrics:\n  listen: 127.0.0.1:{mport}\n"
        proxy = ResProxy(text).start()
        proxy.port, proxy.mport = port, mport
        try:
            yield proxy, servers[0]
        finally:
            proxy.cleanup()


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
                    m = Metrics(proxy.mport)
                    if m.value("resproxy_client_closed_total", pool="p", reason="output_buffer_limit") >= 1:
                        closed = True
                        break
            assert closed, "the stalled subscriber was not closed at its output limit"
            assert pub.call("PING") == b"PONG"
            assert pub.call("PUBLISH", "flood", "still") >= 1  # the reading subscriber
        growth = proc_status(proxy.pid, "VmRSS") - rss_before
        assert growth < 32 * 1024 * 1024, growth  # bounded by the limit, not by what was sent
        poll_until(
            lambda: Metrics(proxy.mport).value("resproxy_pubsub_subscribers", pool="p") == 1,
            "only the reading subscriber left",
            10,
        )
    finally:
        stalled.close()
        reader.close()
