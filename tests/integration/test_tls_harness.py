"""The TLS harness against real servers, no proxy: certificates made at test time, a TLS-only
redis-server reached through Python ``ssl`` and ``redis-cli --tls``, client certificates
required or not, and a TLS Redis Cluster (bus and client ports TLS only)."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from proxy.hashing import key_slot
from tests.integration.harness.clients import RawClient
from tests.integration.harness.tls import (
    Certs,
    TlsRawClient,
    TlsRedisCluster,
    TlsRedisServer,
    client_context,
    make_certs,
    running_tls_servers,
    session_certs,
    tls_cli,
)
from tests.integration.harness.waiting import poll_until


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return session_certs(tmp_path_factory)


@pytest.fixture(scope="module")
def tls_servers(certs: Certs) -> Iterator[dict[str, TlsRedisServer]]:
    """Two TLS-only servers started in parallel: one asks no client certificate, one requires it."""
    no, yes = TlsRedisServer(certs, "no"), TlsRedisServer(certs, "yes")
    with no, yes:
        no.launch()
        yes.launch()
        no.wait_ready()
        yes.wait_ready()
        yield {"no": no, "yes": yes}


@pytest.fixture(scope="module")
def server(tls_servers: dict[str, TlsRedisServer]) -> TlsRedisServer:
    return tls_servers["no"]


@pytest.fixture(scope="module")
def strict_server(tls_servers: dict[str, TlsRedisServer]) -> TlsRedisServer:
    return tls_servers["yes"]


@pytest.fixture(scope="module")
def tls_cluster(certs: Certs) -> Iterator[TlsRedisCluster]:
    """3 TLS masters requiring client certificates (the bus too: nodes present theirs)."""
    with TlsRedisCluster(certs, masters=3, replicas=0, auth_clients="yes").start() as c:
        yield c


def _subject_cn(sock: ssl.SSLSocket) -> str:
    cert = sock.getpeercert()
    assert cert is not None
    subject = cast(tuple[tuple[tuple[str, str], ...], ...], cert["subject"])
    return next(v for rdn in subject for k, v in rdn if k == "commonName")


def test_certs_are_made_quickly_once(tmp_path: Path) -> None:
    started = time.monotonic()
    made = make_certs(tmp_path / "certs")
    took = time.monotonic() - started
    assert took < 2.0, took
    mtime = Path(made.ca).stat().st_mtime_ns
    assert make_certs(tmp_path / "certs") == made  # idempotent: the same files, not made again
    assert Path(made.ca).stat().st_mtime_ns == mtime
    ca = ssl.create_default_context(cafile=made.ca)
    ca.load_cert_chain(made.client_cert, made.client_key)  # each key matches its certificate
    ca.load_cert_chain(made.server2_cert, made.server2_key)
    ca.load_cert_chain(made.other_client_cert, made.other_client_key)


def test_ping_over_tls_with_python_ssl(server: TlsRedisServer, certs: Certs) -> None:
    for context in (client_context(certs), client_context(certs, client_cert=False)):
        with TlsRawClient(server.port, context) as c:  # hostname checked: 127.0.0.1 is in the SAN
            assert c.call("PING") == b"PONG"
            assert isinstance(c.sock, ssl.SSLSocket)
            assert _subject_cn(c.sock) == "localhost"
    with TlsRawClient(server.port, client_context(certs), server_hostname="localhost") as c:
        assert c.call("PING") == b"PONG"
    assert server.cmdstat("ping") >= 3
    assert server.info("server")["redis_version"]


def test_ping_over_tls_with_redis_cli(server: TlsRedisServer, certs: Certs) -> None:
    for client_cert in (True, False):
        done = tls_cli(server.port, certs, "PING", client_cert=client_cert)
        assert (done.returncode, done.stdout) == (0, "PONG\n"), done.stderr


def test_tls_port_only(server: TlsRedisServer) -> None:
    assert server.call("CONFIG", "GET", "port") == [b"port", b"0"]
    with pytest.raises(OSError), RawClient(server.port, timeout_s=5.0) as c:  # plaintext on TLS
        c.call("PING")
    poll_until(lambda: "wrong version number" in server.log(), "the server logs the plaintext hello", 5.0)


def test_client_checks_the_server_ca(server: TlsRedisServer, certs: Certs) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        TlsRawClient(server.port, client_context(certs, ca=certs.other_ca))
    done = tls_cli(server.port, certs, "PING", ca=certs.other_ca)
    assert done.returncode != 0 and "certificate verify failed" in done.stderr, done


def test_auth_clients_yes_refuses_clients_without_a_good_certificate(
    strict_server: TlsRedisServer, certs: Certs
) -> None:
    assert strict_server.call("PING") == b"PONG"  # the harness presents the client certificate
    assert tls_cli(strict_server.port, certs, "PING").stdout == "PONG\n"
    with pytest.raises(OSError):  # TLS 1.3: refused at the first read, after the handshake
        with TlsRawClient(strict_server.port, client_context(certs, client_cert=False), timeout_s=5.0) as c:
            c.call("PING")
    other = client_context(certs)
    other.load_cert_chain(certs.other_client_cert, certs.other_client_key)  # a CA-unknown client
    with pytest.raises(OSError), TlsRawClient(strict_server.port, other, timeout_s=5.0) as c:
        c.call("PING")
    done = tls_cli(strict_server.port, certs, "PING", client_cert=False)
    assert done.stdout != "PONG\n"
    assert done.returncode != 0, done
    for reason in ("peer did not return a certificate", "certificate verify failed"):  # the server's
        poll_until(lambda: reason in strict_server.log(), f"the server logs {reason!r}", 5.0)


def test_server_certificate_rotation(certs: Certs) -> None:
    with running_tls_servers(1, certs) as (s,):
        with s.connect() as before:
            s.call("CONFIG", "SET", "tls-cert-file", certs.server2_cert, "tls-key-file", certs.server2_key)
            assert before.call("PING") == b"PONG"  # connections made before keep going
            assert isinstance(before.sock, ssl.SSLSocket)
            assert _subject_cn(before.sock) == "localhost"
        with s.connect() as after:
            assert isinstance(after.sock, ssl.SSLSocket)
            assert _subject_cn(after.sock) == "localhost rotated"


def test_tls_cluster(tls_cluster: TlsRedisCluster, certs: Certs) -> None:
    ports = {n.port for n in tls_cluster.nodes}
    for node in tls_cluster.nodes:
        assert b"cluster_state:ok" in node.call("CLUSTER", "INFO")
        assert node.call("CONFIG", "GET", "port") == [b"port", b"0"]
        rows = node.call("CLUSTER", "SLOTS")  # asked over TLS: the TLS ports
        assert {r[2][1] for r in rows} == ports
    first = tls_cluster.nodes[0]
    keys = [f"k{i}" for i in range(20)]
    assert {tls_cluster.slot_owner(key_slot(k.encode())).port for k in keys} == ports  # redirections
    for k in keys:
        done = tls_cli(first.port, certs, "-c", "SET", k, f"v-{k}")
        assert done.stdout == "OK\n", done
    for k in keys:
        done = tls_cli(first.port, certs, "-c", "GET", k)
        assert done.stdout == f"v-{k}\n", done
        assert tls_cluster.slot_owner(key_slot(k.encode())).call("GET", k) == f"v-{k}".encode()
