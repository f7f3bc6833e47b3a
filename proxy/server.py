"""The composition root: builds pools, listeners and the metrics endpoint from the config.

Only this module wires objects together: it creates the shared ``Flusher``, one ``RingPool`` or
``ClusterPool`` per pool, a listener per pool whose protocol factory hands each
``ClientConnection`` its pool (and the INFO text source), and the ``/metrics`` + ``/healthz``
endpoint, which reads a ``metrics.Snapshot`` built here at scrape time.

Shutdown (SIGTERM/SIGINT): stop accepting, let every client's owed replies go out within
``drain_s`` seconds, then close clients and server connections.

Reload (SIGHUP): the config file is read again. A config that fails validation, or whose new
listeners cannot open, is rejected with a log line and the running one keeps serving. Otherwise,
per pool: unchanged pools are left alone; a ring pool whose only change is its server list
(added, removed, reweighted servers) is updated in place, keeping its connections to the servers
that stay; any other change builds a new pool and moves the pool's existing clients onto it
(their connections stay open; the old pool closes once its requests are answered); new pools
start listening; removed pools stop listening and their clients are closed after their replies.

Imports: config, pool, cluster, client, inflight, metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time

from proxy import __version__
from proxy.client import ClientConnection, ClientLimits
from proxy.cluster import ClusterPool
from proxy.config import Config, ConfigError, PoolConfig, load
from proxy.inflight import Flusher
from proxy.metrics import ClusterView, PoolView, ServerView, Snapshot, info_text, serve_http
from proxy.pool import Pool, RingPool

log = logging.getLogger(__name__)

DRAIN_S = 5.0
RETIRE_POLL_S = 0.05


class ProxyServer:
    """Every pool and listener of one config, in one event loop."""

    def __init__(self, config: Config, limits: ClientLimits | None = None) -> None:
        self.config = config
        self._loop = asyncio.get_running_loop()
        self._flusher = Flusher(self._loop.call_soon)
        self._limits = limits or ClientLimits()
        self.pools: dict[str, Pool] = {p.name: self._pool(p) for p in config.pools}
        self.clients: dict[str, set[ClientConnection]] = {p.name: set() for p in config.pools}
        self._listeners: dict[str, asyncio.AbstractServer] = {}
        self._metrics: asyncio.AbstractServer | None = None
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
        return ClusterPool(pc, self._loop) if pc.cluster else RingPool(pc, self._loop)

    async def start(self) -> None:
        """Open every listener; servers are connected now when ``preconnect`` says so.

        A cluster pool first learns its slot map, waiting at most its ``timeout``; if no seed
        answers by then it listens anyway (keys get ``-CLUSTERDOWN`` until the map arrives).
        """
        for pool in self.pools.values():
            pool.start()
        for pc in self.config.pools:
            await self._ready(self.pools[pc.name])
            self._listeners[pc.name] = await self._listen(pc)
            log.info("resproxy ready: pool %s listening on %s", pc.name, pc.listen)
        await self._start_metrics(self.config)

    async def _ready(self, pool: Pool) -> None:
        if not await pool.ready(pool.config.timeout_ms / 1000.0):
            log.warning("pool %s: no slot map yet; listening anyway, still trying", pool.name)

    async def _start_metrics(self, config: Config) -> None:
        addr = config.metrics_listen
        if addr is None:
            return
        self._metrics = await serve_http(addr.host, addr.port, self.snapshot)
        log.info("metrics on http://%s/metrics and /healthz", addr)

    async def _listen(self, pc: PoolConfig) -> asyncio.AbstractServer:
        name = pc.name
        clients = self.clients.setdefault(name, set())

        def on_open(client: ClientConnection) -> bool:
            pool = self.pools[name]
            pool.stats.connections_total += 1
            limit = pool.config.client_connections
            if self.stopping or (limit and len(clients) >= limit):
                pool.stats.connections_rejected += 1
                return False
            clients.add(client)
            return True

        def on_close(client: ClientConnection) -> None:
            clients.discard(client)
            if self.stopping and not any(self.clients.values()):
                self._drained.set()

        def factory() -> ClientConnection:  # the pool as it is now (a reload may replace it)
            return ClientConnection(
                self.pools[name], self._flusher, self._limits, on_open, on_close, self.info
            )

        addr = pc.listen
        if addr.unix_path:
            if os.path.exists(addr.unix_path):
                os.unlink(addr.unix_path)
            server = await self._loop.create_unix_server(
                factory, addr.unix_path, backlog=pc.backlog
            )
            if addr.unix_mode is not None:
                os.chmod(addr.unix_path, addr.unix_mode)
            return server
        return await self._loop.create_server(
            factory, addr.host, addr.port, backlog=pc.backlog, reuse_address=True
        )

    # --- what metrics and INFO read ------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Plain data of every pool and server, for /metrics, /healthz and INFO."""
        pools = []
        for name, pool in self.pools.items():
            ok, why = pool.can_serve()
            servers = [
                ServerView(
                    name=s.name, address=str(s.address), state=s.state.value, ejected=s.ejected,
                    ejected_at=s.ejected_at, ejections=s.ejections,
                    connections=s.open_connections(), in_flight=s.in_flight(),
                    out_queue=s.out_queue(), stats=s.stats,
                )  # fmt: skip
                for s in pool.servers
            ]
            cluster = None
            if isinstance(pool, ClusterPool):
                cluster = ClusterView(
                    moved=pool.moved, asks=pool.asks, tryagain=pool.tryagain,
                    clusterdown=pool.clusterdown, refreshes=pool.refreshes,
                    refresh_failures=pool.refresh_failures,
                    refresh_seconds_total=pool.refresh_seconds_total,
                    map_age_seconds=time.time() - pool.map_updated_at
                    if pool.map_updated_at else -1.0,
                    slots_served=pool.slots_served(),
                )  # fmt: skip
            pools.append(PoolView(
                name=name, listen=str(pool.config.listen), distribution=pool.config.distribution,
                clients=len(self.clients.get(name, ())), stats=pool.stats, servers=servers,
                can_serve=ok, why_not=why, cluster=cluster,
            ))  # fmt: skip
        return Snapshot(
            version=__version__, uptime_seconds=time.time() - self.started, pools=pools,
            reloads=self.reloads, reload_failures=self.reload_failures,
            last_reload_ok=self.last_reload_ok, config_loaded_at=self.config_loaded_at,
        )  # fmt: skip

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
                    new = dataclasses.replace(new, metrics_listen=self.config.metrics_listen)
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
        if new.metrics_listen != self.config.metrics_listen:
            raise ConfigError(f"{new.path}: key 'metrics': changing it needs a restart")
        old = {pc.name: pc for pc in self.config.pools}
        wanted = {pc.name: pc for pc in new.pools}
        relisten = {n for n in wanted if n in old and wanted[n].listen != old[n].listen}
        added = [pc for n, pc in wanted.items() if n not in old or n in relisten]
        removed = [n for n in old if n not in wanted]
        changed = [n for n in wanted if n in old and n not in relisten and old[n] != wanted[n]]
        previous = {pc.name: self.pools.get(pc.name) for pc in added}
        old_clients = {n: set(self.clients.get(n, ())) for n in relisten}
        fresh = {pc.name: self._pool(pc) for pc in added}
        for name in relisten:
            fresh[name].stats = self.pools[name].stats  # counters carry on
        # Open the new listeners first: if one cannot, nothing has changed.
        opened: dict[str, asyncio.AbstractServer] = {}
        try:
            for pc in added:
                self.pools[pc.name] = fresh[pc.name]  # what the new listener's clients get
                opened[pc.name] = await self._listen(pc)
        except OSError:
            for listener in opened.values():
                listener.close()
            for pc in added:
                prev = previous[pc.name]
                if prev is None:
                    self.pools.pop(pc.name, None)
                else:
                    self.pools[pc.name] = prev
                fresh[pc.name].close()
            raise
        for pc in added:
            fresh[pc.name].start()
            prev_listener = self._listeners.get(pc.name)
            self._listeners[pc.name] = opened[pc.name]
            prev = previous[pc.name]
            if prev is not None:  # moved to a new address: the old listener and its clients go
                if prev_listener is not None:
                    prev_listener.close()
                for client in old_clients[pc.name]:
                    client.begin_shutdown()
                self._retire(prev)
        for name in removed:
            gone = self._listeners.pop(name, None)
            if gone is not None:
                gone.close()
            for client in list(self.clients.get(name, ())):
                client.begin_shutdown()
            self._retire(self.pools.pop(name))
        for name in changed:
            self._change_pool(self.pools[name], wanted[name])
        self.config = new
        log.warning(
            "reload accepted: pools added %s, removed %s, changed %s",
            sorted(n for n in wanted if n not in old) or "none", sorted(removed) or "none",
            sorted(changed + sorted(relisten)) or "none",
        )

    def _change_pool(self, pool: Pool, pc: PoolConfig) -> None:
        if isinstance(pool, RingPool) and not pc.cluster and (
            dataclasses.replace(pool.config, servers=pc.servers) == pc
        ):
            pool.set_servers(pc)  # only the server list changed: in place
            return
        fresh = self._pool(pc)
        fresh.stats = pool.stats  # the pool's counters carry on across the change
        fresh.start()
        self.pools[pc.name] = fresh
        for client in self.clients.get(pc.name, ()):
            client.set_pool(fresh)
        self._retire(pool)

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
        for listener in self._listeners.values():
            listener.close()
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
        for listener in self._listeners.values():
            await listener.wait_closed()


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
    log.info("resproxy stopped")
