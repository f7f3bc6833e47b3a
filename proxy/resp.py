"""RESP framing, sans-IO (leaf module: no sockets, no clocks, no asyncio).

Two parsers and a few encoders:

* ``RequestParser`` turns the bytes a client sends into commands: each one is its argument list
  (as sent; the client normalises the name) plus the exact bytes it arrived as, so the proxy can forward
  them unchanged instead of re-encoding. Inline commands (``PING\\r\\n`` typed into telnet) are
  accepted like Redis does and re-encoded as multibulk for the servers.
* ``ReplyParser`` frames the replies a server sends: it only finds where each reply ends and hands
  back the raw bytes; the proxy decodes nothing it forwards (fan-out merges cut items out of
  the raw replies, errors are recognised by their first byte).

Limits are the parser's own (constructor arguments), so no caller can forget them. A corrupt
stream raises ``ProtocolError``; nothing can be recovered after it. An error *reply* from a server
(``-WRONGTYPE ...``) is an ordinary reply, never raised.

Speed: both parsers work on whole reads and resume partial frames without rescanning them
(a 10 MB value arriving in 64 KB reads is copied once, not 160 times).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import hiredis

from proxy import accel

CRLF = b"\r\n"
MAX_BULK_BYTES = 512 * 1024 * 1024  # Redis's proto-max-bulk-len default
MAX_ARGS = 1024 * 1024
MAX_INLINE_BYTES = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE
ARG_OVERHEAD = 48  # what a framed argument costs beyond its bytes (object header, list slot)
STREAM_MIN_BYTES = 1024 * 1024  # a bulk at least this big may be streamed (PyRequestParser.offer)


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What a client request may declare; past these it is a protocol error, as in Redis.

    The ``unauth_`` limits apply until the client has authenticated (a pool with
    ``redis_auth``): Redis 7 refuses a larger multibulk count or bulk length from an
    unauthenticated client at the header, before it buffers anything for it.
    """

    max_bulk_bytes: int = MAX_BULK_BYTES
    max_args: int = MAX_ARGS
    max_inline_bytes: int = MAX_INLINE_BYTES
    unauth_max_args: int = 10
    unauth_max_bulk: int = 16 * 1024
    stream_min_bytes: int = STREAM_MIN_BYTES


DEFAULT_LIMITS = RequestLimits()

Request = tuple[list[bytes], bytes]
"""(args, raw): args as the client sent them; raw is what to forward."""


class ProtocolError(Exception):
    """The byte stream cannot be framed; the connection must be closed."""


def _length(head: bytes | bytearray) -> int | None:
    """A length header's value as Redis's string2ll reads it (digits, an optional '-', no
    leading zeros, no '+'); None if it is not one (or longer than any 64-bit number)."""
    if len(head) > 20:  # (and int() refuses strings of over 4300 digits with ValueError)
        return None
    if head.isdigit():
        return int(head) if head[:1] != b"0" or len(head) == 1 else None
    if head[:1] == b"-" and head[1:].isdigit() and head[1:2] != b"0":
        return -int(head[1:])
    return None


def _bulk_length(head: bytes | bytearray, limits: RequestLimits, authenticated: bool) -> int:
    """A request's bulk length header, checked against the limits (Redis's texts)."""
    size = _length(head)
    if size is None or size < 0 or size > limits.max_bulk_bytes:
        raise ProtocolError("invalid bulk length")
    if not authenticated and size > limits.unauth_max_bulk:
        raise ProtocolError("unauthenticated bulk length")
    return size


