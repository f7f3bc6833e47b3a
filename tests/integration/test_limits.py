"""Limits the proxy puts on a request or a pool: CLUSTERDOWN retries, the redirect cap, and
``client_connections``.

Cluster part: one real 3-master Redis Cluster for the module (no replicas: nothing here needs
one, and it builds faster), and one resproxy with two cluster pools over it that differ only in
``timeout``: ``brief`` (1000 ms, shorter than 16 retries' backoff, so the deadline ends the
retries) and ``patient`` (10000 ms, so ``MAX_REDIRECTS`` ends them). Slots are made unserved or
looping on one node only (its neighbours keep their view, so the proxy's slot map, which it
reads from the master of slot 0, keeps naming that node), and every test puts the cluster back.

What Redis 7 answers after ``CLUSTER DELSLOTS S`` on S's master A (measured, default
``cluster-require-full-coverage yes``): keys of slot S get ``-CLUSTERDOWN Hash slot not served``
and, A's cluster_state being ``fail``, keys of A's other slots get ``-CLUSTERDOWN The cluster is
down`` (a text the proxy itself never writes). Rejected commands show on A as ``rejected_calls``
in INFO commandstats, which is how the tests count what the proxy sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hiredis
import pytest

from proxy.hashing import key_slot
from tests.integration.harness.clients import RawClient, encode
from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.configs import native_config, pool_yaml
from tests.integration.harness.metrics import Metrics
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import ResProxy, start_ring_proxy
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until

BRIEF_MS = 1000
PATIENT_MS = 10000
MAX_REDIRECTS = 16  # proxy/cluster.py; the README promises "at most 16 redirections"


@dataclass
class ClusterSetup:
    cluster: RedisCluster
    proxy: ResProxy
    ports: dict[str, int]  # pool name -> listen port
    metrics_port: int
    a: RedisServer  # the master whose slots the tests break (not slot 0's)
    b: RedisServer  # the third master


@pytest.fixture(scope="module")
def setup() -> Iterator[ClusterSetup]:
    with RedisCluster(masters=3, replicas=0, node_timeout_ms=1000).start() as cluster:
        ports = {"brief": free_port(), "patient": free_port()}
        metrics_port = free_port()
        pools = [
            pool_yaml(
                name,
                ports[name],
                cluster.seeds(),
                distribution="cluster",
                timeout=timeout,
                cluster_refresh_interval=60000,
            )
            for name, timeout in (("brief", BRIEF_MS), ("patient", PATIENT_MS))
        ]
        metrics = ["--metrics", f"127.0.0.1:{metrics_port}"]
        with ResProxy(native_config(*pools), metrics, metrics_port=metrics_port).start(pools=2) as proxy:
            poll_until(
                lambda: all(
                    Metrics(metrics_port).value("resproxy_cluster_slots_served", pool=p) == 16384
                    for p in ports
                ),
                "both pools know the whole slot map",
                15,
            )
            # The proxy's map refreshes ask slot 0's master first; it is left alone, so the map
            # keeps naming A for the slots A stops serving.
            first = cluster.slot_owner(0)
            a, b = [m for m in cluster.masters() if m is not first]
            yield ClusterSetup(cluster, proxy, ports, metrics_port, a, b)


def _keys_on(cluster: RedisCluster, node: RedisServer, prefix: str, count: int) -> list[str]:
    """``count`` empty keys of distinct, empty slots that ``node`` serves (the cluster's map)."""
    rows: list[Any] = node.call("CLUSTER", "SLOTS")
    ranges = [(r[0], r[1]) for r in rows if r[2][1] == node.port]
    keys: list[str] = []
    slots: set[int] = set()
    for i in range(100_000):  # bounded
        key = f"{{{prefix}{i}}}"
        slot = key_slot(key.encode())
        if slot in slots or not any(lo <= slot <= hi for lo, hi in ranges):
            continue
        if node.call("CLUSTER", "COUNTKEYSINSLOT", str(slot)) != 0:
            continue
        keys.append(key)
        slots.add(slot)
        if len(keys) == count:
            return keys
    raise LookupError(f"no {count} free slots on {node.port}")


def _rejected(node: RedisServer, command: str) -> int:
    """How many ``command`` calls ``node`` refused before running them (redirects, CLUSTERDOWN)."""
    for line in node.call("INFO", "commandstats").decode().splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            fields = dict(f.split("=") for f in line.split(":", 1)[1].split(","))
            return int(fields.get("rejected_calls", "0"))
    return 0


def _counter(s: ClusterSetup, family: str, pool: str) -> float:
    return Metrics(s.metrics_port).value(f"resproxy_cluster_{family}_total", pool=pool)


def _serves(node: RedisServer, slot: int) -> bool:
    """Whether ``node`` itself believes it serves ``slot``."""
    return any(r[0] <= slot <= r[1] and r[2][1] == node.port for r in node.call("CLUSTER", "SLOTS"))


class _Unserved:
    """``CLUSTER DELSLOTS slot`` on its master only, undone on exit (unless a test re-added it)."""

    def __init__(self, cluster: RedisCluster, master: RedisServer, slot: int) -> None:
        self.cluster, self.master, self.slot = cluster, master, slot

    def __enter__(self) -> _Unserved:
        assert self.master.call("CLUSTER", "DELSLOTS", str(self.slot)) == b"OK"
        assert b"cluster_state:fail" in self.master.call("CLUSTER", "INFO")
        return self

    def __exit__(self, *exc: object) -> None:
        if not _serves(self.master, self.slot):
            self.master.call("CLUSTER", "ADDSLOTS", str(self.slot))
        self.cluster.wait_healthy(timeout_s=30)  # every node ok and agreeing again


def test_clusterdown_is_retried_until_the_timeout_then_redis_words_reach_the_client(
    setup: ClusterSetup,
) -> None:
    broken, other = _keys_on(setup.cluster, setup.a, "down", 2)
    # Bounded read: the pool's timeout plus slack for a loaded machine; a hang fails here.
    with (
        _Unserved(setup.cluster, setup.a, key_slot(broken.encode())),
        RawClient(setup.ports["brief"], timeout_s=BRIEF_MS / 1000 + 4) as c,
    ):
        # a key of another of A's slots: A is in cluster_state:fail and says "The cluster is
        # down", words the proxy never writes itself, so seeing them proves they are Redis's
        assert str(setup.a.call("GET", other)) == "CLUSTERDOWN The cluster is down"
        before_calls = _rejected(setup.a, "get")
        before_retries = _counter(setup, "clusterdown", "brief")
        reply = c.call("GET", other)
        assert isinstance(reply, hiredis.ReplyError), reply
        assert str(reply) == "CLUSTERDOWN The cluster is down"
        sent = _rejected(setup.a, "get") - before_calls
        # retried (more than one try reached A), and the 1000 ms deadline, not the cap of 16
        # redirections (whose backoff alone adds up to ~2.5 s), ended the retries
        assert 2 <= sent <= MAX_REDIRECTS, sent
        counted = _counter(setup, "clusterdown", "brief") - before_retries
        assert counted == sent - 1, (sent, counted)  # retried ones: the last was passed on
        # the client's connection is fine; A's other keys work again once the slot is back
        assert c.call("PING") == b"PONG"
    with RawClient(setup.ports["brief"]) as c:
        assert c.call("SET", other, "v") == b"OK"
        assert setup.a.call("GET", other) == b"v"
        assert c.call("DEL", other) == 1


def test_clusterdown_retries_stop_after_16_redirections_with_redis_words(
    setup: ClusterSetup,
) -> None:
    (key,) = _keys_on(setup.cluster, setup.a, "cap", 1)
    before_calls = _rejected(setup.a, "get")
    before_retries = _counter(setup, "clusterdown", "patient")
    with (
        _Unserved(setup.cluster, setup.a, key_slot(key.encode())),
        RawClient(setup.ports["patient"], timeout_s=PATIENT_MS / 1000 + 4) as c,
    ):
        reply = c.call("GET", key)
        assert isinstance(reply, hiredis.ReplyError), reply
        # the proxy's own SLOT_UNSERVED has these very words, but A saw every try: it was A's
        assert str(reply) == "CLUSTERDOWN Hash slot not served"
        assert _rejected(setup.a, "get") - before_calls == 1 + MAX_REDIRECTS
        assert _counter(setup, "clusterdown", "patient") - before_retries == MAX_REDIRECTS
        assert c.call("PING") == b"PONG"


def test_clusterdown_request_succeeds_once_the_slot_is_served_again(setup: ClusterSetup) -> None:
    (key,) = _keys_on(setup.cluster, setup.a, "back", 1)
    slot = key_slot(key.encode())
    before_calls = _rejected(setup.a, "set")
    before_retries = _counter(setup, "clusterdown", "patient")
    with (
        _Unserved(setup.cluster, setup.a, slot),
        RawClient(setup.ports["patient"], timeout_s=PATIENT_MS / 1000 + 4) as c,
    ):
        c.send(encode("SET", key, "new"))  # the reply is read once the slot is back
        # the event: A has refused the SET at least twice, so the proxy is retrying it
        poll_until(
            lambda: _rejected(setup.a, "set") >= before_calls + 2, "the proxy retrying the SET", 10, 0.005
        )
        assert setup.a.call("CLUSTER", "ADDSLOTS", str(slot)) == b"OK"
        assert c.read() == b"OK"  # a CLUSTERDOWN reply here would mean the retries ran out
        assert setup.a.call("GET", key) == b"new"
        retries = _counter(setup, "clusterdown", "patient") - before_retries
        assert 1 <= retries < MAX_REDIRECTS, retries
        assert c.call("GET", key) == b"new"
    setup.a.call("DEL", key)


def test_a_moved_loop_ends_in_too_many_redirections_and_the_connection_stays_usable(
    setup: ClusterSetup,
) -> None:
    key, other = _keys_on(setup.cluster, setup.a, "loop", 2)
    slot = key_slot(key.encode())
    a, b = setup.a, setup.b
    a_id, b_id = setup.cluster.node_id(a), setup.cluster.node_id(b)
    # Only A is told that B owns the slot; B (and everyone else) still says A: each node
    # answers MOVED to the other, for as long as nobody claims the slot (measured: stable).
    assert a.call("CLUSTER", "SETSLOT", str(slot), "NODE", b_id) == b"OK"
    try:
        assert str(a.call("GET", key)) == f"MOVED {slot} 127.0.0.1:{b.port}"
        assert str(b.call("GET", key)) == f"MOVED {slot} 127.0.0.1:{a.port}"
        before_calls = _rejected(a, "get") + _rejected(b, "get")
        before_moved = _counter(setup, "moved", "patient")
        with RawClient(setup.ports["patient"], timeout_s=PATIENT_MS / 1000 + 4) as c:
            reply = c.call("GET", key)
            assert isinstance(reply, hiredis.ReplyError), reply
            last = rf"MOVED {slot} 127\.0\.0\.1:(\d+)"
            match = re.fullmatch(rf"ERR too many cluster redirections \(last: {last}\)", str(reply))
            assert match is not None, str(reply)
            assert int(match[1]) in (a.port, b.port)
            # the first try and 16 redirections, every one refused by A or B
            assert _rejected(a, "get") + _rejected(b, "get") - before_calls == 1 + MAX_REDIRECTS
            assert _counter(setup, "moved", "patient") - before_moved == MAX_REDIRECTS
            # the same connection keeps working, for other slots at once
            assert c.call("PING") == b"PONG"
            assert c.call("SET", other, "fine") == b"OK"
            assert c.call("GET", other) == b"fine"
            # and for the looping slot once A owns it again
            assert a.call("CLUSTER", "SETSLOT", str(slot), "NODE", a_id) == b"OK"
            assert c.call("SET", key, "mine") == b"OK"
            assert a.call("GET", key) == b"mine"
            assert c.call("DEL", key, other) == 2
    finally:
        if not _serves(a, slot):
            a.call("CLUSTER", "SETSLOT", str(slot), "NODE", a_id)
        setup.cluster.wait_healthy(timeout_s=30)


# --- client_connections ---------------------------------------------------------------------


def test_client_connections_limit_rejects_counts_and_frees_a_place() -> None:
    with (
        RedisServer().start() as backend,
        start_ring_proxy(
            [backend], name="limited", metrics=True, client_connections=2, timeout=1000
        ) as proxy,
    ):
        port, metrics_port = proxy.port, proxy.metrics_port

        def value(name: str) -> float:
            return Metrics(metrics_port).value(name, pool="limited")

        with RawClient(port) as first, RawClient(port) as second:
            # a reply means the proxy has taken the connection in
            assert first.call("SET", "k", "1") == b"OK"
            assert second.call("INCR", "k") == 2
            third = RawClient(port)
            try:
                reply = third.read()  # written unasked, at accept
                assert isinstance(reply, hiredis.ReplyError), reply
                assert str(reply) == "ERR max number of clients reached"
                assert third.closed_by_peer()
            finally:
                third.close()
            assert first.call("INCR", "k") == 3
            assert second.call("GET", "k") == b"3"
            assert value("resproxy_client_connections_rejected_total") == 1
            assert value("resproxy_client_connections") == 2
            assert b"rejected_connections:1\r\n" in first.call("INFO", "stats")
            first.close()
            # the event: the proxy has seen the client go
            poll_until(
                lambda: value("resproxy_client_connections") == 1, "the proxy noticing a client left", 10
            )
            with RawClient(port) as fourth:
                assert fourth.call("INCR", "k") == 4
                assert value("resproxy_client_connections") == 2
            assert second.call("GET", "k") == b"4"
            poll_until(
                lambda: value("resproxy_client_connections") == 1, "the proxy noticing the fourth left", 10
            )
            # accepted: first, second, fourth; closed by their client: first, fourth (the
            # rejected one was closed by the proxy and is counted as rejected only)
            assert value("resproxy_client_connections_accepted_total") == 3
            assert value("resproxy_client_eof_total") == 2
        assert value("resproxy_client_connections_rejected_total") == 1
        assert backend.call("GET", "k") == b"4"
