"""Operating resproxy: /metrics after known traffic, /healthz, INFO, SIGHUP reload, JSON logs.

Real redis-servers and a real resproxy process; /metrics is parsed with prometheus-client's own
parser, and every count checked is the exact number the test's traffic implies.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import hiredis
import pytest

from proxy.client import LATENCY_SAMPLE_EVERY
from proxy.config import parse
from tests.integration.harness.clients import RawClient, encode
from tests.integration.harness.configs import native_config, pool_yaml, server_lines
from tests.integration.harness.metrics import Metrics, http_get
from tests.integration.harness.placement import ring_port
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import ResProxy
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until


def _config(port: int, metrics_port: int, backends: list[RedisServer], **keys: Any) -> str:
    lines = server_lines(backends, [f"s{b.port}" for b in backends])
    pool = pool_yaml("app", port, lines, hash="fnv1a_64", distribution="ketama", timeout=500, **keys)
    return native_config(pool, metrics_port=metrics_port)


def _start(backends: list[RedisServer], **keys: object) -> ResProxy:
    port, mport = free_port(), free_port()
    return ResProxy(_config(port, mport, backends, **keys), port=port, metrics_port=mport).start()


def _owner(backends: list[RedisServer], key: bytes) -> RedisServer:
    """Where the ketama ring of the test's config puts ``key`` (twemproxy's placement)."""
    port = ring_port(parse(_config(1, 2, backends)), "app", key)
    return next(b for b in backends if b.port == port)


def test_metrics_count_known_traffic_exactly(servers: list[RedisServer]) -> None:
    backends = servers[:3]
    for b in backends:
        b.call("FLUSHALL")
    with _start(backends, preconnect=True) as proxy:
        victim = backends[2]
        keys = [f"user:{i * 7919}:profile" for i in range(60)]
        on_victim = [k for k in keys if _owner(backends, k.encode()) is victim]
        elsewhere = [k for k in keys if k not in on_victim]
        assert on_victim and elsewhere
        spread = (
            [on_victim[0]]
            + [k for k in elsewhere if _owner(backends, k.encode()) is backends[0]][:1]
            + [k for k in elsewhere if _owner(backends, k.encode()) is backends[1]][:1]
        )
        assert len(spread) == 3
        with RawClient(proxy.port) as c:
            for k in keys:
                assert c.call("SET", k, "v") == b"OK"
            for k in keys:
                assert c.call("GET", k) == b"v"
            assert c.call("MGET", *spread) == [b"v", b"v", b"v"]  # one fan-out, 3 fragments
            assert isinstance(c.call("NOSUCH"), hiredis.ReplyError)
            assert isinstance(c.call("SWAPDB", 0, 1), hiredis.ReplyError)  # refused in place
            assert isinstance(c.call("MSET", "a", "1", "b"), hiredis.ReplyError)  # a pair short
            assert c.call("ECHO", "hi") == b"hi"  # answered in place (slow path), still counted
            victim.kill()
            dead_errors = 0
            for k in on_victim:
                if isinstance(c.call("GET", k), hiredis.ReplyError):
                    dead_errors += 1
            assert dead_errors == len(on_victim)
            samples = Metrics(proxy.metrics_port)
        p = {"pool": "app"}
        assert samples.value("resproxy_requests_total", command="set", **p) == len(keys)
        assert samples.value("resproxy_requests_total", command="get", **p) == len(keys) + len(on_victim)
        assert samples.value("resproxy_request_errors_total", command="get", **p) == len(on_victim)
        assert samples.value("resproxy_request_errors_total", command="set", **p) == 0
        assert samples.value("resproxy_requests_total", command="mget", **p) == 1
        assert samples.value("resproxy_request_errors_total", command="unknown", **p) == 1
        assert samples.value("resproxy_request_errors_total", command="swapdb", **p) == 1
        assert samples.value("resproxy_request_errors_total", command="mset", **p) == 1
        assert samples.value("resproxy_requests_total", command="echo", **p) == 1
        assert samples.value("resproxy_fanout_requests_total", **p) == 1
        assert samples.value("resproxy_fanout_fragments_total", **p) == 3
        # one command per read (the SETs are the client's reads 1..60): latency is observed for
        # the first read and every 4th after it
        sampled = len([r for r in range(1, len(keys) + 1) if r % LATENCY_SAMPLE_EVERY == 1])
        assert samples.value("resproxy_request_duration_seconds_count", command="set", **p) == sampled
        assert (
            samples.value("resproxy_request_duration_seconds_bucket", command="set", le="+Inf", **p)
            == sampled
        )
        assert samples.value("resproxy_client_connections", **p) == 1
        sent_bytes = (
            sum(len(encode("SET", k, "v")) + len(encode("GET", k)) for k in keys)
            + len(encode("MGET", *spread))
            + len(encode("NOSUCH"))
            + len(encode("SWAPDB", 0, 1))
            + len(encode("MSET", "a", "1", "b"))
            + len(encode("ECHO", "hi"))
            + sum(len(encode("GET", k)) for k in on_victim)
        )
        assert samples.value("resproxy_client_read_bytes_total", **p) == sent_bytes
        assert samples.value("resproxy_client_connections_accepted_total", **p) == 1
        # per server: what each was sent, as the ring places the keys
        for b in backends:
            s = {"pool": "app", "server": f"s{b.port}"}
            placed = sum(1 for k in keys if _owner(backends, k.encode()) is b)
            sent = 2 * placed + 1  # a SET and a GET per key, and one MGET fragment
            if b is victim:
                assert samples.value("resproxy_server_up", **s) == 0
                assert samples.value("resproxy_server_state", state="down", **s) == 1
                assert (
                    samples.value("resproxy_server_eof_total", **s)
                    + samples.value("resproxy_server_errors_total", **s)
                    == 1
                )
                # after the kill its keys were answered at once: forward errors, not timeouts
                assert samples.value("resproxy_server_forward_errors_total", **s) >= len(on_victim) - 1
                assert samples.value("resproxy_server_timeouts_total", **s) == 0
            else:
                assert samples.value("resproxy_server_up", **s) == 1
                assert samples.value("resproxy_server_requests_total", **s) == sent
                assert samples.value("resproxy_server_responses_total", **s) == sent
                assert samples.value("resproxy_server_in_flight", **s) == 0
            assert samples.value("resproxy_server_connects_total", **s) == 1
        assert samples.value("resproxy_pool_can_serve", **p) == 0
        status, body = http_get(proxy.metrics_port, "/healthz")
        assert status == 503 and json.loads(body)["pools"]["app"].startswith("server(s) down")
        victim.restart()
        poll_until(lambda: http_get(proxy.metrics_port, "/healthz")[0] == 200, "healthz back to 200", 15)
        with RawClient(proxy.port) as c:
            info = c.call("INFO").decode()
        assert "# Proxy" in info and "# Stats" in info and "pool_app:" in info
        assert "total_commands_processed:" in info
        with RawClient(proxy.port) as c:
            assert c.call("INFO", "clients").decode().startswith("# Clients")


def _placement_ok(proxy_port: int, backends: list[RedisServer], keys: list[str]) -> None:
    """Each key is on the server the ring over ``backends`` names, and only there."""
    for k in keys:
        owner = _owner(backends, k.encode())
        assert owner.call("EXISTS", k) == 1, k


class Pipeliner(threading.Thread):
    """One client connection pipelining SET/GET batches until stopped; counts what breaks."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client = RawClient(port)
        self.stop_event = stop
        self.batches = 0
        self.problems: list[str] = []

    def run(self) -> None:
        try:
            for i in range(1_000_000):  # bounded; ends on the stop event
                if self.stop_event.is_set():
                    break
                cmds = [("SET", f"pipe:{i}:{j}", j) for j in range(8)] + [("GET", f"pipe:{i}:7")]
                replies = self.client.pipeline(cmds)
                if replies != [b"OK"] * 8 + [b"7"]:
                    self.problems.append(repr(replies))
                self.batches += 1
        except (OSError, ConnectionError) as exc:
            self.problems.append(f"connection dropped: {exc!r}")
        finally:
            self.client.close()