_SPACE = frozenset(b" \t\n\v\f\r")  # C's isspace()
_TOKEN_END = frozenset(b" \n\r\t")  # what ends an unquoted argument in sdssplitargs
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def split_inline(line: bytes | bytearray) -> list[bytes]:
    """Split an inline command line into arguments exactly as Redis does (sds.c sdssplitargs).

    Arguments are separated by whitespace; "double quotes" take \\n \\r \\t \\b \\a, \\xHH and
    \\<any char> escapes, 'single quotes' only \\'; a closing quote must be followed by whitespace
    or the end of the line. The line ends at a NUL byte (sdssplitargs reads a C string).
    Raises ProtocolError("unbalanced quotes in request") as Redis answers.
    """
    nul = line.find(b"\0")
    if nul >= 0:
        line = line[:nul]
    args: list[bytes] = []
    n = len(line)
    i = 0
    while True:
        while i < n and line[i] in _SPACE:
            i += 1
        if i >= n:
            return args
        current = bytearray()
        quote = 0  # 34 inside "...", 39 inside '...'
        while True:
            c = line[i] if i < n else 0
            if quote:
                if i >= n:
                    raise ProtocolError("unbalanced quotes in request")
                if c == quote:  # closing: it must end the argument
                    if i + 1 < n and line[i + 1] not in _SPACE:
                        raise ProtocolError("unbalanced quotes in request")
                    i += 1
                    break
                if (
                    c == 92
                    and quote == 34
                    and i + 3 < n
                    and line[i + 1] == 120
                    and line[i + 2] in _HEX
                    and line[i + 3] in _HEX
                ):  # "\xHH"
                    current.append(int(bytes(line[i + 2 : i + 4]), 16))
                    i += 3
                elif c == 92 and quote == 34 and i + 1 < n:  # "\n", "\"", "\q" -> q
                    i += 1
                    current.append(_ESCAPES.get(line[i], line[i]))
                elif c == 92 and quote == 39 and i + 1 < n and line[i + 1] == 39:  # '\''
                    i += 1
                    current.append(39)
                else:
                    current.append(c)
            elif i >= n or c in _TOKEN_END:
                break
            elif c == 34 or c == 39:
                quote = c
            else:
                current.append(c)
            i += 1
        args.append(bytes(current))


