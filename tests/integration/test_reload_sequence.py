"""SIGHUP reloads in a long sequence, each checked through new and long-held client connections.

The other reload tests reload once. A bug that only shows from the second reload on (the
listening socket's factory kept the front object the first reload replaced, so every *new*
connection got a retired pool: ``ERR server beta unavailable: closing`` for every key, while
INFO and /healthz said all was well) needs a sequence: here every kind of change, one after
the other, on one running resproxy with a ring pool front and a ``listeners:`` front routing by
prefix over two pools.

After each reload (awaited on /metrics' reload counters, never a sleep) keys are written and read
through a brand-new connection, one held since the start and one held since the previous step,
on both fronts; every key must be on exactly one backend, the one the running config's ring
(computed here from the same file with the pure ``ring``/``hashing`` modules) puts it on.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from proxy.config import Config, ConfigError, parse
from tests.integration.harness.clients import RawClient
from tests.integration.harness.configs import listener_yaml, native_config, pool_yaml, route
from tests.integration.harness.metrics import Metrics, http_get
from tests.integration.harness.placement import ring_port
from tests.integration.harness.ports import free_port
from tests.integration.harness.process import Stoppable
from tests.integration.harness.proxyproc import ResProxy
from tests.integration.harness.servers import RedisServer, running_redis_servers
from tests.integration.harness.waiting import poll_until

RELOAD_TIMEOUT_S = 30.0  # generous: other test runs share this machine


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[RedisServer]]:
    """Five redis-servers: four the ring pool's servers come from, one for the side pool."""
    with running_redis_servers(5) as started:
        yield started


@dataclass(frozen=True)
class Ports:
    app: int  # the ring pool's own listen
    edge: int  # the listener routing by prefix over app and side
    metrics: int
    backends: tuple[int, ...]  # app's servers come from the first four
    side: int  # the side pool's one server


@dataclass(frozen=True)
class Spec:
    """What the test changes in the config file; ``render`` writes it out."""

    servers: tuple[tuple[str, int, int], ...]  # (name, backend index, weight)
    hash: str = "fnv1a_64"
    hash_tag: str = ""
    distribution: str = "ketama"
    timeout_ms: int = 2000
    server_connections: int = 1
    side_timeout_ms: int = 2000
    routes: tuple[tuple[str, str], ...] = (("side:", "side"),)  # (prefix, pool)
    default_pool: str | None = "app"
    spare_listen: int | None = None  # a second listener (to ask for a port that is taken)


ORIGINAL = Spec(servers=(("alpha", 0, 1), ("beta", 1, 1), ("gamma", 2, 1)))


def render(spec: Spec, ports: Ports) -> str:
    app = [f"127.0.0.1:{ports.backends[i]}:{w} {name}" for name, i, w in spec.servers]
    edge = [route(prefix, pool) for prefix, pool in spec.routes]
    listeners = [listener_yaml("edge", ports.edge, *edge, default_pool=spec.default_pool)]
    if spec.spare_listen is not None:
        listeners.append(listener_yaml("spare", spec.spare_listen, route("x:", "app")))
    return native_config(
        pool_yaml(
            "app",
            ports.app,
            app,
            hash=spec.hash,
            hash_tag=spec.hash_tag,
            distribution=spec.distribution,
            timeout=spec.timeout_ms,
            server_connections=spec.server_connections,
        ),
        pool_yaml("side", None, [f"127.0.0.1:{ports.side}:1 delta"], timeout=spec.side_timeout_ms),
        listeners=listeners,
    )


def _routed_pool(config: Config, listener: str, key: bytes) -> str:
    lc = next(lc for lc in config.listeners if lc.name == listener)
    matches = [r for r in lc.routes if key.startswith(r.prefix)]
    if matches:
        return max(matches, key=lambda r: len(r.prefix)).pool
    assert lc.default_pool is not None, "the test only writes keys that have a route"
    return lc.default_pool


def expected_port(config: Config, front: str, key: bytes) -> int:
    pool = front if front == "app" else _routed_pool(config, front, key)
    return ring_port(config, pool, key)


