"""Hostile clients: huge declared counts and lengths, unauthenticated bodies, bad quoting.

What a client may declare in a request header costs the proxy nothing before the data comes,
and what Redis refuses at the header the proxy refuses there too, with Redis 7's words, then
closes the connection. The reference texts come from real redis-servers (one plain, one with
``--requirepass``) fed the same bytes.

One resproxy per test (a test that wedges it must not take the next one with it) with two
pools over real servers: ``open`` (no password, two servers) and ``locked`` (``redis_auth``,
one server with that password, as twemproxy also AUTHs to its servers with it). A canary
client does SET/GET on the open pool from its own thread while the hostile connections run
and records every round trip; a sampler thread records the proxy's peak VmSize and VmRSS
(/proc/PID/status). Hostile connections come from asyncio, at most ``CONCURRENCY`` at a time,
each bounded by a timeout, each phase bounded as a whole.

Latency bound: the canary's worst round trip should be under 100 ms. The machine (2 cores) is
shared with other test runs and the canary competes with this process's own asyncio loop for
the GIL, so a single scheduling hiccup can exceed that without the proxy being at fault: the
tests assert the 99th percentile against 100 ms and the worst against 500 ms (a blocked event
loop, the bug this guards against, stalls for seconds), and print both.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from tests.integration.harness.clients import RawClient, encode
from tests.integration.harness.configs import native_config, pool_yaml, server_lines
from tests.integration.harness.ports import free_port
from tests.integration.harness.process import proc_status
from tests.integration.harness.proxyproc import ResProxy
from tests.integration.harness.servers import RedisServer, running_redis_servers

PASSWORD = "hostile-test-pw"
CONCURRENCY = 100
MAX_GROWTH_KB = 64 * 1024  # VmSize / VmRSS the whole hostile run may add
P99_MS = 100.0
WORST_MS = 500.0

INVALID_MULTIBULK = b"-ERR Protocol error: invalid multibulk length\r\n"
INVALID_BULK = b"-ERR Protocol error: invalid bulk length\r\n"
UNAUTH_MULTIBULK = b"-ERR Protocol error: unauthenticated multibulk length\r\n"
UNAUTH_BULK = b"-ERR Protocol error: unauthenticated bulk length\r\n"
UNBALANCED = b"-ERR Protocol error: unbalanced quotes in request\r\n"

SET_1GB = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1073741824\r\n"
SET_100MB = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$104857600\r\n"


@dataclass(frozen=True)
class Hostile:
    """One hostile connection: what it sends (each item one write), to which pool, and the
    reply Redis gives it (always followed by Redis closing the connection)."""

    name: str
    writes: tuple[bytes, ...]
    pool: str  # "open" or "locked"
    reply: bytes


HOSTILE = [
    # a count past INT_MAX: hiredis pre-allocated the array (16 GB of address space), took
    # seconds to free it, and raised MemoryError for 2^32 - 1
    Hostile("count 2^31, one more line", (b"*2147483648\r\n", b"$1\r\n"), "open", INVALID_MULTIBULK),
    Hostile("count 2^31 then a line, one write", (b"*2147483648\r\n$1\r\n",), "open", INVALID_MULTIBULK),
    Hostile("count 2^32-1", (b"*4294967295\r\n",), "open", INVALID_MULTIBULK),
    Hostile("bulk 1 GB", (SET_1GB,), "open", INVALID_BULK),
    Hostile("bulk 512 MB + 1", (b"*1\r\n$536870913\r\n",), "open", INVALID_BULK),
    Hostile("count with a leading zero", (b"*03\r\n",), "open", INVALID_MULTIBULK),
    Hostile("unbalanced quotes", (b'SET "a b\r\n',), "open", UNBALANCED),
    # before AUTH (Redis 7: more than 10 arguments, or a bulk over 16 KB)
    Hostile("unauthenticated count 11", (b"*11\r\n",), "locked", UNAUTH_MULTIBULK),
    Hostile("unauthenticated bulk 16385", (b"*1\r\n$16385\r\n",), "locked", UNAUTH_BULK),
    Hostile("unauthenticated bulk 100 MB", (SET_100MB,), "locked", UNAUTH_BULK),
    Hostile("unauthenticated count 2^31", (b"*2147483648\r\n",), "locked", INVALID_MULTIBULK),
    Hostile("unauthenticated bulk 1 GB", (SET_1GB,), "locked", INVALID_BULK),
]
# Where resproxy is stricter than Redis (which allows INT_MAX arguments): its max_args.
PROXY_ONLY = [Hostile("count 2^20 + 1", (b"*1048577\r\n",), "open", INVALID_MULTIBULK)]


# --- processes -------------------------------------------------------------------------------


@dataclass
class Servers:
    backends: list[RedisServer]  # the open pool's
    locked_backend: RedisServer  # the locked pool's (redis_auth is also the servers' password)
    plain: RedisServer  # reference redis-server
    locked: RedisServer  # reference redis-server with --requirepass


@pytest.fixture(scope="module")
def redis() -> Iterator[Servers]:
    with (
        running_redis_servers(3) as plain,
        running_redis_servers(2, extra=["--requirepass", PASSWORD]) as locked,
    ):
        yield Servers(plain[:2], locked[0], plain[2], locked[1])


@dataclass
class Proxy:
    process: ResProxy
    ports: dict[str, int]  # pool name -> listen port

    def memory_kb(self) -> dict[str, int]:
        """VmSize and VmRSS of the proxy process, in kB."""
        return {k: proc_status(self.process.pid, k) // 1024 for k in ("VmSize", "VmRSS")}

    def log_after_stop(self) -> str:
        """Stop the proxy (SIGTERM, bounded) and return all it wrote to stderr."""
        self.process.stop()
        return self.process.log()


@pytest.fixture()
def proxy(redis: Servers) -> Iterator[Proxy]:
    ports = {"open": free_port(), "locked": free_port()}
    config = native_config(
        pool_yaml("open", ports["open"], server_lines(redis.backends), timeout=2000, preconnect=True),
        pool_yaml(
            "locked",
            ports["locked"],
            server_lines([redis.locked_backend], "a"),
            timeout=2000,
            redis_auth=PASSWORD,
        ),
    )
    with ResProxy(config).start(pools=2) as process:
        yield Proxy(process, ports)


# --- observers: the canary client and the memory sampler -----------------------------------


class Canary(threading.Thread):
    """SET then GET through the proxy in a loop until stopped; every round trip timed."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop_event = threading.Event()
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        client: RawClient | None = None
        for i in range(10_000_000):  # bounded; ends on the stop event
            if self.stop_event.is_set():
                break
            try:
                if client is None:
                    client = RawClient(self.port, timeout_s=10.0)
                for command, want in (
                    (("SET", f"canary:{i}", i), b"OK"),
                    (("GET", f"canary:{i}"), str(i).encode()),
                ):
                    started = time.perf_counter()
                    got = client.call(*command)
                    self.latencies_ms.append((time.perf_counter() - started) * 1000)
                    if got != want:
                        self.errors.append(f"{command}: {got!r}")
            except (OSError, ConnectionError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if client is not None:
                    client.close()
                client = None
        if client is not None:
            client.close()

    def finish(self) -> None:
        self.stop_event.set()
        self.join(20)

    def summary(self) -> str:
        lat = sorted(self.latencies_ms) or [0.0]
        return (
            f"canary: {len(lat)} round trips, {len(self.errors)} errors, "
            f"median {statistics.median(lat):.2f} ms, p99 {self.p99():.1f} ms, "
            f"worst {lat[-1]:.1f} ms"
        )

    def p99(self) -> float:
        lat = sorted(self.latencies_ms) or [0.0]
        return lat[min(len(lat) - 1, int(len(lat) * 0.99))]

    def worst(self) -> float:
        return max(self.latencies_ms, default=0.0)


class MemoryPeak(threading.Thread):
    """Samples the proxy's VmSize and VmRSS until stopped; keeps the highest of each."""

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(daemon=True)
        self.proxy = proxy
        self.base = proxy.memory_kb()
        self.peak = dict(self.base)
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(0.02):
            self.sample()

    def sample(self) -> None:
        try:
            now = self.proxy.memory_kb()
        except (OSError, KeyError):
            return  # the process is gone
        for k, v in now.items():
            self.peak[k] = max(self.peak[k], v)

    def finish(self) -> dict[str, int]:
        """Growth over the baseline, in kB, per field."""
        self.stop_event.set()
        self.join(5)
        self.sample()
        return {k: self.peak[k] - self.base[k] for k in self.base}


# --- hostile connections --------------------------------------------------------------------


async def hostile(port: int, writes: Sequence[bytes], timeout_s: float = 10.0) -> tuple[bytes, bool]:
    """Send ``writes`` (one write each), then read until the peer closes or ``timeout_s``.
    Returns (everything read, whether the peer closed).

    Plain sockets, not asyncio streams: a peer that closes with our bytes unread sends a
    reset, and a StreamReader then raises before handing over the reply it already holds;
    recv() gives the reply first, as a client would see it."""
    loop = asyncio.get_running_loop()
    got = b""
    with socket.socket() as sock:
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout_s):
                await loop.sock_connect(sock, ("127.0.0.1", port))
                try:
                    for data in writes:
                        await loop.sock_sendall(sock, data)
                except (ConnectionResetError, BrokenPipeError):
                    pass  # closed at an earlier write: read what it answered
                while True:
                    try:
                        chunk = await loop.sock_recv(sock, 65536)
                    except ConnectionResetError:
                        return got, True
                    if not chunk:
                        return got, True
                    got += chunk
        except TimeoutError:
            return got, False


