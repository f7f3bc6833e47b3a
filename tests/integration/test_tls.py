"""TLS through resproxy, all real processes: certificates made at test time (harness ``tls``),
TLS-only redis-servers and a TLS Redis Cluster, redis-cli --tls and redis-py over TLS.

* A TLS pool (``tls:``) in front of plain redis-servers serves redis-cli --tls and redis-py
  (``ssl=True``): commands, a pipeline of 100 SET/GET, a 1 MB value.
* Plaintext on the TLS port: closed at once (well before ``handshake_timeout``), counted in
  ``resproxy_tls_handshake_failures_total`` and INFO, logged once per peer, no traceback. A
  client that sends nothing is closed when ``handshake_timeout`` runs out, and counted.
* Mutual TLS (``ca_file``): no certificate, or one the other CA signed, is refused; the right
  one is served.
* Certificate rotation: the files overwritten in place and SIGHUP, there and back again; held
  connections keep working, new handshakes present the files as they are. A broken certificate
  file makes the reload rejected, and the running certificate stays.
* ``server_tls``: a ring pool over TLS-only servers that require client certificates (mutual
  TLS), and a pool whose CA does not vouch for them (an ``-ERR`` at once, not a hang); a cluster
  pool over a TLS cluster, whose nodes it learns from CLUSTER SLOTS; a sentinel pool whose
  sentinel (``sentinel_tls``) and master are TLS only.
* ``metrics: {listen: PORT, tls, token}``: a bare port binds loopback only; /metrics over HTTPS
  needs the bearer token (401 without it), /healthz does not.
* ``-t`` with a certificate that does not match its key: exit 1, the file named.
"""

from __future__ import annotations

import shutil
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from proxy.hashing import key_slot
from tests.integration.harness.clients import RawClient, client_list, error_text
from tests.integration.harness.configs import MURMUR_RING, native_config, pool_yaml, server_lines
from tests.integration.harness.metrics import Metrics, http_get
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import ResProxy, run_proxy_check
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.tls import (
    Certs,
    TlsRawClient,
    TlsRedisCluster,
    TlsRedisServer,
    TlsSentinel,
    YamlFlow,
    client_context,
    https_get,
    peer_common_name,
    session_certs,
    tls_cli,
)
from tests.integration.harness.waiting import poll_until

TOKEN = "metrics-token-0123456789"  # 16 characters or more
FAILURES = "resproxy_tls_handshake_failures_total"
CLIENT_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 5.0  # a plaintext probe's bounded wait: well under EDGE_HANDSHAKE_MS
EDGE_HANDSHAKE_MS = 30000  # the edge pool waits this long for a handshake that is not coming
MTLS_HANDSHAKE_MS = 1000  # the mutual-TLS pool gives up on a silent client after this
SERVER_TIMEOUT_MS = 2000
MASTER_NAME = "tlsmaster"  # what the TLS sentinel monitors the TLS master as
LOG_WAIT_S = 10.0


def front_tls(certs: Certs, **more: object) -> YamlFlow:
    """A pool's ``tls:`` presenting ``certs.server_cert`` (CN localhost)."""
    return YamlFlow(cert_file=certs.server_cert, key_file=certs.server_key, **more)


def client_tls(certs: Certs, ca: str | None = None) -> YamlFlow:
    """A pool's ``server_tls:``: servers verified against ``ca`` (``certs.ca``), the proxy
    presenting ``certs.client_cert``."""
    return YamlFlow(ca_file=ca or certs.ca, cert_file=certs.client_cert, key_file=certs.client_key)


