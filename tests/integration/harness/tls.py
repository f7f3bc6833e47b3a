"""TLS for the integration tests: certificates made at test time, TLS-only redis-servers and a TLS
Redis Cluster, and the clients that reach them (Python ``ssl`` and ``redis-cli --tls``).

- ``make_certs(directory)``: two CAs and their leaf certificates, made with the ``openssl`` CLI
  (EC P-256, valid 2 days, well under a second); idempotent per directory, so one set serves a
  whole session through ``session_certs(tmp_path_factory)``
- ``client_context``: an ``ssl.SSLContext`` that verifies the server against a CA (the servers'
  certificates name ``DNS:localhost`` and ``IP:127.0.0.1``, so the hostname is checked even when
  connecting by IP) and presents the client certificate or not
- ``TlsRawClient``: ``RawClient`` over TLS
- ``TlsRedisServer``: a redis-server listening on a TLS port only (``--port 0``); its ``port`` is
  the TLS port, and ``call``/``info``/``cmdstat`` speak TLS with the client certificate
- ``TlsRedisCluster``: ``RedisCluster`` with ``tls-cluster yes`` and ``tls-replication yes``,
  created with ``redis-cli --tls ... --cluster create``
- ``tls_cli``: ``redis-cli --tls ...`` against a port, bounded
- ``TlsSentinel``: ``Sentinel`` on a TLS port only, reaching the servers it watches over TLS
- ``peer_common_name``: the subject CN of the certificate a TLS peer presented
- ``https_get``: ``http_get`` over HTTPS (resproxy's /metrics with ``metrics.tls``), a bearer
  token sent or not
- ``YamlFlow``: a mapping given as one key of ``configs.pool_yaml`` (``tls=YamlFlow(...)``)
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from tests.integration.harness.clients import RawClient
from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.sentinel import Sentinel
from tests.integration.harness.servers import RedisServer, running, start_all

if TYPE_CHECKING:
    import pytest

AuthClients = Literal["no", "yes", "optional"]

OPENSSL_TIMEOUT_S = 10.0
CLI_TIMEOUT_S = 10.0

# One config for every certificate: no prompt, and the extensions of each kind. CA certificates
# and leaves carry what OpenSSL's strict verification (X509_V_FLAG_X509_STRICT, on by default from
# Python 3.13) asks for: key identifiers, key usage, basic constraints. Server certificates are
# also client certificates (clientAuth): redis-server presents its tls-cert-file when it connects
# to another node (cluster bus, replication), and a node with tls-auth-clients yes checks it.
_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no

[dn]

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer

[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""

_COMPLETE = ".complete"  # written last: a directory without it is made again


@dataclass(frozen=True)
class Certs:
    """Paths of PEM files. ``ca`` signed ``server``, ``server2`` (another serial and CN, for
    rotation) and ``client``; ``other_ca``, an independent CA, signed ``other_server`` and
    ``other_client`` (certificates the first CA does not vouch for)."""

    ca: str
    ca_key: str
    server_cert: str
    server_key: str
    server2_cert: str
    server2_key: str
    client_cert: str
    client_key: str
    other_ca: str
    other_ca_key: str
    other_server_cert: str
    other_server_key: str
    other_client_cert: str
    other_client_key: str


def _certs_in(d: Path) -> Certs:
    def p(name: str) -> str:
        return str(d / name)

    return Certs(
        ca=p("ca.crt"),
        ca_key=p("ca.key"),
        server_cert=p("server.crt"),
        server_key=p("server.key"),
        server2_cert=p("server2.crt"),
        server2_key=p("server2.key"),
        client_cert=p("client.crt"),
        client_key=p("client.key"),
        other_ca=p("other-ca.crt"),
        other_ca_key=p("other-ca.key"),
        other_server_cert=p("other-server.crt"),
        other_server_key=p("other-server.key"),
        other_client_cert=p("other-client.crt"),
        other_client_key=p("other-client.key"),
    )


def _openssl_req(
    cnf: str, cert: str, key: str, cn: str, ext: str, issuer: tuple[str, str] | None
) -> list[str]:
    """One ``openssl req`` making a new P-256 key and its certificate, self-signed without
    ``issuer``, else signed by ``issuer`` (certificate, key)."""
    args = [
        "openssl",
        "req",
        "-x509",
        "-new",
        "-config",
        cnf,
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-noenc",
        "-keyout",
        key,
        "-out",
        cert,
        "-subj",
        f"/O=resproxy tests/CN={cn}",
        "-days",
        "2",
        "-set_serial",
        f"0x{secrets.randbits(63) | 1:x}",  # never two certificates with one issuer and serial
        "-extensions",
        ext,
    ]
    if issuer is not None:
        args += ["-CA", issuer[0], "-CAkey", issuer[1]]
    return args


def _run_parallel(commands: Sequence[list[str]]) -> None:
    """Run ``commands`` at once, each bounded; the first failure raised with its output."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for c in commands]
    try:
        for command, proc in zip(commands, procs):
            out, _ = proc.communicate(timeout=OPENSSL_TIMEOUT_S)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed:\n{out.decode(errors='replace')}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=OPENSSL_TIMEOUT_S)


