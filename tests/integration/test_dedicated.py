"""Dedicated server connections (WATCH, EXEC): bounded per server, reused, counted, and never
left behind by a client that goes away."""

from __future__ import annotations

from collections.abc import Iterator

import hiredis
import pytest

from tests.integration.harness import (
    Metrics,
    RawClient,
    RedisServer,
    ResProxy,
    free_port,
    native_config,
    poll_until,
    pool_yaml,
    running_redis_servers,
)

LIMIT = 2
IDLE_MS = 1500


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with running_redis_servers(1) as servers:
        yield servers[0]


@pytest.fixture(scope="module")
def proxy(server: RedisServer) -> Iterator[ResProxy]:
    port, mport = free_port(), free_port()
    text = native_config(
        pool_yaml(
            "solo",
            port,
            [f"127.0.0.1:{server.port}:1 solo"],
            dedicated_connections=LIMIT,
            dedicated_idle_timeout=IDLE_MS,
        )
    )
    text += f"metrics:\n  listen: 127.0.0.1:{mport}\n"
    proxy = ResProxy(text).start()
    proxy.port, proxy.mport = port, mport
    try:
        yield proxy
    finally:
        proxy.cleanup()


def _gauges(proxy: ResProxy) -> tuple[float, float]:
    m = Metrics(proxy.mport)
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
    before = server.call("INFO", "stats")
    assert isinstance(before, bytes)
    accepted = int(before.split(b"total_connections_received:")[1].split(b"\r\n")[0])
    with RawClient(proxy.port) as c:
        for i in range(50):
            assert c.call("MULTI") == b"OK"
            assert c.call("SET", "seq", str(i)) == b"QUEUED"
            assert c.call("EXEC") == [b"OK"]
            assert c.call("WATCH", "seq") == b"OK"
            assert c.call("UNWATCH") == b"OK"
    after = server.call("INFO", "stats")
    assert isinstance(after, bytes)
    opened = int(after.split(b"total_connections_received:")[1].split(b"\r\n")[0]) - accepted
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
