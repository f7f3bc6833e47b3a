"""The large-value section of `make bench`: SET and GET of a big value per size and target.

Targets: redis-server straight, nutcracker and resproxy, both proxies in front of that same
redis-server (one server in the pool, so every key goes there). Per size (default 1, 16, 128 and
512 MB, 1 MB = 2**20 bytes) a fresh nutcracker and resproxy are started and warmed up (a 64 kB
SET and GET), then each round runs a SET, a GET and a DEL through every target (redis first, the
proxies' order alternating). Per size and target it reports (medians of MB/s, maxima of the rest):

* MB/s of the SET and of the GET: wall time from the first byte sent to the last byte of the
  reply read, by a raw socket client (``sendall`` of one preallocated buffer holding the whole
  command; the GET reply is read with ``recv_into`` into a preallocated buffer), so the client
  copies nothing; the value read back is compared with the one sent, outside the timing;
* the proxy's peak RSS (VmHWM in /proc/PID/status) during the SET and during the GET: a fresh
  proxy process per size, and its high-water mark is reset by writing "5" to
  /proc/PID/clear_refs before each of the two transfers (checked to work at the start; where it
  does not, the figure is the peak since the proxy started);
* the worst latency of a second client connection that sends PING (to the proxy, or to
  redis-server for the direct target) in a loop, one PING per millisecond, while the transfer runs.
  An outstanding PING is waited for, so a PING held up past the end of the transfer counts whole.

A transfer that fails (error reply, connection closed, timeout, wrong value, proxy died) is
reported as such and the run goes on. Every process is stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.integration.harness import free_port, wait_port  # noqa: E402

NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
MB = 1 << 20
DEFAULT_SIZES = [1, 16, 128, 512]
MAX_SIZE_MB = 1000  # redis-server runs with --proto-max-bulk-len 1gb
TRANSFER_TIMEOUT_S = 120.0  # one SET or GET, through the slowest target
SECTION_BUDGET_S = 900.0  # the whole section, past which the remaining transfers are skipped
PING_INTERVAL_S = 0.001
TARGETS = ("redis", "nutcracker", "resproxy")
PATTERN = b"large value \r\n$-1\r\n*3\r\n" + bytes(range(256))  # RESP-looking bytes inside


class TransferError(Exception):
    pass


@dataclass
class Transfer:
    seconds: float | None = None  # None: it failed or was skipped, see error
    error: str = ""
    peak_rss_kb: int | None = None  # the proxy's VmHWM over this transfer
    ping_max_ms: float | None = None
    pings: int = 0
    ping_error: str = ""

    def mb_s(self, size_mb: int) -> float | None:
        return size_mb / self.seconds if self.seconds else None


@dataclass
class Row:
    """One size through one target: a SET and a GET per round."""

    size_mb: int
    target: str
    idle_rss_kb: int | None = None  # the proxy's VmRSS after start-up and the warm-up
    sets: list[Transfer] = field(default_factory=list)
    gets: list[Transfer] = field(default_factory=list)

    def mb_s(self, op: str) -> float | None:
        """Median MB/s over the rounds that succeeded."""
        got = [t.mb_s(self.size_mb) for t in (self.sets if op == "SET" else self.gets)]
        ok = [v for v in got if v is not None]
        return statistics.median(ok) if ok else None

    def peak_rss_kb(self, op: str) -> int | None:
        got = [t.peak_rss_kb for t in (self.sets if op == "SET" else self.gets)]
        return max((v for v in got if v is not None), default=None)

    def ping_max_ms(self, op: str) -> float | None:
        got = [t.ping_max_ms for t in (self.sets if op == "SET" else self.gets)]
        return max((v for v in got if v is not None), default=None)

    def pings(self, op: str) -> int:
        return sum(t.pings for t in (self.sets if op == "SET" else self.gets))


# --- processes ---------------------------------------------------------------------------------


def proc_status(pid: int, key: str) -> int | None:
    """A kB field of /proc/PID/status (VmHWM, VmRSS), None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def reset_hwm(pid: int) -> None:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def hwm_reset_works() -> bool:
    """Whether writing 5 to clear_refs resets VmHWM on this kernel (checked on a child python
    that touches 64 MB and frees it)."""
    code = (
        "import sys\nb = bytearray(64 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n"
        "del b\nprint('ready', flush=True)\nsys.stdin.read()\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert p.stdout is not None
        if p.stdout.readline().strip() != b"ready":
            return False
        before = proc_status(p.pid, "VmHWM") or 0
        reset_hwm(p.pid)
        after = proc_status(p.pid, "VmHWM") or before
        return before - after > 32 * 1024
    finally:
        if p.stdin is not None:
            p.stdin.close()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def proxy_yml(listen: int, server: int) -> str:
    """The twemproxy config both proxies read: one server, and a timeout that a slow 512 MB
    transfer does not hit (the ring section's 400 ms would)."""
    return (
        "large:\n"
        f"  listen: 127.0.0.1:{listen}\n"
        "  hash: fnv1a_64\n  distribution: ketama\n  redis: true\n"
        f"  timeout: {int(TRANSFER_TIMEOUT_S * 1000)}\n  server_connections: 1\n"
        "  preconnect: true\n  auto_eject_hosts: false\n"
        f"  servers:\n   - 127.0.0.1:{server}:1\n"
    )


# --- the raw client ----------------------------------------------------------------------------


def connect(port: int, timeout_s: float) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout_s)
    return s


