"""A cluster pool in front of a real Redis Cluster (3 masters + 3 replicas), with plain clients.

The cluster is built with ``redis-cli --cluster create`` once for the module; every check is made
against the cluster's own nodes (CLUSTER SLOTS, direct reads, INFO commandstats), never against
what resproxy believes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hiredis
import pytest
import redis

from proxy.hashing import key_slot
from tests.integration.harness.clients import RawClient, comparable
from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.proxyproc import ResProxy, start_cluster_proxy
from tests.integration.harness.servers import RedisServer
from tests.integration.test_commands import SEQUENCE, UNORDERED


@pytest.fixture(scope="module")
def proxy(cluster: RedisCluster) -> Iterator[ResProxy]:
    """Seeded with one node only: the rest of the cluster is learned from it."""
    with start_cluster_proxy(cluster, seeds=1, timeout=2000) as p:
        yield p


@pytest.fixture(scope="module")
def reference() -> Iterator[RedisServer]:
    with RedisServer().start() as r:
        yield r


@pytest.fixture()
def clean(cluster: RedisCluster, reference: RedisServer) -> None:
    for node in cluster.masters():
        node.call("FLUSHALL")
    reference.call("FLUSHALL")


def _keys_on_every_master(cluster: RedisCluster, prefix: str, per_master: int) -> list[str]:
    """Keys chosen so that each master owns ``per_master`` of them (by the cluster's slot map)."""
    want = {m.port: per_master for m in cluster.masters()}
    keys: list[str] = []
    for i in range(10000):  # bounded
        key = f"{prefix}{i}"
        owner = cluster.slot_owner(key_slot(key.encode())).port
        if want.get(owner, 0) > 0:
            want[owner] -= 1
            keys.append(key)
        if not any(want.values()):
            return keys
    raise AssertionError("could not spread keys over the masters")


def test_key_slot_is_redis_cluster_keyslot(cluster: RedisCluster) -> None:
    node = cluster.nodes[0]
    for key in [b"", b"foo", b"{user1000}.following", b"a{}b", b"{}{x}", b"x{y}z{w}", b"\xff\x00k"]:
        assert key_slot(key) == node.call("CLUSTER", "KEYSLOT", key), key


@pytest.mark.parametrize("protocol", [2, 3])
def test_scripted_sequence_answers_like_one_redis_server(
    proxy: ResProxy, reference: RedisServer, cluster: RedisCluster, clean: None, protocol: int
) -> None:
    with RawClient(proxy.port) as p, RawClient(reference.port) as r:
        if protocol == 3:
            assert p.call("HELLO", 3)[b"proto"] == r.call("HELLO", 3)[b"proto"] == 3
        for cmd in SEQUENCE:
            got, want = comparable(p.call(*cmd)), comparable(r.call(*cmd))
            if cmd[0] in UNORDERED:
                got, want = sorted(got), sorted(want)
            assert got == want, cmd
    # the keys really are spread over all three masters
    assert all(m.call("DBSIZE") > 0 for m in cluster.masters())


def test_every_key_lands_on_its_slots_master(proxy: ResProxy, cluster: RedisCluster, clean: None) -> None:
    client = redis.Redis(port=proxy.port, socket_timeout=10)
    keys = [f"placed:{i}" for i in range(300)]
    for key in keys:
        assert client.set(key, key.upper())
    masters = cluster.masters()
    for key in keys:
        owner = cluster.slot_owner(key_slot(key.encode()))
        # READONLY-free GET on the owner itself: it answers instead of redirecting
        assert owner.call("GET", key) == key.upper().encode(), key
    assert sum(m.call("DBSIZE") for m in masters) == len(keys)
    client.close()


def test_cross_node_multi_key_commands_split_and_merge(
    proxy: ResProxy, cluster: RedisCluster, clean: None
) -> None:
    keys = _keys_on_every_master(cluster, "mk:", 3)  # 9 keys, 3 per master
    with RawClient(proxy.port) as c:
        mset: list[Any] = ["MSET"]
        for k in keys:
            mset += [k, f"v-{k}"]
        assert c.call(*mset) == b"OK"
        for k in keys:  # every key is where the cluster says
            assert cluster.slot_owner(key_slot(k.encode())).call("GET", k) == f"v-{k}".encode()
        order = [keys[4], "missing", keys[0], keys[8], keys[4]]
        assert c.call("MGET", *order) == [
            b"v-" + keys[4].encode(),
            None,
            b"v-" + keys[0].encode(),
            b"v-" + keys[8].encode(),
            b"v-" + keys[4].encode(),
        ]
        assert c.call("EXISTS", *keys, "missing", keys[0]) == len(keys) + 1
        assert c.call("TOUCH", *keys[:4]) == 4
        assert c.call("DEL", keys[0], keys[3], keys[6], "missing") == 3
        assert c.call("UNLINK", keys[1], keys[1], keys[7]) == 2
        assert c.call("MGET", keys[0], keys[1], keys[2]) == [None, None, b"v-" + keys[2].encode()]
    assert sum(m.call("DBSIZE") for m in cluster.masters()) == len(keys) - 5


def test_same_slot_multi_key_served_cross_slot_refused(proxy: ResProxy, clean: None) -> None:
    with RawClient(proxy.port) as c:
        assert c.call("SADD", "{cart}a", "x", "y") == 2
        assert c.call("SADD", "{cart}b", "y", "z") == 2
        assert c.call("SUNIONSTORE", "{cart}u", "{cart}a", "{cart}b") == 3
        assert c.call("RENAME", "{cart}u", "{cart}v") == b"OK"
        assert key_slot(b"a") != key_slot(b"b")
        reply = c.call("SUNIONSTORE", "a", "b", "c")
        assert isinstance(reply, hiredis.ReplyError)
        assert str(reply) == "CROSSSLOT Keys in request don't hash to the same slot"
        assert c.call("EVAL", "return redis.call('get', KEYS[1])", 2, "a", "b").__class__ is (
            hiredis.ReplyError
        )
        assert c.call("PING") == b"PONG"


def test_pipeline_across_slots_answered_in_order(proxy: ResProxy, clean: None) -> None:
    commands: list[tuple[Any, ...]] = []
    for i in range(300):
        commands += [("SET", f"p{i}", i), ("INCR", f"p{i}"), ("MGET", f"p{i}", f"p{i // 2}")]
    with RawClient(proxy.port) as c:
        replies = c.pipeline(commands)
    for i in range(300):
        assert replies[3 * i] == b"OK"
        assert replies[3 * i + 1] == i + 1
        assert replies[3 * i + 2] == [str(i + 1).encode(), str(i // 2 + 1).encode()]


def test_replica_reads_go_to_replicas_and_writes_to_masters(cluster: RedisCluster, clean: None) -> None:
    with start_cluster_proxy(cluster, seeds=2, read_from="replica", timeout=2000) as proxy:
        masters = cluster.masters()
        replicas = [r for m in masters for r in cluster.replicas_of(m)]
        assert len(replicas) == 3
        before = {n.port: (n.cmdstat("get"), n.cmdstat("set")) for n in masters + replicas}
        keys = _keys_on_every_master(cluster, "rr:", 10)
        with RawClient(proxy.port) as c:
            for k in keys:
                assert c.call("SET", k, k) == b"OK"
            for m in masters:  # the replicas have every write before the reads start
                assert m.call("WAIT", 1, 5000) >= 1
            for k in keys:
                assert c.call("GET", k) == k.encode()
        gets = {n.port: n.cmdstat("get") - before[n.port][0] for n in masters + replicas}
        sets = {n.port: n.cmdstat("set") - before[n.port][1] for n in masters + replicas}
        assert all(gets[r.port] == 10 for r in replicas), gets
        assert all(gets[m.port] == 0 for m in masters), gets
        assert all(sets[m.port] == 10 for m in masters), sets
