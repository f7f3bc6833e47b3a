"""Pub/sub through the proxy: one client's subscriptions (SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE and
their UNSUBSCRIBEs).

A subscription holds a server connection that then only receives messages, so it never goes
on the shared pipelined connections: a subscribed client gets a *dedicated* connection per
server it subscribes on (``Server.take_dedicated``), whose every reply is a push
(``DedicatedConnection.on_push``):

* **Where.** A channel lives where a key of the same name would (``Pool.place``): a ring's
  channel on the server its name hashes to (hash tags and all), so ``PUBLISH ch`` — routed like a
  key — and ``SUBSCRIBE ch`` meet; a cluster's on its slot's master (the cluster bus spreads
  PUBLISH anyway); a listener's by the same prefixes as keys. A pattern goes to every server a
  matching channel could live on (``Pool.pattern_servers``: every ring server, one cluster
  node, since the bus delivers every message to every node), so each message comes once.
  SSUBSCRIBE (sharded) goes to the channel's slot owner.
* **Replies.** The proxy writes the (un)subscribe confirmations itself, with the *client's*
  own counts, as one Redis would count them; a subscribe confirmation waits for every server it
  went to to confirm (so a PUBLISH sent after it reaches the client, as with one Redis).
  Messages (``message``, ``pmessage``, ``smessage``) for names still subscribed are forwarded as
  the server sent them (RESP2 arrays, or RESP3 pushes on the connections of a HELLO 3 client);
  one that crosses an UNSUBSCRIBE is dropped, as Redis would not send it after the reply.
* **Mode.** While a RESP2 client has subscriptions it may only (P|S)(UN)SUBSCRIBE, PING, QUIT
  and RESET (Redis's own error otherwise); its PING is answered ``pong`` as Redis does there.
  With none left, its connections are closed and it is an ordinary client again.
* **Failures.** A subscription connection that is lost (server restarted, failover, reload that
  moved its server) closes the client, as a Redis restart would: it reconnects and
  resubscribes. A slow subscriber is bounded like any client (its output limit), and only its
  own connections wait on it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from proxy import errors
from proxy.backend import DedicatedConnection, Loss
from proxy.config import Address
from proxy.inflight import ReplyQueue, ReplySlot
from proxy.resp import encode_bulk, encode_command
from proxy.target import Pool
from proxy.upstream import Server

CONFIRMATIONS = frozenset({b"subscribe", b"psubscribe", b"ssubscribe"})
RESUBSCRIBE_S = 0.05  # first wait before a moved shard channel is subscribed again
RESUBSCRIBE_TRIES = 6  # doubling: about 3 s in all
ALLOWED_WHILE_SUBSCRIBED = frozenset(
    {
        b"SUBSCRIBE",
        b"PSUBSCRIBE",
        b"SSUBSCRIBE",
        b"UNSUBSCRIBE",
        b"PUNSUBSCRIBE",
        b"SUNSUBSCRIBE",
        b"PING",
        b"QUIT",
        b"RESET",
    }
)


class PubSubHost(Protocol):
    """What a subscriber needs of its client connection."""

    def _hold_dispatch(self) -> None: ...

    def _release_dispatch(self) -> None: ...

    _loop: asyncio.AbstractEventLoop
    queue: ReplyQueue
    _pool: Pool
    resp3: bool

    def _subscriptions_lost(self, reason: str) -> None: ...


def _head(raw: bytes, count: int) -> list[bytes]:
    """The first ``count`` bulk-string elements of an array or push reply (fewer if it has
    fewer, or other types first): ``[b"message", b"ch"]``."""
    out: list[bytes] = []
    if raw[:1] not in (b"*", b">"):
        return out
    at = raw.find(b"\r\n") + 2
    while len(out) < count and raw[at : at + 1] == b"$":
        end = raw.find(b"\r\n", at)
        size = int(raw[at + 1 : end])
        out.append(raw[end + 2 : end + 2 + size])
        at = end + 2 + size + 2
    return out


class _Awaited:
    """A (P|S)SUBSCRIBE confirmation owed to the client: written once every server it went
    to confirmed it (then a PUBLISH after it is sure to reach the client, as with Redis).
    Without a slot: the proxy's own re-subscription (after a reload, a moved slot)."""

    __slots__ = ("slot", "reply", "left", "done")

    def __init__(
        self, slot: ReplySlot | None, reply: bytes, left: int, done: Callable[[], None] | None = None
    ) -> None:
        self.slot = slot
        self.reply = reply
        self.left = left
        self.done = done  # called once answered (the client's dispatch goes on)

    def answer(self, raw: bytes) -> None:
        slot, self.slot = self.slot, None
        if slot is not None:
            slot.complete(raw)
        done, self.done = self.done, None
        if done is not None:
            done()


