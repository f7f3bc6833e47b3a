"""MONITOR through the proxy: every server's stream, merged, each line naming its server."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import hiredis
import pytest
import redis

from tests.integration.harness.clients import RawClient, encode
from tests.integration.harness.configs import native_config, pool_yaml, server_lines
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import ResProxy
from tests.integration.harness.servers import RedisServer, running_redis_servers


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[ResProxy, list[RedisServer], int]]:
    with running_redis_servers(3) as servers:
        port, closed = free_port(), free_port()
        lines = server_lines(servers)
        text = native_config(
            pool_yaml("ring", port, lines), pool_yaml("quiet", closed, lines, allow_monitor=False)
        )
        with ResProxy(text, port=port).start(pools=2) as proxy:
            yield proxy, servers, closed


def _home(servers: list[RedisServer], key: str) -> int:
    return next(i for i, s in enumerate(servers) if s.call("EXISTS", key) == 1)


def test_monitor_shows_commands_sent_to_two_servers(
    setup: tuple[ResProxy, list[RedisServer], int],
) -> None:
    proxy, servers, _ = setup
    with RawClient(proxy.port) as c:  # two keys on two different servers
        keys = [f"mon{i}" for i in range(30)]
        for k in keys:
            c.call("SET", k, "1")
        homes = {k: _home(servers, k) for k in keys}
        a = keys[0]
        b = next(k for k in keys if homes[k] != homes[a])
    mon = socket.create_connection(("127.0.0.1", proxy.port))
    mon.settimeout(10)
    reader = hiredis.Reader()

    def read() -> bytes:
        while (reply := reader.gets()) is False:
            reader.feed(mon.recv(65536))
        assert isinstance(reply, bytes)
        return reply

    try:
        mon.sendall(encode("MONITOR"))
        assert read() == b"OK"
        with RawClient(proxy.port) as c:
            assert c.call("GET", a) == b"1"
            assert c.call("GET", b) == b"1"
        seen: dict[str, bytes] = {}
        for _ in range(50):  # bounded: the two GETs among whatever else the servers ran
            line = read()
            for k in (a, b):
                if f'"GET" "{k}"'.encode() in line:
                    seen[k] = line
            if len(seen) == 2:
                break
        assert seen[a].endswith(f" [server s{homes[a]}]".encode())
        assert seen[b].endswith(f" [server s{homes[b]}]".encode())
        mon.sendall(encode("RESET"))
        while (line := read()) != b"RESET":
            pass
        mon.sendall(encode("PING"))
        assert read() == b"PONG"
    finally:
        mon.close()


def test_redis_py_monitor_parses_the_lines(setup: tuple[ResProxy, list[RedisServer], int]) -> None:
    proxy, _, _ = setup
    r = redis.Redis(port=proxy.port, socket_timeout=10)
    try:
        with r.monitor() as m:  # type: ignore[no-untyped-call]
            r2 = redis.Redis(port=proxy.port, socket_timeout=10)
            r2.set("pyk", "v")
            r2.close()
            for _ in range(50):
                event = m.next_command()
                if event["command"] == "SET pyk v":
                    break
            else:
                raise AssertionError("SET not seen")
    finally:
        r.close()


def test_allow_monitor_false_refuses_it(setup: tuple[ResProxy, list[RedisServer], int]) -> None:
    _, _, closed = setup
    with RawClient(closed) as c:
        reply = c.call("MONITOR")
        assert isinstance(reply, hiredis.ReplyError) and "allow_monitor" in str(reply)
        assert c.call("PING") == b"PONG"
