"""A master of a real cluster dies under load (SIGKILL by PID): resproxy follows the promotion.

Also: with ``read_from: replica``, a dead replica's reads fall back to its master.
"""

from __future__ import annotations

import threading
import time

import redis

from proxy.hashing import key_slot
from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.proxyproc import start_cluster_proxy
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until

PROXY_TIMEOUT_MS = 1000
CLIENT_TIMEOUT_S = 5.0  # a request resproxy let hang past its timeout shows up as this


def _keys_of(cluster: RedisCluster, master: RedisServer, prefix: str, count: int) -> list[str]:
    keys = []
    for i in range(100000):  # bounded
        key = f"{prefix}{i}"
        if cluster.slot_owner(key_slot(key.encode())) is master:
            keys.append(key)
            if len(keys) == count:
                return keys
    raise AssertionError("not enough keys")


def test_dead_replica_reads_fall_back_to_its_master(cluster: RedisCluster) -> None:
    with start_cluster_proxy(cluster, seeds=3, read_from="replica", timeout=PROXY_TIMEOUT_MS) as proxy:
        master = cluster.masters()[0]
        replica = cluster.replicas_of(master)[0]
        keys = _keys_of(cluster, master, "fb:", 20)
        client = redis.Redis(port=proxy.port, socket_timeout=CLIENT_TIMEOUT_S)
        for k in keys:
            client.set(k, k)
        assert master.call("WAIT", 1, 5000) == 1
        before = replica.cmdstat("get")
        assert [client.get(k) for k in keys] == [k.encode() for k in keys]
        assert replica.cmdstat("get") == before + len(keys)  # served by the replica

        replica.kill()

        def master_serves() -> bool:
            try:
                return bool(client.get(keys[0]) == keys[0].encode())
            except redis.RedisError:
                return False

        poll_until(master_serves, "reads back after the replica died", timeout_s=10)
        gets_before = master.cmdstat("get")
        assert [client.get(k) for k in keys] == [k.encode() for k in keys]  # no errors now
        assert master.cmdstat("get") == gets_before + len(keys)
        client.close()


class Worker(threading.Thread):
    """Writes and reads keys continuously; records each error with when its request started."""

    def __init__(self, port: int, tag: str, keys: list[str], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis(port=port, socket_timeout=CLIENT_TIMEOUT_S)
        self.tag = tag
        self.keys = keys
        self.stop_event = stop
        self.errors: list[tuple[float, float, str]] = []  # (started, took, error)
        self.ops = 0

    def run(self) -> None:
        for i in range(10_000_000):  # bounded; normally ends on the stop event
            if self.stop_event.is_set():
                break
            key = self.keys[i % len(self.keys)]
            started = time.monotonic()
            try:
                if i % 2:
                    self.client.set(f"{key}:{self.tag}", i)
                else:
                    self.client.get(key)
                self.ops += 1
            except redis.RedisError as exc:
                self.errors.append((started, time.monotonic() - started, f"{type(exc).__name__}: {exc}"))
        self.client.close()


def test_master_killed_under_load_replica_promoted_and_served(cluster: RedisCluster) -> None:
    with start_cluster_proxy(cluster, seeds=3, timeout=PROXY_TIMEOUT_MS) as proxy:
        victim = next(m for m in cluster.masters() if cluster.replicas_of(m))
        heir = cluster.replicas_of(victim)[0]
        keys = _keys_of(cluster, victim, "fo:", 200)
        seed = redis.Redis(port=proxy.port, socket_timeout=CLIENT_TIMEOUT_S)
        for k in keys:
            assert seed.set(k, f"v-{k}")
        assert victim.call("WAIT", 1, 5000) == 1  # the replica has them all before the kill
        stop = threading.Event()
        workers = [Worker(proxy.port, f"w{i}", keys, stop) for i in range(4)]
        for w in workers:
            w.start()
        try:
            poll_until(lambda: all(w.ops > 20 for w in workers), "load running", timeout_s=30)
            killed_at = time.monotonic()
            victim.kill()
            poll_until(lambda: heir.call("ROLE")[0] == b"master", "replica promoted", 60, 0.1)

            def served() -> bool:
                try:
                    return bool(seed.get(keys[0]) == f"v-{keys[0]}".encode())
                except redis.RedisError:
                    return False

            poll_until(served, "slots served by the new master", timeout_s=30)
            served_at = time.monotonic()
            marks = [w.ops for w in workers]
            poll_until(
                lambda: all(w.ops > m + 50 for w, m in zip(workers, marks)),
                "load after promotion",
                timeout_s=30,
            )
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=30)
        errors = [e for w in workers for e in w.errors]
        # errors only inside the promotion window (answered after the kill, asked before the
        # slots were served again), and each one prompt: none was a hang that
        # the client's own socket timeout had to end
        outside = [e for e in errors if not (killed_at <= e[0] + e[1] and e[0] <= served_at)]
        assert not outside, (killed_at, served_at, len(errors), outside[:5])
        assert not any("Timeout" in text for _, _, text in errors), errors[:5]
        assert all(took < CLIENT_TIMEOUT_S for _, took, _ in errors)
        # every key written before the kill is served by the promoted master
        assert seed.mget(keys) == [f"v-{k}".encode() for k in keys]
        assert heir.call("GET", keys[-1]) == f"v-{keys[-1]}".encode()
        seed.close()
