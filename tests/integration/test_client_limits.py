"""What one client may make the proxy hold or do, and the proxy-wide budget over all of them.

Keys under test (a pool's or a listener's): ``client_output_buffer_limit: "HARD SOFT SECONDS"``,
``client_query_buffer_limit``, ``client_timeout`` (ms), ``auth_failure_limit``; and the native
form's top-level ``max_buffered_bytes``. Each test starts its own resproxy (with --metrics) over
a module-wide redis-server holding one 1 MB value, so the proxy's memory (VmRSS and its peak,
VmHWM, from /proc/PID/status) and its counters belong to that test alone.

What Redis 7.0 does with its own limits, measured against a plain redis-server, which these tests
expect of the proxy too:

* ``client-output-buffer-limit normal 16mb 0 0`` and a client that pipelines 3000 GETs of a
  1 MB value and never reads: closed within 25 ms, without a reply; the client's first read
  after that gets a reset (nothing of what was in flight).
* ``normal 0 2mb 1``: a client over 2 MB owed is closed about 1.9 s later even when it sends
  nothing more (Redis checks in its cron, not only when a reply is added).
* ``client-query-buffer-limit 1mb`` (Redis's minimum) and 2 MB of one unfinished request: closed.
* ``timeout 1``: an idle client is closed after about 2 s (cron granularity).

Why 1000 GETs of 1 MB for the slow reader (the probe sent 3000 and the proxy grew to 3.1 GB):
redis-server answers a whole pipeline before writing, so 1000 already make the proxy take 1 GB
when nothing holds it back (measured: its RSS rose by ~300 MB a second, to 1 GB), four times
RSS_BOUND, at a third of the redis-server memory and time.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import hiredis
import pytest

from tests.integration.harness.clients import RawClient, encode
from tests.integration.harness.configs import pool_yaml, server_lines
from tests.integration.harness.metrics import Metrics
from tests.integration.harness.ports import free_port
from tests.integration.harness.process import proc_status
from tests.integration.harness.proxyproc import ResProxy
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until

MB = 1024 * 1024
BIG_KEY = "limits:big"
BIG = b"v" * 1_000_000  # the 1 MB value every slow reader asks for
RSS_BOUND = 200 * MB  # growth allowed to a proxy while clients do not read (unbounded: GBs)
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
PASSWORD = "limits-secret"


@pytest.fixture(scope="module")
def backend() -> Iterator[RedisServer]:
    with RedisServer().start() as server:
        assert server.call("SET", BIG_KEY, BIG) == b"OK"
        yield server


# --- a resproxy of the test's own ---------------------------------------------------------


@dataclass
class Proxied:
    proxy: ResProxy
    ports: dict[str, int]  # pool or listener name -> its listen port
    metrics_port: int

    @property
    def port(self) -> int:
        """The first pool's port."""
        return next(iter(self.ports.values()))

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples with these labels (0 while there is none)."""
        return Metrics(self.metrics_port).total(name, **labels)

    def closed(self, reason: str) -> float:
        return self.metric("resproxy_client_closed_total", reason=reason)

    def buffered(self) -> float:
        return self.metric("resproxy_buffered_bytes")

    def rss(self) -> int:
        return proc_status(self.proxy.pid, "VmRSS")

    def peak(self) -> int:
        return proc_status(self.proxy.pid, "VmHWM")

    def stats(self, password: str | None = None) -> dict[str, str]:
        """INFO stats through the proxy (its first pool), as a dict."""
        with RawClient(self.port) as c:
            if password is not None:
                assert c.call("AUTH", password) == b"OK"
            text = c.call("INFO", "stats").decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


@contextmanager
def _proxy(
    backend: RedisServer, pools: dict[str, dict[str, Any]], extra: str = "", top: str = ""
) -> Iterator[Proxied]:
    """resproxy with these pools (name -> keys), each on a free port over ``backend``; ``extra``
    is YAML appended at the top level (``listeners:``; ``{name}_port`` placeholders become the
    free port of that listener), ``top`` is prepended (``max_buffered_bytes``)."""
    ports = {name: free_port() for name in pools}
    listeners = re.findall(r"\{(\w+)_port\}", extra)
    for name in listeners:
        ports[name] = free_port()
    extra = extra.format(**{f"{n}_port": ports[n] for n in listeners})
    server = server_lines([backend])
    text = (
        top
        + "pools:\n"
        + "".join(pool_yaml(name, ports[name], server, **keys) for name, keys in pools.items())
        + extra
    )
    metrics_port = free_port()
    with ResProxy(text, ["--metrics", f"127.0.0.1:{metrics_port}"], metrics_port=metrics_port) as proxy:
        proxy.start(pools=len(pools) + len(listeners))
        yield Proxied(proxy, ports, metrics_port)


# --- clients ----------------------------------------------------------------------------


def _gets(count: int, key: str = BIG_KEY) -> bytes:
    return encode("GET", key) * count


def _read_until_closed(client: RawClient, cap_bytes: int) -> list[Any]:
    """The complete replies a client can still read, up to the peer's close (EOF or reset).

    Fails if more than ``cap_bytes`` arrive (the proxy kept writing to a client it should have
    closed) or if the socket stays open for its timeout.
    """
    replies: list[Any] = []
    total = 0
    while True:
        try:
            chunk = client.sock.recv(MB)
        except (ConnectionResetError, BrokenPipeError):
            return replies  # a reset drops what the kernel held for us: Redis's close does too
        except TimeoutError:
            raise AssertionError(f"not closed by the proxy ({total} bytes read)") from None
        if not chunk:
            return replies
        total += len(chunk)
        assert total <= cap_bytes, f"the proxy kept writing: {total} bytes and counting"
        client.reader.feed(chunk)
        while (reply := client.reader.gets()) is not False:
            replies.append(reply)


class _Steady(threading.Thread):
    """SET then GET of keys of its own through the proxy, about 100 rounds a second, until
    stopped; records the slowest round and anything wrong (a wrong reply, an error, a close)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop_event = threading.Event()
        self.rounds = 0
        self.worst_s = 0.0
        self.wrong: list[str] = []

    def run(self) -> None:
        try:
            with RawClient(self.port, timeout_s=30) as c:
                for i in range(10_000_000):  # bounded; ends on the stop event
                    if self.stop_event.is_set():
                        return
                    started = time.monotonic()
                    ok, got = c.call("SET", f"steady:{i}", i), c.call("GET", f"steady:{i}")
                    self.worst_s = max(self.worst_s, time.monotonic() - started)
                    if ok != b"OK" or got != b"%d" % i:
                        self.wrong.append(f"round {i}: SET {ok!r}, GET {got!r}")
                    self.rounds += 1
                    self.stop_event.wait(0.01)  # pacing: a steady client, not a load generator
        except Exception as exc:  # recorded for the test thread to assert on
            self.wrong.append(f"{type(exc).__name__}: {exc}")

    def finish(self) -> None:
        self.stop_event.set()
        self.join(35)
        assert not self.is_alive(), "the steady client hangs"


