"""A sentinel pool: one Redis master, found and followed through Redis Sentinel.

``distribution: sentinel`` with ``sentinels: [host:port, ...]`` and ``master_name``:

* **Finding the master.** The sentinels are asked in turn ``SENTINEL get-master-addr-by-name``;
  the address one gives is checked with ``ROLE`` (it must say ``master``) before any request
  goes there. Its replicas come from ``SENTINEL replicas`` (for ``read_from: replica``).
* **Following it.** Each sentinel is subscribed to ``+switch-master``; the message for our
  master name switches the pool at once. The pool also asks again every ``REFRESH_S``, when the
  master's connection is lost, and when the old master answers ``-READONLY`` (it was demoted).
* **Requests at the switch.** Every key goes to the current master. When a sentinel announces
  ``+try-failover`` for our master, requests are *held* (not sent) until ``+switch-master``
  (or a re-ask of the sentinels) names the new master, then sent there; the old master gets no
  write it could acknowledge and then lose when it is turned into a replica. (A re-ask during
  the hold that still names the old master ends nothing: it is still "master" to ROLE until
  the sentinels demote it.) A hold lasts at most the pool's ``timeout``; then
  the held requests get ``-ERR failover in progress ...`` and requests flow to the known master
  again. A write the old master refused with ``-READONLY`` was not executed, so it is sent again
  to the new master (backoff 10 ms doubling to 200 ms, within its ``timeout``). Requests in flight
  on a master that died get a prompt connection error (whether a write was applied is unknown,
  so it is not retried); requests while no master is known get ``-ERR no master known ...``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any

import hiredis

from proxy import errors, tls
from proxy.backend import BackendConnection
from proxy.config import Address, SentinelPoolConfig, ServerConfig
from proxy.follow import Redirected, Refresher
from proxy.inflight import ReplySlot
from proxy.pool import PoolBase
from proxy.resp import encode_command
from proxy.security import ServerTlsConfig
from proxy.target import Placement, Route, Target
from proxy.upstream import Server, ServerState

log = logging.getLogger(__name__)

REFRESH_S = 5.0
WATCH_BACKOFF_MAX_S = 2.0
READONLY_REPLIES = (b"-READONLY ",)
MAX_READONLY_RETRIES = 50
CHANNELS = (b"+switch-master", b"+try-failover")

Node = tuple[str, int]


async def connect(
    node: Node, server_tls: ServerTlsConfig | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to a sentinel or server, with TLS when the pool's config says so."""
    return await asyncio.open_connection(node[0], node[1], **tls.connect_options(server_tls, node[0]))


async def ask(
    node: Node,
    commands: Sequence[Sequence[bytes]],
    timeout_s: float,
    server_tls: ServerTlsConfig | None = None,
) -> list[object]:
    """Send ``commands`` to ``node`` on a fresh connection; their replies (decoded), or raise.

    The pool's own questions (SENTINEL ..., ROLE), never client requests.
    """
    async with asyncio.timeout(timeout_s):
        reader, writer = await connect(node, server_tls)
        try:
            writer.write(b"".join(encode_command(list(c)) for c in commands))
            await writer.drain()
            parser = hiredis.Reader()
            replies: list[object] = []
            while len(replies) < len(commands):
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError("closed")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    replies.append(reply)
            return replies
        finally:
            writer.close()


def _auth(password: str | None, user: str | None = None) -> list[list[bytes]]:
    if not password:
        return []
    return [[b"AUTH", user.encode(), password.encode()] if user else [b"AUTH", password.encode()]]


def _refusal(replies: Sequence[object]) -> str | None:
    """The text of the first error reply (NOAUTH, WRONGPASS...), if any."""
    for reply in replies:
        if isinstance(reply, hiredis.ReplyError):
            return str(reply)
    return None


class _Hold:
    """The target while a failover runs: requests wait here for the new master (and go to
    the master when there is no failover)."""

    __slots__ = ("pool",)
    direct: Callable[[bytes, ReplySlot], None] | None = (
        None  # a failover may be holding requests (target.Target)
    )

    def __init__(self, pool: SentinelPool) -> None:
        self.pool = pool

    def send(self, payload: bytes, slot: ReplySlot, *, resp3: bool = False, lane: int = 0) -> None:
        held = self.pool.held
        if held is None:  # no failover (any more)
            self.pool.send_to_master(payload, slot, resp3, lane)
        else:
            held.append((payload, slot, resp3, lane))


