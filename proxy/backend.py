"""One pipelined connection to one Redis server, shared by many clients.

The connection is a FIFO, as twemproxy's server in/out queues are (nc_connection.c):

    send(payload, slot) ──> _out (payloads) ─┐ one writelines per loop turn
                            _pending (slots) │
                                             ▼
                                   redis-server answers in order
                                             │
    data_received ── ReplyParser frames raw replies ── _pending.popleft().complete(raw)

A request's slot joins ``_pending`` in the same step that queues its bytes, so nothing is ever
written without a slot waiting for its reply. Replies are matched strictly in order; if that
order can no longer be trusted — a reply arrives late (``timeout``), an unparsable byte, an
unexpected reply, a reset — the connection is closed and every pending slot gets an error reply.
The server (upstream.py) decides about reconnecting; this module never reconnects by itself.

One op timer per connection, armed lazily: it fires at "last progress + timeout" and re-arms
itself if replies arrived in between, so a busy connection costs one timer per timeout period,
not one per request.

A connection tells its owner when the server answers: ``on_answer`` is called at its first reply
(after the AUTH/SELECT replies, when it has those) and, after ``watch()``, at the next one. A
connection that is only accepted proves nothing: a stopped (SIGSTOP) server's kernel still
accepts connections. The pool counts a server's consecutive failures until it answers.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from proxy import errors, tls
from proxy.inflight import ReplySlot
from proxy.metrics import ServerStats
from proxy.resp import ProtocolError, ReplyParser, is_error

log = logging.getLogger(__name__)


class Loss(enum.Enum):
    """Why a server connection ended, as its server acts on it (upstream.Server._on_lost)."""

    FAILURE = "failure"  # refused, reset, closed by the server, setup rejected: it may be gone
    TIMEOUT = "timeout"  # no reply within ``timeout``: the server is slow, not gone
    CLOSED = "closed"  # the proxy closed it (released, idle, a client left, shutdown): no failure


LostCallback = Callable[["BackendConnection", str, Loss], None]
"""(connection, reason, loss) -> None, called once when the connection is gone."""
ReadyCallback = Callable[[], None]
"""Called once the connection is usable: connected, and AUTH/SELECT/HELLO accepted."""
AnswerCallback = Callable[[], None]
"""Called when the server answers: the connection's first reply, and the next after ``watch``."""
RedirectCallback = Callable[["BackendConnection", ReplySlot, bytes, bytes], None]
"""(connection, slot, request payload, error reply) for the pool's redirect replies: Redis
Cluster's -MOVED/-ASK/-TRYAGAIN/-CLUSTERDOWN (cluster pools), -READONLY (sentinel pools)."""
REDIRECTS = (b"-MOVED ", b"-ASK ", b"-TRYAGAIN", b"-CLUSTERDOWN")