def read_line(sock: socket.socket, deadline: float) -> tuple[bytes, bytes]:
    """The first line of a reply (without CRLF) and whatever came after it in the same reads."""
    head = b""
    while b"\r\n" not in head:
        if time.monotonic() > deadline:
            raise TransferError("timed out waiting for the reply")
        chunk = sock.recv(65536)
        if not chunk:
            raise TransferError("connection closed before the reply")
        head += chunk
        if len(head) > 1 << 20 and b"\r\n" not in head:
            raise TransferError("no reply line in the first MB")
    line, _, rest = head.partition(b"\r\n")
    return line, rest


def do_set(sock: socket.socket, command: memoryview, deadline: float) -> None:
    sock.sendall(command)  # sendall's timeout bounds the whole send (Python >= 3.5)
    line, rest = read_line(sock, deadline)
    if line != b"+OK" or rest:
        raise TransferError(f"SET replied {line[:200]!r}")


def do_get(sock: socket.socket, command: bytes, into: bytearray, deadline: float) -> None:
    """GET into ``into`` (len = value length + 2, for the CRLF)."""
    sock.sendall(command)
    line, rest = read_line(sock, deadline)
    if not line.startswith(b"$"):
        raise TransferError(f"GET replied {line[:200]!r}")
    length = int(line[1:])
    if length != len(into) - 2:
        raise TransferError(f"GET replied a value of {length} bytes, sent {len(into) - 2}")
    if len(rest) > len(into):
        raise TransferError("GET replied more than the value")
    view = memoryview(into)
    view[: len(rest)] = rest
    got = len(rest)
    while got < len(into):
        if time.monotonic() > deadline:
            raise TransferError(f"timed out after {got} of {len(into)} bytes")
        n = sock.recv_into(view[got:])
        if n == 0:
            raise TransferError(f"connection closed after {got} of {len(into)} bytes")
        got += n
    if into[-2:] != b"\r\n":
        raise TransferError("GET reply does not end with CRLF")


class Pinger(threading.Thread):
    """PING on its own connection, one per PING_INTERVAL_S, until stopped; keeps the worst."""

    def __init__(self, port: int, timeout_s: float) -> None:
        super().__init__(daemon=True)
        self.sock = connect(port, timeout_s)
        self.stopping = threading.Event()
        self.worst_s = 0.0
        self.count = 0
        self.error = ""

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                start = time.perf_counter()
                self.sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                reply = b""
                while not reply.endswith(b"\r\n"):
                    chunk = self.sock.recv(64)
                    if not chunk:
                        raise TransferError("closed")
                    reply += chunk
                elapsed = time.perf_counter() - start
                if reply != b"+PONG\r\n":
                    raise TransferError(f"PING replied {reply[:100]!r}")
                self.worst_s = max(self.worst_s, elapsed)
                self.count += 1
                self.stopping.wait(PING_INTERVAL_S)
        except (OSError, TransferError) as e:
            self.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        finally:
            self.sock.close()

    def finish(self, timeout_s: float) -> None:
        self.stopping.set()
        self.join(timeout_s)
        if self.is_alive():
            self.error = self.error or "PING still outstanding"


