"""Through resproxy over three servers, Redis answers as one redis-server would.

Each scripted command goes both to resproxy and to a plain reference redis-server; the replies
must be equal (hiredis-decoded values, errors included). Keys are spread over the three backends.
"""

from __future__ import annotations

import socket
from typing import Any

import hiredis
import pytest
import redis

from tests.integration.harness.clients import RawClient, comparable, encode
from tests.integration.harness.proxyproc import ResProxy
from tests.integration.harness.servers import RedisServer

Cmd = tuple[Any, ...]

SEQUENCE: list[Cmd] = [
    # strings
    ("SET", "s1", "hello"),
    ("GET", "s1"),
    ("APPEND", "s1", " world"),
    ("STRLEN", "s1"),
    ("GETRANGE", "s1", 0, 4),
    ("SETRANGE", "s1", 6, "WORLD"),
    ("GET", "s1"),
    ("SETNX", "s1", "x"),
    ("SETNX", "s2", "x"),
    ("GETSET", "s2", "y"),
    ("GET", "missing"),
    ("INCR", "n1"),
    ("INCRBY", "n1", 41),
    ("DECR", "n1"),
    ("INCRBYFLOAT", "f1", "1.5"),
    ("INCR", "s1"),
    ("SET", "e1", "v", "EX", 1000),
    ("TTL", "e1"),
    ("PERSIST", "e1"),
    ("TTL", "e1"),
    ("EXPIRE", "e1", 500),
    ("TTL", "e1"),
    ("TYPE", "s1"),
    ("TYPE", "nope"),
    ("GETDEL", "s2"),
    ("EXISTS", "s2"),
    # hashes
    ("HSET", "h1", "a", 1, "b", 2, "c", 3),
    ("HGET", "h1", "a"),
    ("HGETALL", "h1"),
    ("HINCRBY", "h1", "a", 10),
    ("HMGET", "h1", "a", "zz", "c"),
    ("HDEL", "h1", "b", "zz"),
    ("HLEN", "h1"),
    ("HKEYS", "h1"),
    ("HVALS", "h1"),
    ("HEXISTS", "h1", "c"),
    ("TYPE", "h1"),
    ("GET", "h1"),
    # lists
    ("RPUSH", "l1", "a", "b", "c"),
    ("LPUSH", "l1", "z"),
    ("LRANGE", "l1", 0, -1),
    ("LLEN", "l1"),
    ("LINDEX", "l1", 2),
    ("LPOP", "l1"),
    ("RPOP", "l1", 2),
    ("LRANGE", "l1", 0, -1),
    ("LSET", "nolist", 0, "x"),
    ("LPUSH", "h1", "x"),
    # sets
    ("SADD", "set1", "a", "b", "c", "a"),
    ("SCARD", "set1"),
    ("SISMEMBER", "set1", "b"),
    ("SREM", "set1", "b", "q"),
    ("SMEMBERS", "set1"),
    ("SMISMEMBER", "set1", "a", "b"),
    # sorted sets
    ("ZADD", "z1", 1, "one", 2, "two", 3, "three"),
    ("ZRANGE", "z1", 0, -1, "WITHSCORES"),
    ("ZSCORE", "z1", "two"),
    ("ZINCRBY", "z1", 5, "one"),
    ("ZRANK", "z1", "one"),
    ("ZREVRANGE", "z1", 0, 1),
    ("ZREM", "z1", "two"),
    ("ZCARD", "z1"),
    ("ZRANGEBYSCORE", "z1", "-inf", "+inf"),
    # hash-tagged multi-key commands on one server
    ("SADD", "{u1}a", "x", "y"),
    ("SADD", "{u1}b", "y", "z"),
    ("SINTER", "{u1}a", "{u1}b"),
    ("SUNIONSTORE", "{u1}c", "{u1}a", "{u1}b"),
    ("SCARD", "{u1}c"),
    ("SET", "{u2}old", "v"),
    ("RENAME", "{u2}old", "{u2}new"),
    ("GET", "{u2}new"),
    ("EVAL", "return redis.call('get', KEYS[1])", 1, "s1"),
    ("RPUSH", "{u3}l", 3, 1, 2),
    ("SORT", "{u3}l", "STORE", "{u3}sorted"),
    ("LRANGE", "{u3}sorted", 0, -1),
    ("COMMAND", "GETKEYS", "SORT", "k", "STORE", "d"),
    # split across servers and merged
    ("MSET", "m1", "1", "m2", "2", "m3", "3", "m4", "4", "m5", "5", "m6", "6"),
    ("MGET", "m1", "nope", "m2", "m3", "m4", "m5", "m6", "m1"),
    ("EXISTS", "m1", "m2", "nope", "m1", "m3"),
    ("TOUCH", "m1", "m2", "nope"),
    ("DEL", "m1", "m2", "nope", "m1"),
    ("UNLINK", "m3", "m4", "m4"),
    ("MGET", "m1", "m3", "m5"),
    ("MSET", "m1", "a"),
    # errors with Redis's own words
    ("GET",),
    ("SET", "k"),
    ("NOSUCHCOMMAND", "a", "b"),
    ("nosuch",),
    ("CONFIG", "NOPE"),
    ("MSET", "a", "1", "b"),
    ("PING",),
    ("PING", "hi"),
    ("ECHO", "e"),
    ("SELECT", 0),
]