def test_sighup_reload_adds_and_removes_servers_without_dropping_clients(
    servers: list[RedisServer],
) -> None:
    a, b, c = servers[:3]
    for s in servers:
        if not s.alive():
            s.restart()
        s.call("FLUSHALL")
    with _start([a, b]) as proxy:
        stop = threading.Event()
        workers = [Pipeliner(proxy.port, stop) for _ in range(3)]
        for w in workers:
            w.start()
        poll_until(lambda: all(w.batches > 5 for w in workers), "pipelines running", 30)
        # b stays, a leaves, c joins
        assert proxy.reload(_config(proxy.port, proxy.metrics_port, [b, c]))
        assert Metrics(proxy.metrics_port).value("resproxy_config_reloads_total") == 1
        marks = [w.batches for w in workers]
        poll_until(
            lambda: all(w.batches > m + 5 for w, m in zip(workers, marks)),
            "pipelines running after the reload",
            30,
        )
        # an invalid config is rejected and the running one keeps serving
        assert not proxy.reload("pools:\n  app:\n    listen: 127.0.0.1:1\n    hash: nope\n")
        samples = Metrics(proxy.metrics_port)
        assert samples.value("resproxy_config_reload_failures_total") == 1
        assert samples.value("resproxy_config_last_reload_successful") == 0
        marks = [w.batches for w in workers]
        poll_until(
            lambda: all(w.batches > m + 5 for w, m in zip(workers, marks)),
            "pipelines running after the rejected reload",
            30,
        )
        stop.set()
        for w in workers:
            w.join(timeout=30)
        assert [w.problems for w in workers] == [[], [], []]
        assert samples.value("resproxy_client_connections_accepted_total", pool="app") == 3
        # new keys go by the new ring: over b and c, none on a
        for s in (a, b, c):
            s.call("FLUSHALL")
        keys = [f"after:{i}" for i in range(200)]
        with RawClient(proxy.port) as cl:
            assert cl.pipeline([("SET", k, 1) for k in keys]) == [b"OK"] * len(keys)
        assert a.call("DBSIZE") == 0
        _placement_ok(proxy.port, [b, c], keys)
        assert b.call("DBSIZE") + c.call("DBSIZE") == len(keys)
        assert "reload accepted" in proxy.log() and "reload rejected" in proxy.log()