@dataclass
class Run:
    done: int = 0
    wrong: list[str] = field(default_factory=list)


async def run_hostile(proxy: Proxy, jobs: Sequence[Hostile], deadline_s: float) -> Run:
    """Every job once, CONCURRENCY at a time, within ``deadline_s`` as a whole."""
    result = Run()
    queue = iter(jobs)

    async def worker() -> None:
        for job in queue:
            got, closed = await hostile(proxy.ports[job.pool], job.writes)
            result.done += 1
            if (got, closed) != (job.reply, True):
                result.wrong.append(f"{job.name}: got {got[:100]!r}, {'closed' if closed else 'not closed'}")

    try:
        async with asyncio.timeout(deadline_s):
            async with asyncio.TaskGroup() as group:
                for _ in range(CONCURRENCY):
                    group.create_task(worker())
    except TimeoutError:
        result.wrong.append(f"deadline: {result.done} of {len(jobs)} done in {deadline_s} s")
    return result


async def warm_up(proxy: Proxy) -> None:
    """Ordinary traffic first, so the baseline includes what any CONCURRENCY clients cost."""

    async def one(pool: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.ports[pool])
        try:
            writer.write(encode("PING"))  # +PONG, or -NOAUTH on the locked pool
            await writer.drain()
            async with asyncio.timeout(10):
                await reader.readline()
        finally:
            writer.close()

    for _ in range(2):
        await asyncio.gather(*(one(pool) for pool in ("open", "locked") * (CONCURRENCY // 2)))


def assert_healthy(run: Run, canary: Canary, grown_kb: dict[str, int], log: str) -> None:
    """Every check, all reported together: what each hostile connection got, the proxy's log,
    its memory, the canary."""
    print(f"\n{run.done} hostile connections; {canary.summary()}; proxy grew {grown_kb} kB")
    problems = []
    if run.wrong:
        problems.append(
            f"{len(run.wrong)} hostile connections not refused as Redis does, e.g.\n  "
            + "\n  ".join(sorted(set(run.wrong))[:10])
        )
    if "Traceback" in log or "MemoryError" in log:
        problems.append(
            f"tracebacks in the proxy's log ({log.count('Traceback')}), the last:\n"
            + log[log.rfind("Traceback") :][:1500]
        )
    if max(grown_kb.values()) >= MAX_GROWTH_KB:
        problems.append(f"proxy memory grew {grown_kb} kB (limit {MAX_GROWTH_KB} kB)")
    if canary.errors:
        problems.append(f"canary errors: {canary.errors[:10]}")
    if canary.p99() > P99_MS or canary.worst() > WORST_MS:
        problems.append(f"canary too slow (p99 <= {P99_MS} ms, worst <= {WORST_MS} ms): " + canary.summary())
    assert not problems, "\n".join(problems)


# --- tests -----------------------------------------------------------------------------------


def exchange(
    port: int, writes: Sequence[bytes], password: str | None = None, timeout_s: float = 5.0
) -> tuple[bytes, bool]:
    """Blocking twin of ``hostile`` (optionally AUTH first): (bytes read, peer closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        got = b""
        if password is not None:
            sock.sendall(encode("AUTH", password))
            while not got.endswith(b"\r\n"):
                got += sock.recv(100)
            assert got == b"+OK\r\n", got
            got = b""
        try:
            for data in writes:
                sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            pass  # closed at an earlier write: read what it answered
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return got, True
                got += chunk
        except ConnectionResetError:
            return got, True
        except TimeoutError:
            return got, False


@pytest.mark.parametrize("case", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_header_answered_as_redis_does(case: Hostile, redis: Servers, proxy: Proxy) -> None:
    reference = redis.plain if case.pool == "open" else redis.locked
    assert exchange(reference.port, case.writes) == (case.reply, True)  # Redis itself
    assert exchange(proxy.ports[case.pool], case.writes) == (case.reply, True)


def test_more_arguments_than_max_args_refused_at_the_header(proxy: Proxy) -> None:
    for case in PROXY_ONLY:
        assert exchange(proxy.ports[case.pool], case.writes) == (case.reply, True)


@pytest.mark.parametrize("target", ["redis-server", "resproxy"])
def test_after_auth_the_unauthenticated_limits_are_lifted(target: str, redis: Servers, proxy: Proxy) -> None:
    port = redis.locked.port if target == "redis-server" else proxy.ports["locked"]
    keys = [f"{{big}}:{i}" for i in range(5)]  # eleven arguments
    mset = encode("MSET", *itertools.chain.from_iterable((k, "v") for k in keys))
    big = encode("SET", "big", b"x" * 20000)
    got = exchange(port, [mset, big, encode("QUIT")], password=PASSWORD)
    assert got == (b"+OK\r\n+OK\r\n+OK\r\n", True)


@pytest.mark.parametrize("target", ["redis-server", "resproxy"])
def test_unauthenticated_100mb_body_refused_at_the_header(target: str, redis: Servers, proxy: Proxy) -> None:
    """The reply comes before any of the body is sent; the body then meets a closed
    connection, and the proxy never holds it."""
    port = redis.locked.port if target == "redis-server" else proxy.ports["locked"]
    memory = MemoryPeak(proxy)  # (for the redis-server run it shows the idle proxy)
    memory.start()
    body_sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=3.0) as sock:
        sock.sendall(SET_100MB)
        at_header = b""
        try:
            while not at_header.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                at_header += chunk
        except TimeoutError:
            pass  # nothing at the header: see what sending the body does
        sock.settimeout(10.0)
        chunk_of_body = b"x" * (1024 * 1024)
        try:
            for _ in range(100):
                sock.sendall(chunk_of_body)
                body_sent += len(chunk_of_body)
            sock.sendall(b"\r\n")
            later = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            later = b""
        except TimeoutError:
            later = b"(no reply 10 s after the body)"
    grown = memory.finish()
    print(
        f"\n{target}: at the header {at_header!r}; {body_sent >> 20} MB of body accepted; "
        f"after it {later[:80]!r}; proxy grew {grown} kB"
    )
    assert at_header == UNAUTH_BULK
    assert body_sent < 64 * 1024 * 1024  # the connection was closed under it
    assert grown["VmRSS"] < MAX_GROWTH_KB, grown


async def test_oversized_headers_cost_no_memory_and_no_stall(proxy: Proxy) -> None:
    """The issue's case: 200 connections each sending ``*2147483648\\r\\n`` and one more line,
    200 sending ``*4294967295\\r\\n``, 100 declaring a 1 GB bulk, while a client works."""
    await warm_up(proxy)
    canary = Canary(proxy.ports["open"])
    canary.start()
    memory = MemoryPeak(proxy)
    memory.start()
    kinds = {h.name: h for h in HOSTILE}
    jobs = (
        [kinds["count 2^31, one more line"]] * 200
        + [kinds["count 2^32-1"]] * 200
        + [kinds["bulk 1 GB"]] * 100
    )
    try:
        run = await run_hostile(proxy, jobs, deadline_s=30)
    finally:
        grown = memory.finish()
        canary.finish()
    assert_healthy(run, canary, grown, proxy.log_after_stop())


async def test_eight_thousand_hostile_connections_leave_the_canary_unharmed(proxy: Proxy) -> None:
    """A live run: 8,000 hostile connections of every kind, on both pools, 100 at a time
    (the attack seen: 7,755 in 12 s left the proxy at 100% CPU)."""
    await warm_up(proxy)
    canary = Canary(proxy.ports["open"])
    canary.start()
    memory = MemoryPeak(proxy)
    memory.start()
    kinds = HOSTILE + PROXY_ONLY
    jobs = [kinds[i % len(kinds)] for i in range(8000)]
    started = time.monotonic()
    try:
        run = await run_hostile(proxy, jobs, deadline_s=45)
    finally:
        grown = memory.finish()
        canary.finish()
    took = time.monotonic() - started
    print(f"\n{run.done} connections in {took:.1f} s ({run.done / took:.0f}/s)")
    assert_healthy(run, canary, grown, proxy.log_after_stop())  # (a deadline is one of wrong)
    assert run.done == len(jobs)