class _Kind:
    """One kind of subscription: channels, patterns or shard channels."""

    __slots__ = ("verb", "undo", "ack", "unack", "names")

    def __init__(self, verb: bytes, undo: bytes, ack: bytes, unack: bytes) -> None:
        self.verb = verb  # b"SUBSCRIBE"
        self.undo = undo  # b"UNSUBSCRIBE"
        self.ack = ack  # b"subscribe"
        self.unack = unack  # b"unsubscribe"
        self.names: dict[bytes, list[DedicatedConnection]] = {}  # name -> where it is held


class Subscriber:
    """One client's subscriptions (see the module docstring)."""

    def __init__(self, host: PubSubHost) -> None:
        self._host = host
        self.channels = _Kind(b"SUBSCRIBE", b"UNSUBSCRIBE", b"subscribe", b"unsubscribe")
        self.patterns = _Kind(b"PSUBSCRIBE", b"PUNSUBSCRIBE", b"psubscribe", b"punsubscribe")
        self.shards = _Kind(b"SSUBSCRIBE", b"SUNSUBSCRIBE", b"ssubscribe", b"sunsubscribe")
        # one connection per server address (a reload may build new Server objects for it)
        self._conns: dict[Address, DedicatedConnection] = {}
        self._address: dict[DedicatedConnection, Address] = {}
        self._server: dict[DedicatedConnection, Server] = {}  # whose it is (Server.adopt)
        # per connection, the confirmations owed to the client, in the order sent
        self._awaited: dict[DedicatedConnection, deque[_Awaited]] = {}

    @property
    def count(self) -> int:
        """Channels and patterns: the count Redis puts in (un)subscribe replies."""
        return len(self.channels.names) + len(self.patterns.names)

    @property
    def active(self) -> bool:
        return bool(self.count or self.shards.names)

    def kind(self, name: bytes) -> _Kind:
        if name in (b"PSUBSCRIBE", b"PUNSUBSCRIBE"):
            return self.patterns
        if name in (b"SSUBSCRIBE", b"SUNSUBSCRIBE"):
            return self.shards
        return self.channels

    # --- commands ------------------------------------------------------------------------------

    def subscribe(self, name: bytes, names: Sequence[bytes]) -> None:
        """SUBSCRIBE / PSUBSCRIBE / SSUBSCRIBE name...: one confirmation per name."""
        kind = self.kind(name)
        host = self._host
        queue = host.queue
        pool = host._pool
        if pool.strips:  # (a channel's prefix would be stripped on one side only)
            queue.push_error(errors.pubsub_strip_prefix(pool.name))
            queue.flush()
            return
        owed: list[_Awaited] = []
        for item in names:
            if item not in kind.names:
                if kind is self.patterns:
                    found = pool.pattern_servers()
                    servers = found if isinstance(found, str) else list(found)
                else:
                    placed = pool.place([item])
                    servers = placed if isinstance(placed, str) else [placed.server]
                if isinstance(servers, str):
                    queue.push_error(servers)
                    continue
                conns = []
                for server in servers:
                    conn = self._conn(server)
                    if isinstance(conn, str):
                        queue.push_error(conn)
                        self._drop_unused()  # (those just taken for it)
                        break
                    conns.append(conn)
                else:
                    kind.names[item] = conns
                    count = len(kind.names) if kind is self.shards else self.count
                    awaited = _Awaited(queue.push(), self._confirm(kind.ack, item, count), len(conns))
                    owed.append(awaited)
                    for conn in conns:
                        self._ask(conn, kind.verb, item, awaited)
                continue
            count = len(kind.names) if kind is self.shards else self.count
            queue.push_reply(self._confirm(kind.ack, item, count))  # (already: at once)
        if owed:
            # What the client sent next waits for the servers' confirmations: a PUBLISH right
            # after a SUBSCRIBE must find the subscription in place, as on one Redis.
            left = [len(owed)]

            def one_done() -> None:
                left[0] -= 1
                if not left[0]:
                    host._release_dispatch()

            for awaited in owed:
                awaited.done = one_done
            host._hold_dispatch()
        queue.flush()

    def _ask(self, conn: DedicatedConnection, verb: bytes, item: bytes, awaited: _Awaited) -> None:
        conn.write_more(encode_command([verb, item]))
        self._awaited.setdefault(conn, deque()).append(awaited)

    def unsubscribe(self, name: bytes, names: Sequence[bytes]) -> None:
        """(P|S)UNSUBSCRIBE [name...]: every one of the kind when none is named."""
        kind = self.kind(name)
        queue = self._host.queue
        targets = list(names) if names else list(kind.names)
        if not targets:  # nothing to unsubscribe from: one reply with a nil name, as Redis
            count = len(kind.names) if kind is self.shards else self.count
            queue.push_reply(self._confirm(kind.unack, None, count))
        for item in targets:
            for conn in kind.names.pop(item, []):
                conn.write_more(encode_command([kind.undo, item]))
            count = len(kind.names) if kind is self.shards else self.count
            queue.push_reply(self._confirm(kind.unack, item, count))
        if not self.active:
            self.close(lost=False)
        queue.flush()

    def repin(self) -> None:
        """A reload gave the client a new pool: each name goes where the new pool puts it
        (kept where it is when that is the same server: same address), quietly (no reply to
        the client); connections left with nothing are closed."""
        pool = self._host._pool
        if not self.active:
            return
        for kind in (self.channels, self.shards, self.patterns):
            for item, conns in list(kind.names.items()):
                if kind is self.patterns:
                    found = pool.pattern_servers()
                    targets = [] if isinstance(found, str) else list(found)
                else:
                    placed = pool.place([item])
                    targets = [] if isinstance(placed, str) else [placed.server]
                if not targets:
                    continue  # (nowhere to go now: stays where it is)
                here = {self._address[c]: c for c in conns if c in self._address}
                moved: list[DedicatedConnection] = []
                for server in targets:
                    conn = here.pop(server.address, None)
                    if conn is not None and self._server.get(conn) is not server:
                        server.adopt(conn, self._server[conn])  # (a new pool, same server)
                        self._server[conn] = server
                    if conn is None:
                        new = self._conn(server)
                        if isinstance(new, str):
                            continue
                        self._ask(new, kind.verb, item, _Awaited(None, b"", 1))
                        conn = new
                    moved.append(conn)
                for old in here.values():
                    old.write_more(encode_command([kind.undo, item]))
                kind.names[item] = moved
        self._drop_unused()

    def _drop_unused(self) -> None:
        """Close the connections no name is subscribed on any more."""
        used = {
            id(c)
            for kind in (self.channels, self.patterns, self.shards)
            for conns in kind.names.values()
            for c in conns
        }
        for address, conn in list(self._conns.items()):
            if id(conn) not in used and not self._awaited.get(conn):
                del self._conns[address]
                del self._address[conn]
                self._server.pop(conn, None)
                conn.on_lost = None
                conn.close("resubscribed elsewhere", loss=Loss.CLOSED)

    def ping(self, args: Sequence[bytes]) -> None:
        """PING while subscribed (RESP2): Redis answers ``pong`` and the message as an array."""
        message = args[0] if args else b""
        self._host.queue.push_reply(b"*2\r\n$4\r\npong\r\n" + encode_bulk(message))

    # --- connections ---------------------------------------------------------------------------

    def _conn(self, server: Server) -> DedicatedConnection | str:
        conn = self._conns.get(server.address)
        if conn is not None and not conn.closed:
            held_by = self._server.get(conn)
            if held_by is not None and held_by is not server:
                server.adopt(conn, held_by)  # (the same server, in the pool a reload built)
                self._server[conn] = server
            return conn
        taken = server.take_dedicated(self._host.resp3, preload=False)
        if isinstance(taken, str):
            return taken
        if taken.closed:  # (the server is down: closed at once, with the reason)
            return taken.closed_text
        taken.on_push = self._pushed
        taken.on_lost = self._lost
        self._conns[server.address] = taken
        self._address[taken] = server.address
        self._server[taken] = server
        return taken

    def _pushed(self, conn: DedicatedConnection, raw: bytes) -> None:
        """A reply on a subscription connection: a message for a name still subscribed goes to
        the client; a server's confirmation (or error) completes the one owed to the client;
        its unsubscribe confirmations were answered already."""
        head = _head(raw, 3)
        kind = head[0] if head else b""
        if kind == b"message" or kind == b"smessage":
            names = (self.channels if kind == b"message" else self.shards).names
            if len(head) > 1 and head[1] in names:
                self._deliver(raw)
        elif kind == b"pmessage":
            if len(head) > 1 and head[1] in self.patterns.names:
                self._deliver(raw)
        elif kind == b"sunsubscribe" and len(head) > 1 and head[1] in self.shards.names:
            # Not asked for (an asked one leaves ``names`` first): the node gave the channel's
            # slot away. Subscribed again where the pool's refreshed map puts it.
            self._host._pool.map_changed()
            self._host._loop.call_later(RESUBSCRIBE_S, self._resubscribe, head[1], conn, 1)
        elif kind in CONFIRMATIONS or raw[:1] in (b"-", b"!"):
            owed = self._awaited.get(conn)
            if not owed:
                return
            awaited = owed.popleft()
            named = _head(awaited.reply, 2)
            if raw.startswith(b"-MOVED ") and named[:1] == [b"ssubscribe"] and awaited.slot:
                # a shard channel asked of a node that no longer owns its slot: asked again
                # where the refreshed map puts it (the client's confirmation waits)
                self._host._pool.map_changed()
                self._host._loop.call_later(RESUBSCRIBE_S, self._follow, named[1], conn, awaited, 1)
                return
            if raw[:1] in (b"-", b"!"):
                # refused (a moved shard slot, ACL...): not subscribed there; the first error
                # is the client's reply
                self._forget_on(conn, _head(awaited.reply, 3)[1:2])
                awaited.answer(raw)
                return
            awaited.left -= 1
            if not awaited.left:
                awaited.answer(awaited.reply)

    def _forget_on(self, conn: DedicatedConnection, names: list[bytes]) -> None:
        for kind in (self.channels, self.patterns, self.shards):
            for item in names:
                held = kind.names.get(item)
                if held is not None and conn in held:
                    held.remove(conn)
                    if not held:
                        del kind.names[item]
        if not self.active:
            self.close(lost=False)
        else:
            self._drop_unused()

    def _resubscribe(self, channel: bytes, old: DedicatedConnection, tries: int) -> None:
        """A shard channel whose slot moved: SSUBSCRIBE on the slot's new owner, once the
        pool knows it (tried again, up to RESUBSCRIBE_TRIES, while it still names the old)."""
        if self.shards.names.get(channel) != [old]:
            return  # unsubscribed meanwhile, or moved already
        placed = self._host._pool.place([channel])
        if isinstance(placed, str) or self._address.get(old) == placed.server.address:
            if tries < RESUBSCRIBE_TRIES:
                self._host._loop.call_later(
                    RESUBSCRIBE_S * 2**tries, self._resubscribe, channel, old, tries + 1
                )
            return
        conn = self._conn(placed.server)
        if isinstance(conn, str):
            return
        self._ask(conn, b"SSUBSCRIBE", channel, _Awaited(None, b"", 1))
        self.shards.names[channel] = [conn]

    def _follow(self, channel: bytes, old: DedicatedConnection, awaited: _Awaited, tries: int) -> None:
        """SSUBSCRIBE again on the slot's owner once the pool's map has moved on from ``old``."""
        if self.shards.names.get(channel) != [old]:
            awaited.answer(awaited.reply)  # (unsubscribed meanwhile)
            return
        placed = self._host._pool.place([channel])
        if isinstance(placed, str) or self._address.get(old) == placed.server.address:
            if tries < RESUBSCRIBE_TRIES:
                self._host._loop.call_later(
                    RESUBSCRIBE_S * 2**tries, self._follow, channel, old, awaited, tries + 1
                )
            else:
                self._forget_on(old, [channel])
                awaited.answer(b"-" + errors.SLOT_UNSERVED.encode() + b"\r\n")
            return
        conn = self._conn(placed.server)
        if isinstance(conn, str):
            self._forget_on(old, [channel])
            awaited.answer(b"-" + conn.encode() + b"\r\n")
            return
        self.shards.names[channel] = [conn]
        awaited.left = 1
        self._ask(conn, b"SSUBSCRIBE", channel, awaited)
        self._drop_unused()

    def _deliver(self, raw: bytes) -> None:
        self._host._pool.stats.pubsub_messages += 1
        queue = self._host.queue
        queue.push_reply(raw)
        queue.flush()

    def _lost(self, conn: DedicatedConnection, reason: str) -> None:
        if any(c is conn for c in self._conns.values()):
            self.close()
            self._host._subscriptions_lost(reason)

    def close(self, lost: bool = True) -> None:
        """No subscription left (``lost`` False: its confirmations still owed are written as
        they are), or the client left, or a connection was lost: every connection closed."""
        conns, self._conns = self._conns, {}
        self._address.clear()
        self._server.clear()
        for kind in (self.channels, self.patterns, self.shards):
            kind.names.clear()
        owed_all, self._awaited = self._awaited, {}
        for owed in owed_all.values():
            for awaited in owed:
                awaited.answer(b"-" + errors.SUBSCRIPTION_LOST.encode() + b"\r\n" if lost else awaited.reply)
        for conn in conns.values():
            conn.on_lost = None
            conn.close("unsubscribed", loss=Loss.CLOSED)

    def _confirm(self, verb: bytes, name: bytes | None, count: int) -> bytes:
        head = b">3\r\n" if self._host.resp3 else b"*3\r\n"
        if name is None:
            named = b"_\r\n" if self._host.resp3 else b"$-1\r\n"
        else:
            named = encode_bulk(name)
        return head + encode_bulk(verb) + named + b":%d\r\n" % count
