"""One client's transaction: MULTI ... EXEC / DISCARD and WATCH / UNWATCH.

A transaction must run on one server connection that no other client writes to, and all its
keys must live on one server (ring), one slot (cluster), one route (listener):

    IDLE ──WATCH k──> WATCHING ──MULTI──> QUEUING ──EXEC──> sent ──> IDLE
      │                  │ UNWATCH            │ DISCARD
      └───────MULTI──────┼───────────────> QUEUING
                         ▼
                        IDLE

* **WATCH** takes a dedicated connection (``Server.take_dedicated``) to its keys' server and
  sends WATCH there at once; until EXEC, DISCARD or UNWATCH, the client's commands for that
  server go on that connection too (in order with the WATCH, so its own writes count).
* **MULTI** is answered ``+OK`` by the proxy, and each command after it is checked (known,
  arity, allowed in a transaction, its keys in the transaction's place) and answered
  ``+QUEUED``, or with an error that aborts the transaction as Redis's queue-time errors do.
  The first key seen (WATCH's or a queued command's) fixes the place; ``Pool.place`` checks the
  later ones against it and names both places when they differ.
* **EXEC** sends ``MULTI``, the queued commands and ``EXEC`` in one write on the WATCH
  connection, or on a dedicated connection taken now (a sentinel pool first waits out a
  failover hold: ``settle``). The client gets EXEC's reply. Nothing reaches a server before
  EXEC, so an aborted transaction, or a client that leaves mid-MULTI, leaves nothing queued on
  any server; a client that leaves while watching has its connection closed.
* A queued command that met ``-MOVED``/``-ASK``/``-READONLY`` (the slot or the master moved
  meanwhile) made the server discard the transaction: the client gets an ``EXECABORT`` that
  says to retry, and the pool learns its map again.
"""

from __future__ import annotations

import enum
from typing import Protocol

from proxy import errors
from proxy.backend import DedicatedConnection, Loss
from proxy.commands import CommandSpec, Kind, Refusal, UnroutableKeys, keys_of
from proxy.inflight import ReplyQueue, ReplySlot
from proxy.resp import OK, encode_command
from proxy.scripts import CACHE
from proxy.target import PlacedPool, Placement, Pool
from proxy.upstream import Server

MULTI = encode_command([b"MULTI"])
EXEC = encode_command([b"EXEC"])
UNWATCH = encode_command([b"UNWATCH"])
HELLO2 = encode_command([b"HELLO", b"2"])
HELLO3 = encode_command([b"HELLO", b"3"])
QUEUED = b"+QUEUED\r\n"
# commands without a key that may be queued (they run on the transaction's server)
KEYLESS_IN_MULTI = frozenset({b"PING", b"ECHO", b"TIME", b"LASTSAVE", b"UNWATCH"})
MOVED_REPLIES = (b"-MOVED ", b"-ASK ", b"-READONLY ", b"-TRYAGAIN", b"-CLUSTERDOWN")
SCRIPT_CALLS = frozenset({b"EVALSHA", b"EVALSHA_RO"})


class TxnState(enum.Enum):
    IDLE = "idle"
    WATCHING = "watching"  # WATCH sent on a dedicated connection; no MULTI yet
    QUEUING = "queuing"  # after MULTI: commands are kept until EXEC


class TxnHost(Protocol):
    """What a transaction needs of its client connection."""

    queue: ReplyQueue
    _pool: Pool
    resp3: bool

    def _payload(self, spec: CommandSpec, args: list[bytes], raw: bytes) -> bytes: ...

    def _query_limit(self) -> int: ...

    def _hold_dispatch(self) -> None:
        """What the client sent after this command waits for its reply."""

    def _release_dispatch(self) -> None: ...