def timed(
    port: int,
    op: Callable[[socket.socket, float], None],
    timeout_s: float,
    proxy: subprocess.Popen[bytes] | None,
    result: Transfer,
) -> None:
    """Run one transfer with a pinger alongside; fill in ``result``."""
    if proxy is not None:
        reset_hwm(proxy.pid)
    sock: socket.socket | None = None
    pinger: Pinger | None = None
    try:
        sock = connect(port, timeout_s)
        pinger = Pinger(port, timeout_s)
        pinger.start()
        deadline = time.monotonic() + timeout_s
        start = time.perf_counter()
        op(sock, deadline)
        result.seconds = time.perf_counter() - start
    except (OSError, TransferError, ValueError) as e:
        result.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    finally:
        if sock is not None:
            sock.close()
        if pinger is not None:
            pinger.finish(timeout_s)
            result.ping_max_ms = pinger.worst_s * 1000 if pinger.count else None
            result.pings, result.ping_error = pinger.count, pinger.error
            if pinger.is_alive():  # a PING still waiting: it lasted at least this long
                result.ping_max_ms = None
    if proxy is not None:
        result.peak_rss_kb = proc_status(proxy.pid, "VmHWM")
        if proxy.poll() is not None:
            result.seconds = None
            result.error = (result.error + "; " if result.error else "") + (
                f"proxy exited (rc {proxy.returncode})"
            )


# --- the section -------------------------------------------------------------------------------


def set_command(key: bytes, size: int) -> tuple[bytearray, int]:
    """``SET key <size bytes>`` in one buffer, and the offset of the value in it."""
    head = b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key, size)
    buf = bytearray(len(head) + size + 2)
    buf[: len(head)] = head
    view = memoryview(buf)
    start, filled = len(head), min(len(PATTERN), size)
    view[start : start + filled] = PATTERN[:filled]
    while filled < size:  # double the filled part: no second copy of the value
        n = min(filled, size - filled)
        view[start + filled : start + filled + n] = view[start : start + n]
        filled += n
    buf[-2:] = b"\r\n"
    return buf, start


