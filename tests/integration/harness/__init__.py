"""Real processes for the integration tests, one module a job:

- ``ports``: free 127.0.0.1 ports below the ephemeral range
- ``waiting``: bounded polling (``poll_until``, ``wait_port``) where no event can be awaited
- ``process``: child processes stopped by PID, ready on a line they print; /proc readings
- ``servers``: redis-server processes (``RedisServer``, several started in parallel)
- ``cluster``: a real Redis Cluster (``RedisCluster``)
- ``sentinel``: real Sentinels (``Sentinel``, ``SentinelGroup``)
- ``proxyproc``: resproxy (``ResProxy``, one-pool starters, ``-t`` checks) and nutcracker
- ``configs``: config texts (pools, listeners, routes, /metrics)
- ``clients``: ``RawClient`` and ``encode``, redis-py as old clients, the ``Writer`` load
- ``metrics``: ``http_get`` and the /metrics scraper ``Metrics``
- ``placement``: where a key goes (computed from a config, or found on the servers)
- ``deployments``: backends started in parallel; one resproxy over a ring, a cluster and
  listeners (``running_fronts``), shared by several modules

Tests import from those modules. The names below are here for bench/run.py and bench/large.py,
which import them from the package.
"""

from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.ports import free_port
from tests.integration.harness.waiting import wait_port

__all__ = ["RedisCluster", "free_port", "wait_port"]
