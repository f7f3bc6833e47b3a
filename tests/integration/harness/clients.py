"""Clients the tests talk through: exact RESP bytes over a socket, redis-py as older clients
make it, a writing load thread; and replies made comparable."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

import hiredis
import redis
from redis.driver_info import DriverInfo

if TYPE_CHECKING:
    from tests.integration.harness.servers import RedisServer


def encode(*args: bytes | str | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        raw = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


class RawClient:
    """A blocking RESP client over a plain socket: exact bytes in, decoded or raw replies out."""

    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.reader = hiredis.Reader()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Any:
        """One decoded reply (hiredis values; errors as hiredis.ReplyError)."""
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by peer")
            self.reader.feed(chunk)

    def call(self, *args: bytes | str | int) -> Any:
        self.send(encode(*args))
        return self.read()

    def pipeline(self, commands: Sequence[Sequence[bytes | str | int]]) -> list[Any]:
        self.send(b"".join(encode(*c) for c in commands))
        return [self.read() for _ in commands]

    def closed_by_peer(self) -> bool:
        """True if the peer closed (EOF) within the socket timeout."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.reader.feed(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def error_text(reply: Any) -> str:
    """The text of an error reply (an assertion error if ``reply`` is not one)."""
    assert isinstance(reply, hiredis.ReplyError), f"expected an error reply, got {reply!r}"
    return str(reply)


def client_list(reply: Any) -> list[dict[str, str]]:
    """A CLIENT LIST reply, one dict per connection (``id``, ``cmd``, ``flags``...)."""
    assert isinstance(reply, bytes), reply
    return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in reply.decode().splitlines()]


def comparable(reply: Any) -> Any:
    """A decoded reply comparable with ==, errors included."""
    if isinstance(reply, hiredis.ReplyError):
        return ("error", str(reply))
    if isinstance(reply, list):
        return [comparable(r) for r in reply]
    return reply


def plain_redis(port: int, timeout_s: float = 10.0) -> redis.Redis:
    """A redis-py client that speaks as older clients do: RESP2, no CLIENT SETINFO at connect
    (redis-py 8's defaults are HELLO 3 and CLIENT SETINFO, which nutcracker refuses by closing
    the connection)."""
    return redis.Redis(
        port=port, socket_timeout=timeout_s, protocol=2, driver_info=DriverInfo(name=None, lib_version=None)
    )


class Writer(threading.Thread):
    """SETs unique keys (``prefix:i``) through a proxy until ``stop``; records the acknowledged
    writes and each error with when its request started and how long it took."""

    def __init__(self, port: int, prefix: str, stop: threading.Event, password: str | None = None) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis(port=port, password=password, socket_timeout=10.0)
        self.prefix = prefix
        self.stop_event = stop
        self.acked: dict[str, str] = {}
        self.errors: list[tuple[float, float, str]] = []
        self.ops = 0

    def run(self) -> None:
        try:
            for i in range(10_000_000):  # bounded; ends on the stop event
                if self.stop_event.is_set():
                    break
                key, value = f"{self.prefix}:{i}", f"v{i}"
                started = time.monotonic()
                try:
                    if self.client.set(key, value):
                        self.acked[key] = value
                    self.ops += 1
                except redis.RedisError as exc:
                    took = time.monotonic() - started
                    self.errors.append((started, took, f"{type(exc).__name__}: {exc}"))
        finally:
            self.client.close()

    def errors_outside(self, start: float, end: float) -> list[tuple[float, float, str]]:
        """Errors whose request did not overlap [start, end] (the switch window)."""
        return [e for e in self.errors if not (start <= e[0] + e[1] and e[0] <= end)]

    def missing_on(self, node: RedisServer, password: str | None = None) -> list[str]:
        """Acknowledged writes that ``node`` does not hold (with their values)."""
        keys = list(self.acked)
        missing: list[str] = []
        for i in range(0, len(keys), 200):
            chunk = keys[i : i + 200]
            values = node.call("MGET", *chunk, password=password)
            missing += [k for k, v in zip(chunk, values) if v != self.acked[k].encode()]
        return missing