UNORDERED = {"SMEMBERS", "SINTER"}


@pytest.fixture(scope="module")
def clients(proxy: ResProxy, reference: RedisServer) -> Any:
    with RawClient(proxy.port) as p, RawClient(reference.port) as r:
        yield p, r


@pytest.mark.parametrize("protocol", [2, 3])
def test_scripted_sequence_answers_like_one_redis_server(
    proxy: ResProxy,
    reference: RedisServer,
    backends: list[RedisServer],
    clean: None,
    protocol: int,
) -> None:
    with RawClient(proxy.port) as p, RawClient(reference.port) as r:
        if protocol == 3:  # RESP3 (redis-py 8's default): maps, nulls, doubles as Redis sends
            assert p.call("HELLO", 3)[b"proto"] == r.call("HELLO", 3)[b"proto"] == 3
        _run_sequence(p, r, backends)


def _run_sequence(proxy: RawClient, ref: RawClient, backends: list[RedisServer]) -> None:
    for cmd in SEQUENCE:
        got, want = comparable(proxy.call(*cmd)), comparable(ref.call(*cmd))
        if cmd[0] in UNORDERED:  # hash-table order differs between any two servers
            got, want = sorted(got), sorted(want)
        if cmd[0] == "HELLO":
            continue
        assert got == want, cmd
    # and the keys really are spread over the three servers
    assert all(b.call("DBSIZE") > 0 for b in backends)


def test_pipeline_of_1000_commands_is_answered_complete_and_in_order(
    clients: tuple[RawClient, RawClient], clean: None
) -> None:
    proxy, ref = clients
    commands: list[Cmd] = []
    for i in range(250):
        commands += [
            ("SET", f"p{i}", f"v{i}"),
            ("GET", f"p{i}"),
            ("INCR", f"c{i % 17}"),
            ("MGET", f"p{i}", f"p{i // 2}", "nope"),
        ]
    assert len(commands) == 1000
    assert proxy.pipeline(commands) == ref.pipeline(commands)


def test_cross_server_multi_key_command_is_refused_with_crossslot(
    clients: tuple[RawClient, RawClient], clean: None
) -> None:
    proxy, _ = clients
    reply = proxy.call("SUNIONSTORE", "d", "a", "b", "c", "e", "f", "g", "h")
    assert str(reply) == "CROSSSLOT Keys in request don't hash to the same server"
    assert proxy.call("PING") == b"PONG"


@pytest.mark.parametrize(
    "cmd",
    [
        ("SWAPDB", 0, 1),
        ("CONFIG", "GET", "maxmemory"),
        ("WAIT", 1, 0),
        ("CLUSTER", "INFO"),
        ("MOVE", "k", 1),
        ("SCRIPT", "DEBUG", "YES"),
        ("CLIENT", "PAUSE", 1),
        ("MEMORY", "STATS"),
        ("DEBUG", "SLEEP", 0),
        ("SHUTDOWN",),
        ("BGSAVE",),
        ("SLOWLOG", "GET"),
    ],
)
def test_refused_commands_say_why_and_keep_the_connection(
    clients: tuple[RawClient, RawClient], cmd: Cmd
) -> None:
    proxy, _ = clients
    reply = proxy.call(*cmd)
    assert isinstance(reply, hiredis.ReplyError)
    name = (
        "|".join(str(a).lower() for a in cmd[:2])
        if cmd[0] in ("CONFIG", "CLUSTER", "SCRIPT", "CLIENT", "MEMORY", "SLOWLOG")
        else str(cmd[0]).lower()
    )
    assert str(reply).startswith(f"ERR '{name}' is not served by the proxy: "), str(reply)
    assert proxy.call("ECHO", "still here") == b"still here"


