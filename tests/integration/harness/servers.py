"""redis-server processes on free loopback ports: one, or several started in parallel."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from tests.integration.harness.clients import RawClient, client_list
from tests.integration.harness.ports import free_port
from tests.integration.harness.process import Process


class RedisServer(Process):
    name = "redis-server"
    marker = b"Ready to accept connections"

    def __init__(self, port: int | None = None, extra: Sequence[str] = ()) -> None:
        super().__init__("redis")
        self.port = port or free_port(bus="--cluster-enabled" in extra)
        self.extra = list(extra)

    def launch(self) -> RedisServer:
        self._spawn(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                self.dir,
                *self.extra,
            ]
        )
        return self

    def wait_ready(self) -> RedisServer:
        self._wait_ready(f"redis-server on {self.port}")
        return self

    def start(self) -> RedisServer:
        return self.launch().wait_ready()

    def restart(self) -> RedisServer:
        """Start again on the same port (after a kill)."""
        self.stop()
        return self.start()

    def call(self, *args: bytes | str | int, password: str | None = None) -> Any:
        """One command straight to this server (not through a proxy)."""
        with RawClient(self.port) as c:
            if password:
                c.call("AUTH", password)
            return c.call(*args)

    def info(self, section: str, password: str | None = None) -> dict[str, str]:
        """One INFO section, field by field."""
        text = self.call("INFO", section, password=password).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def clients(self, password: str | None = None) -> list[dict[str, str]]:
        """CLIENT LIST, one dict per connection."""
        return client_list(self.call("CLIENT", "LIST", password=password))

    def cmdstat(self, command: str, password: str | None = None) -> int:
        """How many times this server ran ``command`` (INFO commandstats calls; refused ones
        are not counted)."""
        for line in self.call("INFO", "commandstats", password=password).decode().splitlines():
            if line.startswith(f"cmdstat_{command}:"):
                return int(line.split("calls=")[1].split(",")[0])
        return 0


S = TypeVar("S", bound=RedisServer)


def start_all(servers: list[S]) -> list[S]:
    """Launch ``servers`` at once, then wait for each; on a failure every one is stopped."""
    try:
        for s in servers:
            s.launch()
        for s in servers:
            s.wait_ready()
    except BaseException:
        for s in servers:
            s.cleanup()
        raise
    return servers


@contextmanager
def running(servers: list[S]) -> Iterator[list[S]]:
    """``start_all(servers)`` for a block (a module fixture's body), each stopped by PID at its
    end, whatever happened."""
    started = start_all(servers)
    try:
        yield started
    finally:
        for s in started:
            s.cleanup()


def start_redis_servers(count: int, extra: Sequence[str] = ()) -> list[RedisServer]:
    """Start ``count`` redis-servers in parallel and wait for all of them."""
    return start_all([RedisServer(extra=extra) for _ in range(count)])


def running_redis_servers(count: int, extra: Sequence[str] = ()) -> AbstractContextManager[list[RedisServer]]:
    """``count`` redis-servers started in parallel for a block, stopped by PID at its end."""
    return running([RedisServer(extra=extra) for _ in range(count)])