class Running(Stoppable):
    """The proxy under test, its ports and the reload counts it should report."""

    def __init__(self, nodes: list[RedisServer], spec: Spec) -> None:
        self.ports = Ports(
            app=free_port(),
            edge=free_port(),
            metrics=free_port(),
            backends=tuple(n.port for n in nodes[:4]),
            side=nodes[4].port,
        )
        self.nodes = nodes
        self.text = render(spec, self.ports)
        self.config = parse(self.text)
        metrics = ["--metrics", f"127.0.0.1:{self.ports.metrics}"]
        self.proxy = ResProxy(self.text, metrics, metrics_port=self.ports.metrics)
        self.proxy.start(pools=2)  # the app pool's front and the edge listener
        self.accepted = 0
        self.rejected = 0
        self.last_ok = True  # the last reload was accepted (or none was tried)

    def front_port(self, front: str) -> int:
        return self.ports.app if front == "app" else self.ports.edge

    def counts(self) -> tuple[int, int]:
        m = Metrics(self.ports.metrics)
        return (
            int(m.value("resproxy_config_reloads_total")),
            int(m.value("resproxy_config_reload_failures_total")),
        )

    def reload(self, text: str, accept: bool) -> None:
        """Write ``text`` as the config file, SIGHUP, and await its outcome; the counters follow."""
        assert self.proxy.reload(text, RELOAD_TIMEOUT_S) == accept, self.proxy.log()[-3000:]
        self.last_ok = accept
        if accept:
            self.accepted += 1
            self.text, self.config = text, parse(text)
        else:
            self.rejected += 1
        assert self.counts() == (self.accepted, self.rejected), self.proxy.log()[-3000:]

    def cleanup(self) -> None:
        self.proxy.cleanup()


@pytest.fixture()
def running(nodes: list[RedisServer]) -> Iterator[Running]:
    for n in nodes:
        n.call("FLUSHALL")
    with Running(nodes, ORIGINAL) as r:
        yield r


def _keys(step: int, front: str, role: str) -> list[bytes]:
    """Keys of every shape the steps care about: plain, routed prefixes, hash tags."""
    base = f"{step}:{front}:{role}"
    return [
        *(f"k{i}:{base}".encode() for i in range(3)),
        f"side:{base}".encode(),
        f"hot:{base}".encode(),
        *(f"{{u{i}}}:{base}".encode() for i in range(3)),  # "{u1}" alone is hashed under "{}"
    ]


def verify(run: Running, step: int, what: str, clients: dict[str, dict[str, RawClient]]) -> None:
    """Every client writes and reads its keys; each key lies on exactly its expected backend."""
    for front, by_role in clients.items():
        written: dict[bytes, bytes] = {}
        for role, client in by_role.items():
            keys = _keys(step, front, role)
            replies = client.pipeline([("SET", k, b"v=" + k) for k in keys])
            bad = [(k, r) for k, r in zip(keys, replies) if r != b"OK"]
            assert not bad, f"step {step} ({what}): SET through the {role} client on {front}: {bad}"
            written.update((k, b"v=" + k) for k in keys)
        for role, client in by_role.items():  # each client reads what all the others wrote
            keys = list(written)
            replies = client.pipeline([("GET", k) for k in keys])
            bad = [(k, r) for k, r in zip(keys, replies) if r != written[k]]
            assert not bad, f"step {step} ({what}): GET through the {role} client on {front}: {bad}"
        holders: dict[bytes, list[int]] = {k: [] for k in written}
        for node in run.nodes:
            with RawClient(node.port) as direct:
                found = direct.pipeline([("EXISTS", k) for k in written])
            for k, n in zip(written, found):
                if n == 1:
                    holders[k].append(node.port)
        want = {k: [expected_port(run.config, front, k)] for k in written}
        misplaced = {k: (holders[k], want[k]) for k in written if holders[k] != want[k]}
        assert not misplaced, f"step {step} ({what}) on {front}: key: (on, expected) {misplaced}"
    _check_health_and_info(run, step, what)


