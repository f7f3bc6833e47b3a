"""MONITOR through the proxy: the merged MONITOR streams of every server of the client's pool.

``MONITOR`` takes a dedicated connection to each server of the pool (its keyspace servers: a
ring's servers, a cluster's masters, a sentinel pool's master, each pool of a listener) and
sends ``MONITOR`` there; once every server said ``+OK`` the client gets ``+OK``, then every
line any server writes, as Redis writes it, with `` [server NAME]`` after it so the origin is
clear (clients that parse MONITOR lines read the quoted arguments and ignore what follows).
Each server's lines keep their order; lines of different servers interleave as they come.
It lasts until the client sends RESET or leaves; a server connection lost ends it (the client
is closed, as a Redis restart would close it). The pool key ``allow_monitor: false`` refuses it
(MONITOR costs every server some throughput for every command it runs).
"""

from __future__ import annotations

from typing import Protocol

from proxy import errors
from proxy.backend import DedicatedConnection, Loss
from proxy.inflight import ReplyQueue, ReplySlot
from proxy.target import Pool

MONITOR = b"*1\r\n$7\r\nMONITOR\r\n"
OK = b"+OK\r\n"


class MonitorHost(Protocol):
    queue: ReplyQueue
    _pool: Pool
    resp3: bool

    def _subscriptions_lost(self, reason: str) -> None: ...


class Monitor:
    """One MONITOR client's server connections (see the module docstring)."""

    def __init__(self, host: MonitorHost) -> None:
        self._host = host
        self._conns: dict[DedicatedConnection, bytes] = {}  # connection -> b" [server NAME]"
        self._owed: ReplySlot | None = None  # the client's +OK, until every server said it
        self._owing: set[DedicatedConnection] = set()  # the servers yet to say it

    @property
    def active(self) -> bool:
        return bool(self._conns)

    def start(self) -> None:
        host = self._host
        queue = host.queue
        if self._conns:
            queue.push_reply(OK)  # (monitoring already)
            return
        if not host._pool.config.allow_monitor:
            queue.push_error(errors.MONITOR_NOT_ALLOWED)
            return
        servers = host._pool.keyspace_servers()
        if isinstance(servers, str):
            queue.push_error(servers)
            return
        taken: list[tuple[DedicatedConnection, bytes]] = []
        for server in servers:
            conn = server.take_dedicated(host.resp3, preload=False)
            if isinstance(conn, str) or conn.closed:  # (the limit, or the server is down)
                for held, _ in taken:
                    held.close("monitor refused", loss=Loss.CLOSED)
                queue.push_error(conn if isinstance(conn, str) else conn.closed_text)
                return
            taken.append((conn, f" [server {server.name}]".encode()))
        self._owed = queue.push()
        self._owing = {conn for conn, _ in taken}
        for conn, suffix in taken:
            self._conns[conn] = suffix
            conn.on_push = self._pushed
            conn.on_lost = self._lost
            conn.write_more(MONITOR)

    def _pushed(self, conn: DedicatedConnection, raw: bytes) -> None:
        owed = self._owed
        if conn in self._owing:  # each server's first reply is MONITOR's +OK (or an error)
            self._owing.discard(conn)
            if owed is not None:
                if raw != OK:  # refused there: the client gets that, and no monitoring
                    self._owed = None
                    owed.complete(raw)
                    self.stop()
                elif not self._owing:
                    self._owed = None
                    owed.complete(OK)
            return
        suffix = self._conns.get(conn)
        if suffix is None or raw[:1] != b"+":
            return
        queue = self._host.queue
        queue.push_reply(raw[:-2] + suffix + b"\r\n")
        queue.flush()

    def _lost(self, conn: DedicatedConnection, reason: str) -> None:
        if conn in self._conns:
            self.stop()
            self._host._subscriptions_lost(reason)

    def stop(self, lost: bool = True) -> None:
        """RESET (``lost`` False: a +OK still owed is written), the client left, or a server
        connection was lost: every server connection is closed."""
        conns, self._conns = self._conns, {}
        self._owing = set()
        if self._owed is not None:
            if lost:
                self._owed.fail(errors.SUBSCRIPTION_LOST)
            else:
                self._owed.complete(OK)
            self._owed = None
        for conn in conns:
            conn.on_lost = None
            conn.close("monitor ended", loss=Loss.CLOSED)