class Transaction:
    """The transaction state of one client (see the module docstring)."""

    __slots__ = (
        "_host",
        "state",
        "_aborted",
        "_why",
        "_commands",
        "_preload",
        "_bytes",
        "_anchor",
        "_conn",
        "_server",
        "_placed",
    )

    def __init__(self, host: TxnHost) -> None:
        self._host = host
        self.state = TxnState.IDLE
        self._aborted = False
        self._why: str | None = None  # EXECABORT's reason when nothing was answered at the time
        self._commands: list[bytes] = []
        self._preload: list[bytes] = []  # SCRIPT LOADs of the queued EVALSHAs' known bodies
        self._bytes = 0
        self._anchor: list[bytes] = []  # the first key seen: its place is the transaction's
        self._conn: DedicatedConnection | None = None  # WATCH's connection, while watching
        self._server: Server | None = None  # its server
        self._placed: PlacedPool | None = None  # and its pool

    @property
    def queued_bytes(self) -> int:
        """What the queued commands hold (counted against the proxy's buffer budget)."""
        return self._bytes

    # --- the five commands -------------------------------------------------------------------

    def multi(self) -> None:
        queue = self._host.queue
        if self.state is TxnState.QUEUING:
            queue.push_error(errors.MULTI_NESTED)
            return
        self.state = TxnState.QUEUING
        queue.push_reply(OK)

    def watch(self, keys: list[bytes], payload: bytes) -> None:
        queue = self._host.queue
        if self.state is TxnState.QUEUING:
            queue.push_error(errors.WATCH_IN_MULTI)
            return
        placement = self._place(keys)
        if isinstance(placement, str):
            queue.push_error(placement)
            return
        if self._conn is None:
            conn = placement.server.take_dedicated(self._host.resp3)
            if isinstance(conn, str):
                queue.push_error(conn)
                return
            self._conn = conn
            self._server = placement.server
            self._placed = placement.pool
        if not self._anchor:
            self._anchor = [keys[0]]
        self.state = TxnState.WATCHING
        self._send(payload)

    def unwatch(self, payload: bytes) -> None:
        """UNWATCH outside MULTI (inside, it is queued like any keyless command)."""
        conn = self._conn
        self._end()
        if conn is None or conn.closed:  # (a lost connection watches nothing: OK, as Redis)
            self._host.queue.push_reply(OK)
            return
        _give_back(conn, self._host, self._host.queue.push())

    def discard(self) -> None:
        queue = self._host.queue
        if self.state is not TxnState.QUEUING:
            queue.push_error(errors.DISCARD_WITHOUT_MULTI)
            return
        conn = self._conn
        self._end()
        queue.push_reply(OK)
        if conn is not None:
            _give_back(conn, self._host)

    def exec(self) -> None:
        host = self._host
        queue = host.queue
        if self.state is not TxnState.QUEUING:
            queue.push_error(errors.EXEC_WITHOUT_MULTI)
            return
        conn, server, anchor = self._conn, self._server, self._anchor
        commands, preload, aborted, why = self._commands, self._preload, self._aborted, self._why
        self._end()
        if aborted:
            queue.push_error(errors.execabort_because(why) if why else errors.EXECABORT)
            if conn is not None:
                _give_back(conn, host)
            return
        slot = ReplySlot(_Answered(queue.push(), host))
        host._hold_dispatch()
        placement = host._pool.place(anchor)
        if isinstance(placement, str):
            slot.fail(placement)
            if conn is not None:
                _give_back(conn)
            return
        resp3 = host.resp3

        def run() -> None:
            # placed again: a failover hold may have ended on a new master
            _run(host._pool.place(anchor), slot, commands, preload, conn, server, resp3)

        placement.pool.settle(run)

    # --- inside MULTI ----------------------------------------------------------------------

    def queue(self, found: CommandSpec | Refusal, args: list[bytes], raw: bytes) -> None:
        """A command after MULTI: checked, kept, and answered +QUEUED (or an error that aborts
        the transaction, as Redis's queue-time errors do)."""
        if isinstance(found, Refusal):
            self.abort(found.text)
            return
        spec = found
        kind = spec.kind
        name = spec.name
        keys: list[bytes] = []
        if kind in (Kind.KEYED, Kind.FANOUT, Kind.BLOCKING):
            # (a blocking command inside MULTI does not block: Redis runs its plain form)
            try:
                keys = keys_of(spec, args)
            except UnroutableKeys as exc:
                self.abort(str(exc))
                return
        elif name not in KEYLESS_IN_MULTI:
            self.abort(
                errors.refused(spec.fullname, spec.flags)
                if kind is Kind.REFUSED
                else errors.in_multi(spec.fullname)
            )
            return
        if keys:
            placement = self._place(keys)
            if isinstance(placement, str):
                self.abort(placement)
                return
            if not self._anchor:
                self._anchor = [keys[0]]
        if self._aborted:  # (answered as Redis does, but nothing more is kept)
            self._host.queue.push_reply(QUEUED)
            return
        payload = self._host._payload(spec, args, raw)
        self._bytes += len(payload)
        if self._bytes > self._host._query_limit():
            self.abort(errors.transaction_too_large(self._bytes))
            return
        if name in SCRIPT_CALLS and len(args) > 1:
            body = CACHE.get(args[1])
            if body is not None:
                self._preload.append(encode_command([b"SCRIPT", b"LOAD", body]))
        self._commands.append(payload)
        self._host.queue.push_reply(QUEUED)

    def abort(self, text: str) -> None:
        """A queue-time error: the client gets ``text`` and EXEC will answer EXECABORT."""
        self._aborted = True
        self._commands = []
        self._preload = []
        self._bytes = 0
        self._host.queue.push_error(text)

    def invalidate(self, why: str) -> None:
        """Discard what is queued without a reply now (nothing was asked): EXEC answers
        EXECABORT with ``why``."""
        self._aborted = True
        self._why = why
        self._commands = []
        self._preload = []
        self._bytes = 0

    # --- while watching ----------------------------------------------------------------------

    def send_watched(self, keys: list[bytes], payload: bytes) -> bool:
        """While watching: a command whose keys are on the watched server goes on the WATCH
        connection (after the WATCH, so the client's own writes count); False: not for it."""
        conn = self._conn
        if conn is None or self.state is not TxnState.WATCHING:
            return False
        placement = self._host._pool.place(keys)
        if isinstance(placement, str) or placement.server is not self._server:
            return False
        self._send(payload)
        return True

    def _send(self, payload: bytes) -> None:
        """On the WATCH connection; a redirect in reply (the slot or master moved) becomes an
        error the client can act on, and the pool learns its map again."""
        assert self._conn is not None and self._placed is not None
        _same_protocol(self._conn, self._host.resp3)
        self._conn.send(payload, ReplySlot(_Unmoved(self._host.queue.push(), self._placed)))

    # --- ends --------------------------------------------------------------------------------

    def reset(self) -> None:
        """RESET: out of MULTI, and nothing watched any more."""
        conn = self._conn
        self._end()
        if conn is not None:
            _give_back(conn, self._host)

    def rejected(self, name: bytes, text: str) -> None:
        """EXEC, DISCARD, MULTI or WATCH refused inside MULTI (wrong arity): as Redis, the
        transaction is flagged; a refused EXEC discards it at once."""
        if name != b"EXEC":
            self.abort(text)
            return
        conn = self._conn
        self._end()
        self._host.queue.push_error(errors.execabort_because(text))
        if conn is not None:
            _give_back(conn, self._host)

    def lost(self) -> None:
        """The client left: its WATCH connection is closed (nothing was queued on a server)."""
        conn = self._conn
        self._end()
        if conn is not None:
            conn.close("client left", loss=Loss.CLOSED)

    def _end(self) -> None:
        self.state = TxnState.IDLE
        self._aborted = False
        self._why = None
        self._commands = []
        self._preload = []
        self._bytes = 0
        self._anchor = []
        self._conn = None
        self._server = None
        self._placed = None

    def _place(self, keys: list[bytes]) -> Placement | str:
        """Where ``keys`` live, checked against the transaction's first key."""
        return self._host._pool.place(self._anchor + keys if self._anchor else keys)


