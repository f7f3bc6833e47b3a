"""One listener in front of three deployments, routed by key prefix; mirroring.

A ring pool of two redis-servers (carts), a real 3-master Redis Cluster (products) and a
master + replica under three real sentinels (sessions), behind one listener; a one-server ring
pool mirrors the carts' writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import hiredis
import pytest
import redis

from proxy.hashing import key_slot
from tests.integration.harness import (
    Metrics,
    RawClient,
    RedisCluster,
    RedisServer,
    ResProxy,
    SentinelGroup,
    free_port,
    poll_until,
    sentinel_pool_yaml,
    start_redis_servers,
)


class Stack:
    def __init__(self) -> None:
        self.ring: list[RedisServer] = []
        self.mirror: RedisServer | None = None
        self.cluster: RedisCluster | None = None
        self.group: SentinelGroup | None = None
        self.proxy: ResProxy | None = None
        self.port = self.strict_port = self.metrics_port = 0

    def cleanup(self) -> None:
        if self.proxy is not None:
            self.proxy.cleanup()
        for s in [*self.ring, *([self.mirror] if self.mirror else [])]:
            s.cleanup()
        if self.cluster is not None:
            self.cluster.cleanup()
        if self.group is not None:
            self.group.cleanup()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    st = Stack()
    try:
        *st.ring, st.mirror = start_redis_servers(3)
        st.cluster = RedisCluster(masters=3, replicas=0).start()
        st.group = SentinelGroup("sessions").start()
        st.port, st.strict_port, st.metrics_port = free_port(), free_port(), free_port()
        ring = "".join(f"      - 127.0.0.1:{s.port}:1 cart{i}\n" for i, s in enumerate(st.ring))
        seeds = "".join(f"      - {n}\n" for n in st.cluster.seeds(1))
        config = (
            "pools:\n"
            + sentinel_pool_yaml("sessions", st.group, timeout=3000)
            + "  products:\n    distribution: cluster\n    timeout: 2000\n    servers:\n"
            + seeds
            + "  carts:\n    hash: fnv1a_64\n    distribution: ketama\n    timeout: 1000\n"
            + "    servers:\n"
            + ring
            + f"  carts_mirror:\n    timeout: 300\n    servers:\n      - 127.0.0.1:{st.mirror.port}:1\n"
            + "listeners:\n"
            + f"  app:\n    listen: 127.0.0.1:{st.port}\n    default_pool: carts\n    routes:\n"
            + '      - {prefix: "session:", pool: sessions}\n'
            + '      - {prefix: "product:", pool: products}\n'
            + '      - {prefix: "cart:", pool: carts, mirror: carts_mirror}\n'
            + '      - {prefix: "legacy:", pool: carts, strip_prefix: true}\n'
            + f"  strict:\n    listen: 127.0.0.1:{st.strict_port}\n    routes:\n"
            + '      - {prefix: "session:", pool: sessions}\n'
            + f"metrics:\n  listen: 127.0.0.1:{st.metrics_port}\n"
        )
        st.proxy = ResProxy(config).start(pools=2)
        yield st
    finally:
        st.cleanup()


def _where(stack: Stack, key: str) -> set[str]:
    """Which deployments hold ``key``, asked of every node directly."""
    found = set()
    assert stack.cluster is not None and stack.group is not None
    if any(s.call("EXISTS", key) == 1 for s in stack.ring):
        found.add("ring")
    if stack.cluster.slot_owner(key_slot(key.encode())).call("EXISTS", key) == 1:
        found.add("cluster")
    if stack.group.by_port(stack.group.current_master_port()).call("EXISTS", key) == 1:
        found.add("sentinel")
    return found


def test_checkout_flow_through_one_client(stack: Stack) -> None:
    client = redis.Redis(port=stack.port, socket_timeout=10)  # redis-py 8: RESP3 (HELLO 3)
    session = json.dumps({"user": "u1", "cart": "cart:u1"})
    assert client.set("session:u1", session, ex=300)
    assert 0 < client.ttl("session:u1") <= 300
    product = json.dumps({"sku": 42, "name": "teapot", "price": 19.5})
    assert client.set("product:42", product)
    assert client.set("product:43", json.dumps({"sku": 43}))
    assert client.hset("cart:u1", mapping={"product:42": 2}) == 1
    assert client.hincrby("cart:u1", "product:42", 1) == 3
    assert client.hgetall("cart:u1") == {b"product:42": b"3"}
    # one MGET over three deployments, merged in key order
    assert client.mget(["product:43", "session:u1", "nope", "product:42"]) == [
        json.dumps({"sku": 43}).encode(),
        session.encode(),
        None,
        product.encode(),
    ]
    assert client.exists("session:u1", "product:42", "cart:u1", "product:43", "nope") == 4
    assert json.loads(client.get("product:42") or b"")["name"] == "teapot"
    # every key only on its own deployment
    assert _where(stack, "session:u1") == {"sentinel"}
    assert _where(stack, "product:42") == {"cluster"}
    assert _where(stack, "product:43") == {"cluster"}
    assert _where(stack, "cart:u1") == {"ring"}
    assert client.delete("session:u1", "product:43", "cart:u1") == 3
    assert _where(stack, "session:u1") == _where(stack, "cart:u1") == set()
    client.close()


def test_default_pool_strip_prefix_and_cross_route_refusal(stack: Stack) -> None:
    with RawClient(stack.port) as c:
        assert c.call("SET", "misc:1", "d") == b"OK"  # no prefix matches: the default pool
        assert _where(stack, "misc:1") == {"ring"}
        assert c.call("SET", "legacy:old", "L") == b"OK"  # stored as "old" in the carts pool
        assert any(s.call("GET", "old") == b"L" for s in stack.ring)
        assert c.call("GET", "legacy:old") == b"L"
        assert c.call("MGET", "legacy:old", "misc:1") == [b"L", b"d"]
        reply = c.call("RENAME", "session:a", "product:b")
        assert isinstance(reply, hiredis.ReplyError)
        assert str(reply) == "CROSSSLOT Keys in request don't hash to the same route"
        assert c.call("PING") == b"PONG"
    with RawClient(stack.strict_port) as c:  # no default pool: unmatched keys are refused
        reply = c.call("GET", "cart:u1")
        assert isinstance(reply, hiredis.ReplyError) and "no route" in str(reply)
        assert c.call("SET", "session:strict", "s") == b"OK"


def test_mirroring_copies_writes_and_never_hurts_the_primary(stack: Stack) -> None:
    assert stack.mirror is not None
    mirror = stack.mirror
    sent_before = Metrics(stack.metrics_port).total("resproxy_mirror_sent_total", pool="app")
    with RawClient(stack.port) as c:
        for i in range(50):
            assert c.call("SET", f"cart:m{i}", i) == b"OK"
        for i in range(50):
            assert c.call("GET", f"cart:m{i}") == str(i).encode()
    poll_until(lambda: mirror.call("DBSIZE") >= 50, "mirror has the writes", 10)
    info = mirror.call("INFO", "commandstats").decode()
    assert "cmdstat_get:" not in info  # reads are not mirrored (mirror_mode: writes)
    assert mirror.call("GET", "cart:m7") == b"7"
    after = Metrics(stack.metrics_port)
    assert after.total("resproxy_mirror_sent_total", pool="app") - sent_before == 50
    # the mirror dies: primary replies carry on, without a single error
    mirror.kill()
    errors = 0
    with RawClient(stack.port) as c:
        for i in range(200):
            if isinstance(c.call("SET", f"cart:n{i}", i), hiredis.ReplyError):
                errors += 1
        assert c.call("GET", "cart:n199") == b"199"
    assert errors == 0
    final = Metrics(stack.metrics_port)

    def lost(m: Metrics) -> float:
        return m.total("resproxy_mirror_errors_total", pool="app") + m.total(
            "resproxy_mirror_dropped_total", pool="app"
        )

    assert lost(final) > lost(after)


def test_reload_changes_routes_without_dropping_clients(stack: Stack) -> None:
    assert stack.proxy is not None
    proxy = stack.proxy
    with RawClient(stack.port) as held:
        assert held.call("SET", "wish:1", "w") == b"OK"  # no route yet: the default pool
        assert _where(stack, "wish:1") == {"ring"}
        with open(proxy.config_path) as f:
            text = f.read()
        with open(proxy.config_path, "w") as f:
            f.write(
                text.replace(
                    '      - {prefix: "product:", pool: products}\n',
                    '      - {prefix: "product:", pool: products}\n'
                    '      - {prefix: "wish:", pool: products}\n',
                )
            )
        import signal

        proxy.send_signal(signal.SIGHUP)
        poll_until(lambda: "reload accepted" in proxy.log(), "reload accepted", 15)
        assert held.call("SET", "wish:2", "w") == b"OK"  # same connection, new route
        assert _where(stack, "wish:2") == {"cluster"}
        assert held.call("GET", "session:strict") == b"s"