class PyRequestParser:
    """Frames client requests (multibulk or inline) in pure Python, exactly as Redis does.

    The request framer has two twins with one interface: this class (the reference) and
    ``_speedups.RequestFramer`` (C, proxy/_speedups.c); tests/unit/test_framer_fuzz.py runs
    them side by side. ``RequestParser`` wraps whichever ``accel`` selects.

    ``frame(data)`` adds a read and returns every complete command, each as (args, raw). It is
    resumable, so nothing is scanned twice: a command that arrives in pieces keeps its state
    (the arguments framed so far, the declared count, the current bulk's declared length, the
    offset reached, how far a line was searched for its end), and the next read continues from
    there. A bulk's bytes are not looked at until all of them are in (one length comparison per
    read). Every header is checked against the limits before anything is allocated for it; a
    request's bytes are accumulated as they arrive and never more than that.

    A corrupt stream sets ``error`` (Redis's text) and ``frame`` returns the commands before
    the corruption; after that the framer frames nothing more. ``frame`` also stops early,
    setting ``again``, where what comes next depends on the caller having dispatched the
    commands it returned: until the client has authenticated it returns one command at a time
    (an AUTH lifts the limits the next command's headers are checked against, as Redis runs
    each command before it reads the next), and a big bulk met after other commands is offered
    (see ``offer``) by the next call, once those have been dispatched. Call ``frame()`` again
    then; a call that returns commands never sets ``offer``.
    """

    __slots__ = (
        "_buf",
        "_pos",
        "_count",
        "_bulk",
        "_args",
        "_scanned",
        "limits",
        "authenticated",
        "error",
        "again",
        "offer",
        "_declined",
        "_streaming",
        "_body_left",
        "_crlf_left",
        "_args_left",
        "_head",
        "held",
        "_args_bytes",
        "_carry",
    )

    def __init__(self, limits: RequestLimits = DEFAULT_LIMITS, authenticated: bool = True) -> None:
        self._buf: bytes | bytearray = b""  # unframed bytes, from the current command's start
        self._pos = 0  # how far the current command is framed (an offset into _buf)
        self._count = -1  # its declared argument count (-1: header not read yet)
        self._bulk = -1  # the current argument's declared length (-1: header not read yet)
        self._args: list[bytes] = []  # its arguments framed so far
        self._scanned = 0  # a line (inline, or a header) without its end yet: where to search on
        self.limits = limits
        self.authenticated = authenticated  # False: Redis's unauthenticated limits apply
        self.error: str | None = None  # the stream is corrupt (Redis's text): nothing more is framed
        self.again = False  # frame() stopped early: call it again once its commands are dispatched
        # Streaming (see offer/accept/stream): a command whose bulk is big may be passed on
        # as it arrives instead of being buffered whole.
        self.offer: tuple[list[bytes], int, int] | None = None  # (args before it, count, size)
        self._declined = False  # the current command's offer was declined: buffer it
        self._streaming = False
        self._body_left = 0  # streaming: bytes of the current bulk's body still to pass
        self._crlf_left = 0  # ... and of the CRLF after it
        self._args_left = 0  # ... and arguments after that one
        self._head = b""  # ... and an argument header cut by the end of a read
        self.held = 0  # bytes held for unframed requests (an attribute: read once per read)
        self._args_bytes = 0  # what the arguments framed so far of a partial command take
        self._carry = b""  # streaming: bytes accept() kept back for stream() to check

    def buffered(self) -> int:
        """Bytes received but not yet framed into a command (``held``: what they take, with
        the arguments of a partial command framed so far)."""
        return len(self._buf) + len(self._head)

    # --- streaming a big argument ------------------------------------------------------------
    #
    # When a bulk header declares at least ``stream_min_bytes`` and its body is not all in,
    # ``frame()`` stops before it and sets ``offer`` to (the arguments framed so far, the
    # command's argument count, the bulk's size). The caller either ``decline()``s (the command
    # is then buffered whole, as any other) or ``accept()``s: it gets the command's bytes so far,
    # and from then on ``stream(data)`` hands it each read's bytes that belong to the command,
    # checked as they pass (headers, lengths, CRLFs), until the command ends; what follows it
    # is framed by ``frame()`` again. While an offer waits for an answer, ``frame(data)`` only
    # keeps ``data``.

    def decline(self) -> None:
        """Buffer the offered command whole."""
        self.offer = None
        self._declined = True

    def accept(self) -> bytes:
        """Stream the offered command: its bytes received so far (forward them first)."""
        assert self.offer is not None
        args, count, size = self.offer
        head = self._buf
        have = len(head) - self._pos  # the big bulk's body bytes already here (and its CR?)
        if have > size:  # the byte after the body is checked by stream(), like the rest
            self._carry = bytes(head[self._pos + size :])
            head = head[: self._pos + size]
            have = size
        self.offer = None
        self._streaming = True
        self._body_left = size - have
        self._crlf_left = 2
        self._args_left = count - len(args) - 1
        self._buf = b""
        self._pos = 0
        self._count = self._bulk = -1
        self._args = []
        self._args_bytes = 0
        self.held = len(self._head)
        return head if type(head) is bytes else bytes(head)

    def stream(self, data: bytes) -> tuple[bytes, bool]:
        """The part of ``data`` that belongs to the streamed command, and whether it ended
        there (the rest of ``data`` is kept for ``frame()``). A corrupt command sets ``error``
        and returns (b"", False).

        Only checked bytes are handed out: an argument header cut by the end of a read is held
        back until its CRLF is in and its length checked (Redis ends a line at a CR followed by
        any byte: passing an unchecked header on would let a client slip a command past the
        proxy's framing)."""
        try:
            return self._stream(data)
        except ProtocolError as exc:
            self.error = str(exc)
            return b"", False

    def _stream(self, data: bytes) -> tuple[bytes, bool]:
        if self._carry:  # (a byte accept() left for checking)
            data, self._carry = self._carry + data, b""
        n = len(data)
        i = 0
        held = b""  # a header held back from the last read, handed out once it is checked
        limits = self.limits
        while True:
            if self._body_left:
                take = min(self._body_left, n - i)
                i += take
                self._body_left -= take
                if self._body_left:
                    break
            if self._crlf_left:
                while self._crlf_left and i < n:
                    if data[i] != (13 if self._crlf_left == 2 else 10):
                        raise ProtocolError("bulk string not terminated by CRLF")
                    i += 1
                    self._crlf_left -= 1
                if self._crlf_left:
                    break
            if not self._args_left:
                self._streaming = False
                rest = data[i:]
                if rest:
                    self.feed(rest)
                part = data[:i] if i < n else data
                return held + part if held else part, True
            # the next argument's header, perhaps cut by the end of a read
            head = self._head + data[i : i + limits.max_inline_bytes]
            if head[:1] and head[:1] != b"$":
                raise ProtocolError(f"expected '$', got '{chr(head[0])}'")
            nl = head.find(b"\r\n")
            if nl < 0:
                if len(head) > limits.max_inline_bytes:
                    raise ProtocolError("too big bulk count string")
                self._head = head  # held back: not handed out before it is checked
                self.held = len(head)
                return held + data[:i] if held else data[:i], False
            size = _bulk_length(head[1:nl], limits, self.authenticated)
            if self._head:  # (only ever at the start of a read)
                held = self._head
            i += nl + 2 - len(self._head)
            self._head = b""
            self.held = 0
            self._body_left = size
            self._crlf_left = 2
            self._args_left -= 1
        return held + data if held else data, False

    def feed(self, data: bytes) -> None:
        """Add bytes read from the client without framing them (copied once, into the partial
        command's buffer); ``frame()`` frames them."""
        buf = self._buf
        if not buf:
            self._buf = data
        elif isinstance(buf, bytearray):
            buf += data
        else:
            grown = bytearray(buf)
            grown += data
            self._buf = grown
        self.held = len(self._buf) + len(self._head) + self._args_bytes

    def frame(self, data: bytes = b"") -> list[Request]:
        """Add ``data`` (a read), then return every complete command buffered so far, in order
        (see the class docstring for ``error`` and ``again``)."""
        out: list[Request] = []
        if self.error is not None:
            return out
        if data:
            self.feed(data)
        self.again = False
        if self.offer is not None or self._streaming:
            return out
        buf = self._buf
        end = len(buf)
        start = 0  # where the current command starts
        pos = self._pos
        limits = self.limits
        authenticated = self.authenticated
        view = memoryview(buf)  # arguments and raw bytes are copied out of it once
        try:
            while True:
                if self._count < 0:  # at a command boundary
                    if pos >= end:
                        break
                    if out and not authenticated:  # its AUTH may change the next one's limits
                        self.again = True
                        break
                    if buf[pos] != 42:  # not '*': an inline command
                        nl = buf.find(b"\n", max(pos, self._scanned))
                        if nl < 0:
                            if end - pos > limits.max_inline_bytes:
                                raise ProtocolError("too big inline request")
                            self._scanned = end
                            break
                        self._scanned = 0
                        args = split_inline(buf[pos : nl - 1 if nl > pos and buf[nl - 1] == 13 else nl])
                        pos = start = nl + 1
                        if args:
                            out.append((args, encode_command(args)))
                        continue
                    nl = buf.find(b"\r\n", max(pos + 1, self._scanned), pos + 1 + limits.max_inline_bytes)
                    if nl < 0:
                        if end - pos > limits.max_inline_bytes:
                            raise ProtocolError("too big mbulk count string")
                        self._scanned = end - 1  # (a CR there may be the header's end)
                        break
                    self._scanned = 0
                    count = _length(buf[pos + 1 : nl])
                    if count is None or count > limits.max_args:
                        raise ProtocolError("invalid multibulk length")
                    if not authenticated and count > limits.unauth_max_args:
                        raise ProtocolError("unauthenticated multibulk length")
                    pos = nl + 2
                    if count <= 0:  # *0 and *-1: Redis skips them
                        start = pos
                        continue
                    self._count = count
                    self._args = []
                args = self._args
                while len(args) < self._count:
                    size = self._bulk
                    if size < 0:
                        if pos >= end:
                            break
                        if buf[pos] != 36:  # '$'
                            raise ProtocolError(f"expected '$', got '{chr(buf[pos])}'")
                        nl = buf.find(b"\r\n", max(pos + 1, self._scanned), pos + 1 + limits.max_inline_bytes)
                        if nl < 0:
                            if end - pos > limits.max_inline_bytes:
                                raise ProtocolError("too big bulk count string")
                            self._scanned = end - 1
                            break
                        self._scanned = 0
                        size = self._bulk = _bulk_length(buf[pos + 1 : nl], limits, authenticated)
                        pos = nl + 2
                    if end - pos < size + 2:  # the bulk is not all in: resume here on the next read
                        if size >= limits.stream_min_bytes > 0 and not self._declined:
                            if out:  # offered once these are dispatched (not overtaking them)
                                self.again = True
                            else:
                                self.offer = (args[:], self._count, size)  # (a snapshot)
                        break
                    if buf[pos + size] != 13 or buf[pos + size + 1] != 10:
                        raise ProtocolError("bulk string not terminated by CRLF")
                    args.append(bytes(view[pos : pos + size]))
                    self._args_bytes += size + ARG_OVERHEAD
                    pos += size + 2
                    self._bulk = -1
                if len(args) < self._count:
                    break
                raw = buf if start == 0 and pos == end and type(buf) is bytes else bytes(view[start:pos])
                self._declined = False
                self._args_bytes = 0
                self._count = -1
                self._args = []
                start = pos
                out.append((args, raw))
        except ProtocolError as exc:
            self.error = str(exc)
        finally:
            if start:
                self._buf = bytearray(view[start:]) if start < end else b""
                pos -= start
                if self._scanned:
                    self._scanned -= start
            view.release()  # (a bytearray cannot grow while a view of it exists)
            self._pos = pos
            self.held = len(self._buf) + len(self._head) + self._args_bytes
        return out