def _grown_below(p: Proxied, base: int, bound: int, what: str) -> None:
    """Fails at once when the proxy has grown past ``bound`` since ``base`` (a guard inside
    polls: a proxy that takes every reply grows by GBs, and the test stops it early)."""
    grown = p.rss() - base
    assert grown < bound, f"{what}: the proxy grew by {grown // MB} MB (bound {bound // MB} MB)"


# --- client_output_buffer_limit -------------------------------------------------------------


def test_a_client_that_never_reads_is_closed_at_the_hard_limit_and_others_are_served(
    backend: RedisServer,
) -> None:
    with _proxy(backend, {"obuf": {"client_output_buffer_limit": "16mb 0 0"}}) as p:
        steady = _Steady(p.port)
        steady.start()
        try:
            poll_until(lambda: steady.rounds >= 5, "the steady client served", 10)
            base = p.rss()
            with RawClient(p.port, timeout_s=10) as slow:
                slow.send(_gets(1000))  # ~1 GB of replies; it never reads them

                def closed() -> bool:
                    _grown_below(p, base, RSS_BOUND, "1000 GETs of 1 MB, never read")
                    return p.closed("output_buffer_limit") >= 1

                poll_until(closed, "the slow reader closed for its output buffer", 30)
                # what it can still read is whole replies (and a cut one), never an error,
                # then the close; far less than the 1 GB it asked for
                replies = _read_until_closed(slow, cap_bytes=64 * MB)
                assert all(r == BIG for r in replies), [r for r in replies if r != BIG][:1]
            # The shared server connection still flows: a GET sent now is queued behind the
            # replies of the closed client, which the proxy reads and drops.
            with RawClient(p.port, timeout_s=30) as late:
                assert late.call("GET", BIG_KEY) == BIG
            after = steady.rounds  # and the steady client goes on being served
            poll_until(lambda: steady.rounds >= after + 5, "the steady client served after", 10)
            grown_peak = p.peak() - base
        finally:
            steady.finish()
        print(
            f"steady client: {steady.rounds} rounds, worst {steady.worst_s * 1000:.0f} ms; "
            f"proxy peak growth {grown_peak // MB} MB"
        )
        assert not steady.wrong, steady.wrong[:3]
        assert grown_peak < RSS_BOUND, grown_peak // MB
        assert p.closed("output_buffer_limit") == 1
        assert p.metric("resproxy_client_closed_total", pool="obuf") == 1  # nothing else closed
        assert p.stats()["client_output_buffer_limit_disconnections"] == "1"


