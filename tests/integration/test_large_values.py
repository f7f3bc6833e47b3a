"""Large values through a ring pool: streamed both ways, in order, memory bounded, others served.

A request whose bulk argument is big is passed to its server as it arrives on a connection of
its own (stream.py), and a big bulk reply is passed to its client as it arrives (backend.py):
the proxy holds a read's worth of the value, not the value. These tests watch the proxy
process itself (VmHWM, the peak resident size, reset before each transfer) and a second client
pinging through the proxy during each transfer.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.harness.clients import RawClient, encode, plain_redis
from tests.integration.harness.configs import native_config, nutcracker_pool_yaml, pool_yaml, server_lines
from tests.integration.harness.ports import free_port
from tests.integration.harness.process import proc_status, reset_peak_rss
from tests.integration.harness.proxyproc import Nutcracker, ResProxy, start_ring_proxy
from tests.integration.harness.servers import RedisServer, running_redis_servers
from tests.integration.harness.waiting import poll_until

MB = 1024 * 1024


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    with running_redis_servers(2, extra=["--proto-max-bulk-len", "1gb"]) as started:
        yield started


@pytest.fixture(scope="module")
def proxy(servers: list[RedisServer]) -> Iterator[ResProxy]:
    with start_ring_proxy(servers, hash="fnv1a_64", distribution="ketama", timeout=30000) as p:
        yield p


PINGER = """
import select, socket, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
times = []
for _ in range(1_000_000):  # bounded; ends when stdin closes
    if select.select([sys.stdin], [], [], 0.002)[0]:
        break
    t0 = time.monotonic()
    sock.sendall(b"PING\\r\\n")
    got = b""
    while not got.endswith(b"\\r\\n"):
        got += sock.recv(64)
    times.append(time.monotonic() - t0)