class RequestFramer(Protocol):
    """What both request framer twins are (PyRequestParser documents it)."""

    authenticated: bool

    @property
    def limits(self) -> RequestLimits: ...
    @property
    def error(self) -> str | None: ...
    @property
    def again(self) -> bool: ...
    @property
    def offer(self) -> tuple[list[bytes], int, int] | None: ...
    @property
    def held(self) -> int: ...
    def buffered(self) -> int: ...
    def feed(self, data: bytes) -> None: ...
    def frame(self, data: bytes = b"") -> list[Request]: ...
    def decline(self) -> None: ...
    def accept(self) -> bytes: ...
    def stream(self, data: bytes) -> tuple[bytes, bool]: ...


class RequestParser:
    """Frames client requests out of a byte stream: the framer ``accel`` selects (C's
    ``_speedups.RequestFramer`` or its twin ``PyRequestParser``), as proxy/client.py uses it.

    ``commands(data)`` takes a read and hands out its commands: a plain list iterator in the
    common case, a generator where it must go on lazily (a protocol error after them, the
    framer stopped early: ``PyRequestParser.again``). ``rest`` is the framer itself:
    ``offer``, ``held`` and ``buffered()`` are read from it directly.
    """

    __slots__ = ("_framer", "rest")

    def __init__(self, limits: RequestLimits = DEFAULT_LIMITS, authenticated: bool = True) -> None:
        self._framer: RequestFramer = _Framer(limits, authenticated)
        self.rest = self._framer  # (client.py reads offer, held and buffered() on it directly)

    @property
    def limits(self) -> RequestLimits:
        return self._framer.limits

    @property
    def authenticated(self) -> bool:
        return self._framer.authenticated

    @authenticated.setter
    def authenticated(self, value: bool) -> None:
        self._framer.authenticated = value

    def buffered(self) -> int:
        """Bytes received but not yet framed into a command."""
        return self._framer.buffered()

    @property
    def offer(self) -> tuple[list[bytes], int, int] | None:
        """A command with a big argument that may be streamed (PyRequestParser.offer)."""
        return self._framer.offer

    def decline(self) -> None:
        self._framer.decline()

    def accept(self) -> bytes:
        return self._framer.accept()

    def stream(self, data: bytes) -> tuple[bytes, bool]:
        """The part of ``data`` that belongs to the streamed command, and whether it ended
        there (PyRequestParser.stream). Raises ProtocolError for a corrupt command."""
        framer = self._framer
        out = framer.stream(data)
        if framer.error is not None:
            raise ProtocolError(framer.error)
        return out

    def feed(self, data: bytes) -> None:
        """Add bytes read from the client (``commands(data)`` does both in one call)."""
        self._framer.feed(data)

    def commands(self, data: bytes = b"") -> Iterator[Request]:
        """Add ``data``, then yield every complete command buffered so far, in order.

        Raises ProtocolError after yielding the commands that preceded the corruption. Where
        the framer stops early (``PyRequestParser.again``) it is called again once the commands
        before have been taken from here: lazily, so an AUTH dispatched from this iterator
        lifts the unauthenticated limits for the commands after it.
        """
        framer = self._framer
        commands = framer.frame(data)
        if framer.error is None and not framer.again:
            return iter(commands)  # (the common case: a plain list iterator, no generator)
        return self._then(commands)

    def _then(self, commands: list[Request]) -> Iterator[Request]:
        framer = self._framer
        while True:
            yield from commands
            if framer.error is not None:
                raise ProtocolError(framer.error)
            if not framer.again:
                return
            commands = framer.frame()


