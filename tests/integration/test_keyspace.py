"""Keyspace-wide commands through resproxy, against real redis-servers (issue 11).

Three fronts share one resproxy: a ring pool of three redis-servers, a cluster pool in front of
a real Redis Cluster of 3 masters + 3 replicas (so SCAN must ask masters only, or keys would come
twice), and a listener routing ``c:`` to the cluster and ``r:`` plus everything else to the ring
(the ring is used by two of its routes: it must still be asked once). A second listener has a
``strip_prefix`` route, under which keyspace-wide commands must be refused. SCAN across a reload,
and ``deny_commands``, each run their own resproxy over the same redis-servers.

Every check is made against the redis-servers themselves (DBSIZE, EXISTS, MEMORY USAGE asked
directly), never against what resproxy says about itself.
"""

from __future__ import annotations

import fnmatch
import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import hiredis
import pytest

from tests.integration.harness.clients import RawClient, client_list, error_text, plain_redis
from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.configs import MURMUR_RING, native_config, pool_yaml, route, server_lines
from tests.integration.harness.deployments import FRONTS, Front, Fronts, FrontsSpec, running_fronts
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import ResProxy, run_proxy_check
from tests.integration.harness.servers import RedisServer

KEYS_PER_SCAN_TEST = 3000
MAX_SCAN_CALLS = 20_000  # bounds every SCAN loop

# ring, cluster, edge (routes: c: to the cluster, r: and the rest to the ring), legacy (strip_prefix)
SPEC = FrontsSpec(
    listeners={
        "edge": [route("c:", "cluster"), route("r:", "ring")],
        "legacy": [route("old:", "ring", strip_prefix=True)],
    },
    ring_keys={**MURMUR_RING, "timeout": 2000},
    cluster_keys={"timeout": 2000},
    prefixes=("c:", "r:", "d:"),
)


@pytest.fixture(scope="module")
def stack(backends: list[RedisServer], cluster: RedisCluster) -> Iterator[Fronts]:
    """One resproxy with the ring, cluster, edge (routes) and legacy (strip_prefix) fronts."""
    with running_fronts(SPEC, backends, cluster) as started:
        yield started


@pytest.fixture(scope="module")
def spare(servers: list[RedisServer]) -> RedisServer:
    """The 4th server a reload adds (in no pool of ``stack``)."""
    return servers[3]


@pytest.fixture()
def wiped(stack: Fronts, spare: RedisServer) -> None:
    """Every server emptied directly (the replicas follow their masters)."""
    for s in [*stack.data_nodes(), spare]:
        s.call("FLUSHALL")


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest, stack: Fronts, wiped: None) -> Front:
    return stack.front(str(request.param))


# --- helpers -------------------------------------------------------------------------------


def fill(port: int, keys: Sequence[str], value: bytes = b"v") -> None:
    """SET every key through the proxy (pipelined in chunks)."""
    with RawClient(port) as c:
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            assert c.pipeline([("SET", k, value) for k in chunk]) == [b"OK"] * len(chunk)


def fill_hashes(port: int, keys: Sequence[str]) -> None:
    with RawClient(port) as c:
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            assert c.pipeline([("HSET", k, "f", "v") for k in chunk]) == [1] * len(chunk)


def check_cursor(raw: Any) -> int:
    """A SCAN cursor: a plain unsigned integer below 2**64."""
    assert isinstance(raw, bytes) and re.fullmatch(rb"[0-9]+", raw), raw
    cursor = int(raw)
    assert 0 <= cursor < 2**64, cursor
    return cursor


def scan_step(c: RawClient, cursor: int | bytes, *options: str | int) -> tuple[int, list[bytes]]:
    reply = c.call("SCAN", cursor, *options)
    if isinstance(reply, hiredis.ReplyError):
        raise AssertionError(f"SCAN {cursor!r}: {reply}")
    assert isinstance(reply, list) and len(reply) == 2, reply
    return check_cursor(reply[0]), list(reply[1])


def scan_all(c: RawClient, *options: str | int, start: int = 0) -> tuple[list[bytes], int]:
    """A whole iteration from ``start``: (every key returned, in order, duplicates kept; calls)."""
    keys: list[bytes] = []
    cursor = start
    for calls in range(1, MAX_SCAN_CALLS + 1):
        cursor, batch = scan_step(c, cursor, *options)
        keys.extend(batch)
        if cursor == 0:
            return keys, calls
    raise AssertionError(f"SCAN did not finish within {MAX_SCAN_CALLS} calls")