def make_certs(directory: str | os.PathLike[str]) -> Certs:
    """Two CAs and their certificates in ``directory`` (made if missing), generated with the
    ``openssl`` CLI: the CAs first, then the five leaves, each step's commands in parallel.

    Idempotent: a directory already complete (its marker file written last) is reused as it is,
    so several modules, or several calls, share one set.
    """
    d = Path(directory)
    certs = _certs_in(d)
    if (d / _COMPLETE).exists():
        return certs
    d.mkdir(parents=True, exist_ok=True)
    cnf = str(d / "openssl.cnf")
    with open(cnf, "w") as f:
        f.write(_OPENSSL_CNF)
    ca, other = (certs.ca, certs.ca_key), (certs.other_ca, certs.other_ca_key)
    _run_parallel(
        [
            _openssl_req(cnf, *ca, "resproxy test CA", "ca_ext", None),
            _openssl_req(cnf, *other, "resproxy other CA", "ca_ext", None),
        ]
    )
    _run_parallel(
        [
            _openssl_req(cnf, certs.server_cert, certs.server_key, "localhost", "server_ext", ca),
            _openssl_req(cnf, certs.server2_cert, certs.server2_key, "localhost rotated", "server_ext", ca),
            _openssl_req(cnf, certs.client_cert, certs.client_key, "resproxy client", "client_ext", ca),
            _openssl_req(
                cnf, certs.other_server_cert, certs.other_server_key, "localhost", "server_ext", other
            ),
            _openssl_req(
                cnf, certs.other_client_cert, certs.other_client_key, "other client", "client_ext", other
            ),
        ]
    )
    (d / _COMPLETE).touch()
    return certs


def session_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """The session's one set of certificates (made by the first caller, in the session's base
    temporary directory): for a module fixture, ``session_certs(tmp_path_factory)``."""
    return make_certs(tmp_path_factory.getbasetemp() / "tls-certs")