# Reply types, RESP2 and RESP3 (https://github.com/redis/redis-specification): RESP3 replies
# come on server connections opened with HELLO 3 and go to RESP3 clients.
_LINE = frozenset(b"+-:_,#(")  # status, error, integer, null, double, boolean, big number
_BULK = frozenset(b"$!=")  # bulk string, blob error, verbatim string: length-prefixed
_AGGREGATE = frozenset(b"*%~>|")  # array, map, set, push, attributes


class ReplyParser:
    """Frames RESP2 and RESP3 replies from a server and returns each one's raw bytes.

    The scan itself is ``split_replies`` (every complete reply of a read in one call): C when
    the build compiled proxy/_speedups.c, else its Python twin ``_py_split_replies`` (same
    results; the tests run both). A reply that arrives in pieces is resumed where the scan
    stopped, so a huge array is never rescanned.
    """

    __slots__ = ("_buf", "_pos", "_left", "big", "_pass_left", "stream_min_bytes")

    def __init__(self, stream_min_bytes: int = STREAM_MIN_BYTES) -> None:
        self._buf: bytes | bytearray = b""  # starts at the first byte of an unfinished reply
        self._pos = 0  # how far that reply was scanned
        self._left = 0  # elements it still misses (0: none started)
        # A big bulk reply may be passed on as it arrives (see take_stream): ``big`` is the
        # whole size of the unfinished bulk reply at the front, when it is a big one, else 0.
        self.big = 0
        self._pass_left = 0  # streaming: bytes of that reply still to pass
        self.stream_min_bytes = stream_min_bytes

    # --- streaming a big bulk reply --------------------------------------------------------

    def take_stream(self) -> bytes:
        """Pass the big reply on as it arrives: its bytes so far; the rest comes from
        ``passing``. Only when ``big`` says there is one."""
        head = self._buf
        self._pass_left = self.big - len(head)
        self._buf = b""
        self._pos = self._left = self.big = 0
        return head if type(head) is bytes else bytes(head)

    @property
    def streaming(self) -> bool:
        return self._pass_left > 0

    def passing(self, data: bytes) -> tuple[bytes, bytes]:
        """(the part of ``data`` that belongs to the streamed reply, the rest)."""
        n = self._pass_left
        if n >= len(data):
            self._pass_left = n - len(data)
            return data, b""
        self._pass_left = 0
        return data[:n], data[n:]

    def _find_big(self) -> None:
        buf = self._buf
        self.big = 0
        if buf[:1] != b"$" or not self.stream_min_bytes:
            return
        nl = buf.find(CRLF, 1, 24)
        if nl > 0:
            size = _length(buf[1:nl])
            if size is not None and size >= self.stream_min_bytes:
                self.big = nl + 2 + size + 2

    def feed(self, data: bytes) -> None:
        """Add bytes read from the server (``replies(data)`` does both in one call)."""
        buf = self._buf
        if not buf:
            self._buf = data
        elif isinstance(buf, bytearray):
            buf += data
        else:
            self._buf = bytearray(buf)
            self._buf += data

    def replies(self, data: bytes = b"") -> list[bytes]:
        """Add ``data``, then return every complete reply buffered so far (raw bytes each)."""
        self.big = 0  # (about the reply at the front after this call only: never left stale)
        if data:
            if self._buf:
                self.feed(data)
            else:
                self._buf = data  # the common case, a read that starts at a reply boundary
        buf = self._buf
        try:
            out, start, pos, left = split_replies(buf, *((self._pos, self._left) if self._left else (0, 1)))
        except ValueError as exc:
            raise ProtocolError(f"{exc} from server") from None
        if start >= len(buf):
            self._buf = b""
            self._pos = self._left = 0
        else:
            self._buf = buf[start:] if start else buf
            self._pos = pos - start
            self._left = left
            if left == 1 and pos == start:  # a reply not begun to be scanned: a big bulk?
                self._find_big()
        return out


