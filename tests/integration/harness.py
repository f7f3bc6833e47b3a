"""Real processes for the integration tests: redis-server, nutcracker, resproxy.

Every process is started on a free 127.0.0.1 port and stopped by its PID (``stop``), also when a
test fails (the fixtures call ``stop`` in ``finally``). Readiness is an event, not a sleep:
redis-server and resproxy print a line when they listen, and the harness waits for that line
(bounded). nutcracker prints nothing useful at its default verbosity, so for it alone the harness
polls the port, a bounded number of times.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

import hiredis
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.driver_info import DriverInfo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
READY_TIMEOUT_S = 15.0


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(bus: bool = False) -> int:
    """A free 127.0.0.1 port below the kernel's ephemeral range.

    With ``bus``, port + 10000 (a cluster node's bus port) is free and below that range too.

    Asking the kernel for port 0 hands out an *ephemeral* port, which any outgoing connection
    (a proxy connecting to its servers) may take before our process binds it: seen here as
    "address already in use". Ports below ip_local_port_range are never used for outgoing
    connections, so only our own allocations can collide, and those are remembered.
    """
    low = _ephemeral_low()
    high = low - 10000 if bus else low
    for _ in range(1000):  # bounded
        port = random.randrange(10000, max(high, 10001))
        if port in _HANDED_OUT or not _bindable(port):
            continue
        if bus and (port + 10000 in _HANDED_OUT or not _bindable(port + 10000)):
            continue
        _HANDED_OUT.add(port)
        if bus:
            _HANDED_OUT.add(port + 10000)
        return port
    raise RuntimeError("no free port below the ephemeral range")


class _LineWatcher:
    """Drains a pipe in a thread (so it never fills) and signals when a marker line appears."""

    def __init__(self, pipe: IO[bytes], marker: bytes) -> None:
        self.lines: list[bytes] = []
        self._marker = marker
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        self._thread.start()

    def _run(self, pipe: IO[bytes]) -> None:
        for line in iter(pipe.readline, b""):
            self.lines.append(line)
            if self._marker in line:
                self.ready.set()
        pipe.close()

    def text(self) -> str:
        return b"".join(self.lines).decode("utf-8", "replace")


class Process:
    """A child process stopped by PID."""

    proc: subprocess.Popen[bytes] | None = None
    name = "process"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        """Stop by PID (SIGKILL if it does not exit in time); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it stopped
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout_s)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL by PID and reap."""
        if self.alive():
            self.proc.kill()  # type: ignore[union-attr]
            self.proc.wait(timeout=10)  # type: ignore[union-attr]


class RedisServer(Process):
    name = "redis-server"

    def __init__(self, port: int | None = None, extra: Sequence[str] = ()) -> None:
        self.port = port or free_port(bus="--cluster-enabled" in extra)
        self.extra = list(extra)
        self.dir = tempfile.mkdtemp(prefix="resproxy-test-redis-")
        self._watch: _LineWatcher | None = None

    def launch(self) -> RedisServer:
        args = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            self.dir,
            *self.extra,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        self._watch = _LineWatcher(self.proc.stdout, b"Ready to accept connections")
        return self

    def wait_ready(self) -> RedisServer:
        assert self._watch is not None
        if not self._watch.ready.wait(READY_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"redis-server on {self.port} not ready:\n{self._watch.text()}")
        return self

    def start(self) -> RedisServer:
        return self.launch().wait_ready()

    def restart(self) -> RedisServer:
        """Start again on the same port (after a kill)."""
        self.stop()
        return self.start()

    def call(self, *args: bytes | str | int, password: str | None = None) -> Any:
        """One command straight to this server (not through a proxy)."""
        with RawClient(self.port) as c:
            if password:
                c.call("AUTH", password)
            return c.call(*args)

    def cmdstat(self, command: str) -> int:
        """How many times this server ran ``command`` (INFO commandstats calls)."""
        for line in self.call("INFO", "commandstats").decode().splitlines():
            if line.startswith(f"cmdstat_{command}:"):
                return int(line.split("calls=")[1].split(",")[0])
        return 0

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def poll_until(check: Callable[[], bool], what: str, timeout_s: float = 30.0, every_s: float = 0.05) -> None:
    """Bounded polling of another process's state, where it offers no event to wait for."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ConnectionError):
            pass
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not within {timeout_s} s")


