"""A cluster pool: plain Redis clients in front of a real Redis Cluster (``distribution: cluster``).

The cluster decides where every key lives; the pool only follows it:

* **Slot map.** Which master (and which replicas) serve each of the 16384 slots is learned with
  ``CLUSTER SLOTS`` from the configured seed nodes, then from the masters it names
  (slotmap.py parses it). ``route(key)`` is ``owners[key_slot(key)]``: CRC16 with ``{}`` tags,
  Redis's own CLUSTER KEYSLOT. One ``Server`` (upstream.py) per node, with its pipelined lanes.
* **Redirections**, taken off the backend connections before any client sees them
  (backend.py hands this pool every ``-MOVED``/``-ASK``/``-TRYAGAIN``/``-CLUSTERDOWN`` reply
  with the request's bytes):
  - ``MOVED slot node``: the slot's owner is updated at once, the request goes to the new
    owner, and one background refresh of the whole map is started (however many MOVED arrive
    together: one refresh; MOVED arriving while it already waits for its answer queue one more);
  - ``ASK slot node``: ``ASKING`` + the request go to that node, back to back on one lane; the
    map is unchanged (the slot is still migrating);
  - ``TRYAGAIN`` / ``CLUSTERDOWN``: the request is sent again to the same node after a short
    backoff (10 ms doubling to 200 ms) while the pool's ``timeout`` allows; then the client
    gets that error.
  A request is redirected at most ``MAX_REDIRECTS`` times, and never past its ``timeout``;
  then a MOVED/ASK becomes ``-ERR too many cluster redirections`` (a plain client cannot act on
  it) and a TRYAGAIN/CLUSTERDOWN is passed on as Redis said it.
* **Refreshes**: every ``cluster_refresh_interval`` ms, at once when a connection to a node is
  lost, and every 250 ms while a slot's master is down (a failover is under way), so a promoted
  replica serves as soon as the cluster says it does. Nodes no longer in the map are closed
  once nothing is pending on them.
* **Replica reads** (``read_from: replica`` or ``prefer_replica``, which behave alike): every
  connection sends ``READONLY``; read-only commands go to one replica of the slot, or to its
  master while that replica is down; writes always go to masters.

Multi-key commands: Redis Cluster runs a multi-key command only when all its keys share a slot
(even two slots of one node give CROSSSLOT), so MGET/MSET/DEL/... are split per slot and
pipelined per node (``group_keys``); other multi-key commands must be single-slot, else Redis's
own ``-CROSSSLOT`` text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Sequence
from functools import partial

from proxy import errors
from proxy.backend import BackendConnection
from proxy.config import Address, ClusterPoolConfig, ServerConfig
from proxy.follow import Redirected, Refresher
from proxy.hashing import key_slot
from proxy.inflight import ReplySlot
from proxy.pool import PoolBase
from proxy.resp import ProtocolError, decode_reply, encode_command, is_error
from proxy.slotmap import SLOTS, Node, SlotMapError, SlotRange, parse_redirect, parse_slots
from proxy.target import Placement, Route, shown_key
from proxy.upstream import Server, ServerState

log = logging.getLogger(__name__)

CLUSTER_SLOTS = encode_command([b"CLUSTER", b"SLOTS"])
MAX_REDIRECTS = 16
DOWN_REFRESH_S = 0.25  # while a slot's master is down
MIN_REFRESH_GAP_S = 0.05  # between back-to-back refreshes asked for by MOVED


class _Waiter:
    """The sink of the pool's own requests (CLUSTER SLOTS): resolves a future."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[bytes]) -> None:
        self.future = future

    def slot_done(self, slot: ReplySlot) -> None:
        if slot.data is not None and not self.future.done():
            self.future.set_result(slot.data)


