"""Ejection (``auto_eject_hosts``): a hung or killed server leaves the ring after
``server_failure_limit`` consecutive failures, and comes back only once a probe shows it answers.

Every fault script runs under a steady load: ``CLIENTS`` harness.Writer threads, each SETting its
own keys one at a time (so at most ``CLIENTS`` requests are ever in flight). The same script runs
through resproxy and through a real nutcracker 0.5 with the same nutcracker.yml text over the same
three redis-servers; both error counts are printed, resproxy's is asserted against a bound derived
from the config: each failure toward the limit can fail at most the requests in flight on the
server then, so about ``server_failure_limit * CLIENTS`` per fault (asserted with one more round of
``CLIENTS`` as slack). Before this was built, a SIGSTOPped server was never ejected (a timeout's
reconnect reset the count) and a killed one re-entered the ring while still dead, every
``server_retry_timeout``: both far past these bounds.

Faults come from signals to the real redis-server (SIGSTOP: connection open, no replies; SIGKILL
and a restart on the same port). Waits poll resproxy's /metrics or the servers themselves, bounded;
the fault's own duration (how long a server stays stopped or dead) is part of the script, and
every wait for it also waits for the load to make progress.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType

import pytest

from tests.integration.harness.clients import RawClient, Writer, plain_redis
from tests.integration.harness.configs import nutcracker_pool_yaml, server_lines
from tests.integration.harness.metrics import Metrics
from tests.integration.harness.placement import key_on
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import Nutcracker, ResProxy
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until

POOL = "eject"
CLIENTS = 8
LIMIT = 2  # server_failure_limit
TIMEOUT_MS = 400  # well above a loaded 2-core machine's worst healthy reply time
PER_FAULT = (LIMIT + 1) * CLIENTS  # the error bound for one fault (see the module docstring)


def _config(port: int, backends: list[RedisServer], retry_ms: int) -> str:
    """One nutcracker.yml pool, read as it is by both proxies."""
    return nutcracker_pool_yaml(
        POOL,
        port,
        server_lines(backends),
        hash="fnv1a_64",
        distribution="ketama",
        redis=True,
        timeout=TIMEOUT_MS,
        auto_eject_hosts=True,
        server_failure_limit=LIMIT,
        server_retry_timeout=retry_ms,
    )


@dataclass
class Proxy:
    """A running proxy for one fault script; ``metrics_port`` is 0 for nutcracker."""

    name: str
    port: int
    metrics_port: int = 0

    def metric(self, name: str, server: str) -> float:
        return Metrics(self.metrics_port).value(name, pool=POOL, server=server)

    def ejected(self, server: str) -> bool:
        return self.metric("resproxy_server_ejected", server) == 1

    def failed_attempts(self, server: str) -> float:
        """Connections to ``server`` that failed to connect or timed out (probes included)."""
        m = Metrics(self.metrics_port)
        labels = {"pool": POOL, "server": server}
        return m.value("resproxy_server_connect_failures_total", **labels) + m.value(
            "resproxy_server_timeouts_total", **labels
        )


def _run_both(backends: list[RedisServer], retry_ms: int, script: Callable[[Proxy], int]) -> dict[str, int]:
    """``script`` (it returns its error count) through resproxy, then through nutcracker."""
    counts: dict[str, int] = {}
    for kind in ("resproxy", "nutcracker"):
        port = free_port()
        text = _config(port, backends, retry_ms)
        process: ResProxy | Nutcracker
        if kind == "resproxy":
            mport = free_port()
            process = ResProxy(text, ["--metrics", f"127.0.0.1:{mport}"], metrics_port=mport)
            proxy = Proxy(kind, port, mport)
        else:
            process = Nutcracker(text, [port])
            proxy = Proxy(kind, port)
        try:
            process.start()
            counts[kind] = script(proxy)
        finally:
            process.cleanup()
            _revive(backends)
    print(f"\n{script.__name__}: errors resproxy={counts['resproxy']} nutcracker={counts['nutcracker']}")
    return counts


def _revive(backends: list[RedisServer]) -> None:
    """Leave every backend running and answering (a script may have failed mid-fault)."""
    for b in backends:
        if b.alive():
            b.send_signal(signal.SIGCONT)
        else:
            b.restart()


class _Writer(Writer):
    """harness.Writer speaking RESP2 without CLIENT SETINFO at connect (redis-py's defaults are
    HELLO 3 and CLIENT SETINFO): nutcracker closes a client connection on a command it does not
    know."""

    def __init__(self, port: int, prefix: str, stop: threading.Event) -> None:
        super().__init__(port, prefix, stop)
        self.client.close()
        self.client = plain_redis(port)


class Load:
    """``CLIENTS`` Writer threads SETting their own keys through ``port`` until the block ends."""

    def __init__(self, port: int, prefix: str) -> None:
        self.stop = threading.Event()
        self.writers = [_Writer(port, f"{prefix}:{i}", self.stop) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for w in self.writers:
            w.start()
        self.wait_progress(CLIENTS * 20, "load started")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop.set()
        for w in self.writers:
            w.join(timeout=30)

    def ops(self) -> int:
        return sum(w.ops for w in self.writers)

    def errors(self) -> list[tuple[float, float, str]]:
        """(started, took, text) of every failed request, in start order."""
        return sorted(e for w in self.writers for e in list(w.errors))

    def errors_started_after(self, t: float) -> list[tuple[float, float, str]]:
        return [e for e in self.errors() if e[0] > t]

    def wait_progress(self, ops: int, what: str, until: float = 0.0) -> None:
        """Bounded wait until ``ops`` more requests succeeded (and the clock passed ``until``)."""
        target = self.ops() + ops
        poll_until(lambda: self.ops() >= target and time.monotonic() >= until, what, 30)


def _stored_on(port: int, server: RedisServer, key: bytes, value: str) -> bool:
    """SET ``key`` through the proxy; True if ``server`` itself then holds ``value``."""
    with RawClient(port, timeout_s=5) as c:
        if c.call("SET", key, value) != b"OK":
            return False
    return bool(server.call("GET", key) == value.encode())


@pytest.fixture()
def victim(backends: list[RedisServer]) -> Iterator[RedisServer]:
    """The server the faults hit (s1); every backend running again afterwards."""
    try:
        yield backends[1]
    finally:
        _revive(backends)


# --- a hung server -------------------------------------------------------------------------------


STOPPED_S = 3.0  # 7.5 TIMEOUT_MS periods: a server never ejected fails far past the bound


def test_hung_server_is_ejected_after_failure_limit_timeouts(
    backends: list[RedisServer], victim: RedisServer
) -> None:
    ejected_at: dict[str, float] = {}

    def hung(proxy: Proxy) -> int:
        with Load(proxy.port, f"hung:{proxy.name}") as load:
            stopped = time.monotonic()
            victim.send_signal(signal.SIGSTOP)
            try:
                if proxy.metrics_port:
                    poll_until(lambda: proxy.ejected("s1"), "s1 ejected", 15)
                    ejected_at[proxy.name] = time.monotonic()
                # the fault lasts STOPPED_S, and the others keep serving meanwhile
                load.wait_progress(CLIENTS * 20, "load after the stop", stopped + STOPPED_S)
            finally:
                victim.send_signal(signal.SIGCONT)
            if proxy.metrics_port:
                after = load.errors_started_after(ejected_at[proxy.name])
                assert after == [], f"requests failed after the ejection: {after[:5]}"
                assert proxy.ejected("s1")  # server_retry_timeout is long: still out
        return len(load.errors())

    counts = _run_both(backends, 60_000, hung)
    assert 0 < counts["resproxy"] <= PER_FAULT, counts


# --- a killed server, restarted ------------------------------------------------------------------


DEAD_S = 2.0
RETRY_MS = 500


def test_killed_server_returns_only_after_its_restart_and_a_probe(
    backends: list[RedisServer], victim: RedisServer
) -> None:
    def kill_twice(proxy: Proxy) -> int:
        key = key_on(proxy.port, victim, "placed")  # the same key for both: same placement
        with Load(proxy.port, f"kill:{proxy.name}") as load:
            for round_ in range(2):
                killed = time.monotonic()
                victim.kill()
                if proxy.metrics_port:
                    poll_until(lambda: proxy.ejected("s1"), f"s1 ejected ({round_})", 15)
                    ejected = time.monotonic()
                    failed = proxy.failed_attempts("s1")
                    # probes every RETRY_MS find it dead: it stays out, the others serve
                    poll_until(lambda: proxy.failed_attempts("s1") >= failed + 2, "two failed probes", 15)
                load.wait_progress(CLIENTS * 20, "load while s1 is dead", killed + DEAD_S)
                if proxy.metrics_port:
                    assert proxy.ejected("s1"), "s1 re-entered the ring while dead"
                    after = load.errors_started_after(ejected)
                    assert after == [], f"requests failed while s1 was out: {after[:5]}"
                victim.restart()
                # back after a probe answers (the next one, within RETRY_MS and some slack)
                poll_until(
                    lambda: _stored_on(proxy.port, victim, key, f"r{round_}"),
                    f"{key!r} stored on s1 again ({round_})",
                    15,
                )
                if proxy.metrics_port:
                    assert not proxy.ejected("s1")
                load.wait_progress(CLIENTS * 20, "load after the restart")
        return len(load.errors())

    counts = _run_both(backends, RETRY_MS, kill_twice)
    assert 0 < counts["resproxy"] <= 2 * PER_FAULT, counts


# --- a probe that fails --------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_failed_probe_keeps_the_server_out_until_one_answers(
    backends: list[RedisServer], victim: RedisServer, fault: str
) -> None:
    port, mport = free_port(), free_port()
    proxy = Proxy("resproxy", port, mport)
    metrics = ["--metrics", f"127.0.0.1:{mport}"]
    with ResProxy(_config(port, backends, RETRY_MS), metrics, metrics_port=mport).start():
        key = key_on(port, victim, "placed")
        with Load(port, f"probe:{fault}") as load:
            if fault == "kill":
                victim.kill()
            else:
                victim.send_signal(signal.SIGSTOP)
            poll_until(lambda: proxy.ejected("s1"), "s1 ejected", 15)
            ejected = time.monotonic()
            failed = proxy.failed_attempts("s1")
            # Two probes failed (refused, or no PONG in time): at least server_retry_timeout
            # has passed since the ejection, and then another one.
            poll_until(lambda: proxy.failed_attempts("s1") >= failed + 2, "two failed probes", 15)
            assert proxy.ejected("s1")
            load.wait_progress(CLIENTS * 20, "load while s1 is out")
            assert load.errors_started_after(ejected) == []
            with RawClient(port) as c:  # every key is served by the two others
                replies = c.pipeline([("SET", f"probe:{fault}:{i}", i) for i in range(300)])
                assert replies == [b"OK"] * 300
            _revive(backends)  # restarted, or continued: the next probe brings it back
            poll_until(lambda: not proxy.ejected("s1"), "s1 back", 15)
            assert _stored_on(port, victim, key, "back")
            load.wait_progress(CLIENTS * 20, "load after s1 is back")
        assert len(load.errors()) <= PER_FAULT, load.errors()[:5]
