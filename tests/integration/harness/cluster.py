"""A real Redis Cluster on loopback, built as a user builds one."""

from __future__ import annotations

import subprocess
from typing import Any

from tests.integration.harness.process import Stoppable
from tests.integration.harness.servers import RedisServer, start_redis_servers
from tests.integration.harness.waiting import poll_until


class RedisCluster(Stoppable):
    """A real Redis Cluster on loopback: ``masters`` masters with ``replicas`` replicas each.

    Built as a user builds one: redis-servers with ``--cluster-enabled yes``, then
    ``redis-cli --cluster create ... --cluster-replicas N --cluster-yes``; ready when every node
    says ``cluster_state:ok`` and every replica's link to its master is up.
    """

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        self.masters_count = masters
        self.replicas = replicas
        self.extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms)]
        self.nodes: list[RedisServer] = []

    def start(self) -> RedisCluster:
        count = self.masters_count * (1 + self.replicas)
        self.nodes = self._start_nodes(count)
        try:
            addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
            subprocess.run(
                [
                    *self.cli_args(),
                    "--cluster",
                    "create",
                    *addrs,
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_healthy(replicas=self.replicas)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _start_nodes(self, count: int) -> list[RedisServer]:
        """``count`` nodes started in parallel with ``extra`` (a subclass starts other servers)."""
        return start_redis_servers(count, self.extra)

    def cli_args(self) -> list[str]:
        """redis-cli and the options it needs to reach the nodes (a subclass adds TLS ones)."""
        return ["redis-cli"]

    def alive_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.alive()]

    def wait_healthy(self, timeout_s: float = 60.0, replicas: int = 0) -> None:
        """Every live node reports cluster_state:ok and agrees on the slot map; replicas synced.

        With ``replicas``, every node also lists that many replicas for every slot range.
        """

        def healthy() -> bool:
            maps = set()
            for node in self.alive_nodes():
                if b"cluster_state:ok" not in node.call("CLUSTER", "INFO"):
                    return False
                rows = node.call("CLUSTER", "SLOTS")
                if any(len(r) - 3 < replicas for r in rows):
                    return False
                maps.add(repr(sorted((r[0], r[1], r[2][1]) for r in rows)))
                info = node.call("INFO", "replication")
                if b"role:slave" in info and b"master_link_status:up" not in info:
                    return False
            return len(maps) == 1

        poll_until(healthy, "cluster healthy", timeout_s)

    def slot_owner(self, slot: int) -> RedisServer:
        """The master serving ``slot``, as the cluster says."""
        for row in self.alive_nodes()[0].call("CLUSTER", "SLOTS"):
            if row[0] <= slot <= row[1]:
                return self.by_port(row[2][1])
        raise LookupError(slot)

    def by_port(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def masters(self) -> list[RedisServer]:
        return [n for n in self.alive_nodes() if n.call("ROLE")[0] == b"master"]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        return [
            n
            for n in self.alive_nodes()
            if n.call("ROLE")[0] == b"slave" and n.call("ROLE")[2] == master.port
        ]

    def node_id(self, node: RedisServer) -> str:
        return str(node.call("CLUSTER", "MYID").decode())

    def begin_migration(self, slot: int, source: RedisServer, target: RedisServer) -> None:
        """``slot`` starts moving: IMPORTING on ``target``, then MIGRATING on ``source``."""
        target.call("CLUSTER", "SETSLOT", str(slot), "IMPORTING", self.node_id(source))
        source.call("CLUSTER", "SETSLOT", str(slot), "MIGRATING", self.node_id(target))

    @staticmethod
    def migrate(source: RedisServer, target: RedisServer, *keys: str) -> Any:
        """MIGRATE ``keys`` from ``source`` to ``target`` (5 s bound); the source's reply."""
        return source.call("MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000", "KEYS", *keys)

    def set_slot_owner(self, slot: int, owner: RedisServer) -> None:
        """``CLUSTER SETSLOT slot NODE owner`` on the owner first, then on every other live node."""
        owner_id = self.node_id(owner)
        for node in [owner, *(n for n in self.alive_nodes() if n is not owner)]:
            node.call("CLUSTER", "SETSLOT", str(slot), "NODE", owner_id)

    def seeds(self, count: int | None = None) -> list[str]:
        return [f"127.0.0.1:{n.port}" for n in self.nodes[: count or len(self.nodes)]]

    def cleanup(self) -> None:
        for n in self.nodes:
            n.cleanup()
