"""One backend server of a pool: its connection lanes, dedicated connections, health.

Each ``Server`` owns ``server_connections`` pipelined ``BackendConnection`` lanes per protocol
(RESP2 and, for HELLO 3 clients, RESP3); each client keeps to one lane, so its commands stay in
order. Commands that need a connection of their own (a transaction, a blocked pop, a
subscription, a streamed upload) take a ``DedicatedConnection`` (``take_dedicated``).

Server health, as a user sees it:

* a failure is a connection to the server lost without the proxy asking: refused, reset, closed
  by the server, setup (AUTH/SELECT) rejected, or no reply within ``timeout`` (the connection
  is closed and every request pending on it fails, as twemproxy counts a timed-out request as a
  server failure). The count of failures in a row restarts when the server answers (any reply);
* without ``auto_eject_hosts``, a server whose connection was refused, reset or closed is
  *down* for a backoff period (100 ms doubling to 1 s, jittered): requests for its keys get an
  immediate error instead of waiting, and a background probe reconnects; the first successful
  probe brings it back. A timeout only drops the connection; the next request reconnects;
* with ``auto_eject_hosts``, there is no backoff period: as in twemproxy, requests keep trying
  the server, and ``server_failure_limit`` consecutive failures take it out of the continuum
  (its keys move to the others). It comes back only when a probe succeeds: after
  ``server_retry_timeout`` ms, a fresh connection with its AUTH/SELECT and a PING, all answered
  within ``timeout``; that connection then serves requests. A failed probe keeps the server out
  for another ``server_retry_timeout``. So a hung (SIGSTOP) server fails at most
  ``server_failure_limit`` rounds of ``timeout``, and a dead one never re-enters to fail
  requests. (twemproxy puts it back untested when the time is up.) Once back, it must fail
  ``server_failure_limit`` times again to go.

    in the ring ──limit failures in a row──> ejected ──server_retry_timeout──> probing
        ^                                       ^                                 │
        │                                       └──────────── failed ─────────────┤
        └─────────────────────────────── answered ────────────────────────────────┘
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Protocol

from proxy import errors, tls
from proxy.backend import REDIRECTS, BackendConnection, DedicatedConnection, Loss, RedirectCallback
from proxy.config import ClusterPoolConfig, PoolConfig, RingPoolConfig, ServerConfig
from proxy.inflight import ReplySlot
from proxy.metrics import ServerStats
from proxy.resp import encode_command
from proxy.scripts import CACHE

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 1.0


class ServerState(enum.Enum):
    UNKNOWN = "unknown"  # not connected yet (no preconnect, no request so far)
    UP = "up"
    DOWN = "down"


ASKING = encode_command([b"ASKING"])
READONLY = encode_command([b"READONLY"])
PING = encode_command([b"PING"])
DEDICATED_IDLE_MAX = 4  # idle dedicated connections kept per server (Server.take_dedicated)


class ServerOwner(Protocol):
    """What a ``Server`` needs of its pool (a ring pool or a cluster pool)."""

    @property
    def config(self) -> PoolConfig: ...

    name: str

    def rebuild(self) -> None: ...

    def server_lost(self, server: Server) -> None: ...


class Server:
    """One backend server of a pool and its connection lanes."""

    def __init__(
        self,
        pool: ServerOwner,
        index: int,
        config: ServerConfig,
        loop: asyncio.AbstractEventLoop,
        on_redirect: RedirectCallback | None = None,
        redirects: tuple[bytes, ...] = REDIRECTS,
    ) -> None:
        self.pool = pool
        self.index = index
        self.config = config
        self.name = config.name
        self.address = config.address
        self.node = (config.address.host, config.address.port)
        self.weight = config.weight
        self._loop = loop
        pc = pool.config
        self._timeout_ms = pc.timeout_ms
        # RESP2 lanes serve RESP2 clients; RESP3 clients (HELLO 3) get lanes of their own,
        # opened with HELLO 3, so every reply can be forwarded as it arrives.
        self._lanes: list[BackendConnection | None] = [None] * pc.server_connections
        self._lanes3: list[BackendConnection | None] = [None] * pc.server_connections
        self._single_lane = pc.server_connections == 1
        # conn.send of the only RESP2 lane while it exists: what send() would call (Target)
        self.direct: Callable[[bytes, ReplySlot], None] | None = None
        auth = pc.redis_auth.encode() if pc.redis_auth is not None else None
        select = [encode_command([b"SELECT", b"%d" % pc.redis_db])] if pc.redis_db else []
        if isinstance(pc, ClusterPoolConfig) and pc.read_from != "master":
            select.append(READONLY)  # replicas serve reads only on READONLY connections
        self._on_redirect = on_redirect
        self._redirects = redirects
        user = pc.redis_username.encode() if pc.redis_username else None
        login = [b"AUTH", *([user] if user else []), auth] if auth else []
        self._init = ([encode_command(login)] if auth else []) + select
        hello = [b"HELLO", b"3"] + ([b"AUTH", user or b"default", auth] if auth else [])
        self._init3 = [encode_command(hello)] + select
        self.state = ServerState.UNKNOWN
        self.down_reason = ""
        self._down_until = 0.0
        self._backoff_s = BACKOFF_MIN_S
        self._probe: asyncio.TimerHandle | None = None
        self.failures = 0  # consecutive (until the server answers), for ejection
        self.ejected = False
        self._retry_timer: asyncio.TimerHandle | None = None  # the next probe of an ejected server
        self._probing: BackendConnection | None = None  # that probe's connection, while it runs
        self._probe_deadline: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # connections held by one client at a time (transactions, streamed values): idle ones
        # kept for the next holder; open ones, idle or held, bounded by dedicated_connections
        self._idle_dedicated: list[DedicatedConnection] = []
        self._held_dedicated: set[DedicatedConnection] = set()
        self.dedicated_open = 0
        self.closing = False
        # counters for metrics (read at scrape time)
        self.stats = ServerStats()
        self.ejections = 0
        self.ejected_at = 0.0  # unix time of the last ejection

    def __repr__(self) -> str:
        return f"<Server {self.name} {self.address} {self.state.value}>"

    # --- requests ------------------------------------------------------------------------

    def send(
        self,
        payload: bytes,
        slot: ReplySlot,
        *,
        resp3: bool = False,
        lane: int = 0,
        asking: bool = False,
    ) -> None:
        """Send one request (raw RESP) on a lane; its reply completes ``slot``.

        With ``server_connections`` > 1 the lane is ``lane`` modulo their number: a client
        passes its id, so its commands run on the server in the order it sent them, and
        different clients spread over the lanes. (Round-robin per request, as twemproxy does,
        lets a client's pipeline overtake itself across connections: INCRs observed out of
        order.) ``asking``: Redis Cluster's -ASK, ASKING sent just before on the same lane.
        """
        lanes = self._lanes3 if resp3 else self._lanes
        i = lane % len(lanes) if len(lanes) > 1 else 0
        conn = lanes[i]
        if conn is None:
            if self._loop.time() < self._down_until or self.closing:
                self.stats.forward_errors += 1
                slot.fail(errors.server_unavailable(self.name, self.down_reason or "closing"))
                return
            conn = self._connect(i, resp3)
        if asking:  # Redis Cluster's -ASK: ASKING and the request, back to back on one lane
            conn.send(ASKING, ReplySlot(None))
        conn.send(payload, slot)

    def can_dedicate(self) -> bool:
        """Whether a dedicated connection can be had now (``dedicated_connections`` per server:
        stalled uploads or idle WATCHes must not use up the server's maxclients)."""
        return self.dedicated_open < self.pool.config.dedicated_connections or bool(self._idle_dedicated)

    def take_dedicated(self, resp3: bool = False, preload: bool = True) -> DedicatedConnection | str:
        """A connection for one client alone (a streamed request, a transaction): an idle one
        kept from an earlier holder, else a new one (closed at once, answering with the reason,
        if the server is down); or, past ``dedicated_connections``, the error text. Kept for
        the next holder after ``release`` (up to DEDICATED_IDLE_MAX): a connection per big value
        or transaction would leave a TIME_WAIT socket per use on the proxy."""
        idle = self._idle_dedicated
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.resp3 == resp3:
                self._held_dedicated.add(conn)
                conn.uses += 1
                return conn
            conn.close("not needed", loss=Loss.CLOSED)
        if not self.can_dedicate():
            return errors.dedicated_limit(self.name, self.pool.config.dedicated_connections)
        conn = DedicatedConnection(
            self.name,
            self.pool.name,
            self._loop,
            timeout_ms=self._timeout_ms,
            init_commands=self._init3 if resp3 else self._init,
            on_lost=self._dedicated_lost,
            on_ready=self._mark_up,
            resp3=resp3,
            stats=self.stats,
            redirects=(),
            on_answer=self._answered,
        )
        conn.on_done = self._dedicated_done
        conn.server_address = self.address
        self.dedicated_open += 1
        self._held_dedicated.add(conn)
        if preload:
            _preload(conn)
        if self.closing or self._loop.time() < self._down_until:
            reason = self.down_reason or "closing"
            conn.close(reason, errors.server_unavailable(self.name, reason), loss=Loss.CLOSED)
        else:
            self._start_open(conn)
        return conn

    def adopt(self, conn: DedicatedConnection, previous: Server) -> None:
        """A held connection of ``previous`` (the same address, in the pool a reload replaced)
        is this server's from now on: counted here, and not closed when ``previous`` is."""
        if conn not in previous._held_dedicated:
            return
        previous._held_dedicated.discard(conn)
        previous.dedicated_open -= 1
        self._held_dedicated.add(conn)
        self.dedicated_open += 1
        conn.rebind(self._dedicated_lost, self._dedicated_done)

    def dedicated_idle(self) -> int:
        return len(self._idle_dedicated)

    def _dedicated_done(self, conn: DedicatedConnection) -> None:
        """Released and answered: keep it for the next holder, or close it."""
        self._held_dedicated.discard(conn)
        if self.closing or conn.closed or len(self._idle_dedicated) >= DEDICATED_IDLE_MAX:
            conn.close("released", loss=Loss.CLOSED)
        else:
            conn.on_writable = None
            self._idle_dedicated.append(conn)
            idle_s = self.pool.config.dedicated_idle_timeout_ms / 1000.0
            self._loop.call_later(idle_s, self._expire_idle, conn, conn.uses)

    def _expire_idle(self, conn: DedicatedConnection, uses: int) -> None:
        """Still idle since it was kept (not taken again in between): closed."""
        if conn.uses == uses and conn in self._idle_dedicated:
            conn.close("idle", loss=Loss.CLOSED)

    def _dedicated_lost(self, conn: BackendConnection, reason: str, loss: Loss) -> None:
        # A dedicated connection's failure is its holder's error reply; the server's health is
        # judged by its shared connections (an idle one closed by the server is no failure).
        self.dedicated_open -= 1
        self._held_dedicated.discard(conn)
        if conn in self._idle_dedicated:
            self._idle_dedicated.remove(conn)

    def connect_all(self) -> None:
        """Open every lane now (``preconnect``)."""
        for i, conn in enumerate(self._lanes):
            if conn is None:
                self._connect(i)

    # --- connection lifecycle ------------------------------------------------------------

    def _connect(self, lane: int, resp3: bool = False) -> BackendConnection:
        init = self._init3 if resp3 else self._init
        conn = self._new_connection(init, self._mark_up, lane, resp3)
        _preload(conn)
        (self._lanes3 if resp3 else self._lanes)[lane] = conn
        if not resp3 and self._single_lane:
            self.direct = conn.send
        self._start_open(conn)
        return conn

    def _new_connection(
        self, init: list[bytes], on_ready: Callable[[], None], lane: int = 0, resp3: bool = False
    ) -> BackendConnection:
        return BackendConnection(
            self.name,
            self.pool.name,
            self._loop,
            timeout_ms=self._timeout_ms,
            init_commands=init,
            on_lost=self._on_lost,
            on_ready=on_ready,
            on_redirect=self._on_redirect,
            lane=lane,
            resp3=resp3,
            stats=self.stats,
            redirects=self._redirects,
            on_answer=self._answered,
        )

    def _start_open(self, conn: BackendConnection) -> None:
        task = self._loop.create_task(self._open(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, conn: BackendConnection) -> None:
        addr = self.address
        try:
            async with asyncio.timeout(self._timeout_ms / 1000.0):
                if addr.unix_path:
                    await self._loop.create_unix_connection(lambda: conn, addr.unix_path)
                else:
                    options = tls.connect_options(self.pool.config.server_tls, addr.host)
                    transport, _ = await self._loop.create_connection(
                        lambda: conn, addr.host, addr.port, **options
                    )
                    if self.pool.config.tcpkeepalive:  # twemproxy's key: keepalive to servers
                        sock = transport.get_extra_info("socket")
                        if sock is not None:
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except asyncio.CancelledError:
            conn.close("proxy shutting down", errors.SHUTTING_DOWN, loss=Loss.CLOSED)
            raise
        except (OSError, TimeoutError, tls.TlsSetupError) as exc:
            reason = _describe(exc)
            self.stats.connect_failures += 1
            conn.close(reason, errors.server_unavailable(self.name, reason))
            return
        self.stats.connects += 1  # up once its AUTH/SELECT are accepted (conn calls _mark_up)

    def _on_lost(self, conn: BackendConnection, reason: str, loss: Loss) -> None:
        if conn is self._probing:
            self._probe_failed(reason)
            return
        for lanes in (self._lanes, self._lanes3):
            for i, lane in enumerate(lanes):
                if lane is conn:
                    lanes[i] = None
        if self._lanes[0] is None:
            self.direct = None
        if self.closing or loss is Loss.CLOSED:
            return
        self.failures += 1
        for lane in self._lanes + self._lanes3:
            if lane is not None:
                lane.watch()  # a reply on any other lane shows the server answers
        self.pool.server_lost(self)
        if self.ejected:
            return  # out of the ring until a probe answers (_retry)
        config = self.pool.config
        if isinstance(config, RingPoolConfig) and config.auto_eject_hosts:
            if self.failures >= config.server_failure_limit:
                self._eject(reason)
            elif loss is not Loss.TIMEOUT:
                # No backoff period: the next request tries the server again (twemproxy's
                # way), so the count reaches the limit at the pace requests arrive and the
                # server leaves the ring; a backoff would only fail requests for longer.
                self._mark_down(reason, hold=False)
        elif loss is not Loss.TIMEOUT:
            # Refused, reset or closed: the server may be gone. Requests fail fast until a
            # probe reconnects, instead of each one trying to connect. A timeout only drops
            # the connection (the server is slow, not gone); the next request reconnects.
            self._mark_down(reason)

    def _answered(self) -> None:
        self.failures = 0

    def _mark_up(self) -> None:
        self._down_until = 0.0
        self._backoff_s = BACKOFF_MIN_S
        if self.state is not ServerState.UP:
            if self.state is ServerState.DOWN:
                log.warning("pool %s: server %s (%s) is up", self.pool.name, self.name, self.address)
            self.state = ServerState.UP
            self.down_reason = ""

    def _mark_down(self, reason: str, hold: bool = True) -> None:
        """Down, logged once; with ``hold``, requests fail at once for a backoff period, then
        a probe reconnects."""
        if self.state is not ServerState.DOWN:
            log.warning(
                "pool %s: server %s (%s) is down: %s", self.pool.name, self.name, self.address, reason
            )
        self.state = ServerState.DOWN
        self.down_reason = reason
        if not hold:
            return
        delay = self._backoff_s * random.uniform(0.8, 1.2)
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
        self._down_until = self._loop.time() + delay
        if self._probe is None:
            self._probe = self._loop.call_at(self._down_until, self._run_probe)

    def _run_probe(self) -> None:
        self._probe = None
        if self.closing or self.ejected or self.state is not ServerState.DOWN:
            return
        if self._lanes[0] is None:
            self._connect(0)

    # --- ejection (auto_eject_hosts) -----------------------------------------------------

    def _eject(self, reason: str) -> None:
        pool = self.pool
        config = pool.config
        assert isinstance(config, RingPoolConfig)  # (only ring pools eject: auto_eject_hosts)
        retry_ms = config.server_retry_timeout_ms
        self.failures = 0
        self.ejected = True
        self.ejections += 1
        self.ejected_at = time.time()
        self.state = ServerState.DOWN
        self.down_reason = f"ejected ({reason})"
        log.warning(
            "pool %s: server %s (%s) ejected after %d consecutive failures (last: %s); "
            "probing it every %d ms",
            pool.name,
            self.name,
            self.address,
            config.server_failure_limit,
            reason,
            retry_ms,
        )
        self._retry_timer = self._loop.call_later(retry_ms / 1000.0, self._retry)
        pool.rebuild()

    def _retry(self) -> None:
        """Probe the ejected server: connect, its AUTH/SELECT and a PING, within ``timeout``."""
        self._retry_timer = None
        if self.closing:
            return
        # A lane 0 in the making (it becomes lane 0 if it answers), with PING as the last of
        # its setup commands: the connection is ready only once the PING is answered.
        conn = self._new_connection(self._init + [PING], self._probe_answered)
        self._probing = conn
        # One deadline for all of it (the connect alone is also bounded by _open).
        self._probe_deadline = self._loop.call_later(
            self._timeout_ms / 1000.0,
            partial(
                conn.close, "timeout", errors.server_timeout(self.name, self._timeout_ms), loss=Loss.TIMEOUT
            ),
        )
        self._start_open(conn)

    def _end_probe(self) -> BackendConnection | None:
        conn, self._probing = self._probing, None
        if self._probe_deadline is not None:
            self._probe_deadline.cancel()
            self._probe_deadline = None
        return conn

    def _probe_failed(self, reason: str) -> None:
        self._end_probe()
        if self.closing:
            return
        config = self.pool.config
        assert isinstance(config, RingPoolConfig)  # (only ring pools eject: auto_eject_hosts)
        retry_ms = config.server_retry_timeout_ms
        log.debug("pool %s: server %s still ejected, probe failed: %s", self.pool.name, self.name, reason)
        self._retry_timer = self._loop.call_later(retry_ms / 1000.0, self._retry)

    def _probe_answered(self) -> None:
        """The probe's setup and PING were answered: back into the ring, with the probe's
        connection as the first lane."""
        conn = self._end_probe()
        if conn is None or self.closing:
            return
        self.ejected = False
        self.failures = 0
        self._down_until = 0.0
        self._backoff_s = BACKOFF_MIN_S
        self.state = ServerState.UP
        self.down_reason = ""
        if self._lanes[0] is None:
            self._lanes[0] = conn
            if self._single_lane:
                self.direct = conn.send
        else:  # a lane that outlived the ejection (it never failed): keep it
            conn.close("probe done", loss=Loss.CLOSED)
        log.warning(
            "pool %s: server %s (%s) answered a probe: back in the ring",
            self.pool.name,
            self.name,
            self.address,
        )
        self.pool.rebuild()
        if self.pool.config.preconnect:
            self.connect_all()

    def retire(self, deadline_s: float) -> None:
        """The server left its pool: close it once nothing is pending on it (or at the deadline)."""
        end = self._loop.time() + deadline_s

        def check() -> None:
            if self.in_flight() == 0 or self._loop.time() >= end:
                self.close()
            else:
                self._loop.call_later(0.05, check)

        check()

    def in_flight(self) -> int:
        """Requests sent and not yet answered, over every lane."""
        return sum(c.in_flight() for c in self._lanes + self._lanes3 if c is not None)

    def out_queue(self) -> int:
        """Requests queued and not yet written, over every lane."""
        return sum(c.out_queue() for c in self._lanes + self._lanes3 if c is not None)

    def open_connections(self) -> int:
        return sum(1 for c in self._lanes + self._lanes3 if c is not None and c.connected)

    def close(self) -> None:
        """Stop reconnecting and close every lane (pending requests get an error)."""
        self.closing = True
        for handle in (self._probe, self._retry_timer):
            if handle is not None:
                handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        probe = self._end_probe()
        if probe is not None:
            probe.close("proxy shutting down", errors.SHUTTING_DOWN, loss=Loss.CLOSED)
        for conn in self._lanes + self._lanes3:
            if conn is not None:
                conn.close("proxy shutting down", errors.SHUTTING_DOWN, loss=Loss.CLOSED)
        for idle in list(self._idle_dedicated):
            idle.close("proxy shutting down", errors.SHUTTING_DOWN, loss=Loss.CLOSED)
        # Held ones that wait on the server without end (a blocked pop, subscriptions): their
        # server left the pool (a reload, a failover) or the proxy stops; their clients get an
        # error and retry. (A streamed value or a transaction finishes: it is answered soon.)
        for held in list(self._held_dedicated):
            if held.block_s is not None or held.on_push is not None:
                held.close("server left the pool", loss=Loss.CLOSED)


def describe(server: Server) -> str:
    """A server as errors name it: ``alpha (127.0.0.1:7001)``."""
    return server.name if server.name == str(server.address) else f"{server.name} ({server.address})"


def _preload(conn: BackendConnection) -> None:
    """The scripts clients call by SHA1 (scripts.py), first on a new connection: a restarted
    server has them before the client's next EVALSHA. Their replies are not waited for."""
    for load in CACHE.preload():
        conn.send(load, ReplySlot(None))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "connect timeout"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__