def _py_scan_reply(buf: bytes | bytearray, pos: int, left: int) -> tuple[int, int]:
    """The Python twin of _speedups.scan_reply: walk frames while ``left`` elements remain.

    Returns (pos, left): left == 0 means a reply ends at pos; left > 0 means more bytes are
    needed, and the same call resumes from the returned state. ValueError on corrupt input.
    """
    end = len(buf)
    find = buf.find
    while left > 0 and pos < end:
        kind = buf[pos]
        nl = find(CRLF, pos + 1)
        if nl < 0:
            break
        if kind in _LINE:
            pos = nl + 2
            left -= 1
            continue
        head = bytes(buf[pos + 1 : nl])
        if not (head.isdigit() or (head[:1] == b"-" and head[1:].isdigit())):
            raise ValueError("invalid length")
        n = int(head)
        if kind in _BULK:
            if n < 0:
                pos = nl + 2
            elif nl + 4 + n > end:
                break
            else:
                pos = nl + 4 + n
            left -= 1
        elif kind in _AGGREGATE:
            pos = nl + 2
            if n < 0:
                left -= 1
                continue
            if kind == 37:  # '%' map: key and value per entry
                n *= 2
            elif kind == 124:  # '|' attributes, then the reply they annotate
                n = n * 2 + 1
            left += n - 1
        else:
            raise ValueError("unexpected reply type byte")
    return pos, left


