"""tls.TlsAcceptor on uvloop, with an echo protocol behind it (no Redis: the TLS layer alone).

uvloop starts reading a new connection right after its ``connection_made``, before the
handshake task runs: a ClientHello read then must still reach the TLS layer (it once sat in
the acceptor and the handshake hung until its timeout, one connection in ten).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from proxy.security import TlsConfig
from proxy.tls import JOIN_MAX, TlsAcceptor, TlsSetupError, front_context, joined_writes

CONNECTIONS = 200


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    d: Path = tmp_path_factory.mktemp("tls")
    crt, key = str(d / "c.pem"), str(d / "k.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc"]
        + ["-keyout", key, "-out", crt, "-days", "1", "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    yield crt, key


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


def _serve(
    cert: tuple[str, str], client_work: object, timeout_s: float = 5.0, context: ssl.SSLContext | None = None
) -> tuple[Any, list[str]]:
    """Run an acceptor server on uvloop while ``client_work(port)`` runs in a thread."""
    server_ctx = context or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if context is None:
        server_ctx.load_cert_chain(*cert)
    failures: list[str] = []

    async def main() -> object:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: TlsAcceptor(server_ctx, timeout_s, Echo, lambda peer, why: failures.append(why)),
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        try:
            async with asyncio.timeout(120):
                return await asyncio.to_thread(client_work, port)  # type: ignore[arg-type]
        finally:
            server.close()

    return uvloop.run(main()), failures


def test_every_handshake_completes_when_the_client_speaks_at_once(cert: tuple[str, str]) -> None:
    context = ssl.create_default_context(cafile=cert[0])

    def clients(port: int) -> list[str]:
        bad = []
        for i in range(CONNECTIONS):
            try:
                raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                with context.wrap_socket(raw, server_hostname="localhost") as s:
                    s.settimeout(10)
                    s.sendall(b"hello %d" % i)
                    if s.recv(100) != b"hello %d" % i:
                        bad.append(f"{i}: wrong echo")
            except OSError as exc:
                bad.append(f"{i}: {exc}")
        return bad

    bad, failures = _serve(cert, clients)
    assert bad == [] and failures == []


def test_a_plaintext_client_is_closed_and_reported(cert: tuple[str, str]) -> None:
    def probe(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"PING\r\n")
            try:
                return s.recv(100)
            except ConnectionResetError:
                return b""

    answer, failures = _serve(cert, probe)
    assert answer == b"" and len(failures) == 1
    assert "WRONG_VERSION_NUMBER" in failures[0].upper() or "wrong version" in failures[0]


def test_a_silent_client_is_closed_at_the_handshake_timeout_and_reported(cert: tuple[str, str]) -> None:
    def silent(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            return s.recv(100)  # the proxy closes it: b""

    answer, failures = _serve(cert, silent, timeout_s=0.2)
    assert answer == b"" and len(failures) == 1 and "longer than" in failures[0]


def test_a_tcp_health_check_is_not_a_failed_handshake(cert: tuple[str, str]) -> None:
    def checks(port: int) -> list[bytes]:
        answers = []
        for i in range(20):  # connect, then close without a byte: a load balancer's probe
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                if i % 2:
                    s.shutdown(socket.SHUT_WR)
                    answers.append(s.recv(100))
        return answers

    answers, failures = _serve(cert, checks)
    assert answers == [b""] * 10 and failures == []


class Recorder:
    """A transport that records its writes, TLS or not as ``sslcontext`` says."""

    def __init__(self, tls: bool) -> None:
        self.writes: list[bytes] = []
        self.tls = tls
        self.paused = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.writes.extend(chunks)

    def pause_reading(self) -> None:
        self.paused = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return object() if name == "sslcontext" and self.tls else default


def test_writes_to_a_tls_transport_are_joined_into_one_and_the_rest_passes_through() -> None:
    raw = Recorder(tls=True)
    joined = joined_writes(raw)  # type: ignore[arg-type]
    joined.writelines([b"+OK\r\n", b"$1\r\nx\r\n", b":1\r\n"])  # one TLS record, not three
    joined.write(b"+PONG\r\n")
    assert raw.writes == [b"+OK\r\n$1\r\nx\r\n:1\r\n", b"+PONG\r\n"]
    big = [b"x" * JOIN_MAX, b"y"]
    joined.writelines(big)  # past JOIN_MAX: not copied into one
    assert raw.writes[2:] == big
    joined.pause_reading()
    assert raw.paused
    plain = Recorder(tls=False)
    assert joined_writes(plain) is plain  # type: ignore[arg-type,comparison-overlap]


def test_min_version_and_ciphers_are_applied(cert: tuple[str, str], tmp_path: Path) -> None:
    """``min_version: TLSv1.3`` refuses a TLS 1.2 client; ``ciphers`` limits TLS 1.2's suites,
    and a cipher string OpenSSL cannot use is a setup error naming it."""
    crt, key = cert
    strict = front_context(TlsConfig(cert_file=crt, key_file=key, min_version="TLSv1.3"))
    old_client = ssl.create_default_context(cafile=crt)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2

    def handshake(port: int) -> str:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            with old_client.wrap_socket(raw, server_hostname="localhost") as s:
                return str(s.version())
        except ssl.SSLError as exc:
            return f"refused: {exc.reason}"

    outcome, failures = _serve(cert, handshake, context=strict)
    assert outcome.startswith("refused") and len(failures) == 1, (outcome, failures)
    one_suite = "ECDHE-ECDSA-AES128-GCM-SHA256"
    narrow = front_context(TlsConfig(cert_file=crt, key_file=key, ciphers=one_suite))
    assert [c["name"] for c in narrow.get_ciphers() if c["protocol"] == "TLSv1.2"] == [one_suite]
    with pytest.raises(TlsSetupError, match="ciphers 'NO-SUCH-CIPHER'"):
        front_context(TlsConfig(cert_file=crt, key_file=key, ciphers="NO-SUCH-CIPHER"))
