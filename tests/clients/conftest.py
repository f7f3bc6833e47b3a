"""Three deployments behind resproxy for the real-client matrix, one at a time per module.

``target`` is module-scoped and parametrised: ``ring`` (a ring pool of three redis-servers),
``cluster`` (a cluster pool over a real 3-master Redis Cluster) and ``listener`` (a listener whose
``rq:`` route goes to a one-server ring pool and whose default pool is a 3-server ring). pytest
groups a module's tests by the parameter, so each deployment is started once per module and
stopped (by PID, whatever happened) before the next one starts.

Placement is always learned from the servers themselves (a key written through the proxy is
looked for on every data node), never from what resproxy believes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from tests.integration.harness.clients import RawClient
from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.configs import (
    MURMUR_RING,
    listener_yaml,
    native_config,
    pool_yaml,
    route,
    server_lines,
)
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import ResProxy, start_cluster_proxy, start_ring_proxy
from tests.integration.harness.servers import RedisServer, running_redis_servers
from tests.integration.harness.waiting import poll_until

TARGETS = ["ring", "cluster", "listener"]
RING_KEYS: dict[str, Any] = {**MURMUR_RING, "timeout": 2000}


@dataclass
class Target:
    """One deployment behind resproxy: where clients connect, and the servers holding data."""

    name: str
    proxy: ResProxy
    # every node that holds data (the cluster's masters; for the listener both pools' servers)
    data_nodes: list[RedisServer]
    # the 3-server ring pool (ring, and the listener's default pool); empty for the cluster
    ring: list[RedisServer] = field(default_factory=list)
    # the listener's one-server pool behind the ``rq:`` route
    rq_server: RedisServer | None = None

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def flush(self) -> None:
        """Empty every data node directly (not through the proxy)."""
        for node in self.data_nodes:
            node.call("FLUSHALL")

    def holders(self, key: str) -> list[RedisServer]:
        """The data nodes that hold ``key``, asked of each one directly."""
        return [n for n in self.data_nodes if n.call("EXISTS", key) == 1]

    def anywhere(self, *keys: str) -> list[str]:
        """Those of ``keys`` that some data node holds."""
        return [k for k in keys if self.holders(k)]

    def locate(self, key: str) -> RedisServer:
        """The server the proxy places ``key`` on: written through the proxy, found on the
        servers, then deleted there."""
        with RawClient(self.port) as c:
            assert c.call("SET", key, "probe") == b"OK"
        found = self.holders(key)
        assert len(found) == 1, (key, [n.port for n in found])
        found[0].call("DEL", key)
        return found[0]

    def keys_on_distinct_servers(self, prefix: str, count: int = 2) -> list[str]:
        """``count`` keys ``prefix<i>`` that the proxy places on ``count`` different servers."""
        chosen: dict[int, str] = {}
        for i in range(1000):  # bounded
            key = f"{prefix}{i}"
            chosen.setdefault(self.locate(key).port, key)
            if len(chosen) == count:
                return list(chosen.values())
        raise AssertionError(f"no {count} keys {prefix}* on distinct servers")


def _ring_target() -> Iterator[Target]:
    with (
        running_redis_servers(3) as servers,
        start_ring_proxy(servers, preconnect=True, **RING_KEYS) as proxy,
    ):
        yield Target("ring", proxy, data_nodes=list(servers), ring=list(servers))


def _cluster_target() -> Iterator[Target]:
    with (
        RedisCluster(masters=3, replicas=0).start() as cluster,
        start_cluster_proxy(cluster, seeds=1, timeout=2000) as proxy,
    ):
        yield Target("cluster", proxy, data_nodes=cluster.masters())


def listener_config(port: int, ring: list[RedisServer], rq_server: RedisServer) -> str:
    """A listener: ``rq:`` keys to a one-server pool ``jobs``, the rest to the ring ``main``."""
    return native_config(
        pool_yaml("jobs", None, server_lines([rq_server], "rq"), timeout=2000),
        pool_yaml("main", None, server_lines(ring, "m"), **RING_KEYS, preconnect=True),
        listeners=[listener_yaml("app", port, route("rq:", "jobs"), default_pool="main")],
    )


def _listener_target() -> Iterator[Target]:
    with running_redis_servers(4) as servers:
        ring, rq_server = servers[:3], servers[3]
        port = free_port()
        with ResProxy(listener_config(port, ring, rq_server), port=port).start() as proxy:
            yield Target("listener", proxy, data_nodes=list(servers), ring=ring, rq_server=rq_server)


_STARTERS = {"ring": _ring_target, "cluster": _cluster_target, "listener": _listener_target}


@pytest.fixture(scope="module", params=TARGETS)
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    """One deployment behind resproxy for the module (indirectly parametrisable by name)."""
    yield from _STARTERS[str(request.param)]()


@pytest.fixture()
def clean(target: Target) -> Target:
    """The module's target, every data node emptied directly before the test."""
    target.flush()
    return target


def restart_server(target: Target, server: RedisServer, probe_key: str) -> None:
    """Restart ``server`` on its port (its data and script cache are lost), then wait until
    the proxy serves ``probe_key`` (which the proxy places on it) again."""
    assert server in target.data_nodes
    server.restart()

    def served() -> bool:
        with RawClient(target.port) as c:
            reply = c.call("SET", probe_key, "back")
        return bool(reply == b"OK" and server.call("GET", probe_key) == b"back")

    poll_until(served, f"proxy serving {probe_key} after restarting {server.port}", 20, 0.1)
    server.call("DEL", probe_key)


def sync_client(target: Target) -> redis.Redis:
    """A redis-py client as an application makes one (redis-py's defaults)."""
    return redis.Redis(port=target.port, socket_timeout=10)
