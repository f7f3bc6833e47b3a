"""Real Redis Sentinels: one sentinel process, and a master + replica watched by three."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Self

from tests.integration.harness.clients import RawClient
from tests.integration.harness.ports import free_port
from tests.integration.harness.process import Process, Stoppable
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until


class Sentinel(Process):
    """A real Redis Sentinel (``redis-server FILE --sentinel``) on a free loopback port."""

    name = "redis-sentinel"
    marker = b"+monitor master"

    def __init__(self, master_name: str, master_port: int, quorum: int = 2) -> None:
        super().__init__("sentinel")
        self.port = free_port()
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:  # sentinel rewrites this file: it must be its own
            f.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}\n"
                f"sentinel down-after-milliseconds {master_name} 1000\n"
                f"sentinel failover-timeout {master_name} 6000\n"
                f"sentinel parallel-syncs {master_name} 1\n"
            )

    def start(self) -> Sentinel:
        self._spawn(["redis-server", self.conf, "--sentinel"])
        self._wait_ready(f"sentinel on {self.port}")
        return self

    def call(self, *args: bytes | str | int) -> Any:
        with RawClient(self.port) as c:
            return c.call(*args)


class SentinelGroup(Stoppable):
    """A master, its replica and three sentinels watching them as ``name``.

    With ``password`` both data nodes have it as ``requirepass`` and ``masterauth`` (so either
    can be the other's replica); ``sentinel`` makes each sentinel (a subclass may add its own
    configuration, e.g. a password of the sentinels' own).
    """

    def __init__(
        self,
        name: str = "sessions",
        password: str | None = None,
        sentinel: Callable[[str, int], Sentinel] = Sentinel,
    ) -> None:
        self.name = name
        self.password = password
        self._make_sentinel = sentinel
        self.master: RedisServer | None = None
        self.replica: RedisServer | None = None
        self.sentinels: list[Sentinel] = []

    def start(self) -> Self:
        pw = self.password
        auth = ["--requirepass", pw, "--masterauth", pw] if pw else []
        try:
            self.master = master = RedisServer(extra=auth).start()
            self.replica = replica = RedisServer(
                extra=[*auth, "--replicaof", "127.0.0.1", str(master.port)]
            ).start()
            poll_until(
                lambda: b"master_link_status:up" in replica.call("INFO", "replication", password=pw),
                "replica in sync",
                30,
            )
            self.sentinels = [self._make_sentinel(self.name, master.port) for _ in range(3)]
            for s in self.sentinels:
                s.start()
            self.wait_settled()
        except BaseException:
            self.cleanup()
            raise
        return self

    def nodes(self) -> list[RedisServer]:
        return [n for n in (self.master, self.replica) if n is not None]

    def current_master_port(self) -> int:
        addr = self.sentinels[0].call("SENTINEL", "get-master-addr-by-name", self.name)
        return int(addr[1])

    def current_master(self) -> RedisServer:
        """The data node the sentinels name as the master now."""
        return self.by_port(self.current_master_port())

    def wait_settled(self, timeout_s: float = 60.0) -> None:
        """Every sentinel knows the same master, a replica of it, and the two other sentinels."""

        def settled() -> bool:
            masters = set()
            for s in self.sentinels:
                if not s.alive():
                    continue
                masters.add(int(s.call("SENTINEL", "get-master-addr-by-name", self.name)[1]))
                if len(s.call("SENTINEL", "sentinels", self.name)) < 2:
                    return False
                replicas = s.call("SENTINEL", "replicas", self.name)
                ok = [r for r in replicas if b"s_down" not in dict(zip(r[::2], r[1::2]))[b"flags"]]
                if not ok:
                    return False
            return len(masters) == 1

        poll_until(settled, "sentinels settled", timeout_s, 0.1)

    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def by_port(self, port: int) -> RedisServer:
        return next(n for n in self.nodes() if n.port == port)

    def cleanup(self) -> None:
        for s in self.sentinels:
            s.cleanup()
        for n in self.nodes():
            n.cleanup()