def _check_health_and_info(run: Running, step: int, what: str) -> None:
    status, body = http_get(run.ports.metrics, "/healthz")
    assert status == 200, f"step {step} ({what}): /healthz {status} {body!r}"
    assert json.loads(body) == {"status": "ok", "pools": {"app": "ok", "side": "ok", "edge": "ok"}}
    with RawClient(run.front_port("app")) as c:
        info = c.call("INFO").decode()
    fields = {k: v for k, _, v in (line.partition(":") for line in info.splitlines()) if v}
    assert fields["config_reloads"] == str(run.accepted), f"step {step} ({what})"
    assert fields["config_reload_failures"] == str(run.rejected), f"step {step} ({what})"
    app = next(p for p in run.config.pools if p.name == "app")
    servers = {k.removeprefix("server_app_"): v for k, v in fields.items() if k.startswith("server_app_")}
    assert {n: v.split(",")[0] for n, v in servers.items()} == {
        s.name: f"address={s.address}" for s in app.servers
    }, f"step {step} ({what}): INFO's app servers"
    assert f"servers={len(app.servers)}," in fields["pool_app"], fields["pool_app"]
    for pool in ("app", "side", "edge"):
        assert fields[f"pool_{pool}"].endswith("can_serve=1"), fields[f"pool_{pool}"]
    last_ok = Metrics(run.ports.metrics).value("resproxy_config_last_reload_successful")
    assert last_ok == (1 if run.last_ok else 0), f"step {step} ({what})"


def _with_server(spec: Spec, name: str, index: int, weight: int) -> Spec:
    return dataclasses.replace(spec, servers=(*spec.servers, (name, index, weight)))


def _without_server(spec: Spec, name: str) -> Spec:
    return dataclasses.replace(spec, servers=tuple(s for s in spec.servers if s[0] != name))


def _reweighted(spec: Spec, name: str, weight: int) -> Spec:
    return dataclasses.replace(
        spec, servers=tuple((n, i, weight if n == name else w) for n, i, w in spec.servers)
    )


@dataclass(frozen=True)
class Step:
    what: str
    spec: Spec  # the config the proxy must be running after the step
    invalid_text: str | None = None  # written instead of ``spec``: must be rejected
    moves_keys: bool = True  # the change moves some of the step's keys (checked: else no proof)


def test_every_kind_of_reload_in_sequence_serves_new_and_held_connections(
    running: Running,
) -> None:
    run = running
    taken = socket.socket()  # a port another program holds: a listener asking for it is refused
    taken.bind(("127.0.0.1", free_port()))
    taken.listen()
    steps: list[Step] = []

    def step(what: str, change: Spec, moves_keys: bool = True) -> Spec:
        steps.append(Step(what, change, moves_keys=moves_keys))
        return change

    # the first two are the bug's recipe: two reloads that each replace the pool
    s = step("timeout changed", dataclasses.replace(ORIGINAL, timeout_ms=2500), moves_keys=False)
    s = step(
        "timeout changed again",
        dataclasses.replace(s, timeout_ms=3000, side_timeout_ms=2500),
        moves_keys=False,
    )
    s = step("server added", _with_server(s, "epsilon", 3, 1))
    s = step("server removed", _without_server(s, "alpha"))
    s = step("server reweighted", _reweighted(s, "beta", 3))
    s = step("hash_tag changed", dataclasses.replace(s, hash_tag="{}"))
    s = step("hash changed", dataclasses.replace(s, hash="murmur"))
    s = step("route added", dataclasses.replace(s, routes=(*s.routes, ("hot:", "side"))))
    s = step("route removed", dataclasses.replace(s, routes=(("hot:", "side"),)))
    s = step("default_pool changed", dataclasses.replace(s, default_pool="side"))
    invalid = render(dataclasses.replace(s, routes=(*s.routes, ("lost:", "nowhere"))), run.ports)
    with pytest.raises(ConfigError):
        parse(invalid)  # the test's invalid file really is invalid
    steps.append(Step("rejected: a route to a pool that does not exist", s, invalid))
    port_taken = render(dataclasses.replace(s, spare_listen=taken.getsockname()[1]), run.ports)
    steps.append(Step("rejected: a new listener on a port that is taken", s, port_taken))
    s = step("distribution changed, after the rejections", dataclasses.replace(s, distribution="modula"))
    s = step("identical file", s, moves_keys=False)
    step("back to the original", ORIGINAL)
    assert len(steps) >= 10

    fronts = ("app", "edge")
    opened: list[RawClient] = []  # every client, closed in ``finally`` whatever happens

    def connect(front: str) -> RawClient:
        opened.append(RawClient(run.front_port(front)))
        return opened[-1]

    try:
        held = {front: connect(front) for front in fronts}
        verify(run, 0, "as started", {f: {"since-start": held[f], "new": connect(f)} for f in fronts})
        previous: dict[str, RawClient] = {}
        for number, st in enumerate(steps, start=1):
            before = run.config
            run.reload(st.invalid_text or render(st.spec, run.ports), st.invalid_text is None)
            if st.invalid_text is None and st.moves_keys:
                probe = [k for f in fronts for r in ("since-start", "new") for k in _keys(number, f, r)]
                assert any(
                    expected_port(before, f, k) != expected_port(run.config, f, k)
                    for f in fronts
                    for k in probe
                ), st.what
            new = {front: connect(front) for front in fronts}
            clients = {f: {"since-start": held[f], "new": new[f]} for f in fronts}
            for front, c in previous.items():
                clients[front]["since-previous-step"] = c
            verify(run, number, st.what, clients)
            for c in previous.values():
                c.close()
            previous = new
    finally:
        for c in opened:
            c.close()
        taken.close()
    assert "reload rejected" in run.proxy.log()


