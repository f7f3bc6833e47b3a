"""Scripts and functions through resproxy, against real redis-servers (issue 11).

One resproxy fronts a ring pool of three redis-servers, a cluster pool in front of a real
Redis Cluster of 3 masters, and a listener routing ``c:`` to the cluster and everything else to
the ring. Script caches are checked on each server directly (SCRIPT EXISTS, FUNCTION LIST), and a
lost cache is made the way it happens in production: SCRIPT FLUSH sent to one server behind the
proxy's back, or the redis-server process restarted on its port.

Every script body is unique to its test (a random comment), so the bodies resproxy keeps from one
test never make another pass.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import hiredis
import pytest

from tests.integration.harness.clients import RawClient, error_text
from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.configs import MURMUR_RING, route
from tests.integration.harness.deployments import FRONTS, Front, Fronts, FrontsSpec, running_fronts
from tests.integration.harness.servers import RedisServer, running_redis_servers
from tests.integration.harness.waiting import poll_until

INCR = "return redis.call('INCR', KEYS[1])"
ECHO_KEY_ARG = "return {KEYS[1], ARGV[1]}"

# ring, cluster (3 masters, no replicas), edge routing c: to the cluster and the rest to the ring
SPEC = FrontsSpec(
    listeners={"edge": [route("c:", "cluster")]},
    ring_keys={**MURMUR_RING, "timeout": 2000},
    cluster_keys={"timeout": 2000},
    prefixes=("c:", "r:"),
)


@pytest.fixture(scope="module")
def stack() -> Iterator[Fronts]:
    with (
        running_redis_servers(3) as ring,
        RedisCluster(masters=3, replicas=0).start() as cluster,
        running_fronts(SPEC, ring, cluster) as started,
    ):
        yield started


def _wipe(servers: Sequence[RedisServer]) -> None:
    for s in servers:
        s.call("FLUSHALL")
        s.call("SCRIPT", "FLUSH")
        s.call("FUNCTION", "FLUSH")


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest, stack: Fronts) -> Front:
    """A front, with every server's data, script cache and functions emptied directly."""
    _wipe(stack.data_nodes())
    return stack.front(str(request.param))


# --- helpers -------------------------------------------------------------------------------


def unique(body: str) -> str:
    """``body`` with a comment that makes its sha1 new to every server and to the proxy."""
    return f"-- {uuid.uuid4().hex}\n{body}"


def sha1(body: str) -> str:
    return hashlib.sha1(body.encode()).hexdigest()


def ok(reply: Any) -> Any:
    """A reply that must not be an error."""
    assert not isinstance(reply, hiredis.ReplyError), str(reply)
    return reply


def spread(front: Front, kind: str, per_backend: int) -> dict[int, list[str]]:
    """Keys SET to "0" through the proxy until every backend holds ``per_backend`` of them;
    backend port -> its keys (where each key is, asked of the servers directly)."""
    placed: dict[int, list[str]] = {b.port: [] for b in front.backends}
    with RawClient(front.port) as c:
        for i in range(5000):  # bounded
            key = front.key(kind, i)
            assert c.call("SET", key, "0") == b"OK"
            holders = [b.port for b in front.backends if b.call("EXISTS", key) == 1]
            assert len(holders) == 1, (key, holders)
            if len(placed[holders[0]]) < per_backend:
                placed[holders[0]].append(key)
            else:
                assert c.call("DEL", key) == 1
            if all(len(keys) >= per_backend for keys in placed.values()):
                return placed
    raise AssertionError(f"could not place keys on every server: {placed}")


def script_exists(server: RedisServer, sha: str) -> bool:
    return bool(server.call("SCRIPT", "EXISTS", sha) == [1])


# --- SCRIPT LOAD / EXISTS / FLUSH ----------------------------------------------------------