def tls_redis(port: int, certs: Certs) -> redis.Redis:
    """redis-py over TLS, verifying the proxy against ``certs.ca``; no silent retries (redis-py
    retries a failed connection 3 times by default, which would hide a failed handshake)."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        ssl=True,
        ssl_ca_certs=certs.ca,
        socket_timeout=CLIENT_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
    )


def tls_client(port: int, certs: Certs, context: ssl.SSLContext | None = None) -> TlsRawClient:
    """A TLS connection verifying the proxy against ``certs.ca``, no client certificate."""
    return TlsRawClient(port, context or client_context(certs, client_cert=False), CLIENT_TIMEOUT_S)


def info_field(client: RawClient, field: str) -> str:
    """One field of the proxy's INFO, asked on ``client``'s connection."""
    text: str = client.call("INFO", "stats").decode()
    return next(line.split(":", 1)[1] for line in text.splitlines() if line.startswith(field + ":"))


def read_until_closed(sock: socket.socket) -> bytes:
    """What the peer sends until it closes the connection (EOF or reset); a bounded wait (the
    socket's timeout): TimeoutError if it stays open."""
    got = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


def handshake_warnings(log: str, front: str) -> list[str]:
    return [line for line in log.splitlines() if "WARNING" in line and f"{front}: TLS handshake from" in line]


def wait_for_value(read: Callable[[], float], expected: float, what: str) -> None:
    """Bounded wait until ``read()`` is ``expected`` (a counter the proxy bumps on its own
    time); on timeout, an assertion showing the last value."""
    try:
        poll_until(lambda: read() == expected, what, LOG_WAIT_S)
    except TimeoutError:
        assert read() == expected, what


def assert_no_traceback(*proxies: ResProxy) -> None:
    for p in proxies:
        assert "Traceback" not in p.log(), p.log()[-5000:]


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the listening TCP sockets on ``port`` (from /proc/net)."""
    found: set[str] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            address, _, hex_port = fields[1].partition(":")
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(socket.inet_ntop(family, raw))
    return found


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus text body, sample by sample: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): float(s.value)
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


# --- shared processes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return session_certs(tmp_path_factory)


@pytest.fixture(scope="module")
def backends(certs: Certs) -> Iterator[dict[str, list[RedisServer]]]:
    """Two plain redis-servers and two TLS-only ones requiring client certificates, started in
    parallel."""
    plain = [RedisServer(), RedisServer()]
    tls: list[RedisServer] = [TlsRedisServer(certs, "yes"), TlsRedisServer(certs, "yes")]
    every = [*plain, *tls]
    try:
        for s in every:
            s.launch()
        for s in every:
            s.wait_ready()
        yield {"plain": plain, "tls": tls}
    finally:
        for s in every:
            s.cleanup()


@pytest.fixture(scope="module")
def edge(certs: Certs, backends: dict[str, list[RedisServer]]) -> Iterator[ResProxy]:
    """A TLS ring pool ``edge`` over the two plain servers; /metrics over HTTPS with a bearer
    token, on a bare port (``metrics.listen: PORT``)."""
    port, metrics_port = free_port(), free_port()
    pool = pool_yaml(
        "edge",
        port,
        server_lines(backends["plain"]),
        **MURMUR_RING,
        timeout=SERVER_TIMEOUT_MS,
        tls=front_tls(certs, handshake_timeout=EDGE_HANDSHAKE_MS),
    )
    metrics = (
        f"metrics:\n  listen: {metrics_port}\n  tls: {front_tls(certs)}\n  token: {TOKEN}\n"  # bare port
    )
    with ResProxy(native_config(pool) + metrics, port=port).start() as p:
        # set once it is ready (the endpoint opens before the ready line): the harness's own
        # readiness probe of a metrics port speaks plain HTTP
        p.metrics_port = metrics_port
        yield p


@pytest.fixture(scope="module")
def mtls(certs: Certs, backends: dict[str, list[RedisServer]]) -> Iterator[ResProxy]:
    """A mutual-TLS pool ``mtls`` (``ca_file``: clients need a certificate ``certs.ca`` signed),
    a short ``handshake_timeout``; plain /metrics."""
    port, metrics_port = free_port(), free_port()
    pool = pool_yaml(
        "mtls",
        port,
        server_lines(backends["plain"]),
        timeout=SERVER_TIMEOUT_MS,
        tls=front_tls(certs, ca_file=certs.ca, handshake_timeout=MTLS_HANDSHAKE_MS),
    )
    args = ["--metrics", f"127.0.0.1:{metrics_port}"]
    with ResProxy(native_config(pool), args, port=port, metrics_port=metrics_port).start() as p:
        yield p


@pytest.fixture(scope="module")
def tls_cluster(certs: Certs) -> Iterator[TlsRedisCluster]:
    """3 TLS-only masters requiring client certificates (the cluster bus over TLS too)."""
    with TlsRedisCluster(certs, masters=3, replicas=0, auth_clients="yes").start() as c:
        yield c


# --- a TLS front ----------------------------------------------------------------------------


def test_redis_cli_and_redis_py_over_tls(
    edge: ResProxy, certs: Certs, backends: dict[str, list[RedisServer]]
) -> None:
    for s in backends["plain"]:
        s.call("FLUSHALL")
    done = tls_cli(edge.port, certs, "SET", "cli:k", "v1", client_cert=False)
    assert (done.returncode, done.stdout) == (0, "OK\n"), done
    done = tls_cli(edge.port, certs, "GET", "cli:k", client_cert=False)
    assert (done.returncode, done.stdout) == (0, "v1\n"), done
    client = tls_redis(edge.port, certs)
    try:
        assert client.ping()
        assert client.get("cli:k") == b"v1"
        pipe = client.pipeline(transaction=False)
        for i in range(100):
            pipe.set(f"pipe:{i}", f"v{i}")
            pipe.get(f"pipe:{i}")
        replies = pipe.execute()
        assert replies == [r for i in range(100) for r in (True, f"v{i}".encode())]
        big = bytes(range(256)) * 4096  # 1 MiB, every byte value
        assert client.set("big", big)
        assert client.get("big") == big
        assert client.strlen("big") == len(big)
        keys = [f"pipe:{i}" for i in range(100)]
        assert client.mget(keys) == [f"v{i}".encode() for i in range(100)]
    finally:
        client.close()
    # in front of both plain servers, which hold what the TLS clients wrote
    held = [int(s.call("DBSIZE")) for s in backends["plain"]]
    assert all(n > 0 for n in held) and sum(held) == 102, held
    with tls_client(edge.port, certs) as c:
        assert isinstance(c.sock, ssl.SSLSocket)
        assert peer_common_name(c.sock) == "localhost"
        assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert int(info_field(c, "tls_handshake_failures")) == 0  # every handshake here succeeded
    assert handshake_warnings(edge.log(), "edge") == [], edge.log()
    assert_no_traceback(edge)


def test_plaintext_on_the_tls_port_is_closed_counted_and_logged_once(edge: ResProxy, certs: Certs) -> None:
    def failures() -> float:
        status, body = https_get(edge.metrics_port, "/metrics", certs, TOKEN)
        assert status == 200, body
        return samples(body)[(FAILURES, (("pool", "edge"),))]

    assert handshake_warnings(edge.log(), "edge") == [], edge.log()  # none before the probes
    before = failures()
    probes = 3
    for _ in range(probes):
        with socket.create_connection(("127.0.0.1", edge.port), timeout=PROBE_TIMEOUT_S) as raw:
            raw.sendall(b"PING\r\n")
            # closed (EOF or reset) within the bounded wait, far below the pool's 30 s
            # handshake_timeout: the proxy did not wait for a handshake that is not coming
            got = read_until_closed(raw)
            assert not got.startswith((b"+", b"-")), got  # no RESP reply (a TLS alert at most)
    wait_for_value(failures, before + probes, "the failures counted")
    with tls_client(edge.port, certs) as c:  # the INFO line agrees
        assert int(info_field(c, "tls_handshake_failures")) == before + probes
        assert c.call("PING") == b"PONG"  # and TLS clients are served as before
    poll_until(lambda: handshake_warnings(edge.log(), "edge") != [], "the WARNING line", LOG_WAIT_S)
    warnings = handshake_warnings(edge.log(), "edge")
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0], warnings

    # a client that does not trust the proxy's certificate (the other CA) aborts the handshake
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_client(edge.port, certs, client_context(certs, client_cert=False, ca=certs.other_ca))
    wait_for_value(failures, before + probes + 1, "the client's refusal counted")
    done = tls_cli(edge.port, certs, "PING", ca=certs.other_ca, client_cert=False)  # (it retries once)
    assert done.returncode != 0 and "certificate verify failed" in done.stderr, done
    # logged at most once per peer address per minute: every failure here came from 127.0.0.1
    # within seconds
    assert handshake_warnings(edge.log(), "edge") == warnings, edge.log()
    assert_no_traceback(edge)


# --- mutual TLS -----------------------------------------------------------------------------


def test_mutual_tls_refuses_clients_without_the_right_certificate(mtls: ResProxy, certs: Certs) -> None:
    def failures() -> float:
        return Metrics(mtls.metrics_port).value(FAILURES, pool="mtls")

    before = failures()
    no_cert = client_context(certs, client_cert=False)
    other_cert = client_context(certs, client_cert=False)
    other_cert.load_cert_chain(certs.other_client_cert, certs.other_client_key)  # the other CA's
    for context in (no_cert, other_cert):
        # TLS 1.3: the client's side of the handshake may complete before the proxy checks the
        # certificate; the refusal then shows at the first read
        with pytest.raises(OSError) as refused:
            with tls_client(mtls.port, certs, context) as c:
                c.call("PING")
        assert not isinstance(refused.value, TimeoutError), refused.value  # refused, not left hanging
    wait_for_value(failures, before + 2, "the refusals counted")

    with tls_client(mtls.port, certs, client_context(certs)) as c:  # certs.ca signed it
        assert c.call("SET", "mtls:k", "v") == b"OK"
        assert c.call("GET", "mtls:k") == b"v"
        assert int(info_field(c, "tls_handshake_failures")) == before + 2
    done = tls_cli(mtls.port, certs, "GET", "mtls:k")
    assert (done.returncode, done.stdout) == (0, "v\n"), done
    assert failures() == before + 2  # the served clients are not counted
    # redis-cli without a certificate is refused too (not counted exactly here: redis-cli
    # retries a connection that failed once)
    done = tls_cli(mtls.port, certs, "GET", "mtls:k", client_cert=False)
    assert done.returncode != 0 or done.stdout != "v\n", done
    poll_until(lambda: handshake_warnings(mtls.log(), "mtls") != [], "the WARNING line", LOG_WAIT_S)
    assert_no_traceback(mtls)


def test_a_silent_client_is_closed_after_the_handshake_timeout(mtls: ResProxy) -> None:
    before = Metrics(mtls.metrics_port).value(FAILURES, pool="mtls")
    with RawClient(mtls.port, timeout_s=CLIENT_TIMEOUT_S) as raw:  # connects, sends nothing
        assert raw.closed_by_peer()  # within the bounded wait (10 x the 1 s handshake_timeout)
    wait_for_value(lambda: Metrics(mtls.metrics_port).value(FAILURES, pool="mtls"), before + 1, "counted")
    assert_no_traceback(mtls)


# --- certificate rotation -------------------------------------------------------------------


def test_certificate_rotation_by_reload(
    certs: Certs, backends: dict[str, list[RedisServer]], tmp_path: Path
) -> None:
    cert, key = tmp_path / "front.crt", tmp_path / "front.key"

    def install(new_cert: str, new_key: str) -> None:
        """Overwrite the files in place (same paths, same inodes)."""
        shutil.copyfile(new_cert, cert)
        shutil.copyfile(new_key, key)

    def new_connection_cn() -> str:
        with tls_client(port, certs) as c:
            assert c.call("PING") == b"PONG"
            return peer_common_name(c.sock)

    def counts() -> tuple[float, float]:
        m = Metrics(metrics_port)
        return m.value("resproxy_config_reloads_total"), m.value("resproxy_config_reload_failures_total")

    install(certs.server_cert, certs.server_key)
    port, metrics_port = free_port(), free_port()
    text = native_config(
        pool_yaml(
            "rotating",
            port,
            server_lines(backends["plain"]),
            timeout=SERVER_TIMEOUT_MS,
            tls=YamlFlow(cert_file=str(cert), key_file=str(key)),
        )
    )
    args = ["--metrics", f"127.0.0.1:{metrics_port}"]
    with ResProxy(text, args, port=port, metrics_port=metrics_port).start() as proxy:
        held = tls_client(port, certs)
        py = tls_redis(port, certs)
        try:
            assert peer_common_name(held.sock) == "localhost"
            assert held.call("SET", "rot:k", "v0") == b"OK"
            py_id = py.client_id()  # redis-py reconnects silently: its connection's id shows it did not
            steps = [
                (certs.server2_cert, certs.server2_key, "localhost rotated"),
                (certs.server_cert, certs.server_key, "localhost"),  # and back
                (certs.server2_cert, certs.server2_key, "localhost rotated"),
            ]
            for i, (new_cert, new_key, cn) in enumerate(steps, 1):
                install(new_cert, new_key)
                assert proxy.reload(text), proxy.log()[-3000:]
                assert counts() == (i, 0)
                assert held.call("GET", "rot:k") == f"v{i - 1}".encode()  # the held connection goes on
                assert held.call("SET", "rot:k", f"v{i}") == b"OK"
                assert peer_common_name(held.sock) == "localhost"  # (its handshake was before)
                assert py.get("rot:k") == f"v{i}".encode()
                assert py.client_id() == py_id
                assert new_connection_cn() == cn, f"step {i}"

            # a truncated certificate: the reload is rejected, the running certificate stays
            pem = Path(certs.server_cert).read_bytes()
            cert.write_bytes(pem[: len(pem) // 2])
            shutil.copyfile(certs.server_key, key)
            assert not proxy.reload(text)
            rejected = [line for line in proxy.log().splitlines() if "reload rejected" in line]
            assert rejected and str(cert) in rejected[-1], proxy.log()[-3000:]
            assert counts() == (len(steps), 1)
            assert held.call("GET", "rot:k") == f"v{len(steps)}".encode()
            assert py.get("rot:k") == f"v{len(steps)}".encode() and py.client_id() == py_id
            assert new_connection_cn() == "localhost rotated"  # what the last accepted reload read

            # and the next good files are taken again
            install(certs.server_cert, certs.server_key)
            assert proxy.reload(text), proxy.log()[-3000:]
            assert counts() == (len(steps) + 1, 1)
            assert new_connection_cn() == "localhost"
            assert held.call("PING") == b"PONG" and py.ping() and py.client_id() == py_id
        finally:
            held.close()
            py.close()
        assert_no_traceback(proxy)


# --- TLS to the servers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def to_tls_servers(
    certs: Certs, backends: dict[str, list[RedisServer]]
) -> Iterator[tuple[ResProxy, dict[str, int]]]:
    """Plain fronts over the two TLS-only servers (client certificates required): ``good``
    (verified against ``certs.ca``, presenting ``certs.client_cert``), ``badca`` (verified
    against the other CA), ``nocert`` (verified, no client certificate), ``named`` and
    ``wrongname`` (``server_name``: the certificate's name, and another one) and ``noverify``
    (the other CA, ``verify: false``)."""
    servers = server_lines(backends["tls"])
    ports = {name: free_port() for name in ("good", "badca", "nocert", "named", "wrongname", "noverify")}
    cert = {"cert_file": certs.client_cert, "key_file": certs.client_key}
    text = native_config(
        pool_yaml(
            "good",
            ports["good"],
            servers,
            **MURMUR_RING,
            timeout=SERVER_TIMEOUT_MS,
            server_tls=client_tls(certs),
        ),
        pool_yaml(
            "badca",
            ports["badca"],
            servers,
            timeout=SERVER_TIMEOUT_MS,
            server_tls=client_tls(certs, ca=certs.other_ca),
        ),
        pool_yaml(
            "nocert",
            ports["nocert"],
            servers,
            timeout=SERVER_TIMEOUT_MS,
            server_tls=YamlFlow(ca_file=certs.ca),
        ),
        pool_yaml(
            "named",
            ports["named"],
            servers,
            timeout=SERVER_TIMEOUT_MS,
            server_tls=YamlFlow(ca_file=certs.ca, server_name="localhost", **cert),
        ),
        pool_yaml(
            "wrongname",
            ports["wrongname"],
            servers,
            timeout=SERVER_TIMEOUT_MS,
            server_tls=YamlFlow(ca_file=certs.ca, server_name="elsewhere.example", **cert),
        ),
        pool_yaml(
            "noverify",
            ports["noverify"],
            servers,
            timeout=SERVER_TIMEOUT_MS,
            server_tls=YamlFlow(ca_file=certs.other_ca, verify=False, **cert),
        ),
    )
    with ResProxy(text, port=ports["good"]).start(pools=len(ports)) as p:
        yield p, ports


def test_ring_pool_over_tls_servers(
    to_tls_servers: tuple[ResProxy, dict[str, int]], backends: dict[str, list[RedisServer]]
) -> None:
    proxy, ports = to_tls_servers
    servers = backends["tls"]
    for s in servers:
        s.call("FLUSHALL")
    keys = [f"srv:{i}" for i in range(60)]
    with RawClient(ports["good"], CLIENT_TIMEOUT_S) as c:
        assert c.pipeline([("SET", k, f"v-{k}") for k in keys]) == [b"OK"] * len(keys)
        assert c.call("MGET", *keys) == [f"v-{k}".encode() for k in keys]
        assert c.call("DBSIZE") == len(keys)
    held = [int(s.call("DBSIZE")) for s in servers]  # asked over TLS, straight to each server
    assert all(n > 0 for n in held) and sum(held) == len(keys), held
    for s in servers:  # the proxy's connections are TLS: the server accepted only those
        assert any(cl.get("cmd") in ("mget", "set", "dbsize") for cl in s.clients()), s.clients()
    assert_no_traceback(proxy)


@pytest.mark.parametrize(
    ("pool", "why"),
    [
        ("badca", "certificate verify failed"),
        ("nocert", "certificate required"),
        ("wrongname", "certificate verify failed"),  # (the name is not the certificate's)
    ],
)
def test_server_tls_refused_is_an_error_reply(
    to_tls_servers: tuple[ResProxy, dict[str, int]], pool: str, why: str
) -> None:
    """``badca``: the proxy does not trust the servers; ``nocert``: the servers want the proxy's
    certificate. Either way an ``-ERR`` naming the server and why, at once (a hang would be a
    TimeoutError here)."""
    proxy, ports = to_tls_servers
    with RawClient(ports[pool], CLIENT_TIMEOUT_S) as c:
        for command in (("SET", "refused:k", "v"), ("GET", "refused:k")):
            text = error_text(c.call(*command))
            assert text.startswith("ERR server s") and why in text.lower(), text
        assert c.call("PING") == b"PONG"  # the client's connection stays usable
    assert_no_traceback(proxy)


@pytest.mark.parametrize("pool", ["named", "noverify"])
def test_server_name_and_verify(to_tls_servers: tuple[ResProxy, dict[str, int]], pool: str) -> None:
    """``server_name``: the name verified is the certificate's (not the address connected to);
    ``verify: false``: a server no trusted CA signed is still reached (TLS, unverified)."""
    proxy, ports = to_tls_servers
    with RawClient(ports[pool], CLIENT_TIMEOUT_S) as c:
        assert c.call("SET", f"{pool}:k", "v") == b"OK"
        assert c.call("GET", f"{pool}:k") == b"v"
    assert_no_traceback(proxy)


def test_tls_servers_restarted_twice_are_reached_again(
    to_tls_servers: tuple[ResProxy, dict[str, int]], backends: dict[str, list[RedisServer]]
) -> None:
    """A TLS server that restarts (twice) is reconnected over TLS; requests work again."""
    proxy, ports = to_tls_servers
    server = backends["tls"][0]
    with RawClient(ports["good"], CLIENT_TIMEOUT_S) as c:
        keys = [f"restart:{i}" for i in range(40)]
        for round_ in range(2):
            server.restart()

            def all_answered() -> bool:
                replies = c.pipeline([("SET", k, str(round_)) for k in keys])
                return replies == [b"OK"] * len(keys)

            poll_until(all_answered, f"every key served after restart {round_ + 1}", 30)
            assert c.call("MGET", *keys) == [str(round_).encode()] * len(keys)
        assert int(server.call("DBSIZE")) > 0  # its keys are there again, over TLS
    assert_no_traceback(proxy)


def test_cluster_pool_over_a_tls_cluster(tls_cluster: TlsRedisCluster, certs: Certs) -> None:
    port = free_port()
    seed = tls_cluster.seeds(1)  # the other nodes are learned from CLUSTER SLOTS (TLS ports)
    text = native_config(
        pool_yaml(
            "cluster",
            port,
            seed,
            distribution="cluster",
            timeout=SERVER_TIMEOUT_MS,
            server_tls=client_tls(certs),
        )
    )
    keys = [f"cl:{i}" for i in range(200)]
    with ResProxy(text, port=port).start() as proxy:
        with RawClient(port, CLIENT_TIMEOUT_S) as c:
            for k in keys:
                assert c.call("SET", k, f"v-{k}") == b"OK"
            for k in keys:
                assert c.call("GET", k) == f"v-{k}".encode()
            assert c.call("MGET", *keys) == [f"v-{k}".encode() for k in keys]  # across slots
        assert_no_traceback(proxy)
    masters = tls_cluster.masters()
    assert len(masters) == 3
    held = {m.port: int(m.call("DBSIZE")) for m in masters}
    assert all(n > 0 for n in held.values()) and sum(held.values()) == len(keys), held
    for k in keys[:20]:
        assert tls_cluster.slot_owner(key_slot(k.encode())).call("GET", k) == f"v-{k}".encode()


def test_sentinel_pool_with_a_tls_master_and_a_tls_sentinel(certs: Certs) -> None:
    """The sentinel (TLS port only) names a TLS-only master requiring client certificates: the
    pool asks and subscribes over ``sentinel_tls``, and serves the master over ``server_tls``.
    A second pool whose ``server_tls`` trusts the other CA finds no usable master: an error at
    once, not a hang."""
    with TlsRedisServer(certs, "yes") as master:
        master.start()
        with TlsSentinel(certs, MASTER_NAME, master.port, quorum=1).start() as sentinel:
            ports = {"good": free_port(), "badca": free_port()}
            pools = "".join(
                f"  {name}:\n    listen: 127.0.0.1:{ports[name]}\n    distribution: sentinel\n"
                f"    master_name: {MASTER_NAME}\n    timeout: {SERVER_TIMEOUT_MS // 2}\n"
                f"    server_tls: {server_tls}\n    sentinel_tls: {YamlFlow(ca_file=certs.ca)}\n"
                f"    sentinels:\n      - 127.0.0.1:{sentinel.port}\n"
                for name, server_tls in (
                    ("good", client_tls(certs)),
                    ("badca", client_tls(certs, ca=certs.other_ca)),
                )
            )
            with ResProxy("pools:\n" + pools, port=ports["good"]).start(pools=2) as proxy:
                keys = [f"sen:{i}" for i in range(20)]
                with RawClient(ports["good"], CLIENT_TIMEOUT_S) as c:
                    assert c.pipeline([("SET", k, f"v-{k}") for k in keys]) == [b"OK"] * len(keys)
                    assert c.call("MGET", *keys) == [f"v-{k}".encode() for k in keys]
                assert master.call("MGET", *keys) == [f"v-{k}".encode() for k in keys]  # over TLS
                with RawClient(ports["badca"], CLIENT_TIMEOUT_S) as c:
                    reply = c.call("GET", "sen:0")
                    assert error_text(reply).startswith(f"ERR no master known for '{MASTER_NAME}'"), reply

                def subscribed() -> bool:  # both pools watch the sentinel over TLS
                    rows = client_list(sentinel.call("CLIENT", "LIST"))
                    return sum(1 for r in rows if r.get("cmd") == "subscribe" and r.get("sub") == "2") == 2

                poll_until(subscribed, "the pools subscribed on the sentinel", LOG_WAIT_S)
                assert_no_traceback(proxy)


# --- metrics --------------------------------------------------------------------------------


def test_metrics_certificate_rotates_on_reload(
    certs: Certs, backends: dict[str, list[RedisServer]], tmp_path: Path
) -> None:
    cert, key = tmp_path / "metrics.crt", tmp_path / "metrics.key"
    shutil.copyfile(certs.server_cert, cert)
    shutil.copyfile(certs.server_key, key)
    port, metrics_port = free_port(), free_port()
    text = native_config(pool_yaml("m", port, server_lines(backends["plain"]), timeout=SERVER_TIMEOUT_MS))
    text += f"metrics:\n  listen: {metrics_port}\n  tls: {{cert_file: {cert}, key_file: {key}}}\n"

    def metrics_cn() -> str:
        context = client_context(certs, client_cert=False)
        with socket.create_connection(("127.0.0.1", metrics_port), timeout=CLIENT_TIMEOUT_S) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                return peer_common_name(s)

    with ResProxy(text, port=port).start() as proxy:
        poll_until(lambda: https_get(metrics_port, "/healthz", certs)[0] == 200, "https /healthz", 10)
        assert metrics_cn() == "localhost"
        for new_cert, new_key, cn in (
            (certs.server2_cert, certs.server2_key, "localhost rotated"),
            (certs.server_cert, certs.server_key, "localhost"),
        ):
            shutil.copyfile(new_cert, cert)
            shutil.copyfile(new_key, key)
            assert proxy.reload(text), proxy.log()[-3000:]
            assert metrics_cn() == cn
        assert_no_traceback(proxy)


def test_metrics_over_https_with_a_token_on_loopback(edge: ResProxy, certs: Certs) -> None:
    port = edge.metrics_port
    assert listening_addresses(port) == {"127.0.0.1"}  # a bare port binds loopback only
    assert f"metrics on https://127.0.0.1:{port}/metrics" in edge.log()

    status, body = https_get(port, "/metrics", certs)
    assert status == 401, body
    status, body = https_get(port, "/metrics", certs, "not-the-token-0123456789")
    assert status == 401, body
    status, body = https_get(port, "/metrics", certs, TOKEN)
    assert status == 200, body
    assert (FAILURES, (("pool", "edge"),)) in samples(body)
    status, body = https_get(port, "/healthz", certs)  # probes need no token
    assert status == 200, body
    with pytest.raises(OSError):  # plain HTTP is not served there
        http_get(port, "/healthz")
    assert_no_traceback(edge)


# --- config checks --------------------------------------------------------------------------


def test_check_refuses_a_certificate_that_does_not_match_its_key(certs: Certs) -> None:
    pool = pool_yaml(
        "edge",
        free_port(),
        ["127.0.0.1:6379:1"],
        tls=YamlFlow(cert_file=certs.server_cert, key_file=certs.server2_key),  # server2's key
    )
    done = run_proxy_check(native_config(pool))
    assert done.returncode == 1, done
    assert certs.server_cert in done.stderr and "edge" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr

    ok = pool_yaml("edge", free_port(), ["127.0.0.1:6379:1"], tls=front_tls(certs))
    done = run_proxy_check(native_config(ok))
    assert done.returncode == 0, done