def as_set(keys: Sequence[str]) -> set[bytes]:
    return {k.encode() for k in keys}


def owner(backends: Sequence[RedisServer], key: str) -> RedisServer:
    """The one backend holding ``key`` (asked directly)."""
    holders = [b for b in backends if b.call("EXISTS", key) == 1]
    assert len(holders) == 1, (key, [b.port for b in holders])
    return holders[0]


# --- SCAN ----------------------------------------------------------------------------------


def test_scan_returns_every_key_exactly_once(front: Front) -> None:
    keys = [front.key("scan", i) for i in range(KEYS_PER_SCAN_TEST)]
    fill(front.port, keys)
    assert all(int(b.call("DBSIZE")) > 0 for b in front.backends)  # spread over every server
    with RawClient(front.port) as c:
        got, calls = scan_all(c)
    assert len(got) == len(set(got)), "duplicates in a scan with nothing changing"
    assert set(got) == as_set(keys)
    assert calls > 1


def test_scan_match_count_and_type_pass_through(front: Front) -> None:
    strings = [front.key("str", i) for i in range(2400)]
    hashes = [front.key("hsh", i) for i in range(600)]
    fill(front.port, strings)
    fill_hashes(front.port, hashes)
    with RawClient(front.port) as c:
        got, _ = scan_all(c, "MATCH", "*hsh:*", "COUNT", 100)
        assert len(got) == len(set(got)) and set(got) == as_set(hashes)
        got, _ = scan_all(c, "TYPE", "hash")
        assert len(got) == len(set(got)) and set(got) == as_set(hashes)
        got, _ = scan_all(c, "MATCH", "*str:1*", "TYPE", "string")
        assert set(got) == as_set([k for k in strings if fnmatch.fnmatchcase(k, "*str:1*")])
        # COUNT reaches the servers: a large COUNT takes far fewer calls than a small one
        small, small_calls = scan_all(c, "COUNT", 10)
        large, large_calls = scan_all(c, "COUNT", 5000)
    assert set(small) == set(large) == as_set(strings + hashes)
    assert large_calls * 5 < small_calls, (large_calls, small_calls)
    assert large_calls <= 4 * len(front.backends), large_calls


def test_scan_while_unrelated_keys_change(front: Front) -> None:
    stable = [front.key("stable", i) for i in range(KEYS_PER_SCAN_TEST)]
    fill(front.port, stable)
    stop = threading.Event()
    warmed = threading.Event()
    ops = [0]
    failures: list[str] = []

    def churn() -> None:
        """Adds and deletes keys that are not among the stable ones, until stopped."""
        try:
            with RawClient(front.port) as w:
                for i in range(10_000_000):  # bounded; ends on the stop event
                    if stop.is_set():
                        return
                    replies = w.pipeline(
                        [
                            ("SET", front.key("churn", i), "x"),
                            ("DEL", front.key("churn", i - 300)),
                        ]
                    )
                    if replies[0] != b"OK" or isinstance(replies[1], hiredis.ReplyError):
                        failures.append(repr(replies))
                        return
                    ops[0] += 1
                    if ops[0] >= 500:
                        warmed.set()
        except Exception as exc:  # reported by the test
            failures.append(repr(exc))
            warmed.set()

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        assert warmed.wait(20), "churn did not start"
        before = ops[0]
        got: list[bytes] = []
        with RawClient(front.port) as c:
            cursor = 0
            for _ in range(MAX_SCAN_CALLS):
                cursor, batch = scan_step(c, cursor, "COUNT", 20)
                got.extend(batch)
                if cursor == 0:
                    break
            else:
                raise AssertionError("SCAN did not finish")
        during = ops[0] - before
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive()
    assert not failures, failures
    assert during > 0, "no key changed during the iteration"
    missing = as_set(stable) - set(got)
    assert not missing, f"{len(missing)} stable keys not returned, e.g. {sorted(missing)[:5]}"
    assert all(b"churn:" in k for k in set(got) - as_set(stable))