class _Unmoved:
    """A reply on a WATCH connection, which follows no redirect: MOVED/ASK/READONLY become
    an error that says to retry (the pool refreshes its map)."""

    __slots__ = ("target", "pool")

    def __init__(self, target: ReplySlot, pool: PlacedPool) -> None:
        self.target = target
        self.pool = pool

    def slot_done(self, slot: ReplySlot) -> None:
        raw = slot.data or b""
        if raw[:1] == b"-" and raw.startswith(MOVED_REPLIES):
            self.pool.map_changed()
            self.target.fail(errors.watched_moved(raw[1:].strip().decode("utf-8", "replace")))
        else:
            self.target.complete(raw)


class _Answered:
    """EXEC's reply on its way to the client: the client then goes on with what followed."""

    __slots__ = ("target", "host")

    def __init__(self, target: ReplySlot, host: TxnHost) -> None:
        self.target = target
        self.host = host

    def slot_done(self, slot: ReplySlot) -> None:
        self.target.complete(slot.data or b"")
        self.host._release_dispatch()


def _give_back(conn: DedicatedConnection, host: TxnHost | None = None, slot: ReplySlot | None = None) -> None:
    """Forget what the connection watched, then return it to its server. With ``host``, what
    the client sent next waits for the UNWATCH's reply (``slot``'s, if the client's): commands
    still pending on this connection must run before the client's next ones."""
    if host is not None:
        host._hold_dispatch()
        slot = ReplySlot(_Answered(slot if slot is not None else ReplySlot(None), host))
    conn.send(UNWATCH, slot if slot is not None else ReplySlot(None))
    conn.release()


