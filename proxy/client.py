"""One client connection: parse, classify, dispatch, replies in order, backpressure.

    data_received ─> RequestParser.commands() ─> fast path inline, else _dispatch_slow
                        single key (fast path) ─> pool.route(key).send(raw, slot)
                        MGET/MSET/DEL/... across servers ─> fanout.split + Gather(fanout.merge)
                        local / refused / bad ─> a completed slot, answered in place
                            (COMMAND and CLIENT: local.py)
                        MULTI.../WATCH ─> transaction.py; SCAN/KEYS/SCRIPT/INFO ─> keyspace.py
                        BLPOP... ─> blocking.py; SUBSCRIBE... ─> pubsub.py; MONITOR ─> monitor.py
    ReplyQueue (inflight.py) writes the completed head run: one write per batch.

Holds: a command that goes on a dedicated connection must not be overtaken by the client's
commands on the shared ones, nor overtake them: WATCH, EXEC and blocking commands wait until the
replies owed before them are written (``_barrier``), and what follows an EXEC, UNWATCH, DISCARD,
a blocking command or a SUBSCRIBE waits for its reply (``_hold_dispatch``): the rest of the read
waits in ``_stash``, later reads in ``_arrived`` (up to the query buffer limit).

Limits: reading pauses while more than ``max_pending`` requests await replies, the transport
holds more than ``max_reply_bytes`` unsent (``pause_writing``), or the proxy-wide ``Budget``
is over; it resumes below half of them. A protocol error gets ``-ERR Protocol error: ...``
after the replies owed before it, then the connection is closed; so does QUIT (after ``+OK``),
and so do the pool's client limits (config.ClientLimitsConfig), as Redis applies them: owed
replies past ``client_output_buffer_limit`` and unframed bytes past ``client_query_buffer_limit``
close the client at once (nothing more can be written to it), ``client_timeout`` closes an
idle one, ``auth_failure_limit`` failed AUTHs close it after the last -WRONGPASS.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import cast

from proxy import acl, blocking, errors, keyspace, local, tls
from proxy.budget import Budget
from proxy.commands import (
    CommandSpec,
    Kind,
    Refusal,
    UnroutableKeys,
    is_blocking_call,
    is_denied,
    key_positions,
    keys_of,
    lookup,
    without,
)
from proxy.fanout import merge, split
from proxy.inflight import Flusher, Gather, ReplyQueue, ReplySlot
from proxy.metrics import CommandStats
from proxy.monitor import Monitor
from proxy.pubsub import ALLOWED_WHILE_SUBSCRIBED, Subscriber
from proxy.resp import (
    ProtocolError,
    RequestParser,
    encode_command,
)
from proxy.scripts import CACHE, NoScriptRetry
from proxy.stream import Streamer, StreamState
from proxy.target import Parts, Pool, Target, send_to
from proxy.transaction import Transaction, TxnState

log = logging.getLogger(__name__)

# commands that act at once inside MULTI (the rest are queued)
IMMEDIATE_IN_MULTI = frozenset({b"EXEC", b"DISCARD", b"MULTI", b"WATCH", b"QUIT", b"RESET"})
SCRIPT_BODIES = frozenset({b"EVAL", b"EVAL_RO"})
SCRIPT_CALLS = frozenset({b"EVALSHA", b"EVALSHA_RO"})
LATENCY_SAMPLE_EVERY = 4  # client reads per latency observation (see data_received)


class ClientState(enum.Enum):
    """A client connection's lifecycle.

    OPEN ──QUIT, shutdown, CLIENT KILL, idle──> CLOSING ──replies written──> CLOSED
      └──protocol error, a limit, lost subscriptions──> FAILING ──(at once or after replies)──┘
    REJECTED: refused at connect (client_connections, shutdown), counted only as rejected.
    CLOSING and FAILING read no more requests; FAILING is counted as client_err, CLOSING
    as client_eof.
    """

    OPEN = "open"
    CLOSING = "closing"
    FAILING = "failing"
    CLOSED = "closed"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class ClientLimits:
    max_pending: int = 4096
    max_reply_bytes: int = 4 * 1024 * 1024


def _no_fast_path(name: bytes) -> None:
    """Until a client has authenticated, every command takes the slow path (NOAUTH)."""
    return None


class ClientConnection(asyncio.Protocol):
    """A client of one pool."""

    _next_id = 0

    def __init__(
        self,
        pool: Pool,
        *,
        flusher: Flusher,
        limits: ClientLimits,
        on_open: Callable[[ClientConnection], bool],
        on_close: Callable[[ClientConnection], None],
        info: Callable[[str | None], bytes] | None = None,
        budget: Budget | None = None,
        peers: Callable[[], Collection[ClientConnection]] | None = None,
    ) -> None:
        ClientConnection._next_id += 1
        self.id = ClientConnection._next_id
        self._pool = pool
        self._flusher = flusher
        self._limits = limits
        self._on_open = on_open
        self._on_close = on_close
        self._info = info  # INFO's text, from the composition root
        self._peers = peers  # the clients of the same listen address (CLIENT LIST, KILL)
        self._budget = budget if budget is not None else Budget(1 << 62)
        self._loop = loop = asyncio.get_running_loop()
        self._clock = loop.time
        self.queue = ReplyQueue(flusher, self._clock)
        self._rows = pool.stats.commands  # (pool, command) counter rows, metrics.CommandStats
        # on_flushed is set only while reading is paused or the client is closing: the
        # common flush then costs no extra call
        self._transport: asyncio.Transport | None = None
        self.auth = local.Auth(acl.users_of(pool.config.redis_auth, pool.config.users))
        self._parser = RequestParser(authenticated=self.auth.ok)
        self.peer = "-"
        # bytes this client holds that count against the budget: unframed request bytes, and
        # owed replies while its writes are paused (past max_reply_bytes)
        self._held_in = 0
        self._held_out = 0
        self._soft_since = 0.0  # when owed replies went past the soft output limit (0: not)
        self._budget_paused = False
        self._idle_s = 0.0
        self._active_at = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._streamer: Streamer | None = None  # a request with a big argument (stream.py)
        self.resp3 = False  # HELLO 3 switches this client to RESP3
        self.state = ClientState.OPEN
        self._read_paused = False
        self._write_paused = False
        self.name = b""
        self._reads = 0
        self._txn: Transaction | None = None  # MULTI / WATCH state, once the client uses them
        # Dispatch held: the commands after one that went on a dedicated connection (EXEC,
        # UNWATCH...) wait for its reply, and one that must go there after the replies owed
        # before it (WATCH, EXEC: _barrier) waits for those; the rest of the read in _stash
        self._held = False
        self._stash: Iterator[tuple[list[bytes], bytes]] | None = None
        self._deferred: tuple[list[bytes], bytes] | None = None  # the command at a barrier
        self._arrived: list[bytes] = []  # bytes read while held (framed after the stash)
        self._arrived_bytes = 0
        self._blocked: blocking.Blocked | None = None  # a blocking command, while it waits
        self._subscriber: Subscriber | None = None  # its subscriptions, once it subscribes
        self._monitor: Monitor | None = None  # MONITOR's server connections, while it lasts
        self._fast_keys, self._fast_fanout = self._fast_tables()
        self.created = self.last_read = self._clock()
        self.last_command = ""  # CLIENT LIST's cmd=
        self.addr = self.laddr = "-"

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport = tls.joined_writes(cast(asyncio.Transport, transport))
        limits = self._pool.config.client_limits
        # pause_writing comes at the first of: the proxy's own pause point, a client output limit
        high = min(
            x for x in (self._limits.max_reply_bytes, limits.output_hard_bytes, limits.output_soft_bytes) if x
        )
        transport.set_write_buffer_limits(high=high)
        self.queue.attach(transport, self._pool.stats)  # replies are written by the queue
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "unix"
        self.addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        local = transport.get_extra_info("sockname")
        self.laddr = f"{local[0]}:{local[1]}" if isinstance(local, tuple) else str(local)
        if not self._on_open(self):
            self.state = ClientState.REJECTED  # counted as rejected, not as a client that closed
            transport.write(b"-" + errors.MAX_CLIENTS.encode() + b"\r\n")
            transport.close()
            return
        if limits.idle_timeout_ms:
            self._idle_s = limits.idle_timeout_ms / 1000.0
            self._active_at = self._clock()
            self._idle_timer = self._loop.call_at(self._active_at + self._idle_s, self._on_idle)

    @property
    def pool(self) -> Pool:
        return self._pool

    def set_pool(self, pool: Pool) -> None:
        """A reload replaced this client's pool: its next requests go to the new one."""
        self._pool = pool
        self._rows = pool.stats.commands
        self.queue.stats = pool.stats
        self._relogin(acl.users_of(pool.config.redis_auth, pool.config.users))
        self._fast_keys, self._fast_fanout = self._fast_tables()
        if self._subscriber is not None:
            self._subscriber.repin()  # channels the reload moved follow it
        if self._blocked is not None:
            self._blocked.repin()  # and a blocked pop whose keys moved

    def connection_lost(self, exc: Exception | None) -> None:
        stats = self._pool.stats
        if self.state is not ClientState.REJECTED:  # (counted as rejected only)
            if exc is None and self.state is not ClientState.FAILING:
                stats.client_eof += 1
            else:
                stats.client_err += 1
        self.state = ClientState.CLOSED
        self.queue.close()
        self._transport = None
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._budget.release(self.id)
        self._held_in = self._held_out = 0
        if self._streamer is not None:
            self._streamer.lost()
        if self._txn is not None:
            self._txn.lost()
        if self._subscriber is not None:
            self._subscriber.close()
        if self._monitor is not None:
            self._monitor.stop()
        if self._blocked is not None:  # Redis must not pop an element for a client gone
            self._blocked.cancel()
            self._blocked = None
        self._on_close(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()
        self._check_output()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._soft_since = 0.0
        self._hold(self._held_in, 0)  # below the pause point: bounded by the socket buffer
        self._maybe_resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.state is not ClientState.OPEN:
            return
        if self._held:
            # Still read (a client that leaves while blocked must be seen leaving), but kept
            # for after the hold; past HELD_READ_BYTES, reading pauses.
            if data:
                self._arrived.append(data)
                self._arrived_bytes += len(data)
                if self._arrived_bytes > self._pool.config.client_limits.query_buffer_bytes:
                    self._close_for_limit("query_buffer_limit", self._arrived_bytes)
            return
        self._reads += 1
        self.last_read = now = self._clock()
        if self._idle_s:
            self._active_at = now
        pool = self._pool
        pool.stats.bytes_in += len(data)
        streamer = self._streamer
        if streamer is not None and streamer.state is StreamState.SENDING:
            self._stream_data(streamer, data)
            return
        # Latency is observed for one read in LATENCY_SAMPLE_EVERY (the first, then every 4th):
        # a clock read and a histogram update per request cost ~5% of an unpipelined GET.
        t0 = now if self._reads % LATENCY_SAMPLE_EVERY == 1 else 0.0
        self._serve(self._parser.commands(data), t0)

    def _serve(self, commands: Iterator[tuple[list[bytes], bytes]], t0: float) -> None:
        """Dispatch framed commands; stops early (keeping the rest in ``_stash``) for an EXEC
        in flight: what follows it runs after it, as on one Redis connection."""
        pool = self._pool
        # The single-key fast path is inlined here, with its lookups bound once per read:
        # a 16-command pipeline pays them once, not 16 times (py-spy: ~10% of proxy CPU).
        plain = self._plain()
        fast = self._fast_keys.get if plain else _no_fast_path
        fanout = self._fast_fanout
        push = self.queue.push
        route = pool.route
        route_read = pool.route_read  # replica reads (cluster pools), else None
        resp3 = self.resp3
        lane = self.id
        rows = self._rows
        strips = pool.strips
        count = 0
        last = ""  # the last fast-path command's name (CLIENT LIST's cmd=), stored once per read
        slow = False  # something was answered in place (it needs a flush)
        parser = self._parser
        try:
            for args, raw in commands:
                count += 1
                spec = fast(args[0])
                if spec is not None:
                    a = spec.arity
                    n = len(args)
                    if n == a if a > 0 else n >= -a:
                        last = label = spec.fullname
                        slot = push(rows.get(label) or self._row(label))
                        if route_read is None or not spec.readonly:
                            server = route(args[1])
                        else:
                            server = route_read(args[1])
                        if server is None:
                            slot.fail(pool.unrouted)
                        else:
                            if strips:  # a router's strip_prefix: the pool sees its own key
                                raw = self._stripped(args, [1])
                            # target.send_to, inlined on purpose: the call costs ~500
                            # instructions per GET at -P 16 (callgrind: 11,729 vs 11,229)
                            direct = server.direct
                            if direct is not None and not resp3:
                                direct(raw, slot)
                            else:
                                server.send(raw, slot, resp3=resp3, lane=lane)
                        continue
                elif plain and (spec := fanout.get(args[0])) is not None and len(args) > 1:
                    args[0] = spec.name
                    slow = True  # (an MSET with a missing value is answered in place)
                    self._fanout(spec, args, raw)
                    continue
                slow = True
                last = ""  # (the slow path stores its own)
                self._dispatch_slow(args, raw)
                if self.state is not ClientState.OPEN:
                    break
                if self._held:
                    self._stash = commands  # the rest runs once the hold ends
                    break
                # local commands may have changed these (AUTH, HELLO 3, RESET, MULTI, WATCH)
                plain = self._plain()
                fast = self._fast_keys.get if plain else _no_fast_path
                fanout = self._fast_fanout  # (AUTH as a user with limited rights empties it)
                resp3 = self.resp3
        except ProtocolError as exc:
            self.queue.push_error(errors.protocol(str(exc)))
            slow = True
            self._start_closing(failed=True)
        except Exception:  # a bug must not take other clients down
            log.exception("client %d: internal error while dispatching", self.id)
            self.queue.push_error(errors.INTERNAL)
            slow = True
            self._start_closing(failed=True)
        rest = parser.rest
        if rest.offer is not None and self.state is ClientState.OPEN:  # a big argument: stream it?
            if self._streamer is None:
                self._streamer = Streamer(self, self._loop.call_soon)
            self._streamer.offered()
        if last:
            self.last_command = last
        if count and t0:
            self.queue.mark(t0)
        if slow:
            self.queue.flush()  # what was answered in place; the rest leaves via the flusher
        pending = len(self.queue)
        if pending >= self._limits.max_pending:
            self._pause_reading()
        held = rest.held
        txn = self._txn
        if txn is not None:
            held += txn.queued_bytes  # (a transaction's commands are kept until EXEC)
        if held != self._held_in:
            unframed = rest.buffered()  # (the limit is on the bytes, as Redis's query buffer)
            if unframed > self._pool.config.client_limits.query_buffer_bytes:
                self._close_for_limit("query_buffer_limit", unframed)
                return
            self._hold(held, self._held_out)
            if self.state is not ClientState.OPEN:  # (the budget closed it: it held the most)
                return
        if self._budget.over and not self._budget_paused and self._held_out:
            # Only a client owed replies is paused: reading it less is what lets those drain.
            # (Not one holding part of a request: only reading it can finish that request;
            # nor one holding nothing: none can stall the others by not reading.)
            self._budget_paused = True
            self._budget.wait(self.id, self._budget_resume)
            self._pause_reading()
        if self.state is not ClientState.OPEN and not pending:
            self._close_now()

    def _stream_data(self, streamer: Streamer, data: bytes) -> None:
        try:
            streamer.data(data)
        except ProtocolError as exc:
            self.queue.push_error(errors.protocol(str(exc)))
            self._start_closing(failed=True)
            self.queue.flush()

    def _frame_buffered(self) -> None:
        """Frame what a read left in the parser (after a streamed request's reply, a hold)."""
        if (
            self._held
            or self._stash is not None
            or self.state is not ClientState.OPEN
            or self._transport is None
        ):
            return
        if self._arrived:
            data, self._arrived = b"".join(self._arrived), []
            self._arrived_bytes = 0
            self.data_received(data)
        elif self._parser.buffered():
            self.data_received(b"")

    # --- dispatch ------------------------------------------------------------------------

    def _row(self, label: str) -> CommandStats:
        return self._pool.stats.command(label)

    def _relogin(self, users: acl.Users) -> None:
        """A reload's users: a connected client has its user's new rights at once (as after
        Redis's ACL SETUSER); one whose user is gone is closed after its replies (as after
        ACL DELUSER). What it already holds is checked again: subscriptions (a subscriber that
        lost a channel is closed, as Redis closes it) and a transaction being queued (discarded:
        EXEC answers EXECABORT; Redis checks each command again at EXEC)."""
        auth = self.auth
        if users is auth.users:
            return
        auth.users = users
        if auth.user is None:
            return
        user = users.by_name.get(auth.user.name)
        if user is None:
            auth.user = None
            auth.ok = False
            self.close_after_replies("user_removed")
        elif user != auth.user:
            auth.user = user
            self._recheck(user)

    def _recheck(self, user: acl.User) -> None:
        if user.unrestricted:
            return
        sub = self._subscriber
        if sub is not None and sub.active:
            for kind in (sub.channels, sub.patterns, sub.shards):
                names = list(kind.names)
                verb = kind.verb
                if names and acl.check(user, verb.decode().lower(), verb, [verb, *names], []) is not None:
                    self.close_after_replies("rights_revoked")
                    return
        txn = self._txn
        if txn is not None and txn.state is TxnState.QUEUING:
            txn.invalidate(errors.RIGHTS_CHANGED_IN_MULTI)

    def _fast_tables(self) -> tuple[Mapping[bytes, CommandSpec], Mapping[bytes, CommandSpec]]:
        """What the fast path serves: none of it for a user with limited rights (every command
        of theirs is checked on the slow path), the table minus ``deny_commands`` otherwise."""
        user = self.auth.user
        if user is not None and not user.unrestricted:
            return {}, {}
        return without(self._pool.config.deny_commands)

    def _plain(self) -> bool:
        """Whether the fast path may serve this client (authenticated, not in a transaction)."""
        txn = self._txn
        sub = self._subscriber
        return (
            self.auth.ok
            and (txn is None or txn.state is TxnState.IDLE)
            and (sub is None or not sub.active or self.resp3)
        )

    def _dispatch_slow(self, args: list[bytes], raw: bytes) -> None:
        """Answer or send one command off the fast path, counted under its metrics label (a
        table name, or "unknown"): every reply it queues takes that row."""
        sent_name = args[0]
        args[0] = name = sent_name.upper()  # normalised once; compared as bytes from here on
        found = lookup(args, sent_name)
        label = found.label if isinstance(found, Refusal) else found.fullname
        self.last_command = label
        queue = self.queue
        queue.label = self._rows.get(label) or self._row(label)
        try:
            self._dispatch_one(name, args, raw, found)
        finally:
            queue.label = None

    def _dispatch_one(self, name: bytes, args: list[bytes], raw: bytes, found: CommandSpec | Refusal) -> None:
        queue = self.queue
        if not self.auth.ok and name not in (b"AUTH", b"QUIT", b"HELLO"):
            queue.push_error(errors.NOAUTH)
            return
        txn = self._txn
        if txn is not None and txn.state is TxnState.QUEUING:
            if name not in IMMEDIATE_IN_MULTI:
                refusal = None if isinstance(found, Refusal) else self._not_allowed(found, args)
                if refusal is not None:
                    txn.abort(refusal)
                else:
                    txn.queue(found, args, raw)
                return
            if isinstance(found, Refusal) and name != b"QUIT":  # (e.g. EXEC x: wrong arity)
                txn.rejected(name, found.text)
                return
        if isinstance(found, Refusal):
            queue.push_error(found.text)
            return
        spec = found
        refusal = self._not_allowed(spec, args)
        if refusal is not None:
            queue.push_error(refusal)
            return
        sub = self._subscriber
        if sub is not None and sub.active and not self.resp3:
            if name not in ALLOWED_WHILE_SUBSCRIBED:
                queue.push_error(errors.subscribed_only(spec.fullname))
                return
            if name == b"PING":
                if len(args) > 2:
                    queue.push_error(errors.wrong_arity("ping"))
                else:
                    sub.ping(args[1:])
                return
        kind = spec.kind
        if kind is Kind.LOCAL:
            local.serve(self, spec, args)
        elif kind is Kind.TRANSACTION:
            self._transaction(spec, args, raw)
        elif kind is Kind.KEYSPACE:
            keyspace.serve(self, spec, args, raw)
        elif kind is Kind.REFUSED:
            queue.push_error(errors.refused(spec.fullname, spec.flags))
        elif kind is Kind.BLOCKING or is_blocking_call(spec, args):
            self._blocking(spec, args, raw)
        elif kind is Kind.PUBSUB:
            self._pubsub(spec, args)
        elif kind is Kind.FANOUT and (txn is None or txn.state is TxnState.IDLE):
            self._fanout(spec, args, raw)
        else:
            self._keyed(spec, args, raw)

    def _not_allowed(self, spec: CommandSpec, args: list[bytes], count: bool = True) -> str | None:
        """Why this client may not run this command (``deny_commands``, or its user's rights:
        -NOPERM), or None. Every key of a multi-key command is checked. ``count``: a refusal
        is counted (not when stream.py asks before it streams a large value)."""
        deny = self._pool.config.deny_commands
        if deny and is_denied(spec, deny):
            return errors.denied(spec.fullname, self._pool.name)
        user = self.auth.user
        if user is None or user.unrestricted or "no_auth" in spec.flags:
            return None
        try:
            positions = key_positions(spec, args)
        except UnroutableKeys:
            positions = []  # (the command fails on its own with that error)
        text = acl.check(user, spec.fullname, spec.name, args, positions)
        if text is not None and count:
            self._pool.stats.acl_denials += 1
        return text

    def _transaction(self, spec: CommandSpec, args: list[bytes], raw: bytes) -> None:
        txn = self._txn
        if txn is None:
            txn = self._txn = Transaction(self)
        name = spec.name
        if name in (b"EXEC", b"WATCH") and self._barrier(args, raw):
            return
        if name == b"MULTI":
            txn.multi()
        elif name == b"EXEC":
            txn.exec()
        elif name == b"DISCARD":
            txn.discard()
        elif name == b"WATCH":
            txn.watch(args[1:], self._payload(spec, args, raw))
        else:
            txn.unwatch(raw)

    def _hold_dispatch(self) -> None:
        """A command went on a dedicated connection (EXEC, UNWATCH...): the commands after it
        wait for its reply, or one on a shared connection could run before it."""
        self._held = True

    def _release_dispatch(self) -> None:
        self._loop.call_soon(self._resume_dispatch)  # (not inside the backend's read)

    def _barrier(self, args: list[bytes], raw: bytes) -> bool:
        """Whether a command that goes on a dedicated connection must first wait for the
        replies owed before it (their requests, on shared connections, could run after it);
        if so it is kept, and dispatched once they are all written (_after_flush)."""
        if not len(self.queue):
            return False
        self._deferred = (args, raw)
        self._held = True
        self.queue.on_flushed = self._after_flush  # (brings us back once they are written)
        return True

    def _run_deferred(self) -> None:
        deferred, self._deferred = self._deferred, None
        if deferred is None or self.state is not ClientState.OPEN or self._transport is None:
            return
        self._held = False
        if not self._read_paused:
            self.queue.on_flushed = None
        self._dispatch_slow(*deferred)
        self.queue.flush()
        if not self._held:
            self._resume_dispatch()

    def _resume_dispatch(self) -> None:
        self._held = False
        stash, self._stash = self._stash, None
        if self.state is not ClientState.OPEN or self._transport is None:
            return
        if stash is not None:
            self._serve(stash, 0.0)
            if self._held:
                return  # another hold in what followed
        self._maybe_resume_reading()
        self._frame_buffered()

    def _blocking(self, spec: CommandSpec, args: list[bytes], raw: bytes) -> None:
        if self._barrier(args, raw):
            return
        sub, monitor = self._subscriber, self._monitor
        if (sub is not None and sub.active) or (monitor is not None and monitor.active):
            # (its reply would hold back every message behind it, unbounded)
            self.queue.push_error(errors.blocking_while_pushed(spec.fullname))
            return
        blocking.serve(self, spec, args, self._payload(spec, args, raw))

    def _pubsub(self, spec: CommandSpec, args: list[bytes]) -> None:
        sub = self._subscriber
        if sub is None:
            sub = self._subscriber = Subscriber(self)
        if self._monitor is not None and self._monitor.active:
            self.queue.push_error(errors.refused(spec.fullname, spec.flags))
            return
        if spec.name.endswith(b"UNSUBSCRIBE"):
            sub.unsubscribe(spec.name, args[1:])
        else:
            sub.subscribe(spec.name, args[1:])

    def _subscriptions_lost(self, reason: str) -> None:
        """A subscription connection was lost: closed, as a Redis restart would close it (the
        client reconnects and subscribes again)."""
        local.log_limited(
            "pubsub",
            self.peer,
            "pool %s: client %d's subscriptions lost (%s): closing it",
            self._pool.name,
            self.id,
            reason,
        )
        self.begin_shutdown(failed=True)

    @property
    def subscriptions(self) -> int:
        sub = self._subscriber
        return 0 if sub is None else sub.count + len(sub.shards.names)

    def _blocked_on(self, waiter: blocking.Blocked | None) -> None:
        self._blocked = waiter

    @property
    def blocked(self) -> bool:
        return self._blocked is not None

    def _payload(self, spec: CommandSpec, args: list[bytes], raw: bytes) -> bytes:
        """The command as its pool must see it (keys without a stripped route prefix)."""
        if not self._pool.strips:
            return raw
        try:
            return self._stripped(args, key_positions(spec, args))
        except UnroutableKeys:
            return raw

    def _query_limit(self) -> int:
        return self._pool.config.client_limits.query_buffer_bytes

    def _keyed(self, spec: CommandSpec, args: list[bytes], raw: bytes) -> None:
        try:
            keys = keys_of(spec, args)
        except UnroutableKeys as exc:
            self.queue.push_error(str(exc))
            return
        if not keys:
            self.queue.push_error(errors.no_keys(spec.fullname))
            return
        if self._pool.strips:
            raw = self._stripped(args, key_positions(spec, args))
        name = spec.name
        if name in SCRIPT_BODIES:
            CACHE.remember(args[1])
        txn = self._txn
        if txn is not None and txn.send_watched(keys, raw):
            return  # while watching: on the WATCH connection, in order with the WATCH
        if spec.kind is Kind.FANOUT:
            self._fanout(spec, args, raw)
            return
        server = self._pool.route_many(keys, spec.readonly)
        if isinstance(server, str):
            self.queue.push_error(server)
            return
        if name in SCRIPT_CALLS and server is not None:
            body = CACHE.get(args[1])
            if body is not None:  # a NOSCRIPT from a server that lost it: loaded, sent again
                queue = self.queue
                target = queue.push()
                sink = NoScriptRetry(target, server, raw, body, self.resp3, self.id, queue)
                server.send(raw, ReplySlot(sink), resp3=self.resp3, lane=self.id)
                return
        self._send(server, raw)

    def _stripped(self, args: list[bytes], positions: list[int]) -> bytes:
        strip = self._pool.strip
        args = list(args)
        for i in positions:
            args[i] = strip(args[i])
        return encode_command(args)

    def _send(self, server: Target | None, raw: bytes, row: CommandStats | None = None) -> None:
        slot = self.queue.push(row)
        if server is None:
            slot.fail(self._pool.unrouted)
        else:
            send_to(server, raw, slot, self.resp3, self.id)

    def _fanout(self, spec: CommandSpec, args: list[bytes], raw: bytes) -> None:
        row = self._rows.get(spec.fullname) or self._row(spec.fullname)
        if args[0] == b"MSET" and len(args) % 2 == 0:
            self.queue.push_error(errors.wrong_arity(spec.fullname), row)
            return
        pool = self._pool
        parts: Parts | None = pool.split_command(args)  # the C kernel, where it applies
        if parts is None:
            read = spec.readonly

            def group(keys: list[bytes]) -> list[tuple[Target | None, list[int]]]:
                return list(pool.group_keys(keys, read))

            step = 2 if args[0] == b"MSET" else 1
            parts = [
                (
                    server,
                    self._stripped(sub, list(range(1, len(sub), step)))
                    if pool.strips
                    else encode_command(sub),
                    positions,
                )
                for server, sub, positions in split(args, group)
            ]
        if len(parts) == 1:
            self._send(parts[0][0], parts[0][1] if pool.strips else raw, row)
            return
        stats = pool.stats
        stats.fanouts += 1
        stats.fragments += len(parts)
        parent = self.queue.push(row)
        nkeys = (len(args) - 1) // (2 if args[0] == b"MSET" else 1)
        gather = Gather(parent, merge, args[0], nkeys, parts)
        resp3, lane = self.resp3, self.id
        for (server, payload, _), child in zip(parts, gather.slots):
            if server is None:
                child.fail(pool.unrouted)
            else:
                send_to(server, payload, child, resp3, lane)

    # --- what local commands change (local.py) ----------------------------------------

    def set_resp3(self, on: bool) -> None:
        """HELLO 2|3: the protocol of this client's replies from now on."""
        self.resp3 = on

    def authenticated(self, user: acl.User) -> None:
        """AUTH or HELLO AUTH succeeded: this connection is ``user`` from now on, and Redis's
        unauthenticated request limits are off."""
        self.auth.user = user
        self.auth.ok = True
        self._parser.authenticated = True
        self._fast_keys, self._fast_fanout = self._fast_tables()

    def close_after_replies(self, reason: str | None = None) -> None:
        """QUIT (reason None), or a limit (``reason`` counted): no more requests are read;
        the connection closes once the replies owed are written."""
        if reason is not None:
            self._pool.stats.closed[reason] += 1
        self.begin_shutdown(failed=reason is not None)  # (at once when nothing is owed)

    def info_text(self, section: str | None) -> bytes:
        """The proxy's own INFO sections, from the composition root (None: every one)."""
        return self._info(section) if self._info is not None else b""

    def start_monitor(self) -> None:
        if self._monitor is None:
            self._monitor = Monitor(self)
        self._monitor.start()

    def reset(self) -> None:
        """RESET: back to a new connection's state (name, protocol, subscriptions, MONITOR,
        transaction, and as Redis does, user: ``default``, or nobody if it needs a password)."""
        self.name = b""
        self.resp3 = False
        self.auth.as_new()
        self._parser.authenticated = self.auth.ok
        self._fast_keys, self._fast_fanout = self._fast_tables()
        if self._subscriber is not None:
            self._subscriber.close(lost=False)
        if self._monitor is not None:
            self._monitor.stop(lost=False)
        if self._txn is not None:
            self._txn.reset()

    def now(self) -> float:
        return self._clock()

    def peers(self) -> Collection[ClientConnection]:
        """The clients of the same listen address (CLIENT LIST, CLIENT KILL)."""
        return self._peers() if self._peers is not None else [self]

    # --- writing, backpressure, closing --------------------------------------------------

    def _after_flush(self) -> None:
        """After each write while reading is paused (or closing): owed bytes against the limits."""
        if self.state is not ClientState.OPEN:
            if not len(self.queue):
                self._close_now()
            return
        if self._streamer is not None:
            self._streamer.flushed()
        if self._deferred is not None and not len(self.queue):
            self._loop.call_soon(self._run_deferred)
        if self._write_paused and self._check_output():
            return
        if self._read_paused:
            self._maybe_resume_reading()

    def _check_output(self) -> bool:
        """Owed replies against client_output_buffer_limit and the budget; True if closed."""
        if self._transport is None or self.state is not ClientState.OPEN:
            return True
        owed = self._transport.get_write_buffer_size()
        limits = self._pool.config.client_limits
        if limits.output_hard_bytes and owed > limits.output_hard_bytes:
            self._close_for_limit("output_buffer_limit", owed)
            return True
        if limits.output_soft_bytes and owed > limits.output_soft_bytes:
            now = self._clock()
            if not self._soft_since:
                self._soft_since = now
                # checked again then, even if nothing more is written (as Redis's cron does)
                self._loop.call_later(limits.output_soft_seconds + 0.01, self._check_soft)
            if now - self._soft_since >= limits.output_soft_seconds:
                self._close_for_limit("output_buffer_limit", owed)
                return True
        else:
            self._soft_since = 0.0
        self._hold(self._held_in, owed)
        return self.state is not ClientState.OPEN  # (the budget may have closed this client)

    def _check_soft(self) -> None:
        """The soft limit's deadline: closed if over it all along since (Redis's cron check);
        a client that went under and over again got a new deadline (and a new timer)."""
        if self._soft_since and self._write_paused:
            self._check_output()

    def _hold(self, held_in: int, held_out: int) -> None:
        """Report what this client holds now to the budget."""
        if held_in != self._held_in or held_out != self._held_out:
            self._held_in = held_in
            self._held_out = held_out
            self._budget.hold(self.id, held_in + held_out, self._evicted)
            if self._budget_paused and not held_out:
                self._budget.release(self.id)
                self._budget_resume()

    def _evicted(self) -> None:
        """The budget closes this client: it held the most when the proxy held too much."""
        self._close_for_limit("max_buffered_bytes", self._held_in + self._held_out)

    def _budget_resume(self) -> None:
        self._budget_paused = False
        self._maybe_resume_reading()

    def _close_for_limit(self, reason: str, held: int) -> None:
        """Close at once for a client limit (owed or buffered bytes are dropped, as Redis does)."""
        self._pool.stats.closed[reason] += 1
        local.log_limited(
            reason,
            self.peer,
            "pool %s: closing client %d from %s: %s reached (%d bytes)",
            self._pool.name,
            self.id,
            self.peer,
            reason,
            held,
        )
        self.state = ClientState.FAILING
        self.abort()

    def _on_idle(self) -> None:
        self._idle_timer = None
        if self._transport is None or self.state is not ClientState.OPEN:
            return
        now = self._clock()
        streamer = self._streamer
        # (sending, and the proxy reading it: a client the proxy itself stopped reading, its
        # server connection backlogged, is not idle)
        sending = (
            streamer is not None and streamer.state is StreamState.SENDING and not streamer.holds_reading
        )
        sub, monitor = self._subscriber, self._monitor
        if (sub is not None and sub.active) or (monitor is not None and monitor.active):
            self._active_at = now  # (Redis exempts pub/sub and MONITOR clients too)
        elif len(self.queue) and not sending:
            # replies owed: waiting on the proxy is not idleness (a client that stops halfway
            # through a big value is, though: it holds a server connection)
            self._active_at = now
        elif now - self._active_at >= self._idle_s:
            self._pool.stats.closed["idle_timeout"] += 1
            self._start_closing()
            self._close_now()
            return
        self._idle_timer = self._loop.call_at(self._active_at + self._idle_s, self._on_idle)

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self.queue.on_flushed = self._after_flush
            self._transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self._read_paused
            and not self._write_paused
            and not self._budget_paused
            and not (self._streamer is not None and self._streamer.holds_reading)
            and not self._held
            and self.state is ClientState.OPEN
            and len(self.queue) < self._limits.max_pending // 2
            and self._transport is not None
        ):
            self._read_paused = False
            self.queue.on_flushed = None
            self._transport.resume_reading()

    def _start_closing(self, failed: bool = False) -> None:
        """No more requests; the connection closes once the replies owed are written.
        ``failed``: for an error (counted as client_err), not the client's QUIT or shutdown."""
        if self._streamer is not None:
            self._streamer.abandon()  # a half-sent request must not wait for the rest
        if self.state is ClientState.OPEN or (failed and self.state is ClientState.CLOSING):
            self.state = ClientState.FAILING if failed else ClientState.CLOSING
        self.queue.on_flushed = self._after_flush
        self._pause_reading()

    def _close_now(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def begin_shutdown(self, failed: bool = False) -> None:
        """Stop taking requests; close once the replies owed are written."""
        self._start_closing(failed)
        if not len(self.queue):
            self._close_now()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
