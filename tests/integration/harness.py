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
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any

import hiredis

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
READY_TIMEOUT_S = 15.0


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free 127.0.0.1 port below the kernel's ephemeral range.

    Asking the kernel for port 0 hands out an *ephemeral* port, which any outgoing connection
    (a proxy connecting to its servers) may take before our process binds it: seen here as
    "address already in use". Ports below ip_local_port_range are never used for outgoing
    connections, so only our own allocations can collide, and those are remembered.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(1000):  # bounded
        port = random.randrange(10000, max(low, 10001))
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
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
        self.port = port or free_port()
        self.extra = list(extra)
        self.dir = tempfile.mkdtemp(prefix="resproxy-test-redis-")
        self._watch: _LineWatcher | None = None

    def launch(self) -> RedisServer:
        args = [
            "redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--dir", self.dir, *self.extra,
        ]  # fmt: skip
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

    def call(self, *args: bytes | str, password: str | None = None) -> Any:
        """One command straight to this server (not through a proxy)."""
        with RawClient(self.port) as c:
            if password:
                c.call("AUTH", password)
            return c.call(*args)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


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


def wait_port(
    port: int, alive: Callable[[], bool], what: str, timeout_s: float = READY_TIMEOUT_S
) -> None:
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
            [NUTCRACKER, "-c", self.config_path, "-s", str(free_port()),
             "-o", os.path.join(self.dir, "nutcracker.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for port in self.ports:
            wait_port(port, self.alive, self.name)
        return self

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ResProxy(Process):
    name = "resproxy"

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
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
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
            cwd=ROOT, capture_output=True, text=True, timeout=30,
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


def start_ring_proxy(backends: Sequence[RedisServer], **keys: object) -> ResProxy:
    """resproxy with one pool over ``backends`` (named s0, s1...) on a free port (``.port``)."""
    port = free_port()
    servers = [f"127.0.0.1:{b.port}:1 s{i}" for i, b in enumerate(backends)]
    proxy = ResProxy(native_config(pool_yaml("default", port, servers, **keys))).start()
    proxy.port = port  # type: ignore[attr-defined]
    return proxy