class Pipeliner(threading.Thread):
    """Pipelines SETs and GETs of fresh keys until stopped, on one connection or (``fresh``) a
    new connection per batch; every reply that is not the expected one is a problem."""

    def __init__(self, port: int, name: str, stop: threading.Event, fresh: bool) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.tag = name
        self.stop_event = stop
        self.fresh = fresh
        self.batches = 0
        self.problems: list[str] = []

    def run(self) -> None:
        client: RawClient | None = None
        try:
            for batch in range(1_000_000):  # bounded; ends on the stop event
                if self.stop_event.is_set() or len(self.problems) > 20:
                    break
                if client is None:
                    client = RawClient(self.port)
                keys = [f"{p}q:{self.tag}:{batch}:{j}" for j, p in enumerate(["", "side:"] * 4)]
                commands: list[tuple[str, ...]] = [("SET", k, f"v{batch}") for k in keys]
                commands += [("GET", k) for k in keys]
                replies: list[Any] = client.pipeline(commands)
                want = [b"OK"] * len(keys) + [f"v{batch}".encode()] * len(keys)
                if replies != want:
                    self.problems.append(f"batch {batch}: {replies!r}")
                self.batches += 1
                if self.fresh:
                    client.close()
                    client = None
        except (OSError, ConnectionError) as exc:
            self.problems.append(f"connection dropped: {exc!r}")
        finally:
            if client is not None:
                client.close()


def test_ten_quick_reloads_under_pipelined_traffic_answer_every_request(
    running: Running,
) -> None:
    """Reloads that move no key (timeouts, server_connections), one straight after the other,
    while clients pipeline on held and on brand-new connections through both fronts."""
    run = running
    with RawClient(run.ports.app) as c:  # served: the SIGHUP handler is installed by now
        assert c.call("PING") == b"PONG"
    stop = threading.Event()
    workers = [
        Pipeliner(run.front_port(front), f"{front}-{mode}", stop, fresh=mode == "fresh")
        for front in ("app", "edge")
        for mode in ("held", "fresh")
    ]
    for w in workers:
        w.start()
    try:
        # (a worker that gave up on too many wrong replies stops the wait: its problems say why)
        poll_until(lambda: all(w.batches >= 3 or not w.is_alive() for w in workers), "pipelines running", 30)
        spec = ORIGINAL
        for i in range(10):
            spec = dataclasses.replace(
                spec,
                timeout_ms=2000 + 100 * (i + 1),
                side_timeout_ms=2000 + 50 * (i % 3),
                server_connections=1 + i % 2,
            )
            run.reload(render(spec, run.ports), accept=True)
        marks = [w.batches for w in workers]
        poll_until(
            lambda: all(w.batches >= m + 3 or not w.is_alive() for w, m in zip(workers, marks)),
            "pipelines running after the reloads",
            30,
        )
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=30)
    problems = {w.tag: (f"{len(w.problems)} bad batches", w.problems[:2]) for w in workers if w.problems}
    assert not problems, problems
    assert run.counts() == (10, 0)
    for front in ("app", "edge"):
        with RawClient(run.front_port(front)) as c:
            assert c.call("SET", f"after:{front}", "1") == b"OK"
            assert c.call("GET", f"after:{front}") == b"1"