times.sort()
print(times[-1], times[int(len(times) * 0.99)], len(times))
"""


class Pinger:
    """PINGs the proxy from a process of its own (so this process's GIL cannot delay it)
    until stopped; reports the worst round trip."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PINGER, str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.worst = self.p99 = 0.0
        self.count = 0

    def finish(self) -> None:
        try:
            out, _ = self.proc.communicate(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        worst, p99, count = out.split()
        self.worst, self.p99, self.count = float(worst), float(p99), int(count)


def _read_bulk(sock: socket.socket, size: int) -> bytes:
    """One bulk reply of ``size`` bytes read into a preallocated buffer (header checked)."""
    header = f"${size}\r\n".encode()
    buf = bytearray(len(header) + size + 2)
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError("closed by peer")
        got += n
    assert bytes(buf[: len(header)]) == header
    return bytes(buf[len(header) : -2])


@pytest.mark.parametrize("size_mb", [64, 256])
def test_set_and_get_of_a_big_value_stream_with_bounded_memory_and_others_served(
    proxy: ResProxy, servers: list[RedisServer], size_mb: int
) -> None:
    size = size_mb * MB
    value = os.urandom(1024) * (size // 1024)
    key = f"big:{size_mb}"
    pid = proxy.pid
    pinger = Pinger(proxy.port)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=60) as sock:
            reset_peak_rss(pid)
            base = proc_status(pid, "VmRSS")
            sock.sendall(encode("SET", key, value))
            assert sock.recv(64) == b"+OK\r\n"
            set_peak = proc_status(pid, "VmHWM") - base
            reset_peak_rss(pid)
            base = proc_status(pid, "VmRSS")
            sock.sendall(encode("GET", key))
            assert _read_bulk(sock, size) == value
            get_peak = proc_status(pid, "VmHWM") - base
    finally:
        pinger.finish()
    print(
        f"{size_mb} MB: SET peak +{set_peak / MB:.0f} MB, GET peak +{get_peak / MB:.0f} MB, "
        f"PING p99 {pinger.p99 * 1000:.1f} ms, worst {pinger.worst * 1000:.1f} ms over "
        f"{pinger.count}"
    )
    assert sum(s.call("EXISTS", key) for s in servers) == 1
    # streamed: the proxy holds a read's worth of the value, not the value (it used to hold it
    # three times); a reply goes to the client as fast as the client reads it, and what the
    # client has not read yet waits in the proxy: the bar, value + 64 MB
    assert set_peak < 64 * MB, f"SET held {set_peak / MB:.0f} MB"
    assert get_peak < size + 64 * MB, f"GET held {get_peak / MB:.0f} MB"
    # the issue's bar: other clients' p99 <= 50 ms; the worst one is bounded too (this 2-core
    # machine runs the sender, the proxy, redis-server and the pinger at once)
    assert pinger.count > 0 and pinger.p99 < 0.05, f"PING p99 {pinger.p99:.3f} s"
    assert pinger.worst < 0.25, f"a PING waited {pinger.worst:.3f} s"


def test_a_streamed_set_keeps_its_place_in_a_pipeline(proxy: ResProxy) -> None:
    value = b"\r\n$-1\r\n*3\r\n" * (300 * 1024)  # ~3.3 MB of RESP-looking bytes
    with RawClient(proxy.port, timeout_s=30) as c:
        c.call("SET", "order:k", "old")
        replies = c.pipeline(
            [
                ("GET", "order:k"),
                ("SET", "order:k", value),
                ("GET", "order:k"),
                ("APPEND", "order:k", "!"),
                ("STRLEN", "order:k"),
                ("PING",),
            ]
        )
        assert replies == [b"old", b"OK", value, len(value) + 1, len(value) + 1, b"PONG"]
        # a streamed command with arguments after the big one, and two big arguments
        assert c.call("SET", "order:ex", value, "EX", 100) == b"OK"
        assert 0 < c.call("TTL", "order:ex") <= 100
        assert c.call("HSET", "order:h", "a", value, "b", value) == 2
        assert c.call("HSTRLEN", "order:h", "b") == len(value)
        # a big MSET (keys after the value: not streamable) is buffered and still served
        assert c.call("MSET", "order:m1", value, "order:m2", value) == b"OK"
        assert c.call("MGET", "order:m1", "order:m2") == [value, value]


def test_a_client_leaving_mid_stream_leaves_nothing_behind(
    proxy: ResProxy, servers: list[RedisServer]
) -> None:
    size = 32 * MB
    head = encode("SET", "gone:k", b"x" * size)[: 8 * MB]  # the header and 8 MB of the value
    for _ in range(2):  # twice: the proxy is fine after the first
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=30) as sock:
            sock.sendall(head)
            # the proxy is passing it on: a server holds a half-received command
            poll_until(lambda: _receiving(servers), "the server receiving the streamed SET", 10)
        # after the client left, the server's half-received command is dropped, never run
        poll_until(lambda: not _receiving(servers), "the server dropping the half command", 10)
        assert sum(s.call("EXISTS", "gone:k") for s in servers) == 0
    with RawClient(proxy.port) as c:
        assert c.call("SET", "gone:after", "v") == b"OK"
        assert c.call("GET", "gone:after") == b"v"


def _receiving(servers: list[RedisServer]) -> bool:
    """Whether a server has a client with a half-received command (query buffer or arguments
    holding more than 1 MB)."""
    for server in servers:
        for fields in server.clients():
            if int(fields.get("qbuf", 0)) + int(fields.get("argv-mem", 0)) > MB:
                return True
    return False


def test_a_big_value_for_a_server_that_is_down_gets_one_error_and_the_client_goes_on() -> None:
    dead = free_port()  # nothing listens there
    listen = free_port()
    with ResProxy(native_config(pool_yaml("dead", listen, [f"127.0.0.1:{dead}:1 s0"], timeout=2000))).start():
        with RawClient(listen, timeout_s=30) as c:
            for _ in range(2):
                reply = c.call("SET", "k", b"z" * (4 * MB))
                assert isinstance(reply, Exception) and "unavailable" in str(reply), reply
                assert c.call("PING") == b"PONG"


@pytest.mark.parametrize("through", ["resproxy", "nutcracker"])
def test_twemproxys_mget_binary_value_with_a_400_ms_timeout(servers: list[RedisServer], through: str) -> None:
    """twemproxy's own test_mget_binary_value: 5 random values of 16 MB + 1 KB and 5 empty
    ones through MSET, then MGET, with the pool's timeout at 400 ms (nutcracker passes it; a
    big reply arriving over more than 400 ms must count as progress, not as a late reply)."""
    port = free_port()
    text = nutcracker_pool_yaml(
        "beta", port, server_lines(servers), hash="fnv1a_64", distribution="ketama", timeout=400, redis=True
    )
    process: ResProxy | Nutcracker = ResProxy(text) if through == "resproxy" else Nutcracker(text, [port])
    with process.start():
        values = {f"kkk-{i}": os.urandom(16 * MB + 1024) for i in range(5)}
        values.update({f"kkk2-{i}": b"" for i in range(5)})
        client = plain_redis(port, timeout_s=30)
        with client:
            assert client.mset(values) is True
            assert client.mget(list(values)) == list(values.values())
            assert client.delete(*values) == 10


def _connections_received(server: RedisServer) -> int:
    return int(server.info("stats")["total_connections_received"])


def test_streamed_requests_reuse_their_server_connection(proxy: ResProxy, servers: list[RedisServer]) -> None:
    """Ten big SETs in a row open one stream connection per server, not ten (a connection per
    value would leave a TIME_WAIT socket per value on the proxy)."""
    value = b"r" * (2 * MB)
    with RawClient(proxy.port, timeout_s=30) as c:
        assert c.call("SET", "reuse:warm:a", value) == b"OK"
        before = sum(_connections_received(s) for s in servers)
        for i in range(10):
            assert c.call("SET", f"reuse:{i}", value) == b"OK"
        after = sum(_connections_received(s) for s in servers)
        assert after - before <= len(servers), after - before
        assert c.call("STRLEN", "reuse:9") == len(value)


def test_a_reload_during_a_streamed_set_lets_it_finish(proxy: ResProxy) -> None:
    """SIGHUP (a changed timeout: the pool is rebuilt) while a big SET is passing: the SET
    completes on the connection it started on, and the next one uses the new pool."""
    value = os.urandom(1024) * (48 * 1024)  # 48 MB
    command = encode("SET", "reload:k", value)
    with open(proxy.config_path) as f:
        original = f.read()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=60) as sock:
            sock.sendall(command[: 16 * MB])
            assert proxy.reload(original.replace("timeout: 30000", "timeout: 29000"))
            sock.sendall(command[16 * MB :])
            assert sock.recv(64) == b"+OK\r\n"
        with RawClient(proxy.port, timeout_s=30) as c:
            assert c.call("STRLEN", "reload:k") == len(value)
            assert c.call("SET", "reload:k2", value) == b"OK"
            assert c.call("GET", "reload:k2") == value
    finally:
        assert proxy.reload(original)


