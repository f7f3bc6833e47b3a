"""The composition root: builds pools and listeners from the config and runs them.

Only this module wires objects together: it creates the shared ``Flusher``, one ``RingPool`` or ``ClusterPool``
per pool, and a listener per pool whose protocol factory hands each ``ClientConnection`` its pool.

Shutdown (SIGTERM/SIGINT): stop accepting, let every client's owed replies go out within
``drain_s`` seconds, then close clients and server connections.

Imports: config, pool, cluster, client, inflight.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from proxy.client import ClientConnection, ClientLimits
from proxy.cluster import ClusterPool
from proxy.config import Config, PoolConfig
from proxy.inflight import Flusher
from proxy.pool import Pool, RingPool

log = logging.getLogger(__name__)

DRAIN_S = 5.0


class ProxyServer:
    """Every pool and listener of one config, in one event loop."""

    def __init__(self, config: Config, limits: ClientLimits | None = None) -> None:
        self.config = config
        self._loop = asyncio.get_running_loop()
        self._flusher = Flusher(self._loop.call_soon)
        self._limits = limits or ClientLimits()
        self.pools: dict[str, Pool] = {p.name: self._pool(p) for p in config.pools}
        self.clients: dict[str, set[ClientConnection]] = {p.name: set() for p in config.pools}
        self._listeners: list[asyncio.AbstractServer] = []
        self._drained = asyncio.Event()
        self.stopping = False
        # counters for metrics
        self.connections_total = 0
        self.connections_rejected = 0

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
            pool = self.pools[pc.name]
            if not await pool.ready(pc.timeout_ms / 1000.0):
                log.warning("pool %s: no slot map yet; listening anyway, still trying", pc.name)
            self._listeners.append(await self._listen(pc, pool))
            log.info("resproxy ready: pool %s listening on %s", pc.name, pc.listen)

    async def _listen(self, pc: PoolConfig, pool: Pool) -> asyncio.AbstractServer:
        clients = self.clients[pc.name]
        limit = pc.client_connections

        def on_open(client: ClientConnection) -> bool:
            self.connections_total += 1
            if self.stopping or (limit and len(clients) >= limit):
                self.connections_rejected += 1
                return False
            clients.add(client)
            return True

        def on_close(client: ClientConnection) -> None:
            clients.discard(client)
            if self.stopping and not any(self.clients.values()):
                self._drained.set()

        def factory() -> ClientConnection:
            return ClientConnection(pool, self._flusher, self._limits, on_open, on_close)

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

    async def shutdown(self, drain_s: float = DRAIN_S) -> None:
        """Stop accepting, drain owed replies within ``drain_s``, close everything."""
        self.stopping = True
        for listener in self._listeners:
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
        for pool in self.pools.values():
            pool.close()
        for listener in self._listeners:
            await listener.wait_closed()


async def serve(config: Config) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = ProxyServer(config)
    await server.start()
    await stop.wait()
    await server.shutdown()
    log.info("resproxy stopped")