def test_script_load_exists_and_flush_cover_every_server(front: Front) -> None:
    body = unique(INCR)
    sha = sha1(body)
    never = sha1(unique(INCR))
    keys = spread(front, "load", 1)
    with RawClient(front.port) as c:
        assert c.call("SCRIPT", "LOAD", body) == sha.encode()
        assert [script_exists(b, sha) for b in front.backends] == [True] * len(front.backends)
        assert c.call("SCRIPT", "EXISTS", sha, never) == [1, 0]
        # one server loses it: no longer "exists" through the proxy
        front.backends[-1].call("SCRIPT", "FLUSH")
        assert c.call("SCRIPT", "EXISTS", sha, never) == [0, 0]
        assert c.call("SCRIPT", "LOAD", body) == sha.encode()
        assert c.call("SCRIPT", "EXISTS", sha) == [1]
        # SCRIPT FLUSH through the proxy: every server, and the proxy forgets the body
        assert c.call("SCRIPT", "FLUSH") == b"OK"
        assert not any(script_exists(b, sha) for b in front.backends)
        assert c.call("SCRIPT", "EXISTS", sha) == [0]
        some_key = next(iter(keys.values()))[0]
        assert error_text(c.call("EVALSHA", sha, 1, some_key)).startswith("NOSCRIPT")
        assert c.call("SCRIPT", "LOAD", body) == sha.encode()
        assert c.call("SCRIPT", "FLUSH", "ASYNC") == b"OK"
        assert not any(script_exists(b, sha) for b in front.backends)


# --- EVALSHA when a server lost its script cache --------------------------------------------


def test_evalsha_survives_a_flushed_script_cache(front: Front) -> None:
    body = unique(INCR)
    sha = sha1(body)
    keys = spread(front, "lost", 2)
    with RawClient(front.port) as c:
        assert c.call("SCRIPT", "LOAD", body) == sha.encode()
        for server_keys in keys.values():
            for key in server_keys:
                assert ok(c.call("EVALSHA", sha, 1, key)) == 1
        for victim in front.backends:  # each server in turn, behind the proxy's back
            victim.call("SCRIPT", "FLUSH")
            # (no check that the script is gone: the proxy may have reconnected and preloaded it)
            for key in keys[victim.port]:
                assert ok(c.call("EVALSHA", sha, 1, key)) == 2, key
            assert script_exists(victim, sha)  # the proxy loaded it there again


@pytest.mark.parametrize("which", ["ring", "cluster"])
def test_evalsha_after_a_server_restart(stack: Fronts, which: str) -> None:
    _wipe(stack.data_nodes())
    front = stack.front(which)
    body = unique(INCR)
    sha = sha1(body)
    keys = spread(front, "restart", 1)
    victim = front.backends[1]
    key = keys[victim.port][0]
    with RawClient(front.port) as c:
        assert c.call("SCRIPT", "LOAD", body) == sha.encode()
        assert ok(c.call("EVALSHA", sha, 1, key)) == 1
        victim.restart()  # no persistence: data and script cache are gone
        if which == "cluster":
            stack.cluster.wait_healthy(timeout_s=30)
        # (no check that the script is gone: the proxy may have reconnected and preloaded it)

        def served() -> bool:
            # the proxy's connection to the restarted server is usable again
            return c.call("GET", key) is None

        poll_until(served, "the restarted server is served through the proxy", 20, 0.1)
        assert ok(c.call("EVALSHA", sha, 1, key)) == 1
        assert ok(c.call("EVALSHA", sha, 1, key)) == 2
    assert script_exists(victim, sha)


def test_eval_body_makes_evalsha_work_on_servers_that_never_saw_it(front: Front) -> None:
    body = unique(INCR)
    sha = sha1(body)
    keys = spread(front, "body", 1)
    first, *others = front.backends
    with RawClient(front.port) as c:
        assert ok(c.call("EVAL", body, 1, keys[first.port][0])) == 1
        assert script_exists(first, sha)
        assert not any(script_exists(b, sha) for b in others)
        for b in others:
            assert ok(c.call("EVALSHA", sha, 1, keys[b.port][0])) == 1, b.port
        assert all(script_exists(b, sha) for b in front.backends)


def test_evalsha_of_an_unknown_sha_is_noscript(front: Front) -> None:
    sha = sha1(unique(INCR))
    with RawClient(front.port, timeout_s=5) as c:  # an answer, not retries until a timeout
        for i in range(6):
            text = error_text(c.call("EVALSHA", sha, 1, front.key("unknown", i)))
            assert text.startswith("NOSCRIPT"), text
        assert c.call("PING") == b"PONG"


def test_eval_without_keys_is_refused(front: Front) -> None:
    with RawClient(front.port) as c:
        assert error_text(c.call("EVAL", "return 1", 0)) == (
            "ERR command 'eval' without keys cannot be routed by the proxy"
        )
        assert error_text(c.call("EVALSHA", sha1("return 1"), 0)) == (
            "ERR command 'evalsha' without keys cannot be routed by the proxy"
        )
        assert c.call("PING") == b"PONG"