# --- found in review: each fails on the first streaming code ----------------------------------


def test_no_command_slips_past_the_framing_after_a_streamed_value(
    proxy: ResProxy, servers: list[RedisServer]
) -> None:
    """Redis ends a line at CR + any byte; a header the proxy has not checked must never reach
    it, or FLUSHALL (refused by the proxy) could ride in after a big SET."""
    for s in servers:
        s.call("SET", "marker", "kept")
    flushes = sum(s.cmdstat("flushall") for s in servers)
    head = encode("SET", "smuggle:k", b"s" * MB)[:-2]  # *3 SET k $1048576 <1 MB>, no CRLF
    smuggled = b"\r\n$2\rXab\rX*1\rX$8\rXFLUSHALL\rX"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(head.replace(b"*3\r\n", b"*4\r\n", 1) + smuggled)
        # a negative check needs a bounded wait: had the header been passed on, Redis would
        # have run FLUSHALL within this second (the first streaming code did)
        with pytest.raises(TimeoutError):
            poll_until(
                lambda: sum(s.cmdstat("flushall") for s in servers) > flushes,
                "FLUSHALL smuggled to a server",
                1.0,
            )
        sock.sendall(b"\r\n")  # now the header is checked: not a length
        reply = sock.recv(4096)
    assert b"Protocol error" in reply, reply
    assert sum(s.cmdstat("flushall") for s in servers) == flushes
    assert all(s.call("GET", "marker") == b"kept" for s in servers)
    assert sum(s.call("EXISTS", "smuggle:k") for s in servers) == 0


