"""Deployments a test module shares: backends started in parallel, and one resproxy in front of
a ring pool, a real Redis Cluster and listeners routing between them.

Everything is started for a ``with`` block (a module fixture's body) and stopped by PID at its
end, whatever happened, also when one part failed to start.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.configs import listener_yaml, native_config, pool_yaml, server_lines
from tests.integration.harness.ports import free_port
from tests.integration.harness.process import Stoppable
from tests.integration.harness.proxyproc import ResProxy
from tests.integration.harness.sentinel import SentinelGroup
from tests.integration.harness.servers import RedisServer, start_redis_servers


@contextmanager
def running_backends(
    plain: int, cluster: RedisCluster | None = None, group: SentinelGroup | None = None
) -> Iterator[list[RedisServer]]:
    """``plain`` redis-servers (yielded), and ``cluster`` and ``group`` (made, not started)
    started at once: the cluster and the sentinels take seconds each."""
    with ExitStack() as started:
        with ThreadPoolExecutor(3) as pool:
            jobs: list[Future[Any]] = [pool.submit(start_redis_servers, plain)]
            jobs += [pool.submit(part.start) for part in (cluster, group) if part is not None]
        failures: list[BaseException] = []
        servers: list[RedisServer] = []
        for job in jobs:  # each one collected: what did start is stopped if another failed
            try:
                result = job.result()
            except BaseException as exc:
                failures.append(exc)
                continue
            if isinstance(result, Stoppable):
                started.enter_context(result)
            else:
                servers = result
                for s in servers:
                    started.enter_context(s)
        if failures:
            raise failures[0]
        yield servers


@dataclass
class Front:
    """One client-facing address and the servers its keys live on."""

    name: str
    port: int
    backends: list[RedisServer]  # every server holding this front's keys (cluster: masters)
    prefixes: tuple[str, ...] = ("",)  # cycled over, so that a listener's keys reach every pool

    def key(self, kind: str, i: int) -> str:
        return f"{self.prefixes[i % len(self.prefixes)]}{kind}:{i}"

    def backend_keys(self) -> int:
        return sum(int(b.call("DBSIZE")) for b in self.backends)


FRONTS = ["ring", "cluster", "listener"]


@dataclass
class Fronts:
    """One resproxy with a ``ring`` pool, a ``cluster`` pool and listeners whose default pool is
    the ring; ``ports`` maps each pool and listener name (and ``metrics``) to its port."""

    proxy: ResProxy
    ring: list[RedisServer]
    cluster: RedisCluster
    ports: dict[str, int]
    prefixes: tuple[str, ...] = ("",)  # the key prefixes that reach every pool through ``edge``

    def front(self, name: str) -> Front:
        """``ring``, ``cluster`` or ``listener`` (the listener named ``edge``), with the servers
        holding its keys (asked of the cluster now: the masters may have changed)."""
        masters = self.cluster.masters()
        if name == "ring":
            return Front("ring", self.ports["ring"], list(self.ring))
        if name == "cluster":
            return Front("cluster", self.ports["cluster"], masters)
        assert name == "listener"
        return Front("listener", self.ports["edge"], [*self.ring, *masters], self.prefixes)

    def data_nodes(self) -> list[RedisServer]:
        """The ring's servers and the cluster's masters (the replicas follow them)."""
        return [*self.ring, *self.cluster.masters()]


@dataclass
class FrontsSpec:
    """What differs between the modules that share this deployment."""

    listeners: Mapping[str, Sequence[str]]  # name -> its routes (``edge`` is the "listener" front)
    ring_keys: Mapping[str, object] = field(default_factory=dict)
    cluster_keys: Mapping[str, object] = field(default_factory=dict)
    names: str = "s"  # the ring's servers are named this and their index
    seeds: int | None = 1  # the cluster's first nodes; None: every master
    solo: str | None = None  # a one-server pool of that name, listening, over the ``solo`` server
    solo_keys: Mapping[str, object] = field(default_factory=dict)
    metrics: bool = False
    prefixes: tuple[str, ...] = ("",)


@contextmanager
def running_fronts(
    spec: FrontsSpec, ring: Sequence[RedisServer], cluster: RedisCluster, solo: RedisServer | None = None
) -> Iterator[Fronts]:
    """resproxy in front of ``ring``, ``cluster`` (and ``solo``) as ``spec`` says, every pool
    and listener on a free port of its own."""
    pools = ["ring", "cluster", *([spec.solo] if spec.solo else [])]
    ports = {name: free_port() for name in [*pools, *spec.listeners]}
    seeds = cluster.seeds(spec.seeds) if spec.seeds else [f"127.0.0.1:{m.port}" for m in cluster.masters()]
    texts = [
        pool_yaml("ring", ports["ring"], server_lines(ring, spec.names), **spec.ring_keys),
        pool_yaml("cluster", ports["cluster"], seeds, distribution="cluster", **spec.cluster_keys),
    ]
    if spec.solo:
        assert solo is not None
        texts.append(pool_yaml(spec.solo, ports[spec.solo], server_lines([solo], ["solo"]), **spec.solo_keys))
    listeners = [
        listener_yaml(name, ports[name], *routes, default_pool="ring")
        for name, routes in spec.listeners.items()
    ]
    if spec.metrics:
        ports["metrics"] = free_port()
    text = native_config(*texts, listeners=listeners, metrics_port=ports.get("metrics"))
    ready = len(pools) + len(spec.listeners)
    with ResProxy(text, metrics_port=ports.get("metrics", 0)).start(pools=ready) as proxy:
        yield Fronts(proxy, list(ring), cluster, ports, spec.prefixes)
