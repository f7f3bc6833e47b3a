"""Sentinel pools: a master + replica under three real sentinels, followed through failovers.

``SENTINEL FAILOVER`` (manual) and SIGKILL of the master, each under four writing clients.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import hiredis
import pytest
import redis

from tests.integration.harness.clients import RawClient, Writer, encode
from tests.integration.harness.metrics import Metrics
from tests.integration.harness.proxyproc import ResProxy, start_sentinel_proxy
from tests.integration.harness.sentinel import SentinelGroup
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until

TIMEOUT_MS = 3000
CLIENT_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    with SentinelGroup("sessions").start() as g:
        yield g


@pytest.fixture(scope="module")
def proxy(group: SentinelGroup) -> Iterator[ResProxy]:
    with start_sentinel_proxy(group, "sessions", metrics=True, timeout=TIMEOUT_MS, preconnect=True) as p:
        yield p


Error = tuple[float, float, str]


def _run_failover(proxy: ResProxy, group: SentinelGroup, trigger: str) -> tuple[list[Writer], list[Error]]:
    """Four writers through the proxy while the master fails over (``manual``) or is killed;
    the writers and their errors, every one of which came while the proxy switched and none a
    client's timeout."""
    old_port = group.current_master_port()
    stop = threading.Event()
    writers = [Writer(proxy.port, f"s:{trigger}{i}", stop) for i in range(4)]
    for w in writers:
        w.start()
    try:
        poll_until(lambda: all(w.ops > 20 for w in writers), "load running", 30)
        started = time.monotonic()
        if trigger == "manual":
            assert group.sentinels[0].call("SENTINEL", "FAILOVER", group.name) == b"OK"
        else:
            group.by_port(old_port).kill()
        poll_until(lambda: group.current_master_port() != old_port, "sentinels switched", 60, 0.1)
        new = group.current_master()
        probe = redis.Redis(port=proxy.port, socket_timeout=CLIENT_TIMEOUT_S)

        def proxy_writes_to_new_master() -> bool:
            try:
                probe.set(f"probe:{trigger}", "1")
            except redis.RedisError:
                return False
            return bool(new.call("GET", f"probe:{trigger}") == b"1")

        poll_until(proxy_writes_to_new_master, "resproxy writes to the new master", 30, 0.1)
        switched = time.monotonic()
        probe.close()
        marks = [w.ops for w in writers]
        poll_until(lambda: all(w.ops > m + 50 for w, m in zip(writers, marks)), "load after", 30)
    finally:
        stop.set()
        for w in writers:
            w.join(timeout=30)
    assert not any(w.is_alive() for w in writers)
    errors = [e for w in writers for e in w.errors]
    assert not [e for w in writers for e in w.errors_outside(started, switched)], errors[:5]
    assert not any("Timeout" in text for _, _, text in errors), errors[:5]
    return writers, errors


def test_keys_go_to_the_master_sentinel_names(proxy: ResProxy, group: SentinelGroup) -> None:
    client = redis.Redis(port=proxy.port, socket_timeout=CLIENT_TIMEOUT_S)
    assert client.set("session:one", "x", ex=60)
    assert 0 < client.ttl("session:one") <= 60
    master = group.current_master()
    assert master.call("ROLE")[0] == b"master"
    assert master.call("GET", "session:one") == b"x"
    client.close()


def test_replica_reads_from_the_sentinels_replica(group: SentinelGroup) -> None:
    with start_sentinel_proxy(group, "sessions", read_from="replica", timeout=TIMEOUT_MS) as p:
        master = group.current_master()
        replica = next(n for n in group.nodes() if n is not master)
        client = redis.Redis(port=p.port, socket_timeout=CLIENT_TIMEOUT_S)
        assert client.set("session:rr", "r")
        assert master.call("WAIT", 1, 5000) == 1
        gets = (master.cmdstat("get"), replica.cmdstat("get"))
        for _ in range(10):
            assert client.get("session:rr") == b"r"
        assert replica.cmdstat("get") - gets[1] == 10
        assert master.cmdstat("get") == gets[0]
        client.close()


def test_manual_failover_under_load_loses_no_acknowledged_write(
    proxy: ResProxy, group: SentinelGroup
) -> None:
    writers, _ = _run_failover(proxy, group, "manual")
    new = group.current_master()
    samples = Metrics(proxy.metrics_port)
    assert samples.total("resproxy_sentinel_switches_total") >= 1
    assert samples.total("resproxy_sentinel_holds_total") >= 1
    assert samples.total("resproxy_sentinel_master_known") == 1
    for w in writers:  # every acknowledged write is on the new master
        assert w.missing_on(new) == []
    group.wait_settled()


def _blocked_clients(node: RedisServer) -> int:
    return int(node.info("clients")["blocked_clients"])


def test_blocked_pop_on_the_old_master_gets_an_error_at_failover(
    proxy: ResProxy, group: SentinelGroup
) -> None:
    # before the kill test, which leaves one data node dead; ends settled, as the manual one
    group.wait_settled()
    old = group.current_master()
    key, item = "session:blocked", "after-failover"
    assert old.call("DEL", key) is not None
    with RawClient(proxy.port, timeout_s=CLIENT_TIMEOUT_S) as client:
        client.send(encode("BLPOP", key, 0))
        poll_until(lambda: _blocked_clients(old) == 1, "BLPOP blocked on the master", 30)
        assert group.sentinels[0].call("SENTINEL", "FAILOVER", group.name) == b"OK"
        client.sock.settimeout(30.0)  # the bound: an error, not a hang
        try:
            reply = client.read()
        except TimeoutError:
            raise AssertionError(f"blocked BLPOP not answered at failover:\n{proxy.log()}") from None
        assert isinstance(reply, hiredis.ReplyError), reply
        # the proxy closes it when it learns of the switch ("server left the pool"); had the
        # sentinels demoted the old master first, Redis's own UNBLOCKED would come instead
        text = str(reply)
        assert "connection lost" in text or text.startswith("UNBLOCKED"), (text, proxy.log())
        poll_until(lambda: group.current_master_port() != old.port, "sentinels switched", 60, 0.1)
        new = group.current_master()
        assert new is not old

        def proxy_writes_to_new_master() -> bool:
            reply = client.call("SET", "probe:blocked", "1")
            return bool(reply == b"OK" and new.call("GET", "probe:blocked") == b"1")

        client.sock.settimeout(CLIENT_TIMEOUT_S)
        poll_until(proxy_writes_to_new_master, "resproxy writes to the new master", 30, 0.1)
        # the client retries on the same connection: now blocked on the new master
        client.send(encode("BLPOP", key, 0))
        poll_until(lambda: _blocked_clients(new) == 1, "BLPOP blocked on the new master", 30)
        with RawClient(proxy.port, timeout_s=CLIENT_TIMEOUT_S) as pusher:
            assert pusher.call("RPUSH", key, item) == 1
        assert client.read() == [key.encode(), item.encode()]
        assert _blocked_clients(new) == 0
    group.wait_settled()


def test_master_killed_under_load_errors_only_in_the_switch_window(
    proxy: ResProxy, group: SentinelGroup
) -> None:
    # errors (if any) only between the kill and resproxy writing to the new master, each prompt
    _, errors = _run_failover(proxy, group, "kill")
    assert all(took < TIMEOUT_MS / 1000.0 + 1.0 for _, took, _ in errors)