def test_reload_adds_a_pool_and_json_logs(servers: list[RedisServer]) -> None:
    a = servers[0]
    if not a.alive():
        a.restart()
    port, mport, port2 = free_port(), free_port(), free_port()
    with ResProxy(_config(port, mport, [a]), args=["--log-format", "json"]).start() as proxy:
        with RawClient(port) as held:
            assert held.call("SET", "k", "v") == b"OK"
            text = _config(port, mport, [a]).replace(
                "metrics:", pool_yaml("second", port2, [f"127.0.0.1:{a.port}:1"]) + "metrics:"
            )
            parse(text)  # the test's own config is valid
            assert proxy.reload(text)
            with RawClient(port2) as c2:
                assert c2.call("GET", "k") == b"v"
            assert held.call("GET", "k") == b"v"  # the old connection was never dropped
        lines = [json.loads(line) for line in proxy.log().splitlines() if line.strip()]
        assert all({"ts", "level", "logger", "msg"} <= set(e) for e in lines)
        assert any("reload accepted" in e["msg"] and e["level"] == "info" for e in lines)


def _timers_to(port: int) -> list[int]:
    """The timer kind of every established TCP connection to 127.0.0.1:``port`` (/proc/net/tcp:
    0 none, 1 retransmit, 2 keepalive)."""
    kinds = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            remote, state, timer = fields[2], fields[3], fields[5]
            if state == "01" and remote.endswith(f":{port:04X}"):
                kinds.append(int(timer.split(":")[0], 16))
    return kinds


@pytest.mark.parametrize("keepalive", [True, False])
def test_tcpkeepalive_is_set_on_server_connections(servers: list[RedisServer], keepalive: bool) -> None:
    backend = servers[3]
    if not backend.alive():
        backend.restart()
    with _start([backend], preconnect=True, tcpkeepalive=keepalive) as proxy:
        with RawClient(proxy.port) as c:
            assert c.call("SET", "ka", "1") == b"OK"
        kinds = _timers_to(backend.port)
        assert kinds, "the proxy's connection to the server"
        assert all(k == (2 if keepalive else 0) for k in kinds), kinds
