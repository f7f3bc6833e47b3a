"""Dedicated server connections (WATCH, EXEC): bounded per server, reused, counted, and never
left behind by a client that goes away."""

from __future__ import annotations

from collections.abc import Iterator

import hiredis
import pytest

from tests.integration.harness.clients import RawClient
from tests.integration.harness.metrics import Metrics
from tests.integration.harness.proxyproc import ResProxy, start_ring_proxy
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until

LIMIT = 2
IDLE_MS = 1500


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer().start() as started:
        yield started


@pytest.fixture(scope="module")
def proxy(server: RedisServer) -> Iterator[ResProxy]:
    with start_ring_proxy(
        [server],
        name="solo",
        names=["solo"],
        metrics=True,
        dedicated_connections=LIMIT,
        dedicated_idle_timeout=IDLE_MS,
    ) as started:
        yield started


def _gauges(proxy: ResProxy) -> tuple[float, float]:
    m = Metrics(proxy.metrics_port)
    labels = {"pool": "solo", "server": "solo"}
    return (
        m.value("resproxy_server_dedicated_connections", **labels),
        m.value("resproxy_server_dedicated_idle_connections", **labels),
    )


def test_limit_reached_is_a_clear_error_and_freed_connections_serve_again(proxy: ResProxy) -> None:
    a, b, c = RawClient(proxy.port), RawClient(proxy.port), RawClient(proxy.port)
    try:
        assert a.call("WATCH", "k1") == b"OK"
        assert b.call("WATCH", "k2") == b"OK"
        assert _gauges(proxy) == (LIMIT, 0)  # both held
        refused = c.call("WATCH", "k3")
        assert isinstance(refused, hiredis.ReplyError)
        assert "dedicated connections are in use" in str(refused)
        assert "dedicated_connections" in str(refused)
        assert c.call("PING") == b"PONG"  # the shared path is untouched
        assert c.call("SET", "k3", "v") == b"OK"
        assert a.call("UNWATCH") == b"OK"  # released: kept idle, then reused
        poll_until(lambda: _gauges(proxy) == (LIMIT, 1), "released connection kept idle", 10)
        assert c.call("WATCH", "k3") == b"OK"
        assert _gauges(proxy) == (LIMIT, 0)
        assert c.call("MULTI") == b"OK"
        assert c.call("INCR", "k3n") == b"QUEUED"
        assert c.call("EXEC") == [1]
    finally:
        for client in (a, b, c):
            client.close()
    # every holder gone: nothing stays held (closed or kept idle, within the limit)
    poll_until(lambda: _gauges(proxy)[0] == _gauges(proxy)[1], "no connection left held", 10)


def test_many_transactions_in_a_row_reuse_the_same_few_connections(
    proxy: ResProxy, server: RedisServer
) -> None:
    accepted = int(server.info("stats")["total_connections_received"])
    with RawClient(proxy.port) as c:
        for i in range(50):
            assert c.call("MULTI") == b"OK"
            assert c.call("SET", "seq", str(i)) == b"QUEUED"
            assert c.call("EXEC") == [b"OK"]
            assert c.call("WATCH", "seq") == b"OK"
            assert c.call("UNWATCH") == b"OK"
    opened = int(server.info("stats")["total_connections_received"]) - accepted
    assert opened <= LIMIT, opened  # 100 holds, not 100 connections
    held, idle = _gauges(proxy)
    assert held == idle <= LIMIT


def test_idle_dedicated_connections_are_closed(proxy: ResProxy, server: RedisServer) -> None:
    with RawClient(proxy.port) as c:
        assert c.call("WATCH", "idle") == b"OK"
        assert c.call("UNWATCH") == b"OK"
    poll_until(lambda: _gauges(proxy)[1] >= 1, "kept idle for reuse", 10)
    # not taken again within dedicated_idle_timeout: closed (on the server too)
    poll_until(lambda: _gauges(proxy) == (0, 0), "idle ones closed", 10)
    listing = server.call("CLIENT", "LIST")
    assert b"cmd=unwatch" not in listing