def _py_merge_arrays(replies: list[bytes], parts: Sequence[tuple[Any, ...]], nkeys: int) -> bytes | None:
    """The Python twin of _speedups.merge_arrays: array items reassembled in key order.

    replies[j] is an array reply whose i-th item answers key position parts[j][-1][i]; returns
    one array of ``nkeys`` raw items, or None if the replies do not fit the positions.
    """
    out: list[bytes | None] = [None] * nkeys
    if len(replies) != len(parts):
        return None
    for raw, part in zip(replies, parts):
        places = part[-1]
        head = raw.find(CRLF)
        if raw[:1] != b"*" or head < 0 or not raw[1:head].isdigit():
            return None
        if int(raw[1:head]) != len(places):
            return None
        pos = head + 2
        for at in places:
            end, left = scan_reply(raw, pos, 1)
            if left or not 0 <= at < nkeys or out[at] is not None:
                return None
            out[at] = raw[pos:end]
            pos = end
    if any(item is None for item in out):
        return None
    return b"*%d\r\n" % nkeys + b"".join(out)  # type: ignore[arg-type]


def _py_split_replies(buf: bytes | bytearray, pos: int, left: int) -> tuple[list[bytes], int, int, int]:
    """The Python twin of _speedups.split_replies: every complete reply in ``buf`` as bytes.

    Scanning resumes from (pos, left) for the reply that starts at offset 0; returns the
    replies, where the first incomplete one starts, and its resume state.
    """
    end = len(buf)
    out: list[bytes] = []
    start = 0
    while start < end:
        pos, left = _py_scan_reply(buf, pos, left)
        if left:
            break
        out.append(bytes(buf[start:pos]))
        start = pos
        left = 1
    return out, start, pos, left