def test_soft_limit_closes_a_client_owed_too_much_for_too_long_not_one_that_reads(
    backend: RedisServer,
) -> None:
    with _proxy(backend, {"soft": {"client_output_buffer_limit": "0 2mb 1"}}) as p:
        # A client that reads in time: over 2 MB owed for well under 1 s, three times (over 1 s
        # in all, never for 1 s at a stretch: the soft clock starts again below the limit).
        with RawClient(p.port, timeout_s=10) as reader:
            for _ in range(3):
                reader.send(_gets(20))
                poll_until(
                    lambda: p.buffered() > 2_000_000, "the proxy holding > 2 MB for the reader", 10, 0.01
                )
                time.sleep(0.2)  # owed past the soft limit, for less than its 1 s
                assert [reader.read() for _ in range(20)] == [BIG] * 20
            assert reader.call("PING") == b"PONG"
        assert p.closed("output_buffer_limit") == 0

        # A client that never reads: closed, but only once it has been over 2 MB for 1 s.
        with RawClient(p.port, timeout_s=10) as slow:
            sent_at = time.monotonic()
            slow.send(_gets(40))  # 40 MB: past what the kernel's socket buffers take
            poll_until(
                lambda: p.closed("output_buffer_limit") >= 1, "the slow reader closed at the soft limit", 10
            )
            took = time.monotonic() - sent_at
            assert 1.0 <= took < 6.0, took
            replies = _read_until_closed(slow, cap_bytes=64 * MB)
            assert all(r == BIG for r in replies)
        assert p.closed("output_buffer_limit") == 1


# --- client_query_buffer_limit --------------------------------------------------------------


