"""Shared real servers for one test module: 3 backends, a reference redis-server, resproxy;
and for the cluster modules a real Redis Cluster of 3 masters + 3 replicas (one per module)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.proxyproc import ResProxy, start_ring_proxy
from tests.integration.harness.servers import RedisServer, running_redis_servers


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    """Four redis-servers started in parallel: three backends and one reference."""
    with running_redis_servers(4) as started:
        yield started


@pytest.fixture(scope="module")
def backends(servers: list[RedisServer]) -> list[RedisServer]:
    return servers[:3]


@pytest.fixture(scope="module")
def reference(servers: list[RedisServer]) -> RedisServer:
    """A single plain redis-server whose replies resproxy's must equal."""
    return servers[3]


@pytest.fixture(scope="module")
def proxy(backends: list[RedisServer]) -> Iterator[ResProxy]:
    """resproxy over the three backends: ketama, murmur (spreads short keys evenly), tag {}."""
    with start_ring_proxy(
        backends, hash="murmur", distribution="ketama", hash_tag="{}", timeout=1000, preconnect=True
    ) as p:
        yield p


@pytest.fixture()
def clean(servers: list[RedisServer]) -> None:
    """Empty every server directly (not through the proxy) before the test."""
    for s in servers:
        if s.alive():
            s.call("FLUSHALL")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    """A real 3 masters + 3 replicas cluster (cluster-node-timeout 1000 ms) for the module."""
    with RedisCluster(masters=3, replicas=1, node_timeout_ms=1000).start() as c:
        yield c
