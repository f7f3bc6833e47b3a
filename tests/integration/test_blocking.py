"""Blocking commands (BLPOP, BLMOVE, BZPOPMIN, XREAD BLOCK...) on dedicated connections: every
item consumed exactly once, nothing popped for a client that left, shared connections never
stalled, the pool's timeout never cutting a block short."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import hiredis
import pytest
import redis
import redis.asyncio as aioredis

from tests.integration.harness.clients import RawClient, encode
from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.configs import native_config, pool_yaml, route, server_lines
from tests.integration.harness.deployments import Fronts, FrontsSpec, running_fronts
from tests.integration.harness.metrics import Metrics
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import ResProxy
from tests.integration.harness.servers import RedisServer, running_redis_servers
from tests.integration.harness.waiting import poll_until

ITEMS = 10_000
CONSUMERS = 20
LIMIT = 24  # dedicated_connections per server

# ring, cluster (seeded with every master) and a listener ``edge`` routing jobs: to ``small``
SPEC = FrontsSpec(
    listeners={"edge": [route("jobs:", "small")]},
    ring_keys={"hash_tag": "{}", "timeout": 300, "dedicated_connections": LIMIT},
    cluster_keys={"timeout": 300, "dedicated_connections": LIMIT},
    names="r",
    seeds=None,
    solo="small",
    solo_keys={"dedicated_connections": 2},
)


@pytest.fixture(scope="module")
def fronts(servers: list[RedisServer], cluster: RedisCluster) -> Iterator[Fronts]:
    with running_fronts(SPEC, servers[:3], cluster, solo=servers[3]) as started:
        yield started


def _blocked_clients(server: RedisServer) -> int:
    return int(server.info("clients")["blocked_clients"])


@pytest.mark.parametrize("front", ["ring", "cluster", "listener"])
def test_producer_and_20_consumers_move_every_item_exactly_once(fronts: Fronts, front: str) -> None:
    port = fronts.front(front).port
    queue, done = "{q}:" + front, "{q}:" + front + ":done"

    async def run() -> list[bytes]:
        consumed: list[bytes] = []

        async def consumer(n: int) -> None:
            r = aioredis.Redis(port=port, protocol=2, socket_timeout=30)
            try:
                while True:
                    if n % 2:
                        got = await r.blpop([queue], timeout=2)
                        item = got[1] if got else None
                    else:  # BLMOVE to a list of its own, then off it
                        mine = f"{done}:{n}"
                        item = await r.blmove(queue, mine, 2, "LEFT", "RIGHT")
                        if item is not None:
                            assert await r.rpop(mine) == item
                    if item is None:
                        return  # the producer is done and the queue stayed empty
                    assert isinstance(item, bytes)
                    consumed.append(item)
            finally:
                await r.aclose()

        async def producer() -> None:
            r = aioredis.Redis(port=port, protocol=2, socket_timeout=30)
            try:
                for start in range(0, ITEMS, 500):
                    await r.rpush(queue, *[b"item%d" % i for i in range(start, start + 500)])
                    await asyncio.sleep(0)  # interleave with the consumers
            finally:
                await r.aclose()

        async with asyncio.timeout(120):
            await asyncio.gather(producer(), *(consumer(n) for n in range(CONSUMERS)))
        return consumed

    consumed = asyncio.run(run())
    assert len(consumed) == ITEMS
    assert sorted(consumed) == sorted(b"item%d" % i for i in range(ITEMS))


def test_a_consumer_that_leaves_while_blocked_loses_nothing(fronts: Fronts) -> None:
    key = "{gone}:list"
    with RawClient(fronts.ports["ring"]) as c:
        assert c.call("SET", key + "probe", "1") == b"OK"
    owner = next(s for s in fronts.ring if s.call("EXISTS", key + "probe") == 1)
    before = _blocked_clients(owner)
    with socket.create_connection(("127.0.0.1", fronts.ports["ring"])) as s:
        s.sendall(encode("BLPOP", key, 0))
        poll_until(lambda: _blocked_clients(owner) == before + 1, "the pop blocks on its server", 10)
    # the client is gone: its server connection is closed at once, the pop never happens
    poll_until(lambda: _blocked_clients(owner) == before, "the blocked pop is dropped", 10)
    with RawClient(fronts.ports["ring"]) as c:
        assert c.call("RPUSH", key, "precious") == 1
    assert owner.call("LRANGE", key, 0, -1) == [b"precious"]


def test_blocked_clients_do_not_stall_others_on_the_same_server(fronts: Fronts) -> None:
    port = fronts.ports["ring"]
    blocked = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONSUMERS)]
    try:
        for n, s in enumerate(blocked):
            s.sendall(encode("BLPOP", f"{{stall}}:q{n}", 0))
        with RawClient(port) as c:  # the blocked pops hold no shared connection: all answered
            poll_until(
                lambda: f"blocked_clients:{CONSUMERS}\r\n".encode() in c.call("INFO", "clients"),
                "every pop counted as blocked",
                10,
            )
            for i in range(200):
                assert c.call("SET", "{stall}:k", str(i)) == b"OK"
                assert c.call("GET", "{stall}:k") == str(i).encode()
        with RawClient(port) as c:
            for n in range(CONSUMERS):
                assert c.call("RPUSH", f"{{stall}}:q{n}", "x") == 1
        for n, s in enumerate(blocked):
            s.settimeout(10)
            reader = hiredis.Reader()
            while (reply := reader.gets()) is False:
                reader.feed(s.recv(4096))
            assert reply == [f"{{stall}}:q{n}".encode(), b"x"]
    finally:
        for s in blocked:
            s.close()


def test_the_pool_timeout_does_not_cut_a_block_short(fronts: Fronts) -> None:
    with RawClient(fronts.ports["ring"]) as c:  # pool timeout 300 ms, block 1 s
        assert c.call("BLPOP", "{t}:empty", 1) is None
        assert c.call("BZPOPMIN", "{t}:zempty", "0.5") is None
        assert c.call("XREAD", "BLOCK", 600, "STREAMS", "{t}:s", "$") is None
        assert c.call("PING") == b"PONG"


def test_pipelined_push_then_pop_runs_in_order(fronts: Fronts) -> None:
    with RawClient(fronts.ports["ring"]) as c:
        out = c.pipeline(
            [("RPUSH", "{o}:l", "a"), ("BLPOP", "{o}:l", 0), ("RPUSH", "{o}:l", "b"), ("LLEN", "{o}:l")]
        )
        assert out == [1, [b"{o}:l", b"a"], 1, 1]


def test_keys_of_a_blocking_command_must_share_a_server(fronts: Fronts) -> None:
    with RawClient(fronts.ports["ring"]) as c:
        keys = [f"spread{i}" for i in range(12)]
        reply = c.call("BLPOP", *keys, 1)
        assert isinstance(reply, hiredis.ReplyError) and str(reply).startswith("CROSSSLOT"), reply
    with RawClient(fronts.ports["cluster"]) as c:
        reply = c.call("BLPOP", "a", "b", "c", 1)
        assert isinstance(reply, hiredis.ReplyError) and str(reply).startswith("CROSSSLOT"), reply


def test_dedicated_connection_limit_then_served_again(fronts: Fronts) -> None:
    port = fronts.ports["edge"]  # jobs: -> the small pool, 2 dedicated connections
    first = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        for s in first:
            s.sendall(encode("BLPOP", "jobs:wait", 0))
        with RawClient(port) as c:

            def refused() -> bool:
                reply = c.call("BLPOP", "jobs:other", 1)
                return isinstance(reply, hiredis.ReplyError) and "dedicated_connections" in str(reply)

            poll_until(refused, "the third blocked pop is refused", 10)
            assert c.call("RPUSH", "jobs:wait", "one") == 1  # frees one of the two
            for s in first:
                s.settimeout(0.2)
            poll_until(lambda: c.call("LLEN", "jobs:wait") == 0, "the pushed item popped", 10)
            c.call("RPUSH", "jobs:other", "two")
            assert c.call("BLPOP", "jobs:other", 5) == [b"jobs:other", b"two"]
            assert c.call("RPUSH", "jobs:wait", "three") == 1
    finally:
        for s in first:
            s.close()


def test_redis_py_blocking_calls_through_a_route(fronts: Fronts) -> None:
    r = redis.Redis(port=fronts.ports["edge"], socket_timeout=10)
    try:
        r.rpush("jobs:q", "a", "b")
        assert r.blpop(["jobs:q"], timeout=1) == (b"jobs:q", b"a")
        assert r.brpoplpush("jobs:q", "jobs:done", timeout=1) == b"b"
        assert r.lrange("jobs:done", 0, -1) == [b"b"]
        assert r.bzpopmin("jobs:z", timeout=1) is None
        r.zadd("jobs:z", {"m": 1})
        assert r.bzpopmin("jobs:z", timeout=1) == (b"jobs:z", b"m", 1.0)
    finally:
        r.close()


def test_a_blocked_pop_whose_slot_moves_is_served_by_the_new_owner(fronts: Fronts) -> None:
    """The node unblocks the pop with -MOVED when its slot moves away; the proxy learns the
    new owner and blocks there, so the next push reaches the waiting client."""
    from proxy.hashing import key_slot

    cluster = fronts.cluster
    key = "{moving}:q"
    slot = key_slot(key.encode())
    source = cluster.slot_owner(slot)
    target = next(m for m in cluster.masters() if m is not source)
    with socket.create_connection(("127.0.0.1", fronts.ports["cluster"])) as s:
        s.settimeout(20)
        s.sendall(encode("BLPOP", key, 0))
        poll_until(lambda: _blocked_clients(source) >= 1, "blocked on the source", 10)
        cluster.set_slot_owner(slot, target)
        poll_until(lambda: _blocked_clients(target) >= 1, "blocked again on the new owner", 20)
        with RawClient(fronts.ports["cluster"]) as c:
            assert c.call("RPUSH", key, "after-move") == 1
        reader = hiredis.Reader()
        while (reply := reader.gets()) is False:
            reader.feed(s.recv(4096))
        assert reply == [key.encode(), b"after-move"]
    cluster.set_slot_owner(slot, source)


def test_a_blocking_pop_while_watching_keeps_its_own_timeout(fronts: Fronts) -> None:
    with RawClient(fronts.ports["ring"]) as c:  # the pool's timeout is 300 ms
        assert c.call("WATCH", "{wb}:l") == b"OK"
        assert c.call("BLPOP", "{wb}:l", 1) is None
        assert c.call("UNWATCH") == b"OK"


def test_a_blocking_command_while_subscribed_is_refused_with_its_reason(fronts: Fronts) -> None:
    with RawClient(fronts.ports["ring"]) as c:
        assert c.call("HELLO", "3")[b"proto"] == 3
        assert c.call("SUBSCRIBE", "{bs}ch") == [b"subscribe", b"{bs}ch", 1]
        reply = c.call("BLPOP", "{bs}l", 1)
        assert isinstance(reply, hiredis.ReplyError) and "subscriptions" in str(reply)


def test_blocked_pops_follow_a_reload_that_moves_their_keys() -> None:
    """A reload adds a server: pops blocked on keys that now live there are blocked there
    instead (nothing popped on the old server meanwhile), so every push reaches its consumer."""
    with running_redis_servers(3) as servers:
        port, mport = free_port(), free_port()

        def config(count: int) -> str:
            pool = pool_yaml("ring", port, server_lines(servers[:count]), timeout=1000)
            return native_config(pool, metrics_port=mport)

        keys = [f"follow:{i}" for i in range(40)]
        consumers = []
        with ResProxy(config(2), port=port, metrics_port=mport).start() as proxy:
            try:
                for key in keys:
                    s = socket.create_connection(("127.0.0.1", port))
                    s.settimeout(10)
                    s.sendall(encode("BLPOP", key, 0))
                    consumers.append(s)
                poll_until(
                    lambda: Metrics(mport).value("resproxy_blocked_clients", pool="ring") == len(keys),
                    "every pop blocked",
                    10,
                )
                assert proxy.reload(config(3))
                assert Metrics(mport).value("resproxy_config_reloads_total") == 1
                poll_until(
                    lambda: sum(_blocked_clients(s) for s in servers) == len(keys),
                    "every pop blocked where the new ring puts its key",
                    10,
                )
                assert _blocked_clients(servers[2]) > 0  # (some keys did move)
                with RawClient(port) as c:
                    for key in keys:
                        assert c.call("RPUSH", key, "item") == 1
                for key, s in zip(keys, consumers):
                    reader = hiredis.Reader()
                    while (reply := reader.gets()) is False:
                        reader.feed(s.recv(4096))
                    assert reply == [key.encode(), b"item"]
            finally:
                for s in consumers:
                    s.close()