ScanReply = Callable[[bytes | bytearray, int, int], tuple[int, int]]
SplitReplies = Callable[[bytes | bytearray, int, int], tuple[list[bytes], int, int, int]]
MergeArrays = Callable[[list[bytes], Sequence[tuple[Any, ...]], int], bytes | None]
scan_reply: ScanReply = _py_scan_reply
split_replies: SplitReplies = _py_split_replies
merge_arrays: MergeArrays = _py_merge_arrays
_c_encode_command: Callable[[list[bytes]], bytes] | None = None
_Framer: Callable[[RequestLimits, bool], RequestFramer] = PyRequestParser
_speedups = accel.c_module("_speedups")
if _speedups is not None:
    scan_reply = _speedups.scan_reply
    split_replies = _speedups.split_replies
    merge_arrays = _speedups.merge_arrays
    _c_encode_command = _speedups.encode_command
    _Framer = _speedups.RequestFramer


def decode_reply(raw: bytes) -> Any:
    """One complete raw reply as Python values (bytes, int, list, None, hiredis.ReplyError).

    For the few replies the proxy itself must read (CLUSTER SLOTS), never for forwarding.
    """
    reader = hiredis.Reader()
    reader.feed(raw)
    value = reader.gets()
    if value is False:
        raise ProtocolError("incomplete reply")
    return value


ERROR_TYPES = (b"-", b"!")  # an error reply's first byte: simple error, RESP3 blob error


def is_error(raw: bytes) -> bool:
    """True for an error reply (``-ERR ...``, or a RESP3 blob error ``!``)."""
    return raw[:1] in ERROR_TYPES


def _py_encode_command(args: Sequence[bytes]) -> bytes:
    """Encode a command as a RESP multibulk (a TypeError if an argument is not bytes-like)."""
    n = len(args)
    # One format per common size: ~0.2 us for GET/SET against ~0.5 us for the loop below.
    if n == 2:
        a, b = args
        return b"*2\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(a), a, len(b), b)
    if n == 3:
        a, b, c = args
        return b"*3\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(a), a, len(b), b, len(c), c)
    # Longer commands: one %-format per argument count, cached (~40% faster than joining
    # per-argument pieces for an 11-argument MGET).
    fmt = _FORMATS.get(n)
    if fmt is None:
        fmt = b"*%d\r\n" % n + b"$%d\r\n%b\r\n" * n
        if len(_FORMATS) < 64:
            _FORMATS[n] = fmt
    values: list[object] = []
    for a in args:
        values.append(len(a))
        values.append(a)
    return fmt % tuple(values)


_FORMATS: dict[int, bytes] = {}

encode_command: Callable[[list[bytes]], bytes] = _c_encode_command or _py_encode_command
"""Encode a command (a list of bytes) as a RESP multibulk; TypeError for a non-bytes item.
C (proxy/_speedups.c) when built: 0.11 us for an 11-argument MGET against 1.2 us, 0.05 against
0.26 for a GET (timeit on this machine)."""


def encode_error(text: str) -> bytes:
    """``-text\\r\\n``; CR and LF inside the text are replaced so the frame stays valid."""
    return b"-" + text.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace") + CRLF


def encode_int(n: int) -> bytes:
    return b":%d\r\n" % n


def encode_bulk(value: bytes | None) -> bytes:
    if value is None:
        return b"$-1\r\n"
    return b"$%d\r\n%b\r\n" % (len(value), value)


def encode_array(items: Sequence[bytes]) -> bytes:
    """An array whose items are already-encoded replies."""
    return b"*%d\r\n" % len(items) + b"".join(items)


def encode_value(value: Any) -> bytes:
    """Encode a Python value (bytes, int, None, list, hiredis.ReplyError) as a RESP2 reply."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, bytes):
        return encode_bulk(value)
    if isinstance(value, bool):
        return encode_int(int(value))
    if isinstance(value, int):
        return encode_int(value)
    if isinstance(value, hiredis.ReplyError):
        return encode_error(str(value))
    if isinstance(value, list):
        return encode_array([encode_value(v) for v in value])
    if isinstance(value, str):
        return encode_bulk(value.encode())
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_map(pairs: Sequence[tuple[bytes, Any]], resp3: bool) -> bytes:
    """A map: RESP3 ``%`` for RESP3 clients, a flat key/value array for RESP2 ones."""
    items = [encode_value(x) for pair in pairs for x in pair]
    if resp3:
        return b"%%%d\r\n" % len(pairs) + b"".join(items)
    return encode_array(items)


OK = b"+OK\r\n"
PONG = b"+PONG\r\n"