def _same_protocol(conn: DedicatedConnection, resp3: bool) -> None:
    """The client switched protocols (HELLO) since it took ``conn``: switch it too."""
    if conn.resp3 != resp3:
        conn.send(HELLO3 if resp3 else HELLO2, ReplySlot(None))
        conn.resp3 = resp3


def _run(
    placement: Placement | str,
    slot: ReplySlot,
    commands: list[bytes],
    preload: list[bytes],
    conn: DedicatedConnection | None,
    server: Server | None,
    resp3: bool,
) -> None:
    """Send MULTI, the commands and EXEC in one write; EXEC's reply completes ``slot``."""
    if isinstance(placement, str):
        slot.fail(placement)
        if conn is not None:
            _give_back(conn)
        return
    if conn is not None and (conn.closed or placement.server is not server):
        if not conn.closed:
            _give_back(conn)
        slot.fail(errors.watch_lost(server.name if server is not None else "?", conn.closed))
        return
    if conn is None:
        taken = placement.server.take_dedicated(resp3)
        if isinstance(taken, str):
            slot.fail(taken)
            return
        conn = taken
    _same_protocol(conn, resp3)
    for load in preload:
        conn.send(load, ReplySlot(None))
    sink = _ExecReplies(slot, placement.pool, len(commands) + 2)
    conn.send(MULTI, ReplySlot(sink))
    for payload in commands:
        conn.send(payload, ReplySlot(sink))
    conn.send(EXEC, ReplySlot(sink))
    conn.release()


class _ExecReplies:
    """Gathers MULTI's, the queued commands' and EXEC's replies; the client gets EXEC's, or a
    retry error when a queued command met a moved slot or master (the server discarded it)."""

    __slots__ = ("_slot", "_pool", "_left", "_moved")

    def __init__(self, slot: ReplySlot, pool: PlacedPool, count: int) -> None:
        self._slot = slot
        self._pool = pool
        self._left = count
        self._moved = b""

    def slot_done(self, slot: ReplySlot) -> None:
        self._left -= 1
        raw = slot.data or b""
        if self._left:
            if not self._moved and raw[:1] == b"-" and raw.startswith(MOVED_REPLIES):
                self._moved = raw
            return
        if self._moved:
            self._pool.map_changed()
            detail = self._moved[1:].strip().decode("utf-8", "replace")
            self._slot.fail(errors.transaction_moved(detail))
        else:
            self._slot.complete(raw)
