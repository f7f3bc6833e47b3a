"""Blocking commands (BLPOP, BRPOP, BLMOVE, BZPOPMIN, BLMPOP, XREAD ... BLOCK...) through the proxy.

A blocked command holds its server connection until it is answered, so it never goes on the
shared pipelined connections (one BLPOP there would stall every client behind it, why
twemproxy reverted its patch). Instead:

* its keys must be on one server (ring) or slot (cluster), else ``CROSSSLOT``; it then goes on
  a *dedicated* connection to that server (``Server.take_dedicated``, bounded per server by
  ``dedicated_connections``), given back once answered;
* the connection's deadline is the command's own timeout plus the pool's ``timeout``
  (0 = no deadline, as Redis blocks forever): the pool's timeout never cuts a block short;
* order is kept as on one Redis connection: it waits until the replies owed before it are
  written (client._barrier), and what the client sends after it waits for its reply;
* a client that leaves while blocked has that connection closed at once, so Redis never pops
  an element for a client that is gone (nothing is lost);
* a cluster slot that moves while blocked (``-MOVED``/``-ASK``/``-TRYAGAIN``...): the pool
  learns its map again and the command is sent to the new owner (up to MAX_RETRIES times);
  a sentinel master that fails over closes its connections: the client gets an error, and
  retries.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from proxy import errors
from proxy.backend import DedicatedConnection, Loss
from proxy.commands import CommandSpec, UnroutableKeys, keys_of
from proxy.inflight import ReplyQueue, ReplySlot
from proxy.target import Pool

MAX_RETRIES = 5
RETRY_S = 0.05
REDIRECTS = (b"-MOVED ", b"-ASK ", b"-TRYAGAIN", b"-CLUSTERDOWN", b"-READONLY ")
# where the command's timeout is: its last argument (seconds), or args[1] (BLMPOP, BZMPOP)
TIMEOUT_FIRST = frozenset({b"BLMPOP", b"BZMPOP"})
BLOCK_ARG = frozenset({b"XREAD", b"XREADGROUP"})  # BLOCK milliseconds


class BlockingHost(Protocol):
    """What a blocking command needs of its client connection."""

    id: int
    _loop: asyncio.AbstractEventLoop
    queue: ReplyQueue
    _pool: Pool
    resp3: bool

    def _hold_dispatch(self) -> None: ...

    def _release_dispatch(self) -> None: ...

    def _blocked_on(self, waiter: Blocked | None) -> None: ...


def timeout_of(name: bytes, args: list[bytes]) -> float | None:
    """The command's own timeout in seconds (0: forever); None if it cannot be read (the
    server then answers the syntax error, at once)."""
    try:
        if name in BLOCK_ARG:
            for i, arg in enumerate(args[:-1]):
                if arg.upper() == b"BLOCK":
                    return max(int(args[i + 1]), 0) / 1000.0
            return None
        value = float(args[1] if name in TIMEOUT_FIRST else args[-1])
    except (ValueError, IndexError):
        return None
    return max(value, 0.0)


def serve(host: BlockingHost, spec: CommandSpec, args: list[bytes], payload: bytes) -> None:
    """Send a blocking command on a dedicated connection (the module docstring)."""
    queue = host.queue
    try:
        keys = keys_of(spec, args)
    except UnroutableKeys as exc:
        queue.push_error(str(exc))
        return
    if not keys:
        queue.push_error(errors.no_keys(spec.fullname))
        return
    crossing = host._pool.route_many(keys, False)
    if isinstance(crossing, str):  # (CROSSSLOT: Redis's words)
        queue.push_error(crossing)
        return
    waiter = Blocked(queue.push(), host, keys, payload, timeout_of(spec.name, args))
    host._hold_dispatch()
    waiter.send()


class Blocked:
    """One blocked command: its connection, and its reply on the way back."""

    __slots__ = ("target", "host", "keys", "payload", "timeout_s", "conn", "tries", "gone", "moving")

    def __init__(
        self,
        target: ReplySlot,
        host: BlockingHost,
        keys: list[bytes],
        payload: bytes,
        timeout_s: float | None,
    ) -> None:
        self.target = target
        self.host = host
        self.keys = keys
        self.payload = payload
        self.timeout_s = timeout_s
        self.conn: DedicatedConnection | None = None
        self.tries = 0
        self.gone = False  # the client left: never sent again
        self.moving = False  # its keys' server changed (a reload, an ejection): sent again

    def send(self) -> None:
        if self.gone:
            return
        host = self.host
        placement = host._pool.place(self.keys)
        if isinstance(placement, str):
            self._fail(placement)
            return
        conn = placement.server.take_dedicated(host.resp3)
        if isinstance(conn, str):
            self._fail(conn)
            return
        self.conn = conn
        conn.block_s = self.timeout_s
        host._blocked_on(self)
        conn.send(self.payload, ReplySlot(self))
        conn.release()

    def cancel(self) -> None:
        """The client left: its connection closes now, so Redis pops nothing for it."""
        self.gone = True
        if self.conn is not None:
            self.conn.close("client left while blocked", loss=Loss.CLOSED)

    def repin(self) -> None:
        """The pool changed (a reload): blocked on the server its keys are on now."""
        conn = self.conn
        placement = self.host._pool.place(self.keys)
        if conn is None or conn.closed or isinstance(placement, str):
            return
        if placement.server.address != conn.server_address:
            self.moving = True
            conn.close("its keys moved to another server", loss=Loss.CLOSED)

    def slot_done(self, slot: ReplySlot) -> None:
        raw = slot.data or b""
        self.conn = None
        if self.gone:
            return
        if self.moving:  # (its connection was closed to block elsewhere: nothing popped)
            self.moving = False
            self.send()
            return
        if raw[:1] == b"-" and raw.startswith(REDIRECTS) and self.tries < MAX_RETRIES:
            # The slot or the master moved: sent again once the pool knows where (its map is
            # learned again in the background; the waits add up to about 1.5 s).
            self.tries += 1
            placement = self.host._pool.place(self.keys)
            if not isinstance(placement, str):
                placement.pool.map_changed()
            self.host._loop.call_later(RETRY_S * 2 ** (self.tries - 1), self.send)
            return
        self.host._blocked_on(None)
        self.target.complete(raw)
        self.host._release_dispatch()

    def _fail(self, text: str) -> None:
        self.host._blocked_on(None)
        self.target.fail(text)
        self.host._release_dispatch()
