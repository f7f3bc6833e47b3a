"""The composition root: builds pools, listeners and the metrics endpoint from the config.

Only this module wires objects together: it creates the shared ``Flusher``, one ``RingPool``,
``ClusterPool`` or ``SentinelPool`` per pool, and the *fronts* clients connect to: a pool with its
own ``listen``, or a ``listeners:`` entry whose ``Router`` routes keys by prefix over pools. Each
front's socket hands every ``ClientConnection`` the front (and the INFO text source). The
``/metrics`` + ``/healthz`` endpoint reads a ``metrics.Snapshot`` built here at scrape time.

Shutdown (SIGTERM/SIGINT): stop accepting, let every client's owed replies go out within
``drain_s`` seconds, then close clients and server connections.

Reload (SIGHUP): the config file is read again. A config that fails validation, or whose new
listeners cannot open, is rejected with a log line and the running one keeps serving. Otherwise,
per pool: unchanged pools are left alone; a ring pool whose only change is its server list
(added, removed, reweighted servers) is updated in place, keeping its connections to the servers
that stay; any other change builds a new pool (the old one closes once its requests are
answered). Routers are rebuilt over the new pools. Every front whose address stays keeps its
socket and its clients, moved onto the new pool or router; new fronts start listening; removed
fronts (and old addresses) stop listening and their clients are closed after their replies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import ssl
import time

from proxy import __version__, accel, tls
from proxy.budget import Budget
from proxy.client import ClientConnection, ClientLimits
from proxy.cluster import ClusterPool
from proxy.config import (
    Address,
    ClusterPoolConfig,
    Config,
    ConfigError,
    PoolConfig,
    RingPoolConfig,
    SentinelPoolConfig,
    load,
)
from proxy.inflight import Flusher
from proxy.local import log_limited
from proxy.metrics import (
    ClusterView,
    PoolView,
    SentinelView,
    ServerView,
    Snapshot,
    info_text,
    serve_http,
)
from proxy.pool import PoolBase, RingPool
from proxy.router import Router
from proxy.security import TlsConfig
from proxy.sentinel import SentinelPool
from proxy.target import Pool

log = logging.getLogger(__name__)

DRAIN_S = 5.0
RETIRE_POLL_S = 0.05


class _Front:
    """One client-facing socket and what its clients use (a pool or a router)."""

    def __init__(
        self, name: str, listen: Address, backlog: int, target: Pool, tls_config: TlsConfig | None
    ) -> None:
        self.name = name
        self.listen = listen
        self.backlog = backlog
        self.target = target
        self.socket: asyncio.AbstractServer | None = None
        self.tls = tls_config
        # built from the files as they are now: a reload builds it again (certificate rotation)
        self.ssl: ssl.SSLContext | None = None
        if tls_config is not None:
            try:
                self.ssl = tls.front_context(tls_config)
            except tls.TlsSetupError as exc:
                kind = "listener" if isinstance(target, Router) else "pool"
                raise ConfigError(f"{kind} '{name}': {exc}") from None


class ProxyServer:
    """Every pool, listener and router of one config, in one event loop."""

    def __init__(self, config: Config, limits: ClientLimits | None = None) -> None:
        self.config = config
        self._loop = asyncio.get_running_loop()
        self._flusher = Flusher(self._loop.call_soon)
        self._limits = limits or ClientLimits()
        self.budget = Budget(config.max_buffered_bytes)  # what all clients may make us hold
        check_tls(config)
        self.pools: dict[str, Pool] = {p.name: self._pool(p) for p in config.pools}
        self.fronts: dict[str, _Front] = self._fronts(config, self.pools, {})
        self.clients: dict[str, set[ClientConnection]] = {n: set() for n in self.fronts}
        self._metrics: asyncio.AbstractServer | None = None
        self._metrics_ssl: ssl.SSLContext | None = None  # metrics.tls: reloads read its files again
        self._drained = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.started = time.time()
        self.config_loaded_at = self.started
        self.reloads = 0
        self.reload_failures = 0
        self.last_reload_ok = True

    def _pool(self, pc: PoolConfig) -> Pool:
        if isinstance(pc, ClusterPoolConfig):
            return ClusterPool(pc, self._loop)
        if isinstance(pc, SentinelPoolConfig):
            return SentinelPool(pc, self._loop)
        assert isinstance(pc, RingPoolConfig)
        return RingPool(pc, self._loop)

    @staticmethod
    def _fronts(config: Config, pools: dict[str, Pool], old: dict[str, _Front]) -> dict[str, _Front]:
        """The fronts of ``config`` over ``pools`` (a router keeps its counters across reloads)."""
        fronts = {}
        for pc in config.pools:
            if pc.listen is not None:
                fronts[pc.name] = _Front(pc.name, pc.listen, pc.backlog, pools[pc.name], pc.tls)
        for lc in config.listeners:
            router = Router(lc, pools)
            previous = old.get(lc.name)
            if previous is not None and isinstance(previous.target, Router):
                router.adopt_stats(previous.target.stats)
            fronts[lc.name] = _Front(lc.name, lc.listen, lc.backlog, router, lc.tls)
        return fronts

    async def start(self) -> None:
        """Open every front; servers are connected now when ``preconnect`` says so.

        Cluster and sentinel pools first learn where their servers are, waiting at most their
        ``timeout``; if they cannot by then the fronts listen anyway (their keys get an error
        until they do).
        """
        if accel.implementation() == "mixed":
            log.warning("%s", accel.summary())
        else:
            log.info("%s", accel.summary())
        for pool in self.pools.values():
            pool.start()
        for pool in self.pools.values():
            await self._ready(pool)
        await self._start_metrics(self.config)  # scrapable once "ready" is logged
        for front in self.fronts.values():
            try:
                front.socket = await self._listen(front)
            except OSError as exc:
                kind = "listener" if isinstance(front.target, Router) else "pool"
                raise OSError(
                    exc.errno, f"{kind} {front.name}: cannot listen on {front.listen}: {exc.strerror or exc}"
                ) from None
            log.info(
                "resproxy ready: %s %s listening on %s",
                "listener" if isinstance(front.target, Router) else "pool",
                front.name,
                front.listen,
            )

    async def _ready(self, pool: Pool) -> None:
        if not await pool.ready(pool.config.timeout_ms / 1000.0):
            log.warning("pool %s: servers not known yet; listening anyway, still trying", pool.name)

    async def _start_metrics(self, config: Config) -> None:
        addr = config.metrics_listen
        if addr is None:
            return
        try:
            try:
                context = tls.front_context(config.metrics_tls) if config.metrics_tls else None
            except tls.TlsSetupError as exc:
                raise ConfigError(f"metrics: {exc}") from None
            self._metrics = await serve_http(
                addr.host, addr.port, self.snapshot, context=context, token=config.metrics_token
            )
            self._metrics_ssl = context
        except OSError as exc:
            raise OSError(
                exc.errno, f"metrics endpoint: cannot listen on {addr}: {exc.strerror or exc}"
            ) from None
        scheme = "https" if config.metrics_tls else "http"
        log.info("metrics on %s://%s/metrics and /healthz", scheme, addr)

    async def _listen(self, front: _Front) -> asyncio.AbstractServer:
        name = front.name
        clients = self.clients.setdefault(name, set())

        def on_open(client: ClientConnection) -> bool:
            target = front.target
            if client.pool is not target:
                # made for the target before a reload swapped it, and not yet in ``clients``
                # when the reload moved those: it starts on the current one
                client.set_pool(target)
            limit = target.config.client_connections
            if self.stopping or (limit and len(clients) >= limit):
                target.stats.connections_rejected += 1
                return False
            target.stats.connections_total += 1  # accepted ones (Redis's total_connections_received)
            clients.add(client)
            return True

        def on_close(client: ClientConnection) -> None:
            clients.discard(client)
            if self.stopping and not any(self.clients.values()):
                self._drained.set()

        def client() -> ClientConnection:  # the front's target as it is now (reloads swap it)
            return ClientConnection(
                front.target,
                flusher=self._flusher,
                limits=self._limits,
                on_open=on_open,
                on_close=on_close,
                info=self.info,
                budget=self.budget,
                peers=lambda: clients,
            )

        def handshake_failed(peer: str, why: str) -> None:
            front.target.stats.tls_handshake_failures += 1
            log_limited("tls", peer, "%s: TLS handshake from %s failed: %s", front.name, peer, why)

        def factory() -> asyncio.Protocol:  # TLS or not as the front is now (reloads change it)
            context = front.ssl
            if context is None:
                return client()
            assert front.tls is not None
            return tls.TlsAcceptor(context, front.tls.handshake_timeout_ms / 1000.0, client, handshake_failed)

        addr = front.listen
        if addr.unix_path:
            if os.path.exists(addr.unix_path):
                os.unlink(addr.unix_path)
            server = await self._loop.create_unix_server(factory, addr.unix_path, backlog=front.backlog)
            if addr.unix_mode is not None:
                os.chmod(addr.unix_path, addr.unix_mode)
            return server
        return await self._loop.create_server(
            factory, addr.host, addr.port, backlog=front.backlog, reuse_address=True
        )

    # --- what metrics and INFO read ------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Plain data of every pool, router and server, for /metrics, /healthz and INFO."""
        views = []
        routers = [f.target for f in self.fronts.values() if isinstance(f.target, Router)]
        for pool in [*self.pools.values(), *routers]:
            ok, why = pool.can_serve()
            servers = [
                ServerView(
                    name=s.name,
                    address=str(s.address),
                    state=s.state.value,
                    ejected=s.ejected,
                    ejected_at=s.ejected_at,
                    ejections=s.ejections,
                    connections=s.open_connections(),
                    in_flight=s.in_flight(),
                    out_queue=s.out_queue(),
                    stats=s.stats,
                    dedicated=s.dedicated_open,
                    dedicated_idle=s.dedicated_idle(),
                )
                for s in pool.servers
            ]
            cluster = None
            if isinstance(pool, ClusterPool):
                cluster = ClusterView(
                    moved=pool.moved,
                    asks=pool.asks,
                    tryagain=pool.tryagain,
                    clusterdown=pool.clusterdown,
                    refreshes=pool.refreshes,
                    refresh_failures=pool.refresh_failures,
                    refresh_seconds_total=pool.refresh_seconds_total,
                    map_age_seconds=time.time() - pool.map_updated_at if pool.map_updated_at else -1.0,
                    slots_served=pool.slots_served(),
                )
            sentinel = None
            if isinstance(pool, SentinelPool):
                sentinel = SentinelView(
                    switches=pool.switches,
                    holds=pool.holds,
                    hold_timeouts=pool.hold_timeouts,
                    readonly_retries=pool.readonly_retries,
                    discovery_failures=pool.discovery_failures,
                    master_known=pool.master is not None,
                )
            front = self.fronts.get(pool.name)
            views.append(
                PoolView(
                    name=pool.name,
                    listen=str(front.listen) if front else "-",
                    distribution=pool.config.distribution,
                    clients=len(self.clients.get(pool.name, ())),
                    stats=pool.stats,
                    blocked=sum(1 for c in self.clients.get(pool.name, ()) if c.blocked),
                    subscribers=sum(1 for c in self.clients.get(pool.name, ()) if c.subscriptions),
                    subscriptions=sum(c.subscriptions for c in self.clients.get(pool.name, ())),
                    servers=servers,
                    can_serve=ok,
                    why_not=why,
                    cluster=cluster,
                    sentinel=sentinel,
                )
            )
        return Snapshot(
            version=__version__,
            uptime_seconds=time.time() - self.started,
            pools=views,
            reloads=self.reloads,
            reload_failures=self.reload_failures,
            last_reload_ok=self.last_reload_ok,
            config_loaded_at=self.config_loaded_at,
            buffered_bytes=self.budget.used,
            max_buffered_bytes=self.budget.max_bytes,
            buffer_pauses=self.budget.pauses,
        )

    def info(self, section: str | None) -> bytes:
        return info_text(self.snapshot(), section, os.getpid())

    # --- reload (SIGHUP) -----------------------------------------------------------------

    async def reload(self) -> bool:
        """Apply the config file as it is now; False (old config kept) if it is rejected."""
        async with self._reload_lock:
            if self.stopping:
                return False
            try:
                new = load(self.config.path)
                if new.metrics_listen is None and self.config.metrics_listen is not None:
                    # from --metrics (or removed from the file): kept until a restart
                    new = dataclasses.replace(
                        new,
                        metrics_listen=self.config.metrics_listen,
                        metrics_tls=self.config.metrics_tls,
                        metrics_token=self.config.metrics_token,
                    )
                await self._apply(new)
            except (ConfigError, OSError) as exc:
                self.reload_failures += 1
                self.last_reload_ok = False
                log.error("reload rejected, the running config stays: %s", exc)
                return False
            self.reloads += 1
            self.last_reload_ok = True
            self.config_loaded_at = time.time()
            return True

    async def _apply(self, new: Config) -> None:
        cur = self.config
        if (new.metrics_listen, new.metrics_tls, new.metrics_token) != (
            cur.metrics_listen,
            cur.metrics_tls,
            cur.metrics_token,
        ):
            raise ConfigError(f"{new.path}: key 'metrics': changing it needs a restart")
        old_pcs = {pc.name: pc for pc in self.config.pools}
        pools: dict[str, Pool] = {}
        in_place: list[tuple[RingPool, RingPoolConfig]] = []
        reconfigured: list[tuple[PoolBase, PoolConfig]] = []
        fresh: list[Pool] = []
        for pc in new.pools:
            current, before = self.pools.get(pc.name), old_pcs.get(pc.name)
            # what the pool's clients see (users, TLS to them) changes nothing on the servers' side
            front_only = (
                dataclasses.replace(before, users=pc.users, tls=pc.tls)
                if before is not None and type(before) is type(pc)
                else None
            )
            if isinstance(current, PoolBase) and front_only == pc:
                pools[pc.name] = current
                if before != pc:
                    reconfigured.append((current, pc))  # its clients get the new users at commit
            elif (
                isinstance(current, RingPool)
                and front_only is not None
                and isinstance(pc, RingPoolConfig)
                and dataclasses.replace(front_only, servers=pc.servers) == pc
            ):
                pools[pc.name] = current  # only its server list changed: updated in place
                in_place.append((current, pc))
            else:
                pool = self._pool(pc)
                if current is not None:
                    pool.stats = current.stats  # the pool's counters carry on
                pools[pc.name] = pool
                fresh.append(pool)
        check_tls(new)  # (the files as they are now: a rotated one is read again below)
        if self._metrics_ssl is not None and new.metrics_tls is not None:
            # the endpoint's context, in place: its next handshakes get the files as they are now
            self._metrics_ssl.load_cert_chain(new.metrics_tls.cert_file, new.metrics_tls.key_file)
        fronts = self._fronts(new, pools, self.fronts)
        # The clients as they are now: a front whose address moves closes these, not the ones
        # its new socket (same name, same set) accepts while the reload runs.
        connected = {name: list(group) for name, group in self.clients.items()}
        # Open the new sockets first: if one cannot, nothing has changed.
        opened: list[_Front] = []
        try:
            for name, front in fronts.items():
                old = self.fronts.get(name)
                if old is not None and old.listen == front.listen:
                    continue
                front.socket = await self._listen(front)
                opened.append(front)
        except OSError:
            for front in opened:
                if front.socket is not None:
                    front.socket.close()
            for pool in fresh:
                pool.close()
            raise
        # Commit.
        tls.forget_server_contexts()
        for kept, pc in reconfigured:
            kept.config = pc
        for ring, pc in in_place:
            ring.set_servers(pc)
        for pool in fresh:
            pool.start()
        for name, front in list(fronts.items()):
            old = self.fronts.get(name)
            if old is not None and old.listen == front.listen:
                # The front whose address stays is kept as the one object its socket's factory
                # reads: only its target is swapped, so every later reload swaps it again
                # (a factory left holding a replaced front handed out a retired pool).
                old.target = front.target
                old.backlog = front.backlog
                old.tls, old.ssl = front.tls, front.ssl  # new handshakes: the files as they are now
                fronts[name] = old
                for client in self.clients.get(name, ()):
                    client.set_pool(front.target)
        for name, old in self.fronts.items():
            new_front = fronts.get(name)
            if new_front is None or new_front.listen != old.listen:
                if old.socket is not None:
                    old.socket.close()
                moved_on = new_front.socket if new_front else None
                for client in connected.get(name, ()):
                    client.begin_shutdown()
                if moved_on is None:
                    self.clients.pop(name, None)
        for name, pool in self.pools.items():
            if pools.get(name) is not pool:
                self._retire(pool)
        added = sorted(set(fronts) - set(self.fronts))
        removed = sorted(set(self.fronts) - set(fronts))
        changed = sorted(
            n
            for n in set(pools) & set(self.pools)
            if old_pcs.get(n) != next((pc for pc in new.pools if pc.name == n), None)
        )
        self.pools = pools
        self.fronts = fronts
        self.config = new
        self.budget.max_bytes = new.max_buffered_bytes
        log.info(
            "reload accepted: added %s, removed %s, pools changed %s",
            added or "none",
            removed or "none",
            changed or "none",
        )

    def _retire(self, pool: Pool) -> None:
        """Close a pool that is out of use once its pending requests are answered (bounded)."""

        async def retire() -> None:
            deadline = self._loop.time() + pool.config.timeout_ms / 1000.0 + 1.0
            while self._loop.time() < deadline and any(s.in_flight() for s in pool.servers):
                await asyncio.sleep(RETIRE_POLL_S)
            pool.close()

        task = self._loop.create_task(retire())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- shutdown ------------------------------------------------------------------------

    async def shutdown(self, drain_s: float = DRAIN_S) -> None:
        """Stop accepting, drain owed replies within ``drain_s``, close everything."""
        self.stopping = True
        for front in self.fronts.values():
            if front.socket is not None:
                front.socket.close()
        clients = [c for group in self.clients.values() for c in group]
        log.info("shutting down: draining %d client(s)", len(clients))
        for client in clients:
            client.begin_shutdown()
        if any(self.clients.values()):
            try:
                async with asyncio.timeout(drain_s):
                    await self._drained.wait()
            except TimeoutError:
                left = [c for group in self.clients.values() for c in group]
                log.warning("drain deadline passed: closing %d client(s) with replies owed", len(left))
                for client in left:
                    client.abort()
        for task in list(self._tasks):
            task.cancel()
        for pool in self.pools.values():
            pool.close()
        if self._metrics is not None:
            self._metrics.close()
        for front in self.fronts.values():
            if front.socket is not None:
                await front.socket.wait_closed()


