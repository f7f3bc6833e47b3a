"""A ring pool: twemproxy's consistent hashing over plain redis-servers, and the base every
pool kind shares.

``RingPool.route(key)`` hashes the key (hash tag applied) with the pool's twemproxy hash and
looks it up in the continuum (ring.py) over the servers that are not ejected: the C ketama
route (``_speedups.KetamaRoute``) when it applies, else its Python twin. Servers leave the
continuum when ejected and come back when a probe answers (upstream.py); multi-key commands
are split per server by the C kernel (``KetamaRoute.split``, via ``split_command``) or
``group_keys``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from proxy import errors
from proxy.config import PoolConfig, RingPoolConfig, ServerConfig
from proxy.hashing import hash_function, hash_tag_key
from proxy.metrics import PoolStats
from proxy.ring import Continuum, RingServer, build
from proxy.target import Parts, Placement, Route, Target, shown_key
from proxy.upstream import Server, ServerState, describe


class PoolBase:
    """What every pool kind shares: its config and counters, a readiness event, and defaults
    (reads route like writes, keys are not rewritten, nothing to do on a lost server)."""

    route_read: Route | None = None
    strips = False

    def __init__(self, config: PoolConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.name = config.name
        self.stats = PoolStats()
        self._loop = loop
        self._ready = asyncio.Event()  # set once the pool knows where its servers are

    async def ready(self, timeout_s: float) -> bool:
        """Wait (bounded) until the pool knows where its servers are."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    def strip(self, key: bytes) -> bytes:
        return key

    def rebuild(self) -> None:
        pass  # only a ring pool takes servers out itself (ejection)

    def server_lost(self, server: Server) -> None:
        pass

    def settle(self, then: Callable[[], None]) -> None:
        then()  # only a sentinel pool holds requests (during a failover)

    def map_changed(self) -> None:
        pass  # only cluster and sentinel pools learn where keys live