def test_pipeline_of_evalsha_after_the_caches_were_flushed(front: Front) -> None:
    """Caches emptied under live connections (SCRIPT FLUSH on the servers directly): a
    pipeline of EVALSHAs keeps its order; each either ran or got NOSCRIPT, never ran after
    the client's later commands. Alone, an EVALSHA is loaded again and runs."""
    body = unique(ECHO_KEY_ARG)
    sha = sha1(body)
    keys = [front.key("pipe", i) for i in range(100)]
    with RawClient(front.port) as c:
        assert c.call("SCRIPT", "LOAD", body) == sha.encode()
        for b in front.backends:
            b.call("SCRIPT", "FLUSH")
        replies = c.pipeline([("EVALSHA", sha, 1, key, i) for i, key in enumerate(keys)])
        for i, (key, reply) in enumerate(zip(keys, replies)):
            assert reply == [key.encode(), str(i).encode()] or str(reply).startswith("NOSCRIPT"), reply
        for i, key in enumerate(keys):
            assert c.call("EVALSHA", sha, 1, key, i) == [key.encode(), str(i).encode()]
    assert all(script_exists(b, sha) for b in front.backends)  # the keys reached every server


@pytest.mark.parametrize("which", ["ring", "cluster"])
def test_pipeline_of_evalsha_after_a_server_restart(stack: Fronts, which: str) -> None:
    """A restarted server gets the scripts clients call by SHA1 first on its new connection:
    a whole pipeline of EVALSHAs right after runs, in order."""
    _wipe(stack.data_nodes())
    front = stack.front(which)
    body = unique(ECHO_KEY_ARG)
    sha = sha1(body)
    keys = [k for ks in spread(front, "prestart", 3).values() for k in ks]
    victim = front.backends[0]
    with RawClient(front.port) as c:
        assert c.call("SCRIPT", "LOAD", body) == sha.encode()
        victim.restart()
        if which == "cluster":
            stack.cluster.wait_healthy(timeout_s=30)
        # (no check that the script is gone: the proxy may have reconnected and preloaded it)
        on_victim = next(k for k in keys if victim.call("EXISTS", k) == 0)  # (data is gone)

        def served() -> bool:
            return c.call("GET", on_victim) is None

        poll_until(served, "the restarted server is served through the proxy", 20, 0.1)
        replies = c.pipeline([("EVALSHA", sha, 1, key, i) for i, key in enumerate(keys)] * 10)
    assert replies == [[key.encode(), str(i).encode()] for i, key in enumerate(keys)] * 10


# --- FUNCTION ------------------------------------------------------------------------------


def _library(name: str) -> str:
    return (
        f"#!lua name={name}\n"
        f"redis.register_function('{name}_incrby', function(keys, args)\n"
        "  return redis.call('INCRBY', keys[1], args[1])\n"
        "end)\n"
    )


def _libraries(server: RedisServer) -> list[bytes]:
    listed = server.call("FUNCTION", "LIST")
    return [dict(zip(lib[::2], lib[1::2]))[b"library_name"] for lib in listed]


def test_functions_load_call_list_delete_flush(front: Front) -> None:
    lib = f"rp_{front.name}_{uuid.uuid4().hex[:8]}"
    keys = spread(front, "fcall", 1)
    with RawClient(front.port) as c:
        assert c.call("FUNCTION", "LOAD", _library(lib)) == lib.encode()
        assert all(_libraries(b) == [lib.encode()] for b in front.backends)
        for b in front.backends:
            assert ok(c.call("FCALL", f"{lib}_incrby", 1, keys[b.port][0], 5)) == 5
            assert b.call("GET", keys[b.port][0]) == b"5"  # ran on the key's own server
        listed = ok(c.call("FUNCTION", "LIST"))
        assert [dict(zip(x[::2], x[1::2]))[b"library_name"] for x in listed] == [lib.encode()]
        assert c.call("FUNCTION", "DELETE", lib) == b"OK"
        assert all(_libraries(b) == [] for b in front.backends)
        assert c.call("FUNCTION", "LOAD", _library(lib)) == lib.encode()
        assert all(_libraries(b) == [lib.encode()] for b in front.backends)
        assert c.call("FUNCTION", "FLUSH") == b"OK"
        assert all(_libraries(b) == [] for b in front.backends)
        assert c.call("FUNCTION", "LIST") == []