def test_scan_non_integer_cursor(front: Front) -> None:
    with RawClient(front.port) as c:
        for cursor in ("abc", "12x", "1.5", str(2**64)):
            text = error_text(c.call("SCAN", cursor))
            assert text.startswith("ERR invalid cursor"), (cursor, text)
        assert c.call("PING") == b"PONG"


def _render_app(port: int, servers: Sequence[RedisServer], timeout_ms: int) -> str:
    return native_config(
        pool_yaml(
            "app", port, server_lines(servers), hash="murmur", distribution="ketama", timeout=timeout_ms
        )
    )


def test_cursor_across_reloads(stack: Fronts, spare: RedisServer, wiped: None) -> None:
    port = free_port()
    with ResProxy(_render_app(port, stack.ring, 2000)).start() as proxy:
        keys = [f"reload:{i}" for i in range(600)]
        fill(port, keys)
        with RawClient(port) as held:
            # a reload that keeps the server list: a cursor taken before it stays valid
            cursor, first = scan_step(held, 0, "COUNT", 10)
            assert cursor != 0
            assert proxy.reload(_render_app(port, stack.ring, 3000)), proxy.log()[-2000:]
            rest, _ = scan_all(held, "COUNT", 10, start=cursor)
            got = first + rest
            assert len(got) == len(set(got)) and set(got) == as_set(keys)

            # a reload that adds a 4th server: a cursor from before is refused, clearly
            cursor, _ = scan_step(held, 0, "COUNT", 10)
            assert cursor != 0
            assert proxy.reload(_render_app(port, [*stack.ring, spare], 3000)), proxy.log()[-2000:]
            with RawClient(port) as fresh:
                for c in (held, fresh):
                    text = error_text(c.call("SCAN", cursor, "COUNT", 10))
                    assert text.startswith("ERR invalid cursor"), text
                    assert "server" in text.lower() and "chang" in text.lower(), text
            # starting again from 0 works, over all four servers
            fill(port, ["reload:new"])
            got, _ = scan_all(held)
            assert len(got) == len(set(got)) and set(got) == as_set([*keys, "reload:new"])
            assert sum(int(s.call("DBSIZE")) for s in [*stack.ring, spare]) == len(got)


# --- KEYS, DBSIZE, RANDOMKEY, FLUSH*, LASTSAVE, TIME, MEMORY, OBJECT ------------------------


def test_keys_dbsize_randomkey(front: Front) -> None:
    with RawClient(front.port) as c:
        assert c.call("RANDOMKEY") is None  # every server empty
        assert c.call("DBSIZE") == 0
        assert c.call("KEYS", "*") == []
        only = front.key("only", 7)
        fill(front.port, [only])
        for _ in range(10):  # one non-empty server among several: always found
            assert c.call("RANDOMKEY") == only.encode()
        keys = [only, *(front.key("many", i) for i in range(300))]
        fill(front.port, keys[1:])
        got = c.call("KEYS", "*")
        assert len(got) == len(set(got)) and set(got) == as_set(keys)
        got = c.call("KEYS", "*many:2?")
        assert sorted(got) == sorted(k.encode() for k in keys if re.search(r"many:2\d$", k))
        assert c.call("DBSIZE") == len(keys) == front.backend_keys()
        for _ in range(20):
            key = c.call("RANDOMKEY")
            assert key in as_set(keys)


FLUSHES = [
    ("FLUSHDB",),
    ("FLUSHDB", "ASYNC"),
    ("FLUSHDB", "SYNC"),
    ("FLUSHALL",),
    ("FLUSHALL", "ASYNC"),
    ("FLUSHALL", "SYNC"),
]


@pytest.mark.parametrize("command", FLUSHES, ids=" ".join)
def test_flush_empties_every_server(front: Front, command: tuple[str, ...]) -> None:
    fill(front.port, [front.key("flush", i) for i in range(300)])
    assert all(int(b.call("DBSIZE")) > 0 for b in front.backends)
    with RawClient(front.port) as c:
        assert c.call(*command) == b"OK"
        assert c.call("DBSIZE") == 0
    assert [int(b.call("DBSIZE")) for b in front.backends] == [0] * len(front.backends)


