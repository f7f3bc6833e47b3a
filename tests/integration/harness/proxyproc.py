"""The proxies as processes: resproxy (``python -m proxy``) and, to compare with, nutcracker.

resproxy prints ``resproxy ready`` once per front that listens, and the harness waits for as
many as it was asked (bounded); with a metrics port it also waits until /metrics answers (the
endpoint opens just after the last ready line). nutcracker prints nothing useful at its default
verbosity, so for it alone the harness polls its ports, a bounded number of times.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence

from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.configs import native_config, pool_yaml, sentinel_pool_yaml, server_lines
from tests.integration.harness.metrics import http_get
from tests.integration.harness.ports import free_port
from tests.integration.harness.process import Process
from tests.integration.harness.sentinel import SentinelGroup
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import READY_TIMEOUT_S, poll_until, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
RELOAD_TIMEOUT_S = 20.0


class ResProxy(Process):
    """resproxy on a config text of its own; ``port`` is the front the tests talk to and
    ``metrics_port`` its /metrics (0 when the test did not say)."""

    name = "resproxy"
    marker = b"resproxy ready"

    def __init__(
        self, config_text: str, args: Sequence[str] = (), *, port: int = 0, metrics_port: int = 0
    ) -> None:
        super().__init__("proxy")
        self.config_path = os.path.join(self.dir, "resproxy.yml")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.args = list(args)
        self.port = port
        self.metrics_port = metrics_port

    def launch(self) -> ResProxy:
        self._spawn([sys.executable, "-m", "proxy", "-c", self.config_path, *self.args], ROOT, True)
        return self

    def wait_ready(self, pools: int = 1) -> ResProxy:
        """Wait (bounded) until ``pools`` fronts listen, and /metrics answers if it has one."""
        self._wait_ready("resproxy", pools)
        if self.metrics_port:
            try:
                poll_until(
                    lambda: http_get(self.metrics_port, "/metrics")[0] == 200, "/metrics", READY_TIMEOUT_S
                )
            except TimeoutError:
                self.cleanup()
                raise RuntimeError(f"resproxy's /metrics not answering:\n{self.log()}") from None
        return self

    def start(self, pools: int = 1) -> ResProxy:
        return self.launch().wait_ready(pools)

    def write_config(self, text: str) -> None:
        """Replace the config file whole (the proxy never reads half of it)."""
        tmp = self.config_path + ".new"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)

    def reload(self, text: str, timeout_s: float = RELOAD_TIMEOUT_S) -> bool:
        """``text`` as the config file, then SIGHUP; waits (bounded) for the log line that says
        the reload was accepted or rejected. True if it was accepted."""
        assert self._watch is not None

        def outcomes() -> tuple[int, int]:
            log = self.log()
            return log.count("reload accepted"), log.count("reload rejected")

        before = outcomes()
        self.write_config(text)
        self.send_signal(signal.SIGHUP)
        if not self._watch.wait_until(lambda: outcomes() != before, timeout_s):
            raise TimeoutError(f"reload not handled within {timeout_s} s:\n{self.log()[-3000:]}")
        return outcomes()[0] > before[0]


def run_proxy(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m proxy ARGS`` run to its end (bounded), its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


def run_proxy_on(config_text: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m proxy -c FILE ARGS``, FILE (``check.yml``) holding ``config_text``."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "check.yml")
        with open(path, "w") as f:
            f.write(config_text)
        return run_proxy("-c", path, *args)


def run_proxy_check(config_text: str) -> subprocess.CompletedProcess[str]:
    """``python -m proxy -t -c FILE`` on a config text."""
    return run_proxy_on(config_text, "-t")


def _start_one_pool(pool: Callable[[int], str], metrics: bool) -> ResProxy:
    """resproxy with the pool ``pool(port)`` on a free port; with ``metrics``, /metrics on another."""
    port = free_port()
    metrics_port = free_port() if metrics else 0
    args = ["--metrics", f"127.0.0.1:{metrics_port}"] if metrics else []
    return ResProxy(native_config(pool(port)), args, port=port, metrics_port=metrics_port).start()


def start_ring_proxy(
    backends: Sequence[RedisServer],
    *,
    name: str = "default",
    names: str | Sequence[str] | None = "s",
    metrics: bool = False,
    **keys: object,
) -> ResProxy:
    """resproxy with one pool ``name`` over ``backends`` (named s0, s1... unless said) on a
    free port (``.port``); with ``metrics``, /metrics on another (``.metrics_port``)."""
    lines = server_lines(backends, names)
    return _start_one_pool(lambda port: pool_yaml(name, port, lines, **keys), metrics)


def start_cluster_proxy(
    cluster: RedisCluster, seeds: int = 1, metrics: bool = False, **keys: object
) -> ResProxy:
    """resproxy with one cluster pool on a free port (``.port``), seeded with the first nodes;
    with ``metrics``, /metrics on another (``.metrics_port``)."""
    seeds_ = cluster.seeds(seeds)
    return _start_one_pool(
        lambda port: pool_yaml("cluster", port, seeds_, distribution="cluster", **keys), metrics
    )


def start_sentinel_proxy(group: SentinelGroup, name: str, metrics: bool = False, **keys: object) -> ResProxy:
    """resproxy with one sentinel pool ``name`` over ``group``'s sentinels on a free port
    (``.port``); with ``metrics``, /metrics on another (``.metrics_port``)."""
    return _start_one_pool(lambda port: sentinel_pool_yaml(name, group, port, **keys), metrics)


class Nutcracker(Process):
    """twemproxy's nutcracker on a config text, ready when each of ``ports`` accepts."""

    name = "nutcracker"

    def __init__(self, config_text: str, ports: Iterable[int]) -> None:
        super().__init__("nutcracker")
        self.config_path = os.path.join(self.dir, "nutcracker.yml")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.ports = list(ports)

    def start(self) -> Nutcracker:
        log = os.path.join(self.dir, "nutcracker.log")
        self.proc = subprocess.Popen(
            [NUTCRACKER, "-c", self.config_path, "-s", str(free_port()), "-o", log],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in self.ports:
            wait_port(port, self.alive, self.name)
        return self
