"""A listener's router: keys routed by prefix to several pools, writes optionally mirrored.

A ``listeners:`` entry gets one ``Router``, which client connections use as their pool:

* **Routes.** The longest ``prefix`` that starts the key wins; ``default_pool`` takes the rest,
  else the key gets ``-ERR no route ...``. With ``strip_prefix`` the target pool sees (and
  places) the key without the prefix: the client's command is re-encoded with stripped keys.
* **Multi-key commands.** MGET/MSET/DEL/UNLINK/EXISTS/TOUCH are grouped per route and then by
  each pool's own grouping (servers, cluster slots) and merged as usual; other multi-key
  commands must stay within one route (then the pool's own rule applies), else
  ``-CROSSSLOT Keys in request don't hash to the same route``.
* **Mirroring.** A route with ``mirror: POOL`` sends a copy of every write (``mirror_mode:
  writes``, by Redis's command flags) or every command (``all``) to that pool, fire-and-forget:
  the copy's reply is only counted (``mirror_sent``/``mirror_errors``), never waited for, and
  copies are dropped (counted) while the mirror server has ``MIRROR_MAX_IN_FLIGHT`` pending.
  The primary's reply never depends on the mirror.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from proxy import errors
from proxy.config import ListenerConfig, PoolConfig
from proxy.inflight import ReplySlot
from proxy.metrics import PoolStats
from proxy.target import Placement, Pool, Route, Target, shown_key
from proxy.upstream import Server

MIRROR_MAX_IN_FLIGHT = 10_000


@dataclass(frozen=True, slots=True)
class _Route:
    prefix: bytes
    pool: Pool
    strip: bool
    mirror: Pool | None
    mirror_all: bool


class _MirrorSink:
    """Counts the mirror's replies; nobody waits for them."""

    __slots__ = ("stats",)

    def __init__(self, stats: PoolStats) -> None:
        self.stats = stats

    def slot_done(self, slot: ReplySlot) -> None:
        data = slot.data
        if data is not None and data[:1] in (b"-", b"!"):
            self.stats.mirror_errors += 1


class _Mirrored:
    """A target that sends to the primary and a copy to the mirror."""

    __slots__ = ("primary", "mirror", "router")
    direct: Callable[[bytes, ReplySlot], None] | None = None  # every request is copied too (target.Target)

    def __init__(self, primary: Target, mirror: Target | None, router: Router) -> None:
        self.primary = primary
        self.mirror = mirror
        self.router = router

    def send(self, payload: bytes, slot: ReplySlot, *, resp3: bool = False, lane: int = 0) -> None:
        self.primary.send(payload, slot, resp3=resp3, lane=lane)
        self.router.copy(self.mirror, payload)


class _Unserved:
    """A target for a key whose pool has no server for it: fails with that pool's words."""

    __slots__ = ("text",)
    direct: Callable[[bytes, ReplySlot], None] | None = None  # (target.Target)

    def __init__(self, text: str) -> None:
        self.text = text

    def send(self, payload: bytes, slot: ReplySlot, *, resp3: bool = False, lane: int = 0) -> None:
        slot.fail(self.text)


