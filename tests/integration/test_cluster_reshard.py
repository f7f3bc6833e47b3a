"""Slots moving between masters under resproxy: ASK and MOVED followed, nothing lost.

One real 3+3 cluster for the module. The first test migrates one slot by hand, step by step
(CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE), checking what the nodes hold at
each step; the second runs ``redis-cli --cluster reshard`` while four clients write and
read-verify continuously.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import hiredis
import pytest
import redis

from proxy.hashing import key_slot
from tests.integration.harness.clients import RawClient
from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.metrics import Metrics
from tests.integration.harness.proxyproc import ResProxy, start_cluster_proxy
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until


@pytest.fixture(scope="module")
def proxy(cluster: RedisCluster) -> Iterator[ResProxy]:
    # A long periodic refresh: the map changes only through MOVED (and the refresh it starts).
    with start_cluster_proxy(
        cluster, seeds=3, timeout=3000, cluster_refresh_interval=60000, metrics=True
    ) as p:
        yield p


def test_one_slot_migrated_by_hand_ask_then_moved(proxy: ResProxy, cluster: RedisCluster) -> None:
    slot = key_slot(b"{mig}")
    source = cluster.slot_owner(slot)
    target = next(m for m in cluster.masters() if m is not source)
    asking_before = target.cmdstat("asking")
    with RawClient(proxy.port) as c:
        assert c.call("SET", "{mig}1", "one") == b"OK"
        assert c.call("SET", "{mig}2", "two") == b"OK"
        # the slot starts migrating; {mig}1 moves, {mig}2 stays for now
        cluster.begin_migration(slot, source, target)
        assert cluster.migrate(source, target, "{mig}1") == b"OK"
        assert c.call("GET", "{mig}1") == b"one"  # source says ASK; resproxy asks the target
        assert c.call("GET", "{mig}2") == b"two"  # still on the source
        assert c.call("SET", "{mig}3", "three") == b"OK"  # a new key: ASK to the target
        # keys of one command split between source and target: Redis says TRYAGAIN; resproxy
        # retries within its timeout, then passes Redis's words on (no hang, no redirect shown)
        reply = c.call("MGET", "{mig}1", "{mig}2")
        assert isinstance(reply, hiredis.ReplyError) and str(reply).startswith("TRYAGAIN"), reply
        assert target.cmdstat("asking") >= asking_before + 2
        with RawClient(target.port) as t:  # an importing node answers for the slot after ASKING
            assert t.pipeline([("ASKING",), ("EXISTS", "{mig}1", "{mig}3")]) == [b"OK", 2]
        assert source.call("EXISTS", "{mig}2") == 1
        # the migration finishes; resproxy still believes the source until a MOVED says otherwise
        assert cluster.migrate(source, target, "{mig}2") == b"OK"
        cluster.set_slot_owner(slot, target)
        before = [
            Metrics(proxy.metrics_port).total(n)
            for n in ("resproxy_cluster_moved_total", "resproxy_cluster_slot_map_refreshes_total")
        ]
        # a pipeline of 100 requests to the moved slot, all sent to the old owner: 100 MOVED
        # arrive together, every one is followed, and they start one map refresh, not 100
        replies = c.pipeline([("GET", "{mig}2")] * 100)
        assert replies == [b"two"] * 100
        poll_until(
            lambda: (
                Metrics(proxy.metrics_port).total("resproxy_cluster_slot_map_refreshes_total") > before[1]
            ),
            "the refresh the MOVED started",
            10,
        )
        moved = Metrics(proxy.metrics_port).total("resproxy_cluster_moved_total") - before[0]
        refreshes = Metrics(proxy.metrics_port).total("resproxy_cluster_slot_map_refreshes_total") - before[1]
        assert moved == 100 and 1 <= refreshes <= 2, (moved, refreshes)  # not 100
        assert c.call("GET", "{mig}2") == b"two"
        assert c.call("INCR", "{mig}n") == 1
        assert c.call("MGET", "{mig}1", "{mig}2", "{mig}3") == [b"one", b"two", b"three"]
        assert target.call("GET", "{mig}n") == b"1"
        assert cluster.slot_owner(slot) is target
    cluster.wait_healthy()


class Writer(threading.Thread):
    """A plain (non-cluster) client writing and read-verifying keys until told to stop."""

    def __init__(self, port: int, name: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis(port=port, socket_timeout=10)
        self.tag = name
        self.stop_event = stop
        self.acked: dict[str, str] = {}
        self.errors: list[str] = []
        self.ops = 0

    def run(self) -> None:
        c = self.client
        for i in range(1_000_000):  # bounded; normally ends on the stop event
            if self.stop_event.is_set():
                break
            key = f"w:{self.tag}:{i % 2000}"  # keys are overwritten, so moved keys get writes
            value = f"{self.tag}-{i}"
            try:
                if c.set(key, value):
                    self.acked[key] = value
                got = c.get(key)
                if got != value.encode():
                    self.errors.append(f"GET {key}: {got!r} != {value!r}")
                if i % 10 == 9:
                    keys = [f"w:{self.tag}:{j % 2000}" for j in range(i - 4, i + 1)]
                    want = [self.acked[k].encode() for k in keys]
                    got_many = c.mget(keys)
                    if got_many != want:
                        self.errors.append(f"MGET {keys}: {got_many!r} != {want!r}")
                self.ops += 1
            except redis.RedisError as exc:
                self.errors.append(f"{key}: {exc!r}")
        c.close()


def _reshard(cluster: RedisCluster, source: RedisServer, target: RedisServer, slots: int) -> None:
    import subprocess

    done = subprocess.run(
        [
            "redis-cli",
            "--cluster",
            "reshard",
            f"127.0.0.1:{source.port}",
            "--cluster-from",
            cluster.node_id(source),
            "--cluster-to",
            cluster.node_id(target),
            "--cluster-slots",
            str(slots),
            "--cluster-yes",
            "--cluster-pipeline",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    cluster.wait_healthy()  # every node agrees before the next step


def test_reshard_under_load_no_errors_no_lost_writes(proxy: ResProxy, cluster: RedisCluster) -> None:
    cluster.wait_healthy()
    stop = threading.Event()
    writers = [Writer(proxy.port, f"c{i}", stop) for i in range(4)]
    for w in writers:
        w.start()
    try:
        a, b, c = cluster.masters()
        owned_before = {m.port: len(_slots_of(cluster, m)) for m in (a, b, c)}
        _reshard(cluster, a, b, 800)
        _reshard(cluster, b, c, 800)
        _reshard(cluster, c, a, 400)
        cluster.wait_healthy()
    finally:
        stop.set()
        for w in writers:
            w.join(timeout=30)
    assert not any(w.is_alive() for w in writers)
    owned_after = {m.port: len(_slots_of(cluster, m)) for m in (a, b, c)}
    assert owned_after != owned_before  # slots really moved
    errors = [e for w in writers for e in w.errors]
    assert errors == [], errors[:10]
    assert all(w.ops > 50 for w in writers), [w.ops for w in writers]
    # every acknowledged write is readable, through resproxy and on the slot's master itself
    check = redis.Redis(port=proxy.port, socket_timeout=10)
    for w in writers:
        keys = list(w.acked)
        for start in range(0, len(keys), 100):
            chunk = keys[start : start + 100]
            assert check.mget(chunk) == [w.acked[k].encode() for k in chunk]
        for key in keys[:200]:
            owner = cluster.slot_owner(key_slot(key.encode()))
            assert owner.call("GET", key) == w.acked[key].encode()
    check.close()
    # the redirections were followed, and counted
    moved, asks, refreshes = (
        Metrics(proxy.metrics_port).total(name)
        for name in (
            "resproxy_cluster_moved_total",
            "resproxy_cluster_ask_total",
            "resproxy_cluster_slot_map_refreshes_total",
        )
    )
    assert moved > 0 and asks > 0 and refreshes >= 1


def _slots_of(cluster: RedisCluster, master: RedisServer) -> list[int]:
    rows: list[Any] = cluster.alive_nodes()[0].call("CLUSTER", "SLOTS")
    return [s for r in rows if r[2][1] == master.port for s in range(r[0], r[1] + 1)]


def test_clients_never_see_redirections(proxy: ResProxy) -> None:
    with RawClient(proxy.port) as c:
        for i in range(200):
            reply = c.call("SET", f"after:{i}", i)
            assert not isinstance(reply, hiredis.ReplyError), reply
