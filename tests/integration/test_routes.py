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
from tests.integration.harness.clients import RawClient
from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.configs import (
    listener_yaml,
    native_config,
    pool_yaml,
    route,
    sentinel_pool_yaml,
    server_lines,
)
from tests.integration.harness.deployments import running_backends
from tests.integration.harness.metrics import Metrics
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import ResProxy
from tests.integration.harness.sentinel import SentinelGroup
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until


class Stack:
    """The three deployments and the mirror behind one resproxy (not started yet)."""

    def __init__(self, servers: list[RedisServer], cluster: RedisCluster, group: SentinelGroup) -> None:
        *self.ring, self.mirror = servers
        self.cluster, self.group = cluster, group
        self.port, self.strict_port, self.metrics_port = free_port(), free_port(), free_port()
        self.proxy = ResProxy(self.render(), metrics_port=self.metrics_port)

    def render(self, *more_routes: str) -> str:
        """The config, with ``more_routes`` on the ``app`` listener after its product: route."""
        app_routes = [
            route("session:", "sessions"),
            route("product:", "products"),
            *more_routes,
            route("cart:", "carts", mirror="carts_mirror"),
            route("legacy:", "carts", strip_prefix=True),
        ]
        return native_config(
            sentinel_pool_yaml("sessions", self.group, timeout=3000),
            pool_yaml("products", None, self.cluster.seeds(1), distribution="cluster", timeout=2000),
            pool_yaml(
                "carts",
                None,
                server_lines(self.ring, "cart"),
                hash="fnv1a_64",
                distribution="ketama",
                timeout=1000,
            ),
            pool_yaml("carts_mirror", None, server_lines([self.mirror], None), timeout=300),
            listeners=[
                listener_yaml("app", self.port, *app_routes, default_pool="carts"),
                listener_yaml("strict", self.strict_port, route("session:", "sessions")),
            ],
            metrics_port=self.metrics_port,
        )


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    cluster, group = RedisCluster(masters=3, replicas=0), SentinelGroup("sessions")
    with running_backends(3, cluster, group) as plain:
        st = Stack(plain, cluster, group)
        with st.proxy.start(pools=2):  # the two listeners
            yield st


def _where(stack: Stack, key: str) -> set[str]:
    """Which deployments hold ``key``, asked of every node directly."""
    found = set()
    if any(s.call("EXISTS", key) == 1 for s in stack.ring):
        found.add("ring")
    if stack.cluster.slot_owner(key_slot(key.encode())).call("EXISTS", key) == 1:
        found.add("cluster")
    if stack.group.current_master().call("EXISTS", key) == 1:
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
    with RawClient(stack.port) as held:
        assert held.call("SET", "wish:1", "w") == b"OK"  # no route yet: the default pool
        assert _where(stack, "wish:1") == {"ring"}
        assert stack.proxy.reload(stack.render(route("wish:", "products")))
        assert held.call("SET", "wish:2", "w") == b"OK"  # same connection, new route
        assert _where(stack, "wish:2") == {"cluster"}
        assert held.call("GET", "session:strict") == b"s"