def test_eval_without_keys_is_refused_with_its_reason(clients: tuple[RawClient, RawClient]) -> None:
    proxy, _ = clients
    reply = proxy.call("EVAL", "return 1", 0)
    assert str(reply) == "ERR command 'eval' without keys cannot be routed by the proxy"
    assert proxy.call("PING") == b"PONG"


def test_redis_py_default_client_speaks_resp3_through_the_proxy(proxy: ResProxy) -> None:
    r = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=10)
    try:
        assert r.ping() is True
        r.hset("r3:h", mapping={"a": "1", "b": "2"})
        assert r.hgetall("r3:h") == {b"a": b"1", b"b": b"2"}  # a RESP3 map
        r.mset({"r3:x": "1", "r3:y": "2", "r3:z": "3"})
        assert r.mget("r3:x", "r3:nope", "r3:y", "r3:z") == [b"1", None, b"2", b"3"]
        assert r.delete("r3:x", "r3:y", "r3:nope") == 2
        r.zadd("r3:z2", {"m": 1.5})
        assert r.zscore("r3:z2", "m") == 1.5  # a RESP3 double
    finally:
        r.close()


def test_local_commands(clients: tuple[RawClient, RawClient]) -> None:
    proxy, _ = clients
    assert proxy.call("PING") == b"PONG"
    assert proxy.call("SELECT", 0) == b"OK"
    assert str(proxy.call("SELECT", 1)).startswith("ERR")
    count = proxy.call("COMMAND", "COUNT")
    assert isinstance(count, int) and count > 200
    info = proxy.call("COMMAND", "INFO", "get")
    assert info[0][0] == b"get" and info[0][1] == 2
    assert proxy.call("COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2") == [b"a", b"b"]
    assert len(proxy.call("COMMAND")) == count
    assert proxy.call("CLIENT", "SETNAME", "me") == b"OK"
    assert proxy.call("CLIENT", "GETNAME") == b"me"


def test_quit_answers_ok_then_closes(proxy: ResProxy) -> None:
    with RawClient(proxy.port) as c:
        c.send(encode("SET", "q", "1") + encode("QUIT") + encode("GET", "q"))
        assert c.read() == b"OK"
        assert c.read() == b"OK"
        assert c.closed_by_peer()


def test_inline_commands_work_like_redis(proxy: ResProxy) -> None:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"SET inl v\r\nGET inl\r\n")
        reader = hiredis.Reader()
        got: list[Any] = []
        while len(got) < 2:
            reader.feed(s.recv(1024))
            while (r := reader.gets()) is not False:
                got.append(r)
    assert got == [b"OK", b"v"]


def test_large_values_pass_through_both_ways(clients: tuple[RawClient, RawClient]) -> None:
    proxy, _ = clients
    value = bytes(range(256)) * 20000  # 5 MB, arriving and leaving in many reads
    assert proxy.call("SET", "big", value) == b"OK"
    assert proxy.call("GET", "big") == value
    assert proxy.call("MGET", "big", "nope", "big") == [value, None, value]
    assert proxy.call("DEL", "big") == 1


def test_hello_auth_default_without_a_password_as_redis(clients: tuple[RawClient, RawClient]) -> None:
    """No password configured: Redis's default user has none, and HELLO's AUTH for it is
    accepted whatever the password; another user is refused."""
    for c in clients:  # the proxy, then a redis-server
        hello = c.call("HELLO", "2", "AUTH", "default", "anything")
        assert isinstance(hello, list) and b"proto" in hello, hello
        refused = c.call("HELLO", "2", "AUTH", "someone", "x")
        assert str(refused).startswith("WRONGPASS"), refused