def test_query_buffer_limit_closes_a_client_sending_an_unfinished_2mb_request(
    backend: RedisServer,
) -> None:
    with _proxy(backend, {"qbuf": {"client_query_buffer_limit": "1mb"}}) as p:
        with RawClient(p.port, timeout_s=10) as c:
            # complete requests pass however many arrive at once: 2000 SETs of 1 KB in one write
            value = b"q" * 1024
            c.send(b"".join(encode("SET", f"q:{i}", value) for i in range(2000)))
            assert [c.read() for _ in range(2000)] == [b"OK"] * 2000
            # and one request just under the limit
            assert c.call("SET", "q:big", b"q" * 900_000) == b"OK"
            assert c.call("STRLEN", "q:big") == 900_000
        with RawClient(p.port, timeout_s=5) as c:
            # MSET: its second key comes after the big value, so it is buffered, not streamed
            head = b"*5\r\n$4\r\nMSET\r\n$9\r\nq:partial\r\n$3000000\r\n"
            try:
                c.send(head + b"x" * 2_000_000)  # 2 MB of a 3 MB value, then nothing
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed while we were still sending: fine
            assert c.closed_by_peer(), "a client with 2 MB unframed was not closed"
            # Redis closes such a client without a word; the proxy may say why, nothing else
            while (reply := c.reader.gets()) is not False:
                assert isinstance(reply, hiredis.ReplyError), reply
        assert p.closed("query_buffer_limit") == 1
        assert backend.call("EXISTS", "q:partial") == 0  # the unfinished SET never ran
        assert p.stats()["client_query_buffer_limit_disconnections"] == "1"
        backend.call("DEL", "q:big", *[f"q:{i}" for i in range(2000)])


# --- client_timeout -------------------------------------------------------------------------


def test_client_timeout_closes_idle_clients_only(backend: RedisServer) -> None:
    listener = (
        "listeners:\n  front:\n    listen: 127.0.0.1:{front_port}\n    client_timeout: 300\n"
        "    default_pool: idle\n    routes:\n      - {{prefix: 'x:', pool: idle}}\n"
    )
    with _proxy(backend, {"idle": {"client_timeout": 500}}, extra=listener) as p:
        with RawClient(p.ports["idle"], timeout_s=5) as idle:
            assert idle.call("PING") == b"PONG"
            since = time.monotonic()
            assert idle.closed_by_peer(), "an idle client was not closed"
            took = time.monotonic() - since
            assert 0.4 < took < 5.0, took
        poll_until(lambda: p.closed("idle_timeout") >= 1, "idle_timeout counted", 5)
        assert int(p.stats()["client_idle_timeout_disconnections"]) >= 1

        # a listener's own client_timeout applies to its clients
        with RawClient(p.ports["front"], timeout_s=5) as idle:
            assert idle.call("SET", "x:1", "1") == b"OK"
            since = time.monotonic()
            assert idle.closed_by_peer(), "an idle listener client was not closed"
            took = time.monotonic() - since
            assert 0.2 < took < 5.0, took

        # a client asking every 100 ms stays (2 s, four times the timeout)
        with RawClient(p.ports["idle"], timeout_s=5) as busy:
            for _ in range(20):
                assert busy.call("PING") == b"PONG"
                time.sleep(0.1)  # the pacing is the point: requests 100 ms apart
            assert busy.call("PING") == b"PONG"

        # a client waiting for a reply is not idle: the server holds it for 1.5 s
        assert backend.call("SET", "idle:k", "held") == b"OK"
        with RawClient(p.ports["idle"], timeout_s=10) as waiting:
            assert waiting.call("PING") == b"PONG"
            assert backend.call("CLIENT", "PAUSE", "1500", "ALL") == b"OK"
            since = time.monotonic()
            assert waiting.call("GET", "idle:k") == b"held"
            assert time.monotonic() - since >= 1.3  # it did wait, three times the timeout
        backend.call("DEL", "idle:k", "x:1")


# --- auth_failure_limit ---------------------------------------------------------------------


def _auth_log_lines(proxy: ResProxy) -> list[str]:
    """Log lines about failed AUTH from 127.0.0.1."""
    return [
        line
        for line in proxy.log().splitlines()
        if "127.0.0.1" in line
        and re.search(r"auth", line, re.I)
        and re.search(r"fail|wrong|invalid|refused", line, re.I)
    ]