def test_lastsave_time_memory_usage_and_object(front: Front) -> None:
    with RawClient(front.port) as c:
        assert isinstance(c.call("LASTSAVE"), int)
        now = c.call("TIME")
        assert isinstance(now, list) and len(now) == 2 and all(x.isdigit() for x in now)
        assert abs(int(now[0]) - time.time()) < 60
        keys = [front.key("mem", i) for i in range(40)]
        fill(front.port, keys, b"x" * 2000)
        ints = [front.key("int", i) for i in range(40)]
        fill(front.port, ints, b"12345")
        seen: set[int] = set()
        for key, int_key in zip(keys, ints):
            holder = owner(front.backends, key)
            seen.add(holder.port)
            usage = c.call("MEMORY", "USAGE", key)
            assert isinstance(usage, int) and usage >= 2000, (key, usage)
            assert usage == holder.call("MEMORY", "USAGE", key), key
            assert c.call("OBJECT", "ENCODING", key) == holder.call("OBJECT", "ENCODING", key)
            assert c.call("OBJECT", "ENCODING", int_key) == b"int", int_key
            assert c.call("MEMORY", "USAGE", front.key("absent", 1)) is None
        assert seen == {b.port for b in front.backends}


# --- deny_commands, strip_prefix -----------------------------------------------------------


def _guarded_config(port: int, servers: Sequence[RedisServer], deny: list[str]) -> str:
    return native_config(pool_yaml("guarded", port, server_lines(servers), deny_commands=deny))


def test_deny_commands_refuses_each_listed_command(stack: Fronts, wiped: None) -> None:
    port = free_port()
    with ResProxy(_guarded_config(port, stack.ring, ["flushall", "KEYS"])).start():
        keys = [f"guard:{i}" for i in range(30)]
        fill(port, keys)
        denied = "ERR command '{}' is denied by this proxy (deny_commands of pool 'guarded')"
        with RawClient(port) as c:
            assert error_text(c.call("FLUSHALL")) == denied.format("flushall")
            assert error_text(c.call("flushall", "ASYNC")) == denied.format("flushall")
            assert error_text(c.call("KEYS", "*")) == denied.format("keys")
            assert error_text(c.call("keys", "guard:*")) == denied.format("keys")
            # nothing reached the servers; other commands are served
            assert sum(int(s.call("DBSIZE")) for s in stack.ring) == len(keys)
            assert c.call("GET", "guard:3") == b"v"
            assert c.call("DBSIZE") == len(keys)
            assert c.call("DEL", "guard:3") == 1
            assert c.call("FLUSHDB") == b"OK"  # not listed
        assert sum(int(s.call("DBSIZE")) for s in stack.ring) == 0


def test_deny_commands_unknown_name_fails_the_check(stack: Fronts) -> None:
    good = run_proxy_check(_guarded_config(free_port(), stack.ring, ["flushall", "flushdb", "keys"]))
    assert good.returncode == 0, good.stdout + good.stderr
    bad = run_proxy_check(_guarded_config(free_port(), stack.ring, ["flushall", "nosuchcommand"]))
    out = bad.stdout + bad.stderr
    assert bad.returncode != 0, out
    for part in ("check.yml", "guarded", "deny_commands", "nosuchcommand"):
        assert part in out, (part, out)


@pytest.mark.parametrize(
    "command",
    [("SCAN", "0"), ("KEYS", "*"), ("RANDOMKEY",), ("DBSIZE",), ("FLUSHDB",), ("FLUSHALL",)],
    ids=" ".join,
)
def test_strip_prefix_listener_refuses_keyspace_wide(
    stack: Fronts, wiped: None, command: tuple[str, ...]
) -> None:
    with RawClient(stack.ports["legacy"]) as c:
        assert c.call("SET", "old:a", "1") == b"OK"
        text = error_text(c.call(*command))
        assert text.startswith("ERR ") and "not supported" not in text, text
        assert re.search(r"strip.prefix", text), text
        assert c.call("GET", "old:a") == b"1"  # nothing was flushed
    assert sum(int(s.call("DBSIZE")) for s in stack.ring) == 1


# --- INFO, CLIENT, COMMAND -----------------------------------------------------------------


def _field(info: bytes, name: str) -> str:
    match = re.search(rf"^{name}:(.*?)\r?$", info.decode(), re.M)
    assert match, (name, info.decode()[:2000])
    return match.group(1)