def check_tls(config: Config) -> None:
    """Every TLS setting can be used: its files load (ConfigError naming it if not)."""
    fronts: list[tuple[str, TlsConfig | None]] = [(f"pool '{pc.name}'", pc.tls) for pc in config.pools]
    fronts += [(f"listener '{lc.name}'", lc.tls) for lc in config.listeners]
    fronts.append(("metrics", config.metrics_tls))
    for who, cfg in fronts:
        if cfg is not None:
            try:
                tls.front_context(cfg)
            except tls.TlsSetupError as exc:
                raise ConfigError(f"{who}: {exc}") from None
    for pc in config.pools:
        for key in ("server_tls", "sentinel_tls"):
            cfg = getattr(pc, key, None)
            if cfg is not None:
                try:
                    tls.build_server_context(cfg)
                except tls.TlsSetupError as exc:
                    raise ConfigError(f"pool '{pc.name}': key '{key}': {exc}") from None


async def serve(config: Config) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly; SIGHUP reloads the config."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = ProxyServer(config)
    await server.start()
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    await server.shutdown()
    # Stopped cleanly: a second SIGTERM/SIGINT from here on (a supervisor repeating itself) must
    # not kill the process by the default action while the loop closes (exit code -15, not 0).
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    log.info("resproxy stopped")