class RingPool(PoolBase):
    """A twemproxy-style pool: servers on a consistent-hash (or modula/random) continuum."""

    unrouted = errors.no_server_for_key()
    config: RingPoolConfig

    def __init__(self, config: RingPoolConfig, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(config, loop)
        self._ready.set()  # servers are in the config; they connect on demand or preconnect
        self._hash = hash_function(config.hash)
        self._tag = config.hash_tag
        self.servers = [Server(self, i, s, loop) for i, s in enumerate(_ordered(config))]
        self._many = len(self.servers) > 1
        self._continuum: Continuum | None = None
        self._ketama: Any = None  # _speedups.KetamaRoute over the continuum, when it applies
        self.route: Route = lambda key: None
        self.rebuild()

    def start(self) -> None:
        if self.config.preconnect:
            for server in self.servers:
                server.connect_all()

    def set_servers(self, config: RingPoolConfig) -> None:
        """A reload changed only the server list: servers that stay keep their connections.

        Added servers join, removed ones leave the ring at once and close when their pending
        requests are answered, reweighted ones stay; the continuum is rebuilt.
        """
        keep = {(s.name, s.address): s for s in self.servers}
        servers = []
        for i, sc in enumerate(_ordered(config)):
            server = keep.pop((sc.name, sc.address), None)
            if server is None:
                server = Server(self, i, sc, self._loop)
            server.index = i
            server.config = sc
            server.weight = sc.weight
            servers.append(server)
        self.config = config
        self.servers = servers
        self._many = len(servers) > 1
        self.rebuild()
        for gone in keep.values():
            gone.retire(config.timeout_ms / 1000.0)
        self.start()

    def can_serve(self) -> tuple[bool, str]:
        live = [s for s in self.servers if not s.ejected]
        if not live:
            return False, "every server is ejected"
        down = [s.name for s in live if s.state is ServerState.DOWN]
        if down:
            return False, f"server(s) down: {', '.join(down)}"
        return True, ""

    def rebuild(self) -> None:
        """Rebuild the continuum over the servers that are not ejected."""
        live = [RingServer(s.index, s.name, s.weight) for s in self.servers if not s.ejected]
        self._continuum = build(self.config.distribution, live) if live else None
        self.route = self._make_route(self._continuum)

    def _make_route(self, continuum: Continuum | None) -> Route:
        """``route(key)``: the server that owns ``key``, or None when every server is ejected.

        Built once per continuum as a closure over its arrays (or the C router): this runs for
        every request.
        """
        servers = self.servers
        self._ketama = None
        if continuum is None:
            return lambda key: None
        if not self._many or continuum.distribution == "random":
            # twemproxy hashes to 0 with a single server (server_pool_hash); random ignores it.
            return lambda key: servers[continuum.dispatch(0)]
        hash_key = self._hash
        tag = self._tag
        self._ketama = continuum.c_router(self.config.hash, tag, servers)
        if self._ketama is not None:
            route: Route = self._ketama.route
            return route
        if continuum.distribution == "ketama":
            return continuum.ketama_route(self.config.hash, tag, servers)

        def route_modula(key: bytes) -> Server | None:
            if tag:
                key = hash_tag_key(key, tag)
            return servers[continuum.dispatch(hash_key(key) if key else 0)]

        return route_modula

    def place(self, keys: Sequence[bytes]) -> Placement | str:
        """The one server of ``keys`` (any live one for no key), or an error naming two."""
        if not keys:
            live = [s for s in self.servers if not s.ejected]
            if not live:
                return self.unrouted
            return Placement(self, live[0])
        route = self.route
        first = route(keys[0])
        if not isinstance(first, Server):
            return self.unrouted
        for key in keys[1:]:
            other = route(key)
            if other is not first:
                if not isinstance(other, Server):
                    return self.unrouted
                return errors.cross_place(
                    shown_key(keys[0]), describe(first), shown_key(key), describe(other), "server"
                )
        return Placement(self, first)

    def keyspace_servers(self, replicas: bool = False) -> list[Server] | str:
        """Every server holding part of the keyspace, in the pool's order (SCAN, KEYS...)."""
        return list(self.servers)

    def pattern_servers(self) -> list[Server] | str:
        """Where a PSUBSCRIBE goes: every server a matching channel could live on."""
        return list(self.servers)

    def route_many(self, keys: list[bytes], read: bool = False) -> Target | None | str:
        route = self.route
        server = route(keys[0])
        for key in keys[1:]:
            if route(key) is not server:
                return errors.CROSS_SERVER
        return server

    def split_command(self, args: list[bytes]) -> Parts | None:
        """MGET/MSET/DEL-like ``args`` split per server with encoded sub-commands (C kernel).

        None when the kernel does not apply; the client then splits with ``group_keys``.
        """
        ketama = self._ketama  # None: the Python twins (or no ketama) and group_keys splits
        if ketama is None or not self._many:
            return None
        parts: Parts = ketama.split(args, 2 if args[0] == b"MSET" else 1)
        return parts

    def group_keys(self, keys: list[bytes], read: bool = False) -> Sequence[tuple[Target | None, list[int]]]:
        """Key positions grouped by owning server, first-seen order (MGET/MSET/DEL fan-out)."""
        continuum = self._continuum
        if continuum is None or not self._many or continuum.distribution == "random":
            groups: dict[Target | None, list[int]] = {}
            for pos, key in enumerate(keys):
                groups.setdefault(self.route(key), []).append(pos)
            return list(groups.items())
        servers = self.servers
        return [
            (servers[i], positions) for i, positions in continuum.group(keys, self._tag, self.config.hash)
        ]

    def close(self) -> None:
        for server in self.servers:
            server.close()


def _ordered(config: PoolConfig) -> list[ServerConfig]:
    # twemproxy sorts a pool's servers by name (conf_validate_server: shorter names first, then
    # bytewise) and indexes them in that order; modula and random placement, and ketama ties,
    # depend on it.
    return sorted(config.servers, key=lambda s: (len(s.name.encode()), s.name.encode()))