def _is_wrongpass(reply: Any) -> bool:
    return isinstance(reply, hiredis.ReplyError) and str(reply) == WRONGPASS


def test_auth_failure_limit_closes_after_that_many_wrong_passwords_and_logs_rate_limited() -> None:
    with RedisServer(extra=["--requirepass", PASSWORD]).start() as server:
        pools: dict[str, dict[str, Any]] = {
            "guarded": {"redis_auth": PASSWORD, "auth_failure_limit": 3},
            "plain": {"redis_auth": PASSWORD},  # the default limit: 10
        }
        with _proxy(server, pools) as p:
            guarded, plain = p.ports["guarded"], p.ports["plain"]
            wrong = "not-the-password"

            def failures(pool: str) -> float:
                return p.metric("resproxy_auth_failures_total", pool=pool)

            # three wrong AUTHs, each answered as Redis does, then the connection is closed
            with RawClient(guarded, timeout_s=5) as c:
                for i in range(3):
                    assert _is_wrongpass(c.call("AUTH", f"{wrong}-{i}"))
                assert c.closed_by_peer()
            # pipelined: the third failure's reply is the last thing written
            with RawClient(guarded, timeout_s=5) as c:
                c.send(encode("AUTH", wrong) * 5 + encode("PING"))
                replies = _read_until_closed(c, cap_bytes=MB)
                assert len(replies) == 3 and all(map(_is_wrongpass, replies)), replies
            # HELLO ... AUTH counts too, and so does AUTH user pass
            with RawClient(guarded, timeout_s=5) as c:
                assert _is_wrongpass(c.call("HELLO", 3, "AUTH", "default", wrong))
                assert _is_wrongpass(c.call("AUTH", "default", wrong))
                assert _is_wrongpass(c.call("HELLO", 2, "AUTH", "default", wrong))
                assert c.closed_by_peer()
            # fewer failures than the limit, then the right password: served as usual
            with RawClient(guarded, timeout_s=5) as c:
                assert _is_wrongpass(c.call("AUTH", wrong))
                assert _is_wrongpass(c.call("AUTH", wrong))
                assert c.call("AUTH", PASSWORD) == b"OK"
                assert c.call("SET", "auth:k", "v") == b"OK"
                assert c.call("GET", "auth:k") == b"v"
            assert failures("guarded") == 11
            assert p.closed("auth_failure_limit") == 3

            # 50 failures from 127.0.0.1 (on 13 connections, each its own port): few log lines
            for _ in range(13):
                with RawClient(guarded, timeout_s=5) as c:
                    c.send(encode("AUTH", wrong) * 3)
                    assert len(_read_until_closed(c, cap_bytes=MB)) == 3
            assert failures("guarded") == 50
            assert p.closed("auth_failure_limit") == 16
            poll_until(lambda: bool(_auth_log_lines(p.proxy)), "a log line on failed AUTH", 5)
            lines = _auth_log_lines(p.proxy)
            assert len(lines) <= 3, lines
            assert wrong not in p.proxy.log()  # a password, even a wrong one, is never logged

            # without the key: closed after the 10th failure
            with RawClient(plain, timeout_s=5) as c:
                for _ in range(9):
                    assert _is_wrongpass(c.call("AUTH", wrong))
                assert c.call("AUTH", PASSWORD) == b"OK"
                assert c.call("GET", "auth:k") == b"v"
            with RawClient(plain, timeout_s=5) as c:
                c.send(encode("AUTH", wrong) * 11 + encode("PING"))
                replies = _read_until_closed(c, cap_bytes=MB)
                assert len(replies) == 10 and all(map(_is_wrongpass, replies)), replies
            assert failures("plain") == 19
            assert p.closed("auth_failure_limit") == 17
            assert p.stats(PASSWORD)["auth_failures"] == "69"