def test_info_server_and_keyspace(front: Front) -> None:
    version = _field(front.backends[0].call("INFO", "server"), "redis_version")
    plain = [front.key("plain", i) for i in range(90)]
    fill(front.port, plain)
    with RawClient(front.port) as c:
        for i in range(10):
            assert c.call("SET", front.key("ttl", i), "t", "EX", 1000) == b"OK"
        total = front.backend_keys()
        assert total == 100
        everything = c.call("INFO")
        for section in ("# Server", "# Proxy", "# Stats", "# Keyspace"):
            assert section.encode() in everything, section
        assert _field(everything, "redis_version") == version
        server = c.call("INFO", "server")
        assert b"# Server" in server
        assert _field(server, "redis_version") == version
        assert _field(server, "redis_mode") == "proxy"
        keyspace = _field(c.call("INFO", "keyspace"), "db0")
        match = re.match(r"keys=(\d+),expires=(\d+)(,|$)", keyspace)
        assert match, keyspace
        if front.name == "listener":
            # the issue says a listener's INFO reports its default pool (the ring); summing
            # over every pool its routes use is accepted too
            ring = sum(int(b.call("DBSIZE")) for b in front.backends[:3])
            ring_expires = sum(
                int(b.call("INFO", "keyspace").split(b"expires=")[1].split(b",")[0])
                for b in front.backends[:3]
                if b.call("DBSIZE")
            )
            assert (int(match[1]), int(match[2])) in {(total, 10), (ring, ring_expires)}, keyspace
        else:
            assert (int(match[1]), int(match[2])) == (total, 10), keyspace
    client = plain_redis(front.port)
    try:
        assert client.info()["redis_version"] == version
    finally:
        client.close()


def test_client_list_and_kill(front: Front) -> None:
    with (
        RawClient(front.port) as me,
        RawClient(front.port, timeout_s=5) as other,
        RawClient(front.port, timeout_s=5) as third,
        RawClient(front.port, timeout_s=5) as fourth,
    ):
        assert me.call("CLIENT", "SETNAME", "alpha") == b"OK"
        assert other.call("CLIENT", "SETNAME", "beta") == b"OK"
        assert other.call("GET", front.key("some", 1)) is None
        rows = client_list(me.call("CLIENT", "LIST"))
        for row in rows:
            for name in ("id", "addr", "laddr", "name", "age", "idle", "cmd"):
                assert name in row, (name, row)
        mine = [r for r in rows if r["addr"] == f"127.0.0.1:{me.sock.getsockname()[1]}"]
        assert len(mine) == 1, rows
        assert mine[0]["name"] == "alpha" and mine[0]["cmd"] == "client|list", mine
        assert mine[0]["laddr"] == f"127.0.0.1:{front.port}"
        theirs = [r for r in rows if r["name"] == "beta"]
        assert len(theirs) == 1 and theirs[0]["cmd"] == "get", theirs
        other_id = other.call("CLIENT", "ID")
        assert theirs[0]["id"] == str(other_id)
        # KILL ID: that client is closed, the caller is not
        assert me.call("CLIENT", "KILL", "ID", other_id) == 1
        assert other.closed_by_peer()
        # KILL ADDR (-> count) and the old form KILL ip:port (-> OK)
        third_addr = f"127.0.0.1:{third.sock.getsockname()[1]}"
        assert me.call("CLIENT", "KILL", "ADDR", third_addr) == 1
        assert third.closed_by_peer()
        fourth_addr = f"127.0.0.1:{fourth.sock.getsockname()[1]}"
        assert me.call("CLIENT", "KILL", fourth_addr) == b"OK"
        assert fourth.closed_by_peer()
        assert me.call("PING") == b"PONG"
        names = {r["name"] for r in client_list(me.call("CLIENT", "LIST"))}
        assert "beta" not in names and "alpha" in names


def test_command_count_info_docs(stack: Fronts) -> None:
    with RawClient(stack.ports["ring"]) as c:
        count = c.call("COMMAND", "COUNT")
        assert isinstance(count, int) and count > 200
        info = c.call("COMMAND", "INFO", "get")
        assert info[0][0] == b"get" and info[0][1] == 2
        docs = c.call("COMMAND", "DOCS", "get")
        assert isinstance(docs, list) and docs, docs
        assert docs[0] == b"get" and isinstance(docs[1], list) and docs[1], docs