def run(sizes: list[int], rounds: int, log: Callable[[str], None]) -> tuple[list[Row], bool]:
    """Run the section; returns the rows and whether the peak RSS is per transfer.

    Per size: a fresh nutcracker and resproxy, then ``rounds`` rounds of SET and GET (then DEL)
    through redis-server straight and the two proxies, which of them goes first alternating."""
    section_deadline = time.monotonic() + SECTION_BUDGET_S
    per_transfer = hwm_reset_works()
    if not per_transfer:
        log(
            "large: writing 5 to /proc/PID/clear_refs does not reset VmHWM here; "
            "peak RSS is since the proxy started (a fresh proxy per size)"
        )
    workdir = tempfile.mkdtemp(prefix="resproxy-bench-large-")
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], what: str, port: int, log_path: str = os.devnull) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=out, cwd=ROOT)
        procs.append(p)
        wait_port(port, lambda: p.poll() is None, what)
        return p

    def timeout() -> float:
        return max(5.0, min(TRANSFER_TIMEOUT_S, section_deadline - time.monotonic()))

    rows: list[Row] = []
    try:
        redis_port = free_port()
        start(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
                "--proto-max-bulk-len",
                "1gb",
                "--client-query-buffer-limit",
                "1gb",
            ],
            "redis-server",
            redis_port,
        )
        for size_mb in sizes:
            size = size_mb * MB
            key = b"large:%d" % size_mb
            set_buf, offset = set_command(key, size)
            set_view = memoryview(set_buf)
            value = set_view[offset : offset + size]
            get_cmd = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)
            get_buf = bytearray(size + 2)
            memoryview(get_buf)[:size] = value  # touch its pages now, not in the first GET

            ports: dict[str, int] = {"redis": redis_port}
            proxies: dict[str, subprocess.Popen[bytes]] = {}
            by_target: dict[str, Row] = {}
            broken: dict[str, str] = {}
            logs: dict[str, str] = {}
            for target in TARGETS:
                row = by_target[target] = Row(size_mb, target)
                rows.append(row)
                if target == "redis":
                    continue
                port = ports[target] = free_port()
                conf = os.path.join(workdir, f"{target}-{size_mb}.yml")
                with open(conf, "w") as f:
                    f.write(proxy_yml(port, redis_port))
                logs[target] = os.path.join(workdir, f"{target}-{size_mb}.log")
                if target == "nutcracker":
                    cmd = [NUTCRACKER, "-c", conf, "-s", str(free_port()), "-o", logs[target]]
                else:
                    cmd = [sys.executable, "-m", "proxy", "-c", conf, "--log-level", "warning"]
                try:
                    proxies[target] = start(cmd, target, port, logs[target])
                except RuntimeError as e:  # wait_port: it exited or did not listen
                    broken[target] = f"did not start: {e}"
            for target, port in ports.items():
                if target in broken:
                    continue
                warm_up(port, timeout())
                if target in proxies:
                    by_target[target].idle_rss_kb = proc_status(proxies[target].pid, "VmRSS")
            try:
                for r in range(rounds):
                    order = ["redis", "nutcracker", "resproxy"]
                    if (r + sizes.index(size_mb)) % 2:
                        order[1:] = order[:0:-1]
                    for target in order:
                        row, proxy = by_target[target], proxies.get(target)
                        sets, gets = Transfer(), Transfer()
                        skip = ""
                        if target in broken:
                            skip = broken[target]
                        elif any(t.seconds is None for t in row.sets):
                            skip = "skipped: an earlier round failed"
                        elif section_deadline - time.monotonic() < 5:
                            skip = "skipped: section time budget spent"
                        row.sets.append(sets)
                        row.gets.append(gets)
                        if skip:
                            sets.error = gets.error = skip
                            continue
                        port = ports[target]
                        get_buf[-2:] = b"\0\0"
                        timed(port, lambda s, d: do_set(s, set_view, d), timeout(), proxy, sets)
                        if sets.seconds is None:
                            gets.error = "skipped: SET failed"
                        else:
                            timed(port, lambda s, d: do_get(s, get_cmd, get_buf, d), timeout(), proxy, gets)
                            if gets.seconds is not None and not get_buf.startswith(value):
                                gets.seconds, gets.error = None, "value read back differs"
                        if target in logs and (sets.error or gets.error):
                            (gets if gets.error else sets).error += log_tail(logs[target])
                        delete(redis_port, key)
                        log(f"  large {size_mb} MB round {r + 1}/{rounds} {target}: {summary(sets, gets)}")
            finally:
                for proxy in proxies.values():
                    stop(proxy)
                    procs.remove(proxy)
            del value, set_view, set_buf, get_buf
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(workdir, ignore_errors=True)
    return rows, per_transfer