# --- max_buffered_bytes ---------------------------------------------------------------------


def test_max_buffered_bytes_pauses_reading_then_closes_the_biggest_holder_and_serves_readers(
    backend: RedisServer,
) -> None:
    """Past three quarters of the budget clients stop being read (no new requests); replies to
    requests already sent keep coming, and past the whole budget the client holding the most
    is closed, as Redis's maxmemory-clients evicts: the proxy's memory stays bounded and a
    client that reads is served throughout, with every reply."""
    clients, gets = 4, 200  # 800 MB of replies asked for by clients that do not read
    pool: dict[str, dict[str, Any]] = {"budget": {"client_output_buffer_limit": "1gb 0 0"}}
    with _proxy(backend, pool, top="max_buffered_bytes: 64mb\n") as p:
        base = p.rss()
        steady = _Steady(p.port)
        steady.start()
        slow = [RawClient(p.port, timeout_s=30) for _ in range(clients)]
        try:
            for c in slow:
                c.send(_gets(gets))

            def evicted() -> bool:
                _grown_below(p, base, RSS_BOUND, f"{clients} x {gets} GETs of 1 MB unread")
                return p.closed("max_buffered_bytes") >= 1

            poll_until(evicted, "the budget closing the biggest holder", 30)
            assert p.metric("resproxy_buffer_pauses_total") >= 1
            # every slow client ends closed or served: the proxy never held them all
            for c in slow:
                replies = _read_until_closed(c, gets * (len(BIG) + 16))
                assert all(r == BIG for r in replies), "a reply was damaged"
            poll_until(lambda: p.buffered() == 0, "the proxy holding nothing", 20)
            # a reader meanwhile: the same 1 MB value, 50 times, every one intact
            with RawClient(p.port, timeout_s=30) as reader:
                assert reader.pipeline([("GET", BIG_KEY)] * 50) == [BIG] * 50
        finally:
            for c in slow:
                c.close()
            steady.finish()
        grown_peak = p.peak() - base
        print(
            f"budget 64mb, {clients} x {gets} MB asked: peak growth {grown_peak // MB} MB, "
            f"{p.closed('max_buffered_bytes'):.0f} evicted, "
            f"{p.metric('resproxy_buffer_pauses_total'):.0f} pauses, "
            f"steady client worst {steady.worst_s * 1000:.0f} ms"
        )
        assert grown_peak < RSS_BOUND, grown_peak // MB
        assert not steady.wrong, steady.wrong[:3]
        assert p.stats()["max_buffered_bytes_disconnections"] == str(int(p.closed("max_buffered_bytes")))


def test_a_client_holding_half_a_request_is_never_paused_by_the_budget(
    backend: RedisServer,
) -> None:
    """Past three quarters of the budget only clients owed replies are paused: one holding part
    of a request can only shrink by being read (found in review: a 7 MB MSET under an 8 MB
    budget waited forever, and so did every later client's split request)."""
    with _proxy(backend, {"half": {}}, top="max_buffered_bytes: 8mb\n") as p:
        value = b"h" * (7 * MB)
        command = encode("MSET", "half:a", value, "half:b", "x")  # MSET: buffered, not streamed
        with RawClient(p.port, timeout_s=20) as c:
            for i in range(0, len(command), 512 * 1024):  # in pieces: the budget sees it grow
                c.send(command[i : i + 512 * 1024])
            assert c.read() == b"OK"
        poll_until(lambda: p.metric("resproxy_buffer_pauses_total") >= 1, "the budget over", 10)
        with RawClient(p.port, timeout_s=20) as c:
            split = encode("SET", "half:c", b"c" * 100_000)
            c.send(split[:50_000])
            c.send(split[50_000:])
            assert c.read() == b"OK"
            assert c.call("STRLEN", "half:a") == len(value)
        assert p.closed("max_buffered_bytes") == 0
        backend.call("DEL", "half:a", "half:b", "half:c")