class ClusterPool(PoolBase):
    """A pool whose servers are the nodes of one Redis Cluster."""

    unrouted = errors.SLOT_UNSERVED

    config: ClusterPoolConfig

    def __init__(self, config: ClusterPoolConfig, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(config, loop)
        self._timeout_s = config.timeout_ms / 1000.0
        self._seeds: list[Node] = [(s.address.host, s.address.port) for s in config.servers]
        self._replica_reads = config.read_from != "master"
        self.servers: list[Server] = []
        self._by_node: dict[Node, Server] = {}
        self._by_name: dict[str, Server] = {}
        # Both lists are updated in place, so the route closures always see the current map.
        self._owners: list[Server | None] = [None] * SLOTS
        self._readers: list[Server | None] = [None] * SLOTS
        self.route: Route = self._make_route()
        self.route_read: Route | None = self._make_read_route() if self._replica_reads else None
        self._asked = False  # the running refresh has sent its CLUSTER SLOTS
        self._refresher = Refresher(loop, self._refresh_once, self._refresh_interval, MIN_REFRESH_GAP_S)
        self._closing = False
        # counters for metrics and INFO (read at scrape time)
        self.moved = 0
        self.asks = 0
        self.tryagain = 0
        self.clusterdown = 0
        self.refreshes = 0
        self.refresh_failures = 0
        self.refresh_seconds_total = 0.0
        self.last_refresh_seconds = 0.0
        self.map_updated_at = 0.0  # time.time() of the last map learned, 0: never

    # --- routing -------------------------------------------------------------------------

    def _make_route(self) -> Route:
        owners = self._owners

        def route(key: bytes) -> Server | None:
            return owners[key_slot(key)]

        return route

    def _reader(self, slot: int) -> Server | None:
        replica = self._readers[slot]
        if replica is not None and replica.state is not ServerState.DOWN:
            return replica
        return self._owners[slot]

    def _make_read_route(self) -> Route:
        reader = self._reader

        def route_read(key: bytes) -> Server | None:
            return reader(key_slot(key))

        return route_read

    def route_many(self, keys: list[bytes], read: bool = False) -> Server | None | str:
        slot = key_slot(keys[0])
        for key in keys[1:]:
            if key_slot(key) != slot:
                return errors.CROSS_SLOT
        return self._reader(slot) if read and self._replica_reads else self._owners[slot]

    def split_command(self, args: list[bytes]) -> None:
        return None  # split per slot by the client with group_keys

    def place(self, keys: Sequence[bytes]) -> Placement | str:
        """The slot (and its master) of ``keys``, any master for no key; else an error naming
        two slots (Redis Cluster runs a transaction only within one slot)."""
        if not keys:
            owner = next((s for s in self._owners if s is not None), None)
            return self.unrouted if owner is None else Placement(self, owner)
        slot = key_slot(keys[0])
        for key in keys[1:]:
            other = key_slot(key)
            if other != slot:
                return errors.cross_place(
                    shown_key(keys[0]),
                    self._slot_where(slot),
                    shown_key(key),
                    self._slot_where(other),
                    "slot",
                )
        owner = self._owners[slot]
        if owner is None:
            return self.unrouted
        return Placement(self, owner)

    def _slot_where(self, slot: int) -> str:
        owner = self._owners[slot]
        return f"slot {slot} ({owner.name if owner is not None else 'no master'})"

    def keyspace_servers(self, replicas: bool = False) -> list[Server] | str:
        """The masters (and, with ``replicas``, the replicas reads go to), by address."""
        servers = {s for s in self._owners if s is not None}
        if replicas:
            servers |= {s for s in self._readers if s is not None}
        if not servers:
            return self.unrouted
        return sorted(servers, key=lambda s: s.node)

    def map_changed(self) -> None:
        self.request_refresh()

    def pattern_servers(self) -> list[Server] | str:
        """One node: the cluster bus brings every PUBLISH to every node."""
        servers = self.keyspace_servers()
        return servers if isinstance(servers, str) else servers[:1]

    def group_keys(self, keys: list[bytes], read: bool = False) -> list[tuple[Server | None, list[int]]]:
        """Key positions grouped by slot (first-seen order), each with the node serving it."""
        groups: dict[int, list[int]] = {}
        for pos, key in enumerate(keys):
            slot = key_slot(key)
            group = groups.get(slot)
            if group is None:
                groups[slot] = [pos]
            else:
                group.append(pos)
        pick = self._reader if read and self._replica_reads else self._owners.__getitem__
        return [(pick(slot), positions) for slot, positions in groups.items()]

    # --- redirections --------------------------------------------------------------------

    def _on_redirect(self, conn: BackendConnection, slot: ReplySlot, payload: bytes, raw: bytes) -> None:
        now = self._loop.time()
        slot, retry = Redirected.track(slot, now, self._timeout_s)
        replied = self._by_name.get(conn.server_name)
        if retry.attempts > MAX_REDIRECTS or now >= retry.deadline or replied is None:
            if raw.startswith((b"-MOVED ", b"-ASK ")):  # meaningless to a non-cluster client
                slot.fail(errors.too_many_redirects(raw[1:].strip().decode("utf-8", "replace")))
            else:
                slot.complete(raw)  # TRYAGAIN / CLUSTERDOWN: Redis's own words
            return
        redirect = parse_redirect(raw, replied.node)
        if redirect is None:  # TRYAGAIN (keys of a migrating slot) or CLUSTERDOWN
            down = raw.startswith(b"-CLUSTERDOWN")
            if down:
                self.request_refresh()
            delay = retry.next_delay(now, MAX_REDIRECTS)
            if delay is None:
                slot.complete(raw)
                return
            if down:  # counted as retried, like MOVED and ASK as followed
                self.clusterdown += 1
            else:
                self.tryagain += 1
            self._loop.call_later(
                delay, partial(replied.send, payload, slot, resp3=conn.resp3, lane=conn.lane)
            )
            return
        target = self._server_for(redirect.node)
        if redirect.ask:
            self.asks += 1
            target.send(payload, slot, resp3=conn.resp3, lane=conn.lane, asking=True)
            return
        self.moved += 1
        self._owners[redirect.slot] = target
        self._readers[redirect.slot] = None  # the replicas are learned again by the refresh
        self.request_refresh()
        target.send(payload, slot, resp3=conn.resp3, lane=conn.lane)

    # --- the slot map --------------------------------------------------------------------

    def _server_for(self, node: Node) -> Server:
        server = self._by_node.get(node)
        if server is None:
            host, port = node
            sc = ServerConfig(Address(host, port), 1, f"{host}:{port}")
            server = Server(self, len(self.servers), sc, self._loop, self._on_redirect)
            self._by_node[node] = server
            self._by_name[sc.name] = server
            self.servers.append(server)
        return server

    def request_refresh(self) -> None:
        """Refresh the slot map in the background: one at a time, at most one more queued.

        A request that comes before the running refresh has asked a node is answered by that
        refresh: a pipeline's worth of MOVED arriving together costs one refresh.
        """
        self._refresher.request(again=self._asked)

    def _candidates(self) -> Iterator[Server]:
        """Nodes to ask for the map: masters in the map (up ones first), then the seeds."""
        masters = list(dict.fromkeys(s for s in self._owners if s is not None))
        masters.sort(key=lambda s: s.state is ServerState.DOWN)
        yield from masters
        for node in self._seeds:
            server = self._server_for(node)  # created only when the masters did not answer
            if server not in masters:
                yield server

    async def _refresh_once(self) -> None:
        self._asked = False
        started = self._loop.time()
        answer = ""  # the last node's own refusal, for the log
        for server in self._candidates():
            if self._closing:
                return
            raw = await self._ask(server)
            if raw is None:
                continue
            if is_error(raw):  # e.g. "ERR This instance has cluster support disabled"
                answer = f"{server.name} answered {raw[1:].strip().decode('utf-8', 'replace')}"
                continue
            try:
                ranges = parse_slots(decode_reply(raw), server.node)
            except (SlotMapError, ProtocolError) as exc:
                log.warning("pool %s: %s answered CLUSTER SLOTS badly: %s", self.name, server.name, exc)
                continue
            if not ranges:
                continue  # a node that is not (yet) part of a cluster with slots
            self._apply(ranges)
            elapsed = self._loop.time() - started
            self.refreshes += 1
            self.refresh_seconds_total += elapsed
            self.last_refresh_seconds = elapsed
            return
        self.refresh_failures += 1
        if self.refresh_failures == 1 or self.refresh_failures % 100 == 0:
            log.warning(
                "pool %s: slot map refresh failed: no node answered CLUSTER SLOTS (%d failures)%s",
                self.name,
                self.refresh_failures,
                f"; {answer}" if answer else "",
            )

    async def _ask(self, server: Server) -> bytes | None:
        self._asked = True
        future: asyncio.Future[bytes] = self._loop.create_future()
        server.send(CLUSTER_SLOTS, ReplySlot(_Waiter(future)))
        try:
            async with asyncio.timeout(self._timeout_s):
                return await future
        except TimeoutError:
            return None

    def _apply(self, ranges: list[SlotRange]) -> None:
        owners: list[Server | None] = [None] * SLOTS
        readers: list[Server | None] = [None] * SLOTS
        for i, r in enumerate(ranges):
            count = r.end - r.start + 1
            owners[r.start : r.end + 1] = [self._server_for(r.master)] * count
            if self._replica_reads and r.replicas:
                replica = self._server_for(r.replicas[i % len(r.replicas)])
                readers[r.start : r.end + 1] = [replica] * count
        moved = sum(1 for old, new in zip(self._owners, owners) if old is not new)
        first = not self._ready.is_set()
        self._owners[:] = owners
        self._readers[:] = readers
        self.map_updated_at = time.time()
        if moved:
            masters = len({s for s in owners if s is not None})
            served = SLOTS - owners.count(None)
            log.info(
                "pool %s: slot map %s: %d slots changed owner; %d masters serve %d slots",
                self.name,
                "learned" if first else "changed",
                moved,
                masters,
                served,
            )
        self._retire(set(owners) | set(readers))
        if self.config.preconnect:
            for server in self.servers:
                server.connect_all()
        self._ready.set()

    def _retire(self, used: set[Server | None]) -> None:
        """Let go of the nodes the map no longer names (closed once nothing is pending)."""
        for server in list(self.servers):
            if server not in used:
                self.servers.remove(server)
                del self._by_node[server.node]
                del self._by_name[server.name]
                server.retire(self._timeout_s)

    def slots_served(self) -> int:
        return SLOTS - self._owners.count(None)

    def _refresh_interval(self) -> float:
        owners_down = any(s.state is ServerState.DOWN for s in set(self._owners) if s is not None)
        if owners_down or not self._ready.is_set():
            return DOWN_REFRESH_S
        return self.config.cluster_refresh_interval_ms / 1000.0

    # --- pool lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self.request_refresh()

    def can_serve(self) -> tuple[bool, str]:
        if not self._ready.is_set():
            return False, "no slot map yet"
        owners = set(self._owners)
        if None in owners:
            return False, f"{self._owners.count(None)} slots have no master"
        down = sorted(s.name for s in owners if s is not None and s.state is ServerState.DOWN)
        if down:
            return False, f"master(s) down: {', '.join(down)}"
        return True, ""

    def server_lost(self, server: Server) -> None:
        self.request_refresh()

    def close(self) -> None:
        self._closing = True
        self._refresher.close()
        for server in self.servers:
            server.close()