def log_tail(path: str, lines: int = 3) -> str:
    """The proxy's last log lines, for a failure's message."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return "; proxy log: " + " | ".join(line.strip()[:300] for line in tail) if tail else ""


def warm_up(port: int, timeout_s: float) -> None:
    """A 64 kB SET and GET and a PING before the measured transfers: the proxy's connection to
    redis-server is up and its code paths have run once. Errors show in the transfers."""
    key = b"large:warm-up"
    command, _ = set_command(key, 64 * 1024)
    into = bytearray(64 * 1024 + 2)
    try:
        with connect(port, timeout_s) as s:
            deadline = time.monotonic() + timeout_s
            do_set(s, memoryview(command), deadline)
            do_get(s, b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key), into, deadline)
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            read_line(s, deadline)
    except (OSError, TransferError, ValueError):
        pass


def delete(port: int, key: bytes) -> None:
    """DEL the key straight on redis-server, so it holds one value at most."""
    with connect(port, TRANSFER_TIMEOUT_S) as s:
        s.sendall(b"*2\r\n$3\r\nDEL\r\n$%d\r\n%s\r\n" % (len(key), key))
        read_line(s, time.monotonic() + TRANSFER_TIMEOUT_S)


# --- report ------------------------------------------------------------------------------------


def fmt_mb_s(v: float | None) -> str:
    return f"{v:,.0f}" if v is not None else "FAIL"


def fmt_rss(kb: int | None) -> str:
    return f"{kb / 1024:,.0f}" if kb is not None else "-"


def fmt_ping(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:,.1f}" if ms < 100 else f"{ms:,.0f}"


def partial(transfers: list[Transfer]) -> str:
    """``*`` after a median that some rounds are missing from (they failed: listed below)."""
    ok = sum(t.seconds is not None for t in transfers)
    return "*" if 0 < ok < len(transfers) else ""


def summary(sets: Transfer, gets: Transfer) -> str:
    parts = []
    for op, t in (("SET", sets), ("GET", gets)):
        if t.seconds is None:
            parts.append(f"{op} failed ({t.error})")
        else:
            parts.append(f"{op} {t.seconds:.2f} s")
    return ", ".join(parts)


def tables(rows: list[Row]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of the results table and of the ratio table."""
    header = [
        "size MB",
        "target",
        "SET MB/s",
        "GET MB/s",
        "RSS MB idle",
        "peak RSS MB SET/GET",
        "PING max ms SET/GET",
        "PINGs SET/GET",
    ]
    out: list[list[str]] = []
    for r in rows:
        proxy = r.target != "redis"
        out.append(
            [
                str(r.size_mb),
                r.target,
                fmt_mb_s(r.mb_s("SET")) + partial(r.sets),
                fmt_mb_s(r.mb_s("GET")) + partial(r.gets),
                fmt_rss(r.idle_rss_kb) if proxy else "-",
                f"{fmt_rss(r.peak_rss_kb('SET'))}/{fmt_rss(r.peak_rss_kb('GET'))}" if proxy else "-",
                f"{fmt_ping(r.ping_max_ms('SET'))}/{fmt_ping(r.ping_max_ms('GET'))}",
                f"{r.pings('SET')}/{r.pings('GET')}",
            ]
        )
    ratio_header = [
        "size MB",
        "SET MB/s p/n",
        "GET MB/s p/n",
        "peak RSS SET p/n",
        "peak RSS GET p/n",
        "SET MB/s p/redis",
        "GET MB/s p/redis",
    ]
    ratios: list[list[str]] = []
    for size_mb in dict.fromkeys(r.size_mb for r in rows):
        by = {r.target: r for r in rows if r.size_mb == size_mb}
        p, n, d = by.get("resproxy"), by.get("nutcracker"), by.get("redis")
        if p is None or n is None or d is None:
            continue

        def ratio(a: float | int | None, b: float | int | None) -> str:
            return f"{a / b:.2f}" if a is not None and b else "-"

        ratios.append(
            [
                str(size_mb),
                ratio(p.mb_s("SET"), n.mb_s("SET")),
                ratio(p.mb_s("GET"), n.mb_s("GET")),
                ratio(p.peak_rss_kb("SET"), n.peak_rss_kb("SET")),
                ratio(p.peak_rss_kb("GET"), n.peak_rss_kb("GET")),
                ratio(p.mb_s("SET"), d.mb_s("SET")),
                ratio(p.mb_s("GET"), d.mb_s("GET")),
            ]
        )
    return [("results", header, out), ("ratios", ratio_header, ratios)]


def failures(rows: list[Row]) -> list[str]:
    lines = []
    for r in rows:
        for op, ts in (("SET", r.sets), ("GET", r.gets)):
            for i, t in enumerate(ts):
                where = f"{r.size_mb} MB {op} round {i + 1} through {r.target}"
                if t.error:
                    lines.append(f"{where}: {t.error}")
                if t.ping_error:
                    lines.append(f"{where}: PING client: {t.ping_error}")
    return lines


def to_json(rows: list[Row]) -> list[dict[str, object]]:
    return [
        {
            "size_mb": r.size_mb,
            "target": r.target,
            "idle_rss_kb": r.idle_rss_kb,
            "sets": [vars(t) for t in r.sets],
            "gets": [vars(t) for t in r.gets],
        }
        for r in rows
    ]


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"bench: --sizes takes MB as comma-separated integers, got {text!r}") from None
    if not sizes or any(not 0 < s <= MAX_SIZE_MB for s in sizes):
        raise SystemExit(f"bench: --sizes must be between 1 and {MAX_SIZE_MB} MB, got {text!r}")
    return sizes