class SentinelPool(PoolBase):
    """A pool whose one server is the master Redis Sentinel names (plus replicas for reads)."""

    config: SentinelPoolConfig

    def __init__(self, config: SentinelPoolConfig, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(config, loop)
        self.unrouted = errors.no_master(config.master_name, config.name)
        self._timeout_s = config.timeout_ms / 1000.0
        self._sentinels: list[Node] = [(a.host, a.port) for a in config.sentinels]
        self._master_name = config.master_name.encode()
        self._replica_reads = config.read_from != "master"
        self.master: Server | None = None
        self.replicas: list[Server] = []
        self.held: list[tuple[bytes, ReplySlot, bool, int]] | None = None  # during a failover
        self._settling: list[Callable[[], None]] = []  # transactions waiting for the hold's end
        self._hold = _Hold(self)
        self._hold_timer: asyncio.TimerHandle | None = None
        self.servers: list[Server] = []
        self.route: Route = self._route
        self.route_read: Route | None = self._route_read if self._replica_reads else None
        self._refresher = Refresher(loop, self._discover, self._discover_interval)
        self._tasks: set[asyncio.Task[None]] = set()  # the sentinel watches
        self._closing = False
        # counters (metrics, INFO)
        self.switches = 0
        self.discoveries = 0
        self.discovery_failures = 0
        self._last_refusal = ""  # why the last sentinel or master said no (for the log)
        self.readonly_retries = 0
        self.holds = 0
        self.hold_timeouts = 0

    # --- routing -------------------------------------------------------------------------

    def _route(self, key: bytes) -> Target | None:
        return self.master if self.held is None else self._hold

    def _route_read(self, key: bytes) -> Target | None:
        for replica in self.replicas:
            if replica.state is not ServerState.DOWN:
                return replica
        return self._route(key)

    def route_many(self, keys: list[bytes], read: bool = False) -> Target | None | str:
        return self._route_read(b"") if read and self._replica_reads else self._route(b"")

    def split_command(self, args: list[bytes]) -> None:
        return None  # one master: group_keys puts every key on it, so nothing is split

    def place(self, keys: Sequence[bytes]) -> Placement | str:
        """The master, for any keys (a transaction waits out a failover hold: ``settle``)."""
        master = self.master
        if master is None:
            return self.unrouted
        return Placement(self, master)

    def keyspace_servers(self, replicas: bool = False) -> list[Server] | str:
        if self.master is None:
            return self.unrouted
        return [self.master, *(self.replicas if replicas else ())]

    def settle(self, then: Callable[[], None]) -> None:
        """Call ``then`` now, or when a failover hold ends (new master, or its timeout)."""
        if self.held is None:
            then()
        else:
            self._settling.append(then)

    def map_changed(self) -> None:
        self.request_discovery()

    def pattern_servers(self) -> list[Server] | str:
        return self.keyspace_servers()

    def group_keys(self, keys: list[bytes], read: bool = False) -> list[tuple[Target | None, list[int]]]:
        target = self._route_read(b"") if read and self._replica_reads else self._route(b"")
        return [(target, list(range(len(keys))))]

    # --- finding and following the master --------------------------------------------------

    def _server(self, node: Node, role: str) -> Server:
        for server in self.servers:
            if server.node == node:
                return server
        host, port = node
        sc = ServerConfig(Address(host, port), 1, f"{role}@{host}:{port}")
        server = Server(self, len(self.servers), sc, self._loop, self._on_readonly, READONLY_REPLIES)
        self.servers.append(server)
        return server

    def request_discovery(self) -> None:
        """Ask the sentinels again, in the background (one at a time, at most one queued)."""
        self._refresher.request()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _discover(self) -> None:
        pc = self.config
        for sentinel in self._sentinels:
            try:
                replies = await ask(
                    sentinel,
                    [
                        *_auth(pc.sentinel_auth, pc.sentinel_username),
                        [b"SENTINEL", b"get-master-addr-by-name", self._master_name],
                        [b"SENTINEL", b"replicas", self._master_name],
                    ],
                    self._timeout_s,
                    pc.sentinel_tls,
                )
            except (OSError, TimeoutError, hiredis.ProtocolError, tls.TlsSetupError) as exc:
                log.debug("pool %s: sentinel %s:%d: %s", self.name, *sentinel, exc)
                continue
            refused = _refusal(replies)
            if refused is not None:
                self._last_refusal = f"sentinel {sentinel[0]}:{sentinel[1]}: {refused}"
                continue  # a wrong or missing sentinel_auth, most likely
            addr, replicas = replies[-2], replies[-1]
            if not (isinstance(addr, list) and len(addr) == 2):
                continue  # this sentinel does not know the name
            node = (addr[0].decode(), int(addr[1]))
            if not await self._is_master(node):
                continue  # mid-failover (the sentinel's answer is not true yet), or refused
            self.discoveries += 1
            self._switch(node)
            self._set_replicas(replicas)
            return
        self.discovery_failures += 1
        if self.discovery_failures == 1 or self.discovery_failures % 100 == 0:
            why = f"; last refusal: {self._last_refusal}" if self._last_refusal else ""
            log.warning(
                "pool %s: no sentinel named a live master for '%s' (%d failures%s)",
                self.name,
                pc.master_name,
                self.discovery_failures,
                why,
            )

    async def _is_master(self, node: Node) -> bool:
        try:
            pc = self.config
            replies = await ask(
                node, [*_auth(pc.redis_auth, pc.redis_username), [b"ROLE"]], self._timeout_s, pc.server_tls
            )
        except (OSError, TimeoutError, hiredis.ProtocolError, tls.TlsSetupError):
            return False
        refused = _refusal(replies)
        if refused is not None:
            self._last_refusal = f"{node[0]}:{node[1]}: {refused}"  # redis_auth, most likely
            return False
        role = replies[-1]
        return isinstance(role, list) and bool(role) and role[0] == b"master"

    def _switch(self, node: Node) -> None:
        old = self.master
        if old is not None and old.node == node:
            # Not a release: during a failover the old master is still named by the sentinels
            # and still says "master" to ROLE until it is demoted, so a re-ask that lands in a
            # hold learns nothing, and releasing would let it acknowledge writes it will lose.
            # Holds end on a new master (+switch-master or a re-ask naming it) or the timeout.
            return
        self.master = self._server(node, "master")
        self._release()
        if old is not None:
            self.switches += 1
            log.warning(
                "pool %s: master of '%s' is now %s:%d (was %s)",
                self.name,
                self.config.master_name,
                *node,
                old.address,
            )
            self._forget(old)
        else:
            log.info("pool %s: master of '%s' is %s:%d", self.name, self.config.master_name, *node)
        if self.config.preconnect:
            self.master.connect_all()
        self._ready.set()

    def _set_replicas(self, reply: object) -> None:
        if not self._replica_reads or not isinstance(reply, list):
            return
        nodes = []
        for entry in reply:  # flat [key, value, ...] per replica
            if not isinstance(entry, list):
                continue
            fields = dict(zip(entry[::2], entry[1::2]))
            flags = fields.get(b"flags", b"").split(b",")
            if b"s_down" in flags or b"o_down" in flags or b"disconnected" in flags:
                continue
            if b"ip" in fields and b"port" in fields:
                nodes.append((fields[b"ip"].decode(), int(fields[b"port"])))
        new = [self._server(n, "replica") for n in nodes if self.master is None or n != self.master.node]
        for gone in self.replicas:
            if gone not in new and gone is not self.master:
                self._forget(gone)
        self.replicas = new

    def _forget(self, server: Server) -> None:
        if server in self.servers and server is not self.master and server not in self.replicas:
            self.servers.remove(server)
            server.retire(self._timeout_s)

    def _discover_interval(self) -> float:
        return REFRESH_S if self.master is not None else 0.25

    async def _watch(self, sentinel: Node) -> None:
        """Follow one sentinel's ``+switch-master`` messages; reconnect with backoff."""
        backoff = 0.1
        refusals = 0
        while not self._closing:
            writer = None
            try:
                pc = self.config
                reader, writer = await asyncio.wait_for(connect(sentinel, pc.sentinel_tls), self._timeout_s)
                cmds = [*_auth(pc.sentinel_auth, pc.sentinel_username), [b"SUBSCRIBE", *CHANNELS]]
                writer.write(b"".join(encode_command(c) for c in cmds))
                parser = hiredis.Reader()
                refused = None
                while not self._closing and refused is None:
                    data = await reader.read(65536)
                    if not data:
                        break
                    parser.feed(data)
                    while (msg := parser.gets()) is not False:
                        if isinstance(msg, hiredis.ReplyError):  # AUTH or SUBSCRIBE refused
                            refused = str(msg)
                            break
                        if isinstance(msg, list) and msg[:1] == [b"subscribe"]:
                            backoff = 0.1  # subscribed: a later drop retries quickly
                        self._on_message(msg)
                if refused is not None:
                    refusals += 1
                    if refusals == 1 or refusals % 100 == 0:
                        log.warning(
                            "pool %s: sentinel %s:%d refused to be watched: %s (%d times; retrying)",
                            self.name,
                            *sentinel,
                            refused,
                            refusals,
                        )
            except (OSError, TimeoutError, hiredis.ProtocolError, tls.TlsSetupError) as exc:
                log.debug("pool %s: sentinel %s:%d watch: %s", self.name, *sentinel, exc)
            finally:
                if writer is not None:
                    writer.close()
            if self._closing:
                return
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, WATCH_BACKOFF_MAX_S)

    def _on_message(self, msg: object) -> None:
        # [b"message", b"+switch-master", b"<name> <old-ip> <old-port> <new-ip> <new-port>"]
        # [b"message", b"+try-failover", b"master <name> <ip> <port> ..."]
        if not (isinstance(msg, list) and len(msg) == 3 and msg[0] == b"message"):
            return
        parts = msg[2].split() if isinstance(msg[2], bytes) else []
        if msg[1] == b"+switch-master" and len(parts) == 5 and parts[0] == self._master_name:
            log.info("pool %s: sentinel says +switch-master %s", self.name, msg[2].decode())
            self._switch((parts[3].decode(), int(parts[4])))
            self.request_discovery()  # replicas changed too
        elif msg[1] == b"+try-failover" and len(parts) >= 2 and parts[1] == self._master_name:
            self._start_hold()

    def _start_hold(self) -> None:
        if self.held is not None:
            return
        self.holds += 1
        log.warning(
            "pool %s: failover of '%s' started: holding requests until the new master",
            self.name,
            self.config.master_name,
        )
        self.held = []
        self._hold_timer = self._loop.call_later(self._timeout_s, self._hold_expired)

    def _hold_expired(self) -> None:
        self._hold_timer = None
        held, self.held = self.held or [], None
        if held:
            self.hold_timeouts += 1
            log.warning(
                "pool %s: no new master within %d ms: %d held request(s) failed",
                self.name,
                self.config.timeout_ms,
                len(held),
            )
        text = errors.failover_in_progress(self.config.master_name, self.config.timeout_ms)
        for _, slot, _, _ in held:
            slot.fail(text)
        self._settled()

    def _settled(self) -> None:
        settling, self._settling = self._settling, []
        for then in settling:
            then()

    def _release(self) -> None:
        """Send the held requests to the (new) master, in the order they came."""
        if self.held is None:
            return
        held, self.held = self.held, None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        for payload, slot, resp3, lane in held:
            self.send_to_master(payload, slot, resp3, lane)
        self._settled()

    def send_to_master(self, payload: bytes, slot: ReplySlot, resp3: bool, lane: int) -> None:
        master = self.master
        if master is None:
            slot.fail(self.unrouted)
        else:
            master.send(payload, slot, resp3=resp3, lane=lane)

    def _on_readonly(self, conn: BackendConnection, slot: ReplySlot, payload: bytes, raw: bytes) -> None:
        """The server refused a write as a replica: the master moved. Not executed: resend."""
        now = self._loop.time()
        slot, retry = Redirected.track(slot, now, self._timeout_s)
        self.readonly_retries += 1
        self.request_discovery()
        delay = retry.next_delay(now, MAX_READONLY_RETRIES)
        if delay is None:
            slot.complete(raw)
            return
        # the master then, or the hold while a failover runs
        self._loop.call_later(
            delay, partial(self._hold.send, payload, slot, resp3=conn.resp3, lane=conn.lane)
        )

    # --- pool lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        for sentinel in self._sentinels:
            self._spawn(self._watch(sentinel))
        self.request_discovery()

    def can_serve(self) -> tuple[bool, str]:
        if self.master is None:
            return False, "no master known"
        if self.master.state is ServerState.DOWN:
            return False, f"master {self.master.address} down"
        return True, ""

    def server_lost(self, server: Server) -> None:
        if server is self.master:
            self.request_discovery()

    def close(self) -> None:
        self._closing = True
        self._refresher.close()
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        for _, slot, _, _ in self.held or []:
            slot.fail(errors.SHUTTING_DOWN)
        self.held = None
        self._settled()  # (waiting transactions go on: to the pool that replaced this one)
        for task in list(self._tasks):
            task.cancel()
        for server in self.servers:
            server.close()
