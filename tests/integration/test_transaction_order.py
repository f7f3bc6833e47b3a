"""Order around transactions: a client's commands run in the order it sent them, though a
transaction goes on a connection of its own (regressions found in review)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import hiredis
import pytest

from tests.integration.harness.clients import RawClient, encode
from tests.integration.harness.proxyproc import ResProxy, start_ring_proxy
from tests.integration.harness.servers import RedisServer, running_redis_servers

Cmd = tuple[Any, ...]


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    with running_redis_servers(3) as started:  # two behind the proxy, one for reference
        yield started


@pytest.fixture(scope="module")
def proxy(servers: list[RedisServer]) -> Iterator[ResProxy]:
    with start_ring_proxy(servers[:2], hash_tag="{}") as started:
        yield started


@pytest.fixture(autouse=True)
def _clean(servers: list[RedisServer]) -> None:
    for s in servers:
        s.call("FLUSHALL")
        s.call("SCRIPT", "FLUSH")


def _replies(sock: socket.socket, count: int) -> list[Any]:
    reader = hiredis.Reader()
    out: list[Any] = []
    sock.settimeout(10)
    while len(out) < count:
        reply = reader.gets()
        if reply is not False:
            out.append(reply)
            continue
        data = sock.recv(65536)
        assert data, f"closed after {out}"
        reader.feed(data)
    return out


def _at_once(count: int, client: Callable[[int, list[Any]], None]) -> list[Any]:
    """``client(n, bad)`` for n < ``count``, each in a thread of its own, all at once
    (bounded); what they found wrong."""
    bad: list[Any] = []
    threads = [threading.Thread(target=client, args=(n, bad)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    return bad


def _both(proxy: ResProxy, reference: RedisServer, payload: bytes, count: int) -> None:
    """The same bytes, in one write, to the proxy and to one redis-server: the same replies."""
    got: list[Any] = []
    want: list[Any] = []
    for port, out in ((proxy.port, got), (reference.port, want)):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(payload)
            out.extend(_replies(s, count))
    assert [str(x) for x in got] == [str(x) for x in want]


def test_two_inline_transactions_in_one_read_run_once_each(
    proxy: ResProxy, servers: list[RedisServer]
) -> None:
    payload = b"MULTI\r\nINCR {a}\r\nEXEC\r\nMULTI\r\nINCR {a}\r\nEXEC\r\nGET {a}\r\n"
    _both(proxy, servers[2], payload, 7)
    with RawClient(proxy.port) as c:
        assert c.call("GET", "{a}") == b"2"


def test_a_transaction_split_over_two_reads(proxy: ResProxy, servers: list[RedisServer]) -> None:
    cmds = (
        encode("SET", "{b}", "0")
        + encode("MULTI")
        + encode("INCR", "{b}")
        + encode("EXEC")
        + encode("MULTI")
        + encode("INCR", "{b}")
        + encode("EXEC")
        + encode("GET", "{b}")
    )
    with socket.create_connection(("127.0.0.1", proxy.port)) as s:
        s.sendall(cmds[:5])
        s.sendall(cmds[5:])
        assert _replies(s, 8) == [b"OK", b"OK", b"QUEUED", [1], b"OK", b"QUEUED", [2], b"2"]


def test_a_big_value_inside_multi_is_queued_not_run(proxy: ResProxy, servers: list[RedisServer]) -> None:
    value = b"x" * (2 * 1024 * 1024)  # streamed outside a transaction
    with RawClient(proxy.port) as c:
        assert c.call("MULTI") == b"OK"
        assert c.call("SET", "{big}", value) == b"QUEUED"
        assert all(s.call("EXISTS", "{big}") == 0 for s in servers[:2])  # not before EXEC
        assert c.call("EXEC") == [b"OK"]
        assert c.call("STRLEN", "{big}") == len(value)


@pytest.mark.parametrize("tail", [("UNWATCH",), ("MULTI",), ("RESET",)])
def test_commands_after_giving_the_watch_back_see_the_watched_writes(proxy: ResProxy, tail: Cmd) -> None:
    """WATCH k; INCR k (on the WATCH connection); UNWATCH/DISCARD/RESET; GET k (shared
    connection): the GET must see the INCR, every time."""
    ends = [tail] if tail != ("MULTI",) else [("MULTI",), ("DISCARD",)]

    def client(n: int, bad: list[Any]) -> None:
        key = f"{{w{n}}}"
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            for i in range(150):
                cmds: list[Cmd] = [("WATCH", key), ("INCR", key), *ends, ("GET", key)]
                s.sendall(b"".join(encode(*c) for c in cmds))
                out = _replies(s, len(cmds))
                if out[-1] != str(i + 1).encode():
                    bad.append((i, out))

    assert _at_once(6, client) == []


def test_earlier_pipelined_writes_run_before_the_transaction(proxy: ResProxy) -> None:
    def client(n: int, bad: list[Any]) -> None:
        key = f"{{p{n}}}"
        with socket.create_connection(("127.0.0.1", proxy.port)) as s:
            for i in range(200):
                s.sendall(encode("INCR", key) + encode("MULTI") + encode("GET", key) + encode("EXEC"))
                out = _replies(s, 4)
                if out[3] != [str(out[0]).encode()]:
                    bad.append(i)

    assert _at_once(4, client) == []


@pytest.mark.parametrize("bad", [("DISCARD", "x"), ("MULTI", "x"), ("WATCH",), ("EXEC", "x")])
def test_wrong_arity_of_transaction_commands_inside_multi_as_redis(
    proxy: ResProxy, servers: list[RedisServer], bad: Cmd
) -> None:
    cmds: list[Cmd] = [("MULTI",), ("SET", "{r}", "1"), bad, ("EXEC",), ("GET", "{r}")]
    _both(proxy, servers[2], b"".join(encode(*c) for c in cmds), len(cmds))


def test_hello_3_between_watch_and_exec_gets_resp3_replies(
    proxy: ResProxy, servers: list[RedisServer]
) -> None:
    cmds: list[Cmd] = [
        ("HSET", "{h}", "f", "v"),
        ("WATCH", "{h}"),
        ("HELLO", "3"),
        ("MULTI",),
        ("HGETALL", "{h}"),
        ("GET", "{h}nope"),
        ("EXEC",),
    ]
    raw = {}
    for name, port in (("proxy", proxy.port), ("redis", servers[2].port)):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"".join(encode(*c) for c in cmds))
            s.settimeout(10)
            data = b""
            while not data.endswith(b"_\r\n"):
                chunk = s.recv(65536)
                assert chunk
                data += chunk
            raw[name] = data[data.index(b"+OK\r\n+QUEUED") :]
    assert raw["proxy"] == raw["redis"]


def test_unwatch_after_the_watch_connection_is_lost_is_ok(
    proxy: ResProxy, servers: list[RedisServer]
) -> None:
    with RawClient(proxy.port) as c:
        assert c.call("WATCH", "{u}") == b"OK"
        killed = 0
        for s in servers[:2]:  # the WATCH connection (only it) is killed by its server
            for fields in s.clients():
                if fields.get("cmd") == "watch":
                    killed += s.call("CLIENT", "KILL", "ID", fields["id"])
        assert killed == 1
        assert c.call("UNWATCH") == b"OK"
        assert c.call("SET", "{u}", "1") == b"OK"


def test_noscript_goes_back_when_later_requests_were_sent(
    proxy: ResProxy, servers: list[RedisServer]
) -> None:
    """A NOSCRIPT retry would run the script after the client's later commands: only the
    EVALSHA with nothing after it is retried; otherwise NOSCRIPT goes back, as Redis says it."""
    script = "return redis.call('INCR', KEYS[1])"
    with RawClient(proxy.port) as c:
        sha = c.call("SCRIPT", "LOAD", script)
        for s in servers[:2]:
            s.call("SCRIPT", "FLUSH")
        assert c.call("EVALSHA", sha, 1, "{n}") == 1  # alone: reloaded and sent again
        for s in servers[:2]:
            s.call("SCRIPT", "FLUSH")
        out = c.pipeline([("EVALSHA", sha, 1, "{n}"), ("GET", "{n}")])
        assert isinstance(out[0], hiredis.ReplyError) and str(out[0]).startswith("NOSCRIPT")
        assert out[1] == b"1"  # the GET ran after a script that did not run


def test_info_sections_are_not_repeated_and_client_checks_are_redis_s(proxy: ResProxy) -> None:
    with RawClient(proxy.port) as c:
        text = c.call("INFO", "all", "stats")
        assert text.count(b"# Stats") == 1 and text.count(b"# Server") == 1
        assert str(c.call("CLIENT", "KILL", "ID", "0")) == "ERR client-id should be greater than 0"
        assert str(c.call("CLIENT", "SETNAME", "a b")).startswith("ERR Client names cannot")
        assert c.call("CLIENT", "KILL", "TYPE", "pubsub") == 0