def plain_redis(port: int, timeout_s: float = 10.0) -> redis.Redis:
    """A redis-py client that speaks as older clients do: RESP2, no CLIENT SETINFO at connect
    (redis-py 8's defaults are HELLO 3 and CLIENT SETINFO, which nutcracker refuses by closing
    the connection)."""
    return redis.Redis(
        port=port, socket_timeout=timeout_s, protocol=2, driver_info=DriverInfo(name=None, lib_version=None)
    )


def proc_status(pid: int, field: str) -> int:
    """A ``kB`` line of /proc/PID/status (VmRSS, VmHWM, VmSize...), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM (the peak resident size) to the current resident size."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


@contextmanager
def running_redis_servers(count: int, extra: Sequence[str] = ()) -> Iterator[list[RedisServer]]:
    """``count`` redis-servers started in parallel for a block (a module fixture's body),
    stopped by PID at its end, whatever happened."""
    started = start_redis_servers(count, extra)
    try:
        yield started
    finally:
        for s in started:
            s.cleanup()


def start_redis_servers(count: int, extra: Sequence[str] = ()) -> list[RedisServer]:
    """Start ``count`` redis-servers in parallel and wait for all of them."""
    servers = [RedisServer(extra=extra).launch() for _ in range(count)]
    try:
        for s in servers:
            s.wait_ready()
    except BaseException:
        for s in servers:
            s.cleanup()
        raise
    return servers


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of GET http://127.0.0.1:port/path, error statuses included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Metrics:
    """One scrape of resproxy's /metrics, parsed with prometheus-client's own parser."""

    def __init__(self, port: int) -> None:
        status, body = http_get(port, "/metrics")
        assert status == 200, status
        self.samples = [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels (KeyError if there is none)."""
        for sample, have, value in self.samples:
            if sample == name and have == labels:
                return float(value)
        raise KeyError((name, labels))

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples whose labels include these (0 if there are none)."""
        return float(
            sum(
                value
                for sample, have, value in self.samples
                if sample == name and labels.items() <= have.items()
            )
        )


def wait_port(port: int, alive: Callable[[], bool], what: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Bounded wait until 127.0.0.1:``port`` accepts, for programs that print no ready line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout_s} s")


class Nutcracker(Process):
    name = "nutcracker"

    def __init__(self, config_text: str, ports: Iterable[int]) -> None:
        self.dir = tempfile.mkdtemp(prefix="resproxy-test-nutcracker-")
        self.config_path = os.path.join(self.dir, "nutcracker.yml")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.ports = list(ports)

    def start(self) -> Nutcracker:
        self.proc = subprocess.Popen(
            [
                NUTCRACKER,
                "-c",
                self.config_path,
                "-s",
                str(free_port()),
                "-o",
                os.path.join(self.dir, "nutcracker.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in self.ports:
            wait_port(port, self.alive, self.name)
        return self

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ResProxy(Process):
    name = "resproxy"
    # set by the helpers that start one: its listen port and, with --metrics, the metrics port
    port = 0
    mport = 0
    metrics_port = 0

    def __init__(self, config_text: str, args: Sequence[str] = ()) -> None:
        self.dir = tempfile.mkdtemp(prefix="resproxy-test-proxy-")
        self.config_path = os.path.join(self.dir, "resproxy.yml")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.args = list(args)
        self._watch: _LineWatcher | None = None

    def launch(self) -> ResProxy:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "-c", self.config_path, *self.args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        self._watch = _LineWatcher(self.proc.stderr, b"resproxy ready")
        return self

    def wait_ready(self, pools: int = 1) -> ResProxy:
        assert self._watch is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while sum(b"resproxy ready" in line for line in self._watch.lines) < pools:
            self._watch.ready.clear()
            if sum(b"resproxy ready" in line for line in self._watch.lines) >= pools:
                break
            left = deadline - time.monotonic()
            if left <= 0 or not self.alive():
                self.stop()
                raise RuntimeError(f"resproxy not ready:\n{self.log()}")
            self._watch.ready.wait(min(left, 0.5))
        return self

    def start(self, pools: int = 1) -> ResProxy:
        return self.launch().wait_ready(pools)

    def log(self) -> str:
        return self._watch.text() if self._watch else ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_proxy_check(config_text: str) -> subprocess.CompletedProcess[str]:
    """``python -m proxy -t -c FILE`` on a config text."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "check.yml")
        with open(path, "w") as f:
            f.write(config_text)
        return subprocess.run(
            [sys.executable, "-m", "proxy", "-t", "-c", path],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )


def encode(*args: bytes | str | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        raw = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(parts)


class RawClient:
    """A blocking RESP client over a plain socket: exact bytes in, decoded or raw replies out."""

    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.reader = hiredis.Reader()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> Any:
        """One decoded reply (hiredis values; errors as hiredis.ReplyError)."""
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by peer")
            self.reader.feed(chunk)

    def call(self, *args: bytes | str | int) -> Any:
        self.send(encode(*args))
        return self.read()

    def pipeline(self, commands: Sequence[Sequence[bytes | str | int]]) -> list[Any]:
        self.send(b"".join(encode(*c) for c in commands))
        return [self.read() for _ in commands]

    def closed_by_peer(self) -> bool:
        """True if the peer closed (EOF) within the socket timeout."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.reader.feed(chunk)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False


def pool_yaml(
    name: str,
    listen_port: int,
    servers: Sequence[str],
    *,
    native: bool = True,
    **keys: object,
) -> str:
    """One pool's YAML (native ``pools:`` form or nutcracker.yml form)."""
    indent = "    " if native else "  "
    lines = [f"{indent[:-2]}{name}:", f"{indent}listen: 127.0.0.1:{listen_port}"]
    for key, value in keys.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, str):
            value = f'"{value}"'
        lines.append(f"{indent}{key}: {value}")
    lines.append(f"{indent}servers:")
    lines.extend(f"{indent}  - {s}" for s in servers)
    return "\n".join(lines) + "\n"


def native_config(*pools: str) -> str:
    return "pools:\n" + "".join(pools)


def start_ring_proxy(backends: Sequence[RedisServer], **keys: Any) -> ResProxy:
    """resproxy with one pool over ``backends`` (named s0, s1...) on a free port (``.port``)."""
    port = free_port()
    servers = [f"127.0.0.1:{b.port}:1 s{i}" for i, b in enumerate(backends)]
    proxy = ResProxy(native_config(pool_yaml("default", port, servers, **keys))).start()
    proxy.port = port
    return proxy


class RedisCluster:
    """A real Redis Cluster on loopback: ``masters`` masters with ``replicas`` replicas each.

    Built as a user builds one: redis-servers with ``--cluster-enabled yes``, then
    ``redis-cli --cluster create ... --cluster-replicas N --cluster-yes``; ready when every node
    says ``cluster_state:ok`` and every replica's link to its master is up.
    """

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        self.masters_count = masters
        self.replicas = replicas
        self.extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", str(node_timeout_ms)]
        self.nodes: list[RedisServer] = []

    def start(self) -> RedisCluster:
        count = self.masters_count * (1 + self.replicas)
        self.nodes = start_redis_servers(count, self.extra)
        try:
            addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *addrs,
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_healthy(replicas=self.replicas)
        except BaseException:
            self.cleanup()
            raise
        return self

    def alive_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.alive()]

    def wait_healthy(self, timeout_s: float = 60.0, replicas: int = 0) -> None:
        """Every live node reports cluster_state:ok and agrees on the slot map; replicas synced.

        With ``replicas``, every node also lists that many replicas for every slot range.
        """

        def healthy() -> bool:
            maps = set()
            for node in self.alive_nodes():
                if b"cluster_state:ok" not in node.call("CLUSTER", "INFO"):
                    return False
                rows = node.call("CLUSTER", "SLOTS")
                if any(len(r) - 3 < replicas for r in rows):
                    return False
                maps.add(repr(sorted((r[0], r[1], r[2][1]) for r in rows)))
                info = node.call("INFO", "replication")
                if b"role:slave" in info and b"master_link_status:up" not in info:
                    return False
            return len(maps) == 1

        poll_until(healthy, "cluster healthy", timeout_s)

    def slot_owner(self, slot: int) -> RedisServer:
        """The master serving ``slot``, as the cluster says."""
        for row in self.alive_nodes()[0].call("CLUSTER", "SLOTS"):
            if row[0] <= slot <= row[1]:
                return self.by_port(row[2][1])
        raise LookupError(slot)

    def by_port(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def masters(self) -> list[RedisServer]:
        return [n for n in self.alive_nodes() if n.call("ROLE")[0] == b"master"]

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        return [
            n
            for n in self.alive_nodes()
            if n.call("ROLE")[0] == b"slave" and n.call("ROLE")[2] == master.port
        ]

    def node_id(self, node: RedisServer) -> str:
        return str(node.call("CLUSTER", "MYID").decode())

    def seeds(self, count: int | None = None) -> list[str]:
        return [f"127.0.0.1:{n.port}" for n in self.nodes[: count or len(self.nodes)]]

    def cleanup(self) -> None:
        for n in self.nodes:
            n.cleanup()


def start_cluster_proxy(
    cluster: RedisCluster, seeds: int = 1, metrics: int | None = None, **keys: Any
) -> ResProxy:
    """resproxy with one cluster pool on a free port (``.port``), seeded with the first nodes;
    with ``metrics``, /metrics on that port (``.metrics_port``)."""
    port = free_port()
    pool = pool_yaml("cluster", port, cluster.seeds(seeds), distribution="cluster", **keys)
    args = ["--metrics", f"127.0.0.1:{metrics}"] if metrics else []
    proxy = ResProxy(native_config(pool), args=args).start()
    proxy.port = port
    proxy.metrics_port = metrics or 0
    return proxy


class Sentinel(Process):
    """A real Redis Sentinel (``redis-server FILE --sentinel``) on a free loopback port."""

    name = "redis-sentinel"

    def __init__(self, master_name: str, master_port: int, quorum: int = 2) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="resproxy-test-sentinel-")
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as f:  # sentinel rewrites this file: it must be its own
            f.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}\n"
                f"sentinel down-after-milliseconds {master_name} 1000\n"
                f"sentinel failover-timeout {master_name} 6000\n"
                f"sentinel parallel-syncs {master_name} 1\n"
            )
        self._watch: _LineWatcher | None = None

    def start(self) -> Sentinel:
        self.proc = subprocess.Popen(
            ["redis-server", self.conf, "--sentinel"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        self._watch = _LineWatcher(self.proc.stdout, b"+monitor master")
        if not self._watch.ready.wait(READY_TIMEOUT_S):
            self.stop()
            raise RuntimeError(f"sentinel on {self.port} not ready:\n{self._watch.text()}")
        return self

    def call(self, *args: bytes | str | int) -> Any:
        with RawClient(self.port) as c:
            return c.call(*args)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Writer(threading.Thread):
    """SETs unique keys (``prefix:i``) through a proxy until ``stop``; records the acknowledged
    writes and each error with when its request started and how long it took."""

    def __init__(self, port: int, prefix: str, stop: threading.Event, password: str | None = None) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis(port=port, password=password, socket_timeout=10.0)
        self.prefix = prefix
        self.stop_event = stop
        self.acked: dict[str, str] = {}
        self.errors: list[tuple[float, float, str]] = []
        self.ops = 0

    def run(self) -> None:
        try:
            for i in range(10_000_000):  # bounded; ends on the stop event
                if self.stop_event.is_set():
                    break
                key, value = f"{self.prefix}:{i}", f"v{i}"
                started = time.monotonic()
                try:
                    if self.client.set(key, value):
                        self.acked[key] = value
                    self.ops += 1
                except redis.RedisError as exc:
                    took = time.monotonic() - started
                    self.errors.append((started, took, f"{type(exc).__name__}: {exc}"))
        finally:
            self.client.close()

    def errors_outside(self, start: float, end: float) -> list[tuple[float, float, str]]:
        """Errors whose request did not overlap [start, end] (the switch window)."""
        return [e for e in self.errors if not (start <= e[0] + e[1] and e[0] <= end)]

    def missing_on(self, node: RedisServer, password: str | None = None) -> list[str]:
        """Acknowledged writes that ``node`` does not hold (with their values)."""
        keys = list(self.acked)
        missing: list[str] = []
        for i in range(0, len(keys), 200):
            chunk = keys[i : i + 200]
            values = node.call("MGET", *chunk, password=password)
            missing += [k for k, v in zip(chunk, values) if v != self.acked[k].encode()]
        return missing


class SentinelGroup:
    """A master, its replica and three sentinels watching them as ``name``.

    With ``password`` both data nodes have it as ``requirepass`` and ``masterauth`` (so either
    can be the other's replica); ``sentinel`` makes each sentinel (a subclass may add its own
    configuration, e.g. a password of the sentinels' own).
    """

    def __init__(
        self,
        name: str = "sessions",
        password: str | None = None,
        sentinel: Callable[[str, int], Sentinel] = Sentinel,
    ) -> None:
        self.name = name
        self.password = password
        self._make_sentinel = sentinel
        self.master: RedisServer | None = None
        self.replica: RedisServer | None = None
        self.sentinels: list[Sentinel] = []

    def start(self) -> SentinelGroup:
        pw = self.password
        auth = ["--requirepass", pw, "--masterauth", pw] if pw else []
        try:
            self.master = master = RedisServer(extra=auth).start()
            self.replica = replica = RedisServer(
                extra=[*auth, "--replicaof", "127.0.0.1", str(master.port)]
            ).start()
            poll_until(
                lambda: b"master_link_status:up" in replica.call("INFO", "replication", password=pw),
                "replica in sync",
                30,
            )
            self.sentinels = [self._make_sentinel(self.name, master.port) for _ in range(3)]
            for s in self.sentinels:
                s.start()
            self.wait_settled()
        except BaseException:
            self.cleanup()
            raise
        return self

    def nodes(self) -> list[RedisServer]:
        return [n for n in (self.master, self.replica) if n is not None]

    def current_master_port(self) -> int:
        addr = self.sentinels[0].call("SENTINEL", "get-master-addr-by-name", self.name)
        return int(addr[1])

    def wait_settled(self, timeout_s: float = 60.0) -> None:
        """Every sentinel knows the same master, a replica of it, and the two other sentinels."""

        def settled() -> bool:
            masters = set()
            for s in self.sentinels:
                if not s.alive():
                    continue
                masters.add(int(s.call("SENTINEL", "get-master-addr-by-name", self.name)[1]))
                if len(s.call("SENTINEL", "sentinels", self.name)) < 2:
                    return False
                replicas = s.call("SENTINEL", "replicas", self.name)
                ok = [r for r in replicas if b"s_down" not in dict(zip(r[::2], r[1::2]))[b"flags"]]
                if not ok:
                    return False
            return len(masters) == 1

        poll_until(settled, "sentinels settled", timeout_s, 0.1)

    def seeds(self) -> list[str]:
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def by_port(self, port: int) -> RedisServer:
        return next(n for n in self.nodes() if n.port == port)

    def cleanup(self) -> None:
        for s in self.sentinels:
            s.cleanup()
        for n in self.nodes():
            n.cleanup()


def sentinel_pool_yaml(
    name: str, group: SentinelGroup, listen_port: int | None = None, **keys: object
) -> str:
    """A native sentinel pool's YAML (with ``listen`` when a port is given)."""
    lines = [f"  {name}:", "    distribution: sentinel", f"    master_name: {group.name}"]
    if listen_port is not None:
        lines.append(f"    listen: 127.0.0.1:{listen_port}")
    for key, value in keys.items():
        lines.append(f"    {key}: {value}")
    lines.append("    sentinels:")
    lines.extend(f"      - {s}" for s in group.seeds())
    return "\n".join(lines) + "\n"