class Router:
    """Looks like a pool to client connections; routes each key to one of several pools."""

    route_read: Route | None

    def __init__(self, config: ListenerConfig, pools: Mapping[str, Pool]) -> None:
        self.listener = config
        self.name = config.name
        used = {r.pool for r in config.routes} | ({config.default_pool} - {None})
        self.config = PoolConfig(
            name=config.name,
            listen=config.listen,
            servers=(),
            distribution="router",
            timeout_ms=max(pools[str(n)].config.timeout_ms for n in used),
            backlog=config.backlog,
            client_connections=config.client_connections,
            redis_auth=config.redis_auth,
            client_limits=config.client_limits,
            deny_commands=config.deny_commands,
            allow_monitor=config.allow_monitor,
            users=config.users,
        )
        self.stats = PoolStats()
        self.servers: list[Server] = []  # each pool reports its own servers
        self.unrouted = errors.no_route(config.name)
        # longest prefix first, so the first match is the longest
        self._routes = sorted(
            (
                _Route(
                    r.prefix,
                    pools[r.pool],
                    r.strip_prefix,
                    pools[r.mirror] if r.mirror else None,
                    r.mirror_mode == "all",
                )
                for r in config.routes
            ),
            key=lambda r: -len(r.prefix),
        )
        self._default = (
            _Route(b"", pools[config.default_pool], False, None, False) if config.default_pool else None
        )
        self._targets = [r.pool for r in self._routes] + ([self._default.pool] if self._default else [])
        self.strips = any(r.strip for r in self._routes)
        self._sink = _MirrorSink(self.stats)
        self.route: Route = self._route_write
        mirrors = any(r.mirror is not None for r in self._routes)
        replicas = any(p.route_read is not None for p in self._targets)
        self.route_read = self._route_read if mirrors or replicas else None

    # --- routing -------------------------------------------------------------------------

    def _match(self, key: bytes) -> _Route | None:
        for r in self._routes:
            if key.startswith(r.prefix):
                return r
        return self._default

    def strip(self, key: bytes) -> bytes:
        r = self._match(key)
        return key[len(r.prefix) :] if r is not None and r.strip else key

    def _target(self, r: _Route, key: bytes, read: bool) -> Target | None:
        pool = r.pool
        k = key[len(r.prefix) :] if r.strip else key
        route = pool.route_read if read and pool.route_read is not None else pool.route
        found = route(k)
        if found is None:
            return _Unserved(pool.unrouted)
        return self._mirrored(r, found, [k], read)

    def _mirrored(self, r: _Route, found: Target, keys: list[bytes], read: bool) -> Target:
        if r.mirror is None or (read and not r.mirror_all):
            return found
        mirror = r.mirror.route_many(keys, False) if len(keys) > 1 else r.mirror.route(keys[0])
        return _Mirrored(found, mirror if not isinstance(mirror, str) else None, self)

    def _route_write(self, key: bytes) -> Target | None:
        r = self._match(key)
        return None if r is None else self._target(r, key, False)

    def _route_read(self, key: bytes) -> Target | None:
        r = self._match(key)
        return None if r is None else self._target(r, key, True)

    def route_many(self, keys: list[bytes], read: bool = False) -> Target | None | str:
        r = self._match(keys[0])
        for key in keys[1:]:
            if self._match(key) is not r:
                return errors.CROSS_ROUTE
        if r is None:
            return None
        stripped = [k[len(r.prefix) :] for k in keys] if r.strip else keys
        found = r.pool.route_many(stripped, read)
        if found is None:
            return _Unserved(r.pool.unrouted)
        if isinstance(found, str):
            return found
        return self._mirrored(r, found, stripped, read)

    def split_command(self, args: list[bytes]) -> None:
        return None  # grouped by route, then by each pool (group_keys)

    def place(self, keys: Sequence[bytes]) -> Placement | str:
        """Where a transaction's keys live: one route, then its pool's own rule."""
        if not keys:
            return self._targets[0].place([]) if self._default is None else self._default.pool.place([])
        r = self._match(keys[0])
        for key in keys[1:]:
            other = self._match(key)
            if other is not r:
                return errors.cross_place(
                    shown_key(keys[0]), self._where(r), shown_key(key), self._where(other), "route"
                )
        if r is None:
            return self.unrouted
        found = r.pool.place([k[len(r.prefix) :] for k in keys] if r.strip else keys)
        if isinstance(found, str):
            return found
        return found

    def _where(self, r: _Route | None) -> str:
        if r is None:
            return "no route"
        if not r.prefix:
            return f"the default pool '{r.pool.name}'"
        return f"route '{r.prefix.decode('utf-8', 'replace')}' (pool '{r.pool.name}')"

    def keyspace_servers(self, replicas: bool = False) -> list[Server] | str:
        """The servers of every pool the routes use, each pool once; refused when a route
        strips its prefix (its keys could not be shown as the client knows them)."""
        stripping = [r for r in self._routes if r.strip]
        if stripping:
            return errors.keyspace_strip_prefix(self.name, stripping[0].prefix.decode("utf-8", "replace"))
        servers: list[Server] = []
        for pool in dict.fromkeys(self._targets):
            found = pool.keyspace_servers(replicas)
            if isinstance(found, str):
                return found
            servers.extend(found)
        return servers

    def pattern_servers(self) -> list[Server] | str:
        """Every pool a pattern could match a channel of: each of them, once."""
        servers: list[Server] = []
        for pool in dict.fromkeys(self._targets):
            found = pool.pattern_servers()
            if isinstance(found, str):
                return found
            servers.extend(s for s in found if s not in servers)
        return servers

    def settle(self, then: Callable[[], None]) -> None:
        then()  # (a transaction settles with its route's pool: Placement.pool)

    def map_changed(self) -> None:
        pass

    def group_keys(self, keys: list[bytes], read: bool = False) -> Sequence[tuple[Target | None, list[int]]]:
        by_route: dict[_Route | None, list[int]] = {}
        for pos, key in enumerate(keys):
            by_route.setdefault(self._match(key), []).append(pos)
        out: list[tuple[Target | None, list[int]]] = []
        for r, positions in by_route.items():
            if r is None:
                out.append((None, positions))
                continue
            sub = [keys[p] for p in positions]
            if r.strip:
                sub = [k[len(r.prefix) :] for k in sub]
            for found, inner in r.pool.group_keys(sub, read):
                target: Target | None = (
                    _Unserved(r.pool.unrouted)
                    if found is None
                    else self._mirrored(r, found, [sub[i] for i in inner], read)
                )
                out.append((target, [positions[i] for i in inner]))
        return out

    def adopt_stats(self, stats: PoolStats) -> None:
        """Keep counting into ``stats`` (the listener's router before a reload)."""
        self.stats = stats
        self._sink.stats = stats

    # --- mirroring -----------------------------------------------------------------------

    def copy(self, mirror: Target | None, payload: bytes) -> None:
        """Send a copy to the mirror, fire-and-forget (dropped, and counted, when it lags)."""
        stats = self.stats
        if mirror is None or (isinstance(mirror, Server) and mirror.in_flight() >= MIRROR_MAX_IN_FLIGHT):
            stats.mirror_dropped += 1
            return
        stats.mirror_sent += 1
        mirror.send(payload, ReplySlot(self._sink))

    # --- the pool interface --------------------------------------------------------------

    def can_serve(self) -> tuple[bool, str]:
        for pool in self._targets:
            ok, why = pool.can_serve()
            if not ok:
                return False, f"pool {pool.name}: {why}"
        return True, ""

    def start(self) -> None:
        pass  # the pools are started by the server

    async def ready(self, timeout_s: float) -> bool:
        return True

    def close(self) -> None:
        pass  # the pools are closed by the server