class BackendConnection(asyncio.Protocol):
    """A multiplexed, pipelined connection to one server."""

    def __init__(
        self,
        server_name: str,
        pool_name: str,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout_ms: int,
        init_commands: list[bytes],
        on_lost: LostCallback,
        on_ready: ReadyCallback,
        on_redirect: RedirectCallback | None = None,
        lane: int = 0,
        resp3: bool = False,
        stats: ServerStats | None = None,
        redirects: tuple[bytes, ...] = REDIRECTS,
        on_answer: AnswerCallback | None = None,
    ) -> None:
        self.server_name = server_name
        self.server_address: object = None  # (set by its Server: where it connects)
        self.pool_name = pool_name
        self._loop = loop
        self._timeout_ms = timeout_ms
        self._timeout_s = timeout_ms / 1000.0
        self._init = init_commands  # AUTH / SELECT, written before any request
        self._init_left = len(init_commands)
        self._on_lost = on_lost
        self._on_ready = on_ready
        self._on_answer = on_answer
        # Replies to look at before the plain FIFO path: AUTH/SELECT, and the first reply after
        # a watch(). One flag tested per read, where the init check was.
        self._watching = True
        # Cluster pools: each request's payload is kept until its reply, so a redirect can
        # send it again elsewhere; the callback takes those replies instead of the slot.
        self._on_redirect = on_redirect
        self._redirects = redirects  # the error replies that go to on_redirect
        self._payloads: deque[bytes] = deque()
        self.lane = lane
        self.resp3 = resp3
        self._transport: asyncio.Transport | None = None
        self._parser = ReplyParser()
        self._pending: deque[ReplySlot] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_progress = 0.0
        self.closed = False
        self.connected = False
        self._closed_text = ""  # what requests sent after the close are answered
        self._stats = stats if stats is not None else ServerStats()  # the server's, shared
        # A big bulk reply passing straight to its client: (its slot, the client's reply
        # queue, the client's transport), see _stream_reply.
        self._passing: tuple[ReplySlot, Any, Any] | None = None

    # --- sending -------------------------------------------------------------------------

    def send(self, payload: bytes, slot: ReplySlot) -> None:
        """Queue a request; its reply completes ``slot``."""
        if self.closed:
            slot.fail(self._closed_text)
            return
        if not self._pending:
            self._last_progress = self._loop.time()
            if self._timer is None:
                self._arm_timer()
        self._pending.append(slot)
        self._out.append(payload)
        if self._on_redirect is not None:
            self._payloads.append(payload)
        if not self._flush_scheduled and self._transport is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def resume_writing(self) -> None:
        """A big request's bytes are draining into the server: that is progress as well."""
        self._last_progress = self._loop.time()

    def watch(self) -> None:
        """Call ``on_answer`` at the next reply (the server failed on another connection)."""
        self._watching = True

    def in_flight(self) -> int:
        return len(self._pending)

    def out_queue(self) -> int:
        return len(self._out)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out or self._transport is None or self.closed:
            return
        self._out = []
        stats = self._stats
        stats.requests += len(out)
        stats.request_bytes += sum(map(len, out))
        self._transport.writelines(out)

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport = tls.joined_writes(cast(asyncio.Transport, transport))
        self.connected = True
        if self.closed:  # closed while connecting
            transport.abort()
            return
        if self._init:
            transport.writelines(self._init)
        else:
            self._on_ready()
        if self._pending:
            self._last_progress = self._loop.time()
        if self._out:
            self._flush()

    def data_received(self, data: bytes) -> None:
        stats = self._stats
        stats.response_bytes += len(data)
        if self._passing is not None:  # a big reply going straight to its client
            data = self._pass_on(data)
            if not data:
                return
        parser = self._parser
        try:
            replies = parser.replies(data)
        except ProtocolError as exc:
            self.close(f"unparsable reply: {exc}")
            return
        if not replies:
            # Part of a reply is progress too: a 40 MB reply taking longer than ``timeout`` to
            # arrive is not a late one (twemproxy's test_mget_binary_value, timeout 400 ms).
            self._last_progress = self._loop.time()
            if parser.big:
                self._stream_reply()
            return
        if self._watching:
            replies = self._take_first_replies(replies)
            if self.closed:
                return
        pending = self._pending
        if len(replies) > len(pending):
            self.close("reply without a request")
            return
        stats.responses += len(replies)
        redirect = self._on_redirect
        payloads = self._payloads  # (cluster and sentinel pools only)
        prefixes = self._redirects
        for raw in replies:
            slot = pending.popleft()
            # Each reply is handed on by itself: if one hand-off raised (a bug in a sink), the
            # replies after it must still meet their own requests, or this FIFO would desync.
            try:
                if redirect is None:
                    slot.complete(raw)
                else:
                    payload = payloads.popleft()
                    if raw[:1] == b"-" and raw.startswith(prefixes):
                        redirect(self, slot, payload, raw)
                    else:
                        slot.complete(raw)
            except Exception:
                log.exception(
                    "pool %s: server %s: handing on a reply failed", self.pool_name, self.server_name
                )
        self._last_progress = self._loop.time()
        if parser.big:
            self._stream_reply()

    # --- a big bulk reply, passed on as it arrives ---------------------------------------
    #
    # A GET of a 512 MB value framed whole would hold the value in the proxy (twice, while it
    # is cut out of the read buffer) before its first byte reaches the client. When the reply
    # at the front is a bulk of at least resp.STREAM_MIN_BYTES and every reply its client is
    # owed before it is written already (ReplyQueue.stream_head), its bytes go to the client's
    # transport as they arrive and its slot is completed with b"" at the end. Otherwise (a
    # fan-out part, a retried request, replies owed before it) it is framed whole, as any.

    def _stream_reply(self) -> None:
        if self._init_left or not self._pending:
            return
        slot = self._pending[0]
        sink = slot.sink
        if sink is None:  # its client is gone: dropped as it comes, not gathered to be dropped
            transport = None
        else:
            stream_head = getattr(sink, "stream_head", None)  # a client's ReplyQueue has one
            transport = stream_head(slot) if stream_head is not None else None
            if transport is None:
                return
        if self._watching:  # (the first reply after a watch(): the server answers)
            self._watching = False
            if self._on_answer is not None:
                self._on_answer()
        self._passing = (slot, sink, transport)
        self._write_through(self._parser.take_stream())

    def _pass_on(self, data: bytes) -> bytes:
        """Pass the streamed reply's part of ``data`` on; the rest is for the replies after."""
        parser = self._parser
        chunk, rest = parser.passing(data)
        self._write_through(chunk)
        self._last_progress = self._loop.time()
        if not parser.streaming and self._passing is not None:
            slot = self._passing[0]
            self._passing = None
            self._pending.popleft()
            if self._on_redirect is not None:
                self._payloads.popleft()
            self._stats.responses += 1
            slot.complete(b"")  # its bytes are out already; the queue moves past it
        return rest

    def _write_through(self, chunk: bytes) -> None:
        assert self._passing is not None
        _, queue, transport = self._passing
        if transport is None or not chunk or queue.closed or transport.is_closing():
            return
        transport.write(chunk)
        stats = queue.stats
        if stats is not None:
            stats.bytes_out += len(chunk)
        after = queue.on_flushed  # set while the client's writes are paused: its limits and
        if after is not None:  # the budget are checked after each write, as for a flush
            after()

    def _take_first_replies(self, replies: list[bytes]) -> list[bytes]:
        """The init replies among ``replies`` (checked and taken off); once they are all in,
        the server has answered: tell the owner. The replies left are for requests."""
        if self._init_left:
            replies = self._take_init_replies(replies)
            if self._init_left or self.closed:
                return replies
        self._watching = False
        if self._on_answer is not None:
            self._on_answer()
        return replies

    def _take_init_replies(self, replies: list[bytes]) -> list[bytes]:
        n = min(self._init_left, len(replies))
        for raw in replies[:n]:
            if is_error(raw):
                text = raw[1:].strip().decode("utf-8", "replace")
                # The pool logs the server going down with this reason, once (not per retry).
                log.debug(
                    "pool %s: server %s rejected connection setup: %s",
                    self.pool_name,
                    self.server_name,
                    text,
                )
                self.close(f"setup rejected: {text}")
                return []
        self._init_left -= n
        if not self._init_left:
            self._on_ready()
        return replies[n:]

    def connection_lost(self, exc: Exception | None) -> None:
        reason = str(exc) if exc else "closed by server"
        was_closed = self.closed
        if not was_closed:
            if exc is None:
                self._stats.eof += 1
            else:
                self._stats.errors += 1
        self._shutdown(errors.server_connection_lost(self.server_name, reason))
        if not was_closed:
            self._on_lost(self, reason, Loss.FAILURE)

    # --- failure -------------------------------------------------------------------------

    def close(self, reason: str, error_text: str | None = None, *, loss: Loss = Loss.FAILURE) -> None:
        """Close now and fail every pending request (``error_text``, or a text naming
        ``reason``); the owner hears of it once, with ``loss``."""
        if self.closed:
            return
        if self._transport is not None:  # (a failed connect is counted by the pool)
            if loss is Loss.TIMEOUT:
                self._stats.timeouts += 1
            elif loss is Loss.FAILURE:
                self._stats.errors += 1
        text = error_text or errors.server_connection_lost(self.server_name, reason)
        self._shutdown(text)
        if self._transport is not None:
            self._transport.abort()
        self._on_lost(self, reason, loss)

    def _shutdown(self, error_text: str) -> None:
        self.closed = True
        self.connected = False
        self._closed_text = error_text
        if self._passing is not None:
            # the client has part of a reply that will never end: its stream cannot go on
            _, queue, transport = self._passing
            self._passing = None
            if transport is not None and not queue.closed:
                transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._out = []
        self._payloads.clear()
        pending, self._pending = self._pending, deque()
        for slot in pending:
            slot.fail(error_text)

    def _arm_timer(self) -> None:
        self._timer = self._loop.call_at(self._last_progress + self._timeout_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed or not self._pending:
            return
        if self._loop.time() - self._last_progress >= self._timeout_s:
            log.warning(
                "pool %s: server %s: no reply within %d ms, closing its connection (%d pending)",
                self.pool_name,
                self.server_name,
                self._timeout_ms,
                len(self._pending),
            )
            self.close(
                "timeout", errors.server_timeout(self.server_name, self._timeout_ms), loss=Loss.TIMEOUT
            )
        else:
            self._arm_timer()


class DedicatedConnection(BackendConnection):
    """A connection held by one client at a time, never shared (upstream.Server.take_dedicated).

    Two uses: a streamed request (stream.py), whose first bytes go with ``send`` (and its
    slot) and the rest with ``write_more`` as the client's reads bring them; and a transaction
    (transaction.py), whose WATCH and MULTI...EXEC go with ``send``. ``release`` says the holder
    is done: once every reply is in, the connection goes to ``on_done`` (its server keeps it
    for the next holder) or closes. ``backlogged`` tells a streaming client to stop reading
    while the connection cannot take more (connecting, or the socket buffer is full);
    ``on_writable`` is called when it can again (or is closed: then it takes, and drops,
    everything). While ``uploading``, the op timer waits for the reply, not for a client that
    is still sending the request.
    """

    HIGH_WATER = 4 * 1024 * 1024  # socket buffer bytes past which the client stops being read

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_writable: Callable[[], None] | None = None
        # called once released and answered, to keep the connection for the next holder
        self.on_done: Callable[[DedicatedConnection], None] | None = None
        self.uploading = False
        self.uses = 1  # holders so far (an idle one is closed if not taken again: upstream.py)
        # a blocking command's own timeout (s) while it waits: the deadline is that plus the
        # pool's timeout; 0: none (it blocks until answered, as Redis lets it)
        self.block_s: float | None = None
        # a subscription connection: every reply is a push (pubsub.py), matched to no request
        self.on_push: Callable[[DedicatedConnection, bytes], None] | None = None
        # told once when the connection is gone (its holder's subscriptions are lost)
        self.on_lost: Callable[[DedicatedConnection, str], None] | None = None
        self._write_paused = False
        self._released = False

    @property
    def closed_text(self) -> str:
        """What requests sent on it would be answered, once closed (why it closed)."""
        return self._closed_text

    def rebind(self, on_lost: LostCallback, on_done: Callable[[DedicatedConnection], None]) -> None:
        """Another server object owns it now (Server.adopt)."""
        self._on_lost = on_lost
        self.on_done = on_done

    @property
    def backlogged(self) -> bool:
        return not self.closed and (not self.connected or self._write_paused)

    def write_more(self, chunk: bytes) -> None:
        """More bytes of the streamed request, written in order after what went before."""
        if self.closed or not chunk:
            return
        self._last_progress = self._loop.time()
        if self._transport is not None and not self._out:
            self._stats.request_bytes += len(chunk)
            self._transport.write(chunk)
            return
        self._out.append(chunk)
        self._stats.requests -= 1  # (_flush counts each queued payload as a request)
        if not self._flush_scheduled and self._transport is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def release(self) -> None:
        """The holder is done with it: given back (or closed) once every reply is in."""
        self._released = True
        self.uploading = False
        self._last_progress = self._loop.time()
        self._done_if_answered()

    def _done_if_answered(self) -> None:
        if self._released and not self._pending and not self.closed:
            self._released = False
            self.block_s = None
            if self.on_done is not None:
                self.on_done(self)
            else:
                self.close("stream done", loss=Loss.CLOSED)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.closed and self._transport is not None:
            self._transport.set_write_buffer_limits(high=self.HIGH_WATER)
            self._writable()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        super().resume_writing()
        self._write_paused = False
        self._writable()

    def data_received(self, data: bytes) -> None:
        if self.on_push is not None:
            self._pushes(data, self.on_push)
            return
        super().data_received(data)
        self._done_if_answered()

    def _pushes(self, data: bytes, push: Callable[[DedicatedConnection, bytes], None]) -> None:
        self._stats.response_bytes += len(data)
        try:
            replies = self._parser.replies(data)
        except ProtocolError as exc:
            self.close(f"unparsable reply: {exc}")
            return
        if self._watching:
            replies = self._take_first_replies(replies)
            if self.closed:
                return
        self._last_progress = self._loop.time()
        for raw in replies:
            push(self, raw)

    def _shutdown(self, error_text: str) -> None:
        super()._shutdown(error_text)
        self._writable()
        lost, self.on_lost = self.on_lost, None
        if lost is not None:
            lost(self, error_text)

    def _writable(self) -> None:
        if self.on_writable is not None:
            self.on_writable()

    def _arm_timer(self) -> None:
        block_s = self.block_s
        if block_s is None:
            super()._arm_timer()
        elif block_s:
            deadline = self._last_progress + self._timeout_s + block_s
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        block_s = self.block_s
        if block_s is not None and not self.closed:
            self._timer = None
            if not self._pending or not block_s:  # (0: it blocks until answered)
                return
            if self._loop.time() - self._last_progress < self._timeout_s + block_s:
                self._arm_timer()
                return
            log.warning(
                "pool %s: server %s: a blocking command got no reply within its "
                "timeout plus %d ms, closing its connection",
                self.pool_name,
                self.server_name,
                self._timeout_ms,
            )
            self.close(
                "timeout", errors.server_timeout(self.server_name, self._timeout_ms), loss=Loss.TIMEOUT
            )
            return
        if self.uploading and not self._write_paused and not self.closed:
            # the client is still sending the request: nothing to time yet
            self._last_progress = self._loop.time()
            self._arm_timer()
            return
        super()._on_timer()
