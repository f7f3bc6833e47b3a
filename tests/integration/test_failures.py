"""Failures: bad client input, a server that stops answering, a server killed and restarted.

A request never hangs and every request gets exactly one reply; one client's or one server's
trouble stays its own. Time bounds here are generous "no hang" limits, not performance claims.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import hiredis
import pytest
import redis.asyncio as aioredis

from tests.integration.harness.clients import RawClient
from tests.integration.harness.placement import key_on
from tests.integration.harness.proxyproc import ResProxy, start_ring_proxy
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until

TIMEOUT_MS = 500


@pytest.fixture(scope="module")
def failing_proxy(backends: list[RedisServer]) -> Iterator[ResProxy]:
    with start_ring_proxy(backends, hash="murmur", timeout=TIMEOUT_MS, preconnect=True) as p:
        yield p


def _wait_until_all_served(port: int, timeout_s: float = 10.0) -> None:
    """Bounded wait until every server answers through the proxy (after a restart elsewhere)."""
    keys = [b"health:%d" % i for i in range(60)]  # enough keys to touch every server
    deadline = time.monotonic() + timeout_s
    with RawClient(port) as c:
        while True:
            replies = c.pipeline([("SET", k, "1") for k in keys])
            if all(r == b"OK" for r in replies):
                return
            assert time.monotonic() < deadline, replies
            time.sleep(0.05)


MALFORMED = [
    b"*x\r\n",  # bad multibulk count
    b"*1\r\n$999999999999\r\n",  # huge declared bulk length
    b"*99999999999\r\n",  # huge declared argument count
    b"*2\r\n$3\r\nGET\r\n:12\r\n",  # an integer where a bulk string must be
    b"*1\r\n$-7\r\n",  # negative bulk length
]


@pytest.mark.parametrize("payload", MALFORMED)
def test_malformed_input_gets_an_error_then_a_close_and_others_are_unaffected(
    failing_proxy: ResProxy, payload: bytes
) -> None:
    port = failing_proxy.port
    with RawClient(port, timeout_s=5) as bystander, RawClient(port, timeout_s=5) as bad:
        assert bystander.call("SET", "bystander", "ok") == b"OK"
        bad.send(encode_ping() + payload)
        assert bad.read() == b"PONG"  # what came before the garbage is answered
        reply = bad.read()
        assert isinstance(reply, hiredis.ReplyError)
        assert str(reply).startswith("ERR Protocol error")
        assert bad.closed_by_peer()
        assert bystander.call("GET", "bystander") == b"ok"


def encode_ping() -> bytes:
    return b"*1\r\n$4\r\nPING\r\n"


def test_truncated_frame_then_close_does_not_disturb_the_proxy(failing_proxy: ResProxy) -> None:
    port = failing_proxy.port
    with RawClient(port) as bad:
        bad.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nabc")
    with RawClient(port) as good:
        assert good.call("PING") == b"PONG"
        assert good.call("EXISTS", "k") == 0  # the half-sent SET never reached a server


def test_server_that_stops_answering_times_out_and_recovers(
    failing_proxy: ResProxy, backends: list[RedisServer]
) -> None:
    port = failing_proxy.port
    victim = backends[0]
    key = key_on(port, victim, "probe")
    other_key = key_on(port, backends[1], "probe")
    victim.send_signal(signal.SIGSTOP)
    try:
        with RawClient(port, timeout_s=10) as c:
            started = time.monotonic()
            reply = c.call("GET", key)
            waited = time.monotonic() - started
            assert isinstance(reply, hiredis.ReplyError)
            assert "timed out" in str(reply)
            assert waited < TIMEOUT_MS / 1000 + 2.0  # bounded by `timeout`, no hang
            assert c.call("GET", other_key) == b"1"  # the other servers keep serving
    finally:
        victim.send_signal(signal.SIGCONT)
    with RawClient(port, timeout_s=10) as c:
        assert c.call("GET", key) == b"1"


def test_killed_server_errors_promptly_others_serve_and_it_returns_after_restart(
    failing_proxy: ResProxy, backends: list[RedisServer]
) -> None:
    port = failing_proxy.port
    victim = backends[2]
    key = key_on(port, victim, "probe")
    other_key = key_on(port, backends[0], "probe")
    victim.kill()
    with RawClient(port, timeout_s=10) as c:
        for _ in range(5):
            started = time.monotonic()
            reply = c.call("GET", key)
            assert isinstance(reply, hiredis.ReplyError) and "s2" in str(reply)
            assert time.monotonic() - started < 1.0  # prompt: no waiting for a dead server
            assert c.call("GET", other_key) == b"1"
        victim.restart()
        deadline = time.monotonic() + 10
        while True:  # bounded: the proxy's probe reconnects within about a second
            reply = c.call("SET", key, "back")
            if reply == b"OK":
                break
            assert time.monotonic() < deadline, f"server not used again: {reply}"
            time.sleep(0.05)
        assert c.call("GET", key) == b"back"
        assert victim.call("GET", key) == b"back"


def test_auto_eject_moves_a_dead_servers_keys_to_the_others(backends: list[RedisServer]) -> None:
    proxy = start_ring_proxy(
        backends,
        hash="murmur",
        timeout=TIMEOUT_MS,
        preconnect=True,
        auto_eject_hosts=True,
        server_failure_limit=1,
        server_retry_timeout=60000,
    )
    port = proxy.port
    victim = backends[1]
    try:
        with proxy:
            key = key_on(port, victim, "probe")
            victim.kill()
            with RawClient(port, timeout_s=10) as c:
                deadline = time.monotonic() + 10
                while c.call("SET", key, "moved") != b"OK":  # bounded: fails until ejected
                    assert time.monotonic() < deadline
                assert c.call("GET", key) == b"moved"
            assert any(b.call("GET", key) == b"moved" for b in backends if b is not victim)
    finally:
        victim.restart()


async def test_many_pipelining_clients_get_their_own_replies_in_order(
    failing_proxy: ResProxy,
) -> None:
    port = failing_proxy.port
    _wait_until_all_served(port)  # an earlier test restarted a server

    async def client(n: int) -> None:
        # half RESP2, half RESP3 (redis-py's default): separate server lanes, one proxy
        r = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=10, protocol=2 + n % 2)
        try:
            pipe = r.pipeline(transaction=False)
            for i in range(200):
                pipe.set(f"c{n}:{i}", f"{n}-{i}")
                pipe.get(f"c{n}:{i}")
                pipe.incr(f"c{n}:count")
            replies = await pipe.execute()
            for i in range(200):
                assert replies[3 * i] is True
                assert replies[3 * i + 1] == f"{n}-{i}".encode()
                assert replies[3 * i + 2] == i + 1
        finally:
            await r.aclose()

    async with asyncio.timeout(60):
        await asyncio.gather(*(client(n) for n in range(20)))


def test_server_connections_opens_that_many_connections_per_server(
    backends: list[RedisServer],
) -> None:
    def connections() -> list[int]:
        return [_connected(b) for b in backends]

    before = connections()
    with start_ring_proxy(
        backends, hash="murmur", timeout=TIMEOUT_MS, preconnect=True, server_connections=3
    ) as proxy:
        poll_until(lambda: connections() == [n + 3 for n in before], "preconnected (asynchronous)", 10)
        with RawClient(proxy.port) as c:  # one client's commands run in the order it sent them
            replies = c.pipeline([("INCR", "lanes:counter") for _ in range(300)])
            assert replies == list(range(1, 301))


def _connected(server: RedisServer) -> int:
    return int(server.info("clients")["connected_clients"]) - 1  # minus the connection asking


def test_a_client_that_stops_reading_gets_every_reply_later_and_others_are_served(
    failing_proxy: ResProxy,
) -> None:
    port = failing_proxy.port
    _wait_until_all_served(port)
    value = b"x" * 50_000
    with RawClient(port, timeout_s=30) as writer:
        assert writer.call("SET", "slowclient:v", value) == b"OK"
    count = 3000  # ~150 MB of replies if nothing held the slow client back
    with RawClient(port, timeout_s=30) as slow, RawClient(port, timeout_s=10) as other:
        slow.sock.setblocking(False)
        payload = b"".join(encode_get(b"slowclient:v") for _ in range(count)) + encode_get(b"end")
        sent = 0
        deadline = time.monotonic() + 10
        while sent < len(payload) and time.monotonic() < deadline:  # bounded
            try:
                sent += slow.sock.send(payload[sent : sent + 65536])
            except BlockingIOError:
                break  # the proxy stopped reading from us: backpressure
        for i in range(20):  # meanwhile another client is served normally
            assert other.call("SET", f"other:{i}", i) == b"OK"
        slow.sock.setblocking(True)
        slow.sock.settimeout(30)
        if sent < len(payload):
            slow.sock.sendall(payload[sent:])
        for _ in range(count):  # every reply arrives, in order, once the client reads
            assert slow.read() == value
        assert slow.read() is None


def encode_get(key: bytes) -> bytes:
    return b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key)


def test_random_distribution_spreads_writes_over_every_server(
    backends: list[RedisServer],
) -> None:
    try:
        with start_ring_proxy(backends, distribution="random", timeout=TIMEOUT_MS) as proxy:
            with RawClient(proxy.port) as c:
                assert c.pipeline([("SET", "random:k", i) for i in range(300)]) == [b"OK"] * 300
            # the same key was written to whichever server each request drew: all three
            assert all(b.call("EXISTS", "random:k") == 1 for b in backends)
    finally:
        for b in backends:
            b.call("DEL", "random:k")


def test_client_connections_limits_the_pools_clients(backends: list[RedisServer]) -> None:
    with start_ring_proxy(backends, client_connections=2, timeout=TIMEOUT_MS) as proxy:
        port = proxy.port
        with RawClient(port) as a, RawClient(port) as b:
            assert a.call("PING") == b"PONG" and b.call("PING") == b"PONG"
            with RawClient(port) as third:
                reply = third.read()
                assert str(reply) == "ERR max number of clients reached"
                assert third.closed_by_peer()
        deadline = time.monotonic() + 10
        while True:  # bounded: a slot frees once the proxy has seen a client go
            with RawClient(port) as again:
                if again.call("PING") == b"PONG":
                    break
            assert time.monotonic() < deadline
            time.sleep(0.02)