def test_a_streamed_reply_obeys_the_output_limit_and_a_gone_client_costs_nothing(
    servers: list[RedisServer],
) -> None:
    listen = free_port()
    text = native_config(
        pool_yaml(
            "lim",
            listen,
            server_lines(servers[:1]),
            timeout=30000,
            client_output_buffer_limit="16mb 0 0",
        )
    )
    size = 128 * MB
    with ResProxy(text).start() as proxy:
        with RawClient(listen, timeout_s=60) as c:
            assert c.call("SET", "lim:big", os.urandom(1024) * (size // 1024)) == b"OK"
        pid = proxy.pid
        # a client that asks and never reads: closed near 16 MB owed, not at the value's size
        reset_peak_rss(pid)
        base = proc_status(pid, "VmRSS")
        with socket.create_connection(("127.0.0.1", listen), timeout=30) as sock:
            sock.sendall(encode("GET", "lim:big"))
            poll_until(
                lambda: "output_buffer_limit reached" in proxy.log(),
                "the client closed at its output limit",
                20,
            )
        owed = int(proxy.log().split("output_buffer_limit reached (")[1].split(" ")[0])
        assert owed < 32 * MB, owed
        # a client that asks and leaves at once: its reply is dropped as it comes
        reset_peak_rss(pid)
        base = proc_status(pid, "VmRSS")
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", listen), timeout=30) as sock:
                sock.sendall(encode("GET", "lim:big"))
            with RawClient(listen, timeout_s=60) as c:
                assert c.call("PING") == b"PONG"  # after the 128 MB passed through
                assert c.call("STRLEN", "lim:big") == size
        grown = proc_status(pid, "VmHWM") - base
        assert grown < 48 * MB, grown // MB


def test_a_client_closed_or_idle_mid_stream_gets_one_error_and_frees_its_connection(
    servers: list[RedisServer],
) -> None:
    def config(port: int) -> str:
        return native_config(
            pool_yaml("mid", port, server_lines(servers[:1]), timeout=30000, client_timeout=1000)
        )

    listen = free_port()
    with ResProxy(config(listen)).start() as proxy:
        # idle halfway through a big value: closed by client_timeout, the half command dropped
        with socket.create_connection(("127.0.0.1", listen), timeout=10) as sock:
            sock.sendall(encode("SET", "mid:idle", b"i" * (4 * MB))[: 2 * MB])
            poll_until(lambda: _receiving(servers[:1]), "the streamed SET passing", 10)
            data = b""
            while chunk := sock.recv(65536):  # (the proxy closes it: EOF within the timeout)
                data += chunk
        assert data.startswith(b"-ERR") or data == b"", data
        poll_until(lambda: not _receiving(servers[:1]), "the half command dropped", 10)
        assert servers[0].call("EXISTS", "mid:idle") == 0
        # closing (its listener moved by a reload) halfway through: one error, then closed
        with socket.create_connection(("127.0.0.1", listen), timeout=10) as sock:
            sock.sendall(encode("SET", "mid:reload", b"r" * (4 * MB))[: 2 * MB])
            poll_until(lambda: _receiving(servers[:1]), "the streamed SET passing", 10)
            proxy.write_config(config(free_port()))
            proxy.send_signal(signal.SIGHUP)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert data.count(b"\r\n") == 1 and data.startswith(b"-ERR"), data
        poll_until(lambda: not _receiving(servers[:1]), "the half command dropped", 10)
        assert servers[0].call("EXISTS", "mid:reload") == 0
