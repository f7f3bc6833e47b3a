"""TLS on both sides: SSL contexts from the config, and the handshake of a TLS front's clients.

* ``front_context(TlsConfig)``: what a TLS listener presents (its certificate, the versions and
  ciphers allowed, client certificates required when ``ca_file`` is set). A front holds its
  context and a reload (SIGHUP) builds a new one from the files as they are then: handshakes
  from then on use it, connected clients keep theirs (certificate rotation drops nobody).
* ``server_context(ServerTlsConfig)``: what the proxy checks servers and sentinels against
  (cached per config; ``forget_server_contexts`` after a reload reads the files again).
* ``TlsAcceptor``: the first protocol of a TLS front's connection. It runs the handshake on the
  event loop (uvloop's TLS, ``loop.start_tls``) within ``handshake_timeout``, then hands the
  encrypted transport to the client protocol. A failed handshake (a plaintext client, a
  certificate the CA did not sign, no certificate when one is required, a timeout) closes the
  connection and is reported to ``on_failure``: counted and logged there, never a traceback. A
  peer that just connects and closes (a TCP health check) is not a failed handshake.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from functools import lru_cache
from typing import Any, cast

from proxy.security import ServerTlsConfig, TlsConfig

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TlsSetupError(ValueError):
    """A certificate, key or CA file that cannot be used (the message says which and why)."""


def _load(what: str, load: Callable[[], None]) -> None:
    try:
        load()
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TlsSetupError(f"{what}: {getattr(exc, 'strerror', None) or exc}") from None


def front_context(cfg: TlsConfig) -> ssl.SSLContext:
    """The server-side context of a TLS front, built from the files as they are now."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[cfg.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION
    _load(
        f"tls: cert_file {cfg.cert_file} / key_file {cfg.key_file}",
        lambda: ctx.load_cert_chain(cfg.cert_file, cfg.key_file),
    )
    if cfg.ciphers:
        _load(f"tls: ciphers {cfg.ciphers!r}", lambda: ctx.set_ciphers(cfg.ciphers or ""))
    if cfg.ca_file:
        ca = cfg.ca_file
        _load(f"tls: ca_file {ca}", lambda: ctx.load_verify_locations(cafile=ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def build_server_context(cfg: ServerTlsConfig) -> ssl.SSLContext:
    """The client-side context the proxy connects to servers (or sentinels) with."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[cfg.min_version]
    if cfg.verify:
        if cfg.ca_file:
            ca = cfg.ca_file
            _load(f"server_tls: ca_file {ca}", lambda: ctx.load_verify_locations(cafile=ca))
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.cert_file and cfg.key_file:
        cert, key = cfg.cert_file, cfg.key_file
        _load(f"server_tls: cert_file {cert} / key_file {key}", lambda: ctx.load_cert_chain(cert, key))
    return ctx


@lru_cache(maxsize=64)
def server_context(cfg: ServerTlsConfig) -> ssl.SSLContext:
    """``build_server_context``, once per config (until ``forget_server_contexts``)."""
    return build_server_context(cfg)


def forget_server_contexts() -> None:
    """A reload read the files again: connections opened from now on use what they hold."""
    server_context.cache_clear()


def connect_options(cfg: ServerTlsConfig | None, host: str) -> dict[str, Any]:
    """What ``create_connection``/``open_connection`` to ``host`` takes for ``cfg`` (nothing
    without TLS): the context, and the SNI name sent and verified (``server_name``, else the
    host connected to)."""
    if cfg is None:
        return {}
    name = cfg.server_name or (host if cfg.verify else None)
    return {"ssl": server_context(cfg), "server_hostname": name}


class TlsAcceptor(asyncio.Protocol):
    """A TLS front's connection until its handshake is done; then the client protocol's."""

    __slots__ = (
        "_loop",
        "_context",
        "_timeout_s",
        "_make",
        "_failed",
        "_raw",
        "_task",
        "_client",
        "_early",
        "_hello",
        "_lost",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        timeout_s: float,
        make_client: Callable[[], asyncio.Protocol],
        on_failure: Callable[[str, str], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._context = context  # the front's as it was when the connection was accepted
        self._timeout_s = timeout_s
        self._make = make_client
        self._failed = on_failure  # (peer address, why)
        self._raw: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: asyncio.Protocol | None = None
        self._early: list[bytes] = []  # decrypted bytes that came before the client existed
        # Raw bytes read before the handshake started (uvloop starts reading right after
        # connection_made, before the task below runs): the ClientHello, for the TLS layer.
        self._hello: list[bytes] | None = []
        self._lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = raw = cast(asyncio.Transport, transport)
        self._task = self._loop.create_task(self._handshake(raw))

    async def _handshake(self, raw: asyncio.Transport) -> None:
        peer = raw.get_extra_info("peername")
        who = str(peer[0]) if isinstance(peer, tuple) else "unix"
        upgrade = self._loop.start_tls(
            raw, self, self._context, server_side=True, ssl_handshake_timeout=self._timeout_s
        )
        # start_tls, as it starts (in this step), pauses reading, puts its TLS protocol on the
        # transport and schedules that protocol's connection_made, then resume_reading: bytes
        # already read go to the TLS protocol before both, so before anything read later.
        hello, self._hello = self._hello, None
        if hello:
            self._loop.call_soon(_feed, raw, b"".join(hello))
        try:
            tls = await upgrade
        except asyncio.CancelledError:
            raw.abort()
            raise
        except (ConnectionResetError, BrokenPipeError):
            # The peer closed before any TLS error: a TCP health check (connect, close) or a
            # client that gave up. Not a failed handshake: nothing to count or log.
            raw.abort()
            return
        except (ssl.SSLError, OSError, TimeoutError, EOFError) as exc:
            raw.abort()
            self._failed(who, _why(exc))
            return
        if tls is None or self._lost:  # closed by the peer right after its handshake
            return
        client = self._client = self._make()
        tls.set_protocol(client)
        client.connection_made(tls)
        for data in self._early:
            client.data_received(data)
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        if self._hello is not None:  # (before start_tls: encrypted)
            self._hello.append(data)
        elif self._client is not None:
            self._client.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        return None  # (the transport closes)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._client is not None:
            self._client.connection_lost(exc)


JOIN_MAX = 256 * 1024  # bytes of one flush joined into one TLS write


class JoinedWrites:
    """A TLS transport whose ``writelines`` is one ``write`` of the joined chunks.

    uvloop's TLS transport encrypts each chunk of a ``writelines`` as a TLS record of its own
    (16 pipelined replies: 16 records, 16 encryptions, 16 record headers); one write of their
    concatenation makes as few records as the bytes need. Past ``JOIN_MAX`` bytes the chunks go
    as they are (a large value is not copied once more). Everything else is the transport's.
    """

    __slots__ = ("_transport", "write")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.write = transport.write

    def writelines(self, chunks: list[bytes]) -> None:
        if sum(map(len, chunks)) <= JOIN_MAX:
            self._transport.write(b"".join(chunks))
        else:
            self._transport.writelines(chunks)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


def joined_writes(transport: asyncio.Transport) -> asyncio.Transport:
    """``transport``, with its writes joined when it is a TLS one (see ``JoinedWrites``)."""
    if transport.get_extra_info("sslcontext") is None:
        return transport
    return cast(asyncio.Transport, JoinedWrites(transport))


def _feed(raw: asyncio.Transport, data: bytes) -> None:
    """Hand bytes read before the handshake began to the TLS protocol now on ``raw``."""
    protocol = raw.get_protocol()
    if raw.is_closing():
        return
    if hasattr(protocol, "buffer_updated"):
        buffered = cast(asyncio.BufferedProtocol, protocol)
        view = memoryview(data)
        while view:
            buf = memoryview(buffered.get_buffer(len(view)))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            buffered.buffer_updated(n)
            view = view[n:]
    else:
        cast(asyncio.Protocol, protocol).data_received(data)


def _why(exc: BaseException) -> str:
    """A short reason for a failed handshake, for the log (never a traceback)."""
    if isinstance(exc, TimeoutError):
        return "handshake timed out"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.__class__.__name__
    return str(exc) or exc.__class__.__name__
