"""What a pool is to the rest of the proxy: the ``Target`` a request is sent to, the ``Pool``
protocol every pool kind (ring, cluster, sentinel, a listener's router) implements, and
``Placement`` (the one server a transaction, blocked pop or subscription runs on).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.config import PoolConfig
from proxy.inflight import ReplySlot
from proxy.metrics import PoolStats
from proxy.upstream import Server


class Target(Protocol):
    """Where a request can be sent: a ``Server``, or a router's wrapper around one.

    ``direct`` is a shortcut a client may take for a RESP2 request: the send of the one
    connection every such request would go to (a ``Server`` with one lane, while it has one),
    else None. It skips a call per request on the hot path (and per part of a fan-out).
    """

    direct: Callable[[bytes, ReplySlot], None] | None

    def send(self, payload: bytes, slot: ReplySlot, *, resp3: bool = False, lane: int = 0) -> None:
        """Send one request (raw RESP); its reply completes ``slot``. (A ``Server`` also takes
        ``asking``, for Redis Cluster's -ASK.)"""


def send_to(target: Target, payload: bytes, slot: ReplySlot, resp3: bool, lane: int) -> None:
    """How every request a client forwards leaves it: on the target's one connection when it
    has one and the client speaks RESP2 (``direct``: a call saved per request), else through
    ``Target.send`` (lane choice, reconnects, a router's mirror, a failover's hold).
    client.py's single-key fast path inlines these lines (a call per request is 4% of it)."""
    direct = target.direct
    if direct is not None and not resp3:
        direct(payload, slot)
    else:
        target.send(payload, slot, resp3=resp3, lane=lane)


Route = Callable[[bytes], "Target | None"]
Parts = Sequence[tuple["Target | None", bytes, list[int]]]
"""A multi-key command split per server: (server, encoded sub-command, key positions)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where some keys live, for a command that must run on one server connection (a
    transaction, a blocked pop, a subscription): the pool that owns them (a router resolves to
    its route's pool) and the server. ``Pool.place`` itself refuses keys of two places."""

    pool: PlacedPool
    server: Server


class PlacedPool(Protocol):
    """What a transaction needs of the pool its keys live in."""

    name: str

    def settle(self, then: Callable[[], None]) -> None:
        """Call ``then`` once requests may be sent (at once, or after a failover hold)."""

    def map_changed(self) -> None:
        """A server said the keys moved (MOVED inside a transaction): learn the map again."""


def shown_key(key: bytes) -> str:
    """A key as errors quote it: decoded, cut at 64 characters."""
    text = key[:64].decode("utf-8", "replace")
    return text + ("..." if len(key) > 64 else "")


def fingerprint(servers: Sequence[Server]) -> int:
    """A number that changes when the list of servers does (SCAN cursors carry it)."""
    text = "\n".join(f"{s.name}@{s.address}" for s in servers)
    return zlib.crc32(text.encode())


class Pool(Protocol):
    """What a client connection and the server need of a pool, ring or cluster."""

    @property
    def config(self) -> PoolConfig: ...

    name: str
    route: Route
    """The server for a single-key command's key (None: nowhere to send it)."""
    route_read: Route | None
    """Where a read-only command's key goes, when it differs from ``route`` (replica reads)."""
    unrouted: str
    """The error text for a key ``route`` found no server for."""
    stats: PoolStats
    servers: list[Server]
    strips: bool
    """Whether keys are rewritten before sending (a router's ``strip_prefix`` routes)."""

    def strip(self, key: bytes) -> bytes:
        """The key as its pool must see it."""
        ...

    def route_many(self, keys: list[bytes], read: bool) -> Target | None | str:
        """The one server for all of a multi-key command's keys, or an error text."""
        ...

    def split_command(self, args: list[bytes]) -> Parts | None: ...

    def group_keys(self, keys: list[bytes], read: bool) -> Sequence[tuple[Target | None, list[int]]]: ...

    def place(self, keys: Sequence[bytes]) -> Placement | str:
        """The server a transaction on ``keys`` runs on, or an error text."""
        ...

    def keyspace_servers(self, replicas: bool = False) -> list[Server] | str:
        """The servers that hold the keyspace (SCAN, KEYS, SCRIPT LOAD...), or an error text."""
        ...

    def pattern_servers(self) -> list[Server] | str:
        """Where a PSUBSCRIBE goes (each message must come once), or an error text."""
        ...

    def settle(self, then: Callable[[], None]) -> None: ...

    def map_changed(self) -> None: ...

    def start(self) -> None: ...

    async def ready(self, timeout_s: float) -> bool: ...

    def can_serve(self) -> tuple[bool, str]:
        """Whether every key has a live server now; if not, why."""
        ...

    def close(self) -> None: ...
