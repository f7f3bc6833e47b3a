"""Streaming a request with a big argument to its server as it arrives (one client's side).

A ``SET key <512 MB>`` buffered whole would cost the proxy the value's size (and the time to
copy it) before the first byte reaches Redis. Instead, when the request framer meets a bulk of
at least ``stream_min_bytes`` whose body is not all in (``RequestParser.offer``), and the
command has its one key before that bulk, the command is *streamed*:

    IDLE ──offer──> WAITING ──client's earlier replies all written──> SENDING
                      │ (not streamable: decline, buffer it whole)       │ each read's bytes of the
                      ▼                                                  │ command go straight to a
                    IDLE                                                 │ connection of its own
                                                                         ▼
    IDLE <──its reply written, what followed it is framed again── ANSWERING

The command runs on a server connection of its own (``Server.take_dedicated``: kept idle after
its reply for the server's next stream, a few per server), never on the shared pipelined ones:
a client that uploads slowly, or leaves halfway, must not hold up other clients' requests or
leave half a command on a shared connection. Order is kept by waiting: the client's earlier
requests are all answered before the first byte is sent, and nothing after the streamed
command is framed before its reply is in. If the client leaves mid-stream, the dedicated
connection is closed at once, so Redis discards the partial command.
Reading pauses while the server connection cannot take more (backpressure), so the proxy holds
a read's worth of the value at a time, not the value.

Only ring pools' servers take streams (a cluster's MOVED/ASK would need the whole request
again; a router's strip_prefix rewrites the key); anything else is declined and buffered.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol

from proxy.backend import DedicatedConnection, Loss
from proxy.commands import FAST_SINGLE_KEY, CommandSpec, Kind, Refusal, lookup
from proxy.inflight import ReplyQueue, ReplySlot
from proxy.metrics import CommandStats
from proxy.pool import RingPool
from proxy.resp import ProtocolError, RequestParser
from proxy.target import Pool
from proxy.upstream import Server


class StreamState(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"  # offered and streamable: waiting for the client's earlier replies
    SENDING = "sending"  # the command's bytes go to its server as they arrive
    ANSWERING = "answering"  # all sent: waiting for its reply before framing what follows


class StreamHost(Protocol):
    """What a streamer needs of its client connection."""

    _parser: RequestParser
    queue: ReplyQueue
    _pool: Pool
    resp3: bool

    def _row(self, label: str) -> CommandStats: ...

    def _pause_reading(self) -> None: ...

    def _maybe_resume_reading(self) -> None: ...

    def _frame_buffered(self) -> None: ...

    def _plain(self) -> bool: ...

    def _not_allowed(self, spec: CommandSpec, args: list[bytes], count: bool = True) -> str | None: ...


class Streamer:
    """One client's streamed request, if any (see the module docstring)."""

    __slots__ = ("_host", "state", "_conn", "_slot", "_later", "streams")

    def __init__(self, host: StreamHost, later: Callable[[Callable[[], None]], object]) -> None:
        self._host = host
        self.state = StreamState.IDLE
        self._conn: DedicatedConnection | None = None
        self._slot: ReplySlot | None = None  # the streamed request's, while SENDING
        self._later = later  # loop.call_soon: framing resumes outside the flush that woke it
        self.streams = 0  # requests streamed (tests and metrics read it)

    @property
    def holds_reading(self) -> bool:
        """Reading must stay paused: waiting for replies, or the server cannot take more."""
        state = self.state
        if state is StreamState.SENDING:
            conn = self._conn
            return conn is not None and conn.backlogged
        return state is not StreamState.IDLE

    def offered(self) -> None:
        """The framer stopped at a big bulk (``parser.offer``): stream it, or buffer it."""
        host = self._host
        if self._server() is None:
            host._parser.decline()
            return
        self.state = StreamState.WAITING
        if len(host.queue):
            host._pause_reading()  # started by flushed() once every earlier reply is out
        else:
            self._start()

    def _server(self) -> Server | None:
        """The ring pool server the offered command streams to, or None (buffer it)."""
        host = self._host
        offer = host._parser.offer
        if offer is None or host._pool.strips:
            return None
        args, count, _ = offer
        name = args[0].upper()
        spec = FAST_SINGLE_KEY.get(name)
        if spec is None:
            found = lookup([name, *args[1:]])
            if isinstance(found, Refusal) or found.kind is not Kind.KEYED or found.key_index != 1:
                return None
            spec = found
        if len(args) < 2 or not spec.arity_ok(count):
            return None
        if not host._plain():
            return None  # in a transaction (queued, or on its WATCH connection)
        if host._not_allowed(spec, [spec.name, args[1]], count=False) is not None:
            return None  # buffered whole, then refused as any command (deny_commands, NOPERM)
        server = host._pool.route(args[1])
        if not isinstance(server, Server) or not isinstance(server.pool, RingPool):
            return None
        if not server.can_dedicate():  # (as many as it may have are held)
            return None
        return server

    def _start(self) -> None:
        host = self._host
        parser = host._parser
        server = self._server()
        offer = parser.offer
        if server is None or offer is None:  # (a reload may have changed the pool meanwhile)
            if offer is not None:
                parser.decline()
            self.state = StreamState.IDLE
            self._later(self._resume)
            return
        name = offer[0][0].upper()
        spec = lookup([name, *offer[0][1:]])
        label = spec.label if isinstance(spec, Refusal) else spec.fullname
        slot = self._slot = host.queue.push(host._row(label))
        conn = server.take_dedicated(host.resp3)
        assert not isinstance(conn, str)  # (can_dedicate said yes, and nothing ran since)
        self._conn = conn
        conn.uploading = True
        conn.on_writable = self._writable
        self.state = StreamState.SENDING
        self.streams += 1
        conn.send(parser.accept(), slot)
        host._maybe_resume_reading()  # (stays paused while the connection cannot take more)

    def data(self, data: bytes) -> None:
        """A read while SENDING: pass on the command's part; raises ProtocolError."""
        host = self._host
        conn = self._conn
        assert conn is not None
        try:
            part, done = host._parser.stream(data)
        except ProtocolError:
            # As Redis: the half request gets no reply of its own, only the protocol error
            # that follows it (so its slot is completed empty before its connection closes).
            if self._slot is not None:
                self._slot.complete(b"")
            self.abandon()
            raise
        conn.write_more(part)
        if done:
            conn.release()
            self._conn = self._slot = None
            if len(host.queue):
                self.state = StreamState.ANSWERING
                host._pause_reading()  # what follows waits for the reply (flushed())
            else:  # answered already (an error before the end): go on now
                self.state = StreamState.IDLE
                self._later(self._resume)
        elif conn.backlogged:
            host._pause_reading()

    def _writable(self) -> None:
        if self.state is StreamState.SENDING:
            self._host._maybe_resume_reading()

    def flushed(self) -> None:
        """The client's replies were written: move on if that was what we waited for."""
        if len(self._host.queue):
            return
        if self.state is StreamState.WAITING:
            self._start()
        elif self.state is StreamState.ANSWERING:
            self.state = StreamState.IDLE
            self._later(self._resume)

    def _resume(self) -> None:
        self._host._maybe_resume_reading()
        self._host._frame_buffered()  # what followed the streamed command in its last read

    def lost(self) -> None:
        """The client left: a half-sent command must never run, so its connection closes."""
        self.abandon()

    def abandon(self) -> None:
        """No more of the request will be read (the client left, or is closing): close its
        connection, so Redis drops the half command and its slot gets an error reply."""
        if self.state is StreamState.ANSWERING:
            return  # all sent: its reply is on its way
        if self._conn is not None:
            self._conn.close("client left mid-request", loss=Loss.CLOSED)
            self._conn = self._slot = None
        self.state = StreamState.IDLE