def client_context(certs: Certs, *, client_cert: bool = True, ca: str | None = None) -> ssl.SSLContext:
    """A client context verifying the server against ``ca`` (``certs.ca`` by default), hostname
    included (the server certificates name IP:127.0.0.1 and DNS:localhost); presenting
    ``certs.client_cert`` when ``client_cert``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or certs.ca)
    if client_cert:
        context.load_cert_chain(certs.client_cert, certs.client_key)
    return context


class TlsRawClient(RawClient):
    """``RawClient`` over TLS: the handshake is made (bounded by ``timeout_s``) on construction."""

    def __init__(
        self, port: int, context: ssl.SSLContext, timeout_s: float = 10.0, server_hostname: str = "127.0.0.1"
    ) -> None:
        super().__init__(port, timeout_s)
        try:
            self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        except BaseException:
            self.sock.close()
            raise


def tls_server_args(
    certs: Certs, tls_port: int, auth_clients: AuthClients, cert: str | None = None, key: str | None = None
) -> list[str]:
    """redis-server options for a TLS port only (the plain port off)."""
    return [
        "--port",
        "0",
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        cert or certs.server_cert,
        "--tls-key-file",
        key or certs.server_key,
        "--tls-ca-cert-file",
        certs.ca,
        "--tls-auth-clients",
        auth_clients,
    ]


class TlsRedisServer(RedisServer):
    """A redis-server that accepts TLS only: ``port`` is its TLS port, the plain one is off.

    ``auth_clients`` is ``--tls-auth-clients`` (whether clients must present a certificate the
    CA signed); ``cert``/``key`` replace the server certificate (``certs.server_cert``). The
    harness's own calls (``call``, ``info``, ``cmdstat``, ``clients``) verify the server and
    present the client certificate, so they work whatever ``auth_clients`` says.
    """

    name = "redis-server (TLS)"

    def __init__(
        self,
        certs: Certs,
        auth_clients: AuthClients = "no",
        port: int | None = None,
        extra: Sequence[str] = (),
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(port, extra)
        self.certs = certs
        self.auth_clients = auth_clients
        # After RedisServer's own ``--port``: the last value of an option is the one kept.
        self.extra = [*tls_server_args(certs, self.port, auth_clients, cert, key), *self.extra]
        self.context = client_context(certs)

    def launch(self) -> TlsRedisServer:
        super().launch()
        return self

    def start(self) -> TlsRedisServer:
        super().start()
        return self

    def connect(self, context: ssl.SSLContext | None = None, timeout_s: float = 10.0) -> TlsRawClient:
        """A TLS connection (by default the harness's: CA-verified, client certificate presented)."""
        return TlsRawClient(self.port, context or self.context, timeout_s)

    def call(self, *args: bytes | str | int, password: str | None = None) -> Any:
        """One command straight to this server over TLS (not through a proxy)."""
        with self.connect() as c:
            if password:
                c.call("AUTH", password)
            return c.call(*args)


def start_tls_servers(
    count: int, certs: Certs, auth_clients: AuthClients = "no", extra: Sequence[str] = ()
) -> list[TlsRedisServer]:
    """Start ``count`` TLS redis-servers in parallel and wait for all of them."""
    return start_all([TlsRedisServer(certs, auth_clients, extra=extra) for _ in range(count)])


def running_tls_servers(
    count: int, certs: Certs, auth_clients: AuthClients = "no", extra: Sequence[str] = ()
) -> AbstractContextManager[list[TlsRedisServer]]:
    """``count`` TLS redis-servers for a block, stopped by PID at its end, whatever happened."""
    return running([TlsRedisServer(certs, auth_clients, extra=extra) for _ in range(count)])


def tls_cli_args(certs: Certs, *, client_cert: bool = True, ca: str | None = None) -> list[str]:
    """``redis-cli --tls`` and its certificate options (before ``-h``/``-p`` and the command)."""
    args = ["redis-cli", "--tls", "--cacert", ca or certs.ca]
    if client_cert:
        args += ["--cert", certs.client_cert, "--key", certs.client_key]
    return args


def tls_cli(
    port: int,
    certs: Certs,
    *args: str,
    client_cert: bool = True,
    ca: str | None = None,
    timeout_s: float = CLI_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """``redis-cli --tls ... -h 127.0.0.1 -p port ARGS`` (options such as ``-c`` may lead ARGS),
    bounded; not checked: redis-cli's exit code, stdout and stderr are the caller's to judge."""
    return subprocess.run(
        [*tls_cli_args(certs, client_cert=client_cert, ca=ca), "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


class TlsRedisCluster(RedisCluster):
    """``RedisCluster`` over TLS only: nodes are ``TlsRedisServer``s (``port`` the TLS port) with
    ``tls-cluster yes`` (the bus speaks TLS, on TLS port + 10000) and ``tls-replication yes``,
    created with ``redis-cli --tls ... --cluster create``; ready when every node says
    ``cluster_state:ok`` (and every replica's link is up), asked over TLS.
    """

    def __init__(
        self,
        certs: Certs,
        masters: int = 3,
        replicas: int = 0,
        node_timeout_ms: int = 1000,
        auth_clients: AuthClients = "no",
    ) -> None:
        super().__init__(masters, replicas, node_timeout_ms)
        self.certs = certs
        self.auth_clients = auth_clients
        self.extra += ["--tls-cluster", "yes", "--tls-replication", "yes"]

    def start(self) -> TlsRedisCluster:
        super().start()
        return self

    def _start_nodes(self, count: int) -> list[RedisServer]:
        return [*start_tls_servers(count, self.certs, self.auth_clients, self.extra)]

    def cli_args(self) -> list[str]:
        return tls_cli_args(self.certs)


class TlsSentinel(Sentinel):
    """A Redis Sentinel that accepts TLS only (``port`` is its TLS port) and reaches the master
    and replicas it watches over TLS (``tls-replication yes``), presenting the server
    certificate (which is also a client certificate); ``call`` speaks TLS as
    ``TlsRedisServer``'s does."""

    name = "redis-sentinel (TLS)"

    def __init__(self, certs: Certs, master_name: str, master_port: int, quorum: int = 2) -> None:
        super().__init__(master_name, master_port, quorum)
        self.certs = certs
        self.context = client_context(certs)
        with open(self.conf, "a") as f:  # after Sentinel's "port": the last value is the one kept
            f.write(
                f"port 0\ntls-port {self.port}\n"
                f"tls-cert-file {certs.server_cert}\ntls-key-file {certs.server_key}\n"
                f"tls-ca-cert-file {certs.ca}\ntls-auth-clients no\ntls-replication yes\n"
            )

    def start(self) -> TlsSentinel:
        super().start()
        return self

    def call(self, *args: bytes | str | int) -> Any:
        with TlsRawClient(self.port, self.context) as c:
            return c.call(*args)


def peer_common_name(sock: socket.socket) -> str:
    """The subject CN of the certificate the peer of a TLS socket presented (verified)."""
    assert isinstance(sock, ssl.SSLSocket), sock
    cert = sock.getpeercert()
    assert cert, "no peer certificate"
    subject = cast(tuple[tuple[tuple[str, str], ...], ...], cert["subject"])
    return next(v for rdn in subject for k, v in rdn if k == "commonName")


def https_get(port: int, path: str, certs: Certs, token: str | None = None) -> tuple[int, bytes]:
    """(status, body) of GET https://127.0.0.1:port/path, the server verified against
    ``certs.ca`` (hostname included), with ``Authorization: Bearer <token>`` when ``token``;
    error statuses included."""
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    context = client_context(certs, client_cert=False)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class YamlFlow(dict[str, object]):
    """A mapping written as one YAML value where ``configs`` writes ``str(value)`` (the keys
    of ``pool_yaml``): ``tls=YamlFlow(cert_file=..., key_file=...)``. Its text is JSON, which
    YAML reads as a flow mapping (strings quoted, booleans true/false)."""

    def __str__(self) -> str:
        return json.dumps(self)
