"""Sentinel pools with passwords: ``sentinel_auth`` and ``redis_auth``, all real processes.

A master and its replica with ``requirepass`` (and ``masterauth``, so either can be the other's
replica), watched by three sentinels that have a ``requirepass`` of their own and
``sentinel auth-pass`` for the data nodes. Redis 7's Sentinel then answers ``-NOAUTH`` to any
client that has not sent ``AUTH <requirepass>`` (and, with no ``sentinel sentinel-pass``, uses
its ``requirepass`` towards its peers). The harness's ``SentinelGroup`` has no passwords; this
module builds the same group from the harness's primitives (``RedisServer``, ``Sentinel``).

* The right passwords: the pool finds the master, serves SET/GET onto it, and holds an
  authenticated subscription on every sentinel (``CLIENT LIST`` on the sentinels: ``sub=2``).
* ACL users instead of ``default``: ``sentinel_username``/``sentinel_auth`` on the sentinels and
  ``redis_username``/``redis_auth`` on the data nodes (``CLIENT LIST`` shows ``user=``).
* A wrong or missing ``sentinel_auth``: the proxy still starts (after waiting its ``timeout``
  for a master), every key gets ``-ERR no master known ...`` at once, ``/healthz`` says 503
  "no master known"; its subscriptions are refused (``sub=0``) and nothing reaches the master.
* A wrong or missing ``redis_auth`` (right ``sentinel_auth``): the sentinels name the master but
  its ``ROLE`` check is refused, so the same ``no master known`` replies and 503.
* ``SENTINEL FAILOVER`` sent to an authenticated sentinel under a writing client: the proxy
  holds on ``+try-failover`` and switches on ``+switch-master`` (both only arrive through the
  authenticated subscription), every acknowledged write is on the new master and the writes go
  on there. The failover is timed so that the pool's periodic re-ask of the sentinels lands
  inside the hold: it still finds the old master (named, and "master" to ROLE), which must not
  end the hold (it did before 2026-12-02: writes acknowledged after the promotion were lost).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import hiredis
import pytest
import redis

from proxy.sentinel import REFRESH_S
from tests.integration.harness.clients import RawClient, Writer, client_list
from tests.integration.harness.metrics import Metrics, http_get
from tests.integration.harness.proxyproc import ResProxy, start_sentinel_proxy
from tests.integration.harness.sentinel import Sentinel, SentinelGroup
from tests.integration.harness.waiting import poll_until

SENTINEL_PW = "sentinel-pw-1"
REDIS_PW = "redis-pw-1"
NAME = "authsessions"  # the name the sentinels monitor the master by
POOL = "sessions"
TIMEOUT_MS = 3000
REFUSED_TIMEOUT_MS = 1000  # a proxy that finds no master waits this long before listening
CLIENT_TIMEOUT_S = 10.0
PROMPT_S = 0.5  # an error reply that is not a hang


class PasswordSentinel(Sentinel):
    """The harness's sentinel with ``requirepass`` and the data nodes' password."""

    def __init__(self, master_name: str, master_port: int) -> None:
        super().__init__(master_name, master_port)
        with open(self.conf, "a") as f:  # after "sentinel monitor", which auth-pass refers to
            f.write(f"requirepass {SENTINEL_PW}\nsentinel auth-pass {master_name} {REDIS_PW}\n")

    def call(self, *args: bytes | str | int) -> Any:
        with RawClient(self.port) as c:
            assert c.call("AUTH", SENTINEL_PW) == b"OK"
            return c.call(*args)

    def call_without_auth(self, *args: bytes | str) -> Any:
        with RawClient(self.port) as c:
            return c.call(*args)

    def clients(self) -> list[dict[str, str]]:
        """CLIENT LIST, one dict per connection."""
        return client_list(self.call("CLIENT", "LIST"))


class PasswordSentinelGroup(SentinelGroup):
    """``SentinelGroup`` (master, replica, three sentinels) with passwords everywhere."""

    def __init__(self, name: str) -> None:
        super().__init__(name, password=REDIS_PW, sentinel=PasswordSentinel)

    def password_sentinels(self) -> list[PasswordSentinel]:
        return [s for s in self.sentinels if isinstance(s, PasswordSentinel)]


def start_proxy(
    group: SentinelGroup,
    sentinel_auth: str | None,
    redis_auth: str | None,
    timeout_ms: int = TIMEOUT_MS,
) -> ResProxy:
    """resproxy with one sentinel pool on a free port (``.port``), /metrics on ``.metrics_port``."""
    keys: dict[str, object] = {"timeout": timeout_ms, "preconnect": True}
    if sentinel_auth is not None:
        keys["sentinel_auth"] = sentinel_auth
    if redis_auth is not None:
        keys["redis_auth"] = redis_auth
    return start_sentinel_proxy(group, POOL, metrics=True, **keys)


def last_client_id(sentinel: PasswordSentinel) -> int:
    """The newest connection's id (ids only grow: later connections have larger ones)."""
    return max(int(c["id"]) for c in sentinel.clients())


def subscribers_since(sentinel: PasswordSentinel, last_id: int) -> tuple[int, int]:
    """(subscribed, refused) connections opened after ``last_id`` whose last command was
    SUBSCRIBE: subscribed to something, or to nothing (the command was refused)."""
    new = [c for c in sentinel.clients() if int(c["id"]) > last_id and c.get("cmd") == "subscribe"]
    refused = sum(1 for c in new if c.get("sub") == "0")
    return len(new) - refused, refused


@pytest.fixture(scope="module")
def group() -> Iterator[PasswordSentinelGroup]:
    with PasswordSentinelGroup(NAME).start() as g:
        yield g


@pytest.fixture(scope="module")
def proxy(group: PasswordSentinelGroup) -> Iterator[ResProxy]:
    """The right passwords for both the sentinels and the data nodes."""
    with start_proxy(group, SENTINEL_PW, REDIS_PW) as p:
        yield p


def test_passwords_are_required_by_the_sentinels_and_the_data_nodes(
    group: PasswordSentinelGroup,
) -> None:
    sentinel = group.password_sentinels()[0]
    refused = sentinel.call_without_auth("SENTINEL", "get-master-addr-by-name", NAME)
    assert isinstance(refused, hiredis.ReplyError) and str(refused).startswith("NOAUTH"), refused
    assert group.current_master().call("ROLE", password=REDIS_PW)[0] == b"master"
    for node in group.nodes():
        refused = node.call("ROLE")
        assert isinstance(refused, hiredis.ReplyError) and str(refused).startswith("NOAUTH")


def test_sentinel_auth_finds_the_master_and_serves_it(proxy: ResProxy, group: PasswordSentinelGroup) -> None:
    port: int = proxy.port
    master = group.current_master()
    assert master.call("ROLE", password=REDIS_PW)[0] == b"master"
    # RESP2 clients are served on connections the proxy opens with AUTH <redis_auth>, RESP3
    # clients (HELLO 3) on connections opened with HELLO 3 AUTH default <redis_auth>
    for protocol in (2, 3):
        client = redis.Redis(port=port, password=REDIS_PW, protocol=protocol, socket_timeout=CLIENT_TIMEOUT_S)
        try:
            keys = {f"auth:{protocol}:{i}": f"v{i}" for i in range(20)}
            for key, value in keys.items():
                assert client.set(key, value)
            assert client.mget(list(keys)) == [v.encode() for v in keys.values()]
        finally:
            client.close()
        values = master.call("MGET", *keys, password=REDIS_PW)
        assert values == [v.encode() for v in keys.values()]
    # the proxy's RESP3 connection on the master (nothing else here speaks RESP3 to it) ran them
    connections = master.clients(password=REDIS_PW)
    assert any(c.get("resp") == "3" and c.get("cmd") == "mget" for c in connections), connections
    # redis_auth is also the password clients give the proxy
    with RawClient(port) as raw:
        refused = raw.call("GET", "auth:0")
        assert isinstance(refused, hiredis.ReplyError) and str(refused).startswith("NOAUTH")
    status, body = http_get(proxy.metrics_port, "/healthz")
    assert status == 200, body
    assert Metrics(proxy.metrics_port).value("resproxy_sentinel_master_known", pool=POOL) == 1
    # the proxy's watch connection on every sentinel got past AUTH: subscribed to both channels
    for sentinel in group.password_sentinels():
        poll_until(
            lambda: any(c.get("sub") == "2" and c.get("cmd") == "subscribe" for c in sentinel.clients()),
            f"proxy subscribed on sentinel {sentinel.port}",
            10,
        )


def _assert_not_served(p: ResProxy, group: PasswordSentinelGroup, password: str | None) -> None:
    """Every key gets ``no master known`` promptly (also after more discovery rounds); 503;
    the log says who refused and how."""
    port: int = p.port
    mport: int = p.metrics_port
    assert "servers not known yet; listening anyway" in p.log()
    assert re.search(r"no sentinel named a live master .*last refusal: .*: (NOAUTH|WRONGPASS)", p.log()), (
        p.log()
    )
    expected = f"ERR no master known for '{NAME}' (sentinel pool {POOL})"
    key = f"refused:{port}"
    with RawClient(port) as raw:
        if password is not None:
            assert raw.call("AUTH", password) == b"OK"  # the proxy's own check: it is redis_auth
        for _ in range(2):
            for command in (("SET", key, "x"), ("GET", key)):
                started = time.monotonic()
                reply = raw.call(*command)
                took = time.monotonic() - started
                assert isinstance(reply, hiredis.ReplyError) and str(reply) == expected, reply
                assert took < PROMPT_S, took
            # a few more rounds of asking the sentinels (every 0.25 s while no master is known)
            first = Metrics(mport).value("resproxy_sentinel_discovery_failures_total", pool=POOL)
            poll_until(
                lambda: (
                    Metrics(mport).value("resproxy_sentinel_discovery_failures_total", pool=POOL) >= first + 3
                ),
                "more failed discoveries",
                10,
            )
        assert raw.call("PING") == b"PONG"  # the connection stays usable
    status, body = http_get(mport, "/healthz")
    assert status == 503, body
    assert json.loads(body)["pools"] == {POOL: "no master known"}
    samples = Metrics(mport)
    assert samples.value("resproxy_sentinel_master_known", pool=POOL) == 0
    assert samples.value("resproxy_pool_can_serve", pool=POOL) == 0
    assert group.current_master().call("EXISTS", key, password=REDIS_PW) == 0
    assert p.alive()


def test_acl_users_on_the_sentinels_and_the_data_nodes(group: PasswordSentinelGroup) -> None:
    """``sentinel_username`` and ``redis_username``: the proxy logs in as ACL users, not as
    ``default``, on the sentinels (its questions and its subscription) and on the master."""
    for sentinel in group.password_sentinels():
        assert sentinel.call("ACL", "SETUSER", "watcher", "on", ">watch-pw", "~*", "&*", "+@all") == b"OK"
    for node in group.nodes():
        assert (
            node.call("ACL", "SETUSER", "app", "on", ">app-pw", "~*", "&*", "+@all", password=REDIS_PW)
            == b"OK"
        )
    keys: dict[str, object] = {
        "timeout": TIMEOUT_MS,
        "preconnect": True,
        "sentinel_username": "watcher",
        "sentinel_auth": "watch-pw",
        "redis_username": "app",
        "redis_auth": "app-pw",
    }
    with start_sentinel_proxy(group, POOL, metrics=True, **keys) as p:
        client = redis.Redis(port=p.port, password="app-pw", socket_timeout=CLIENT_TIMEOUT_S)
        try:
            assert client.set("acl:users", "v") and client.get("acl:users") == b"v"
        finally:
            client.close()
        master = group.current_master()
        assert master.call("GET", "acl:users", password=REDIS_PW) == b"v"
        users = {c.get("user") for c in master.clients(password=REDIS_PW) if c.get("cmd") in ("set", "get")}
        assert users == {"app"}, master.clients(password=REDIS_PW)
        for sentinel in group.password_sentinels():
            poll_until(
                lambda: any(
                    c.get("user") == "watcher" and c.get("sub") == "2" and c.get("cmd") == "subscribe"
                    for c in sentinel.clients()
                ),
                f"subscribed as watcher on sentinel {sentinel.port}",
                10,
            )
        assert "Traceback" not in p.log()


@pytest.mark.parametrize("sentinel_auth", ["not-the-password", None], ids=["wrong", "missing"])
def test_without_the_sentinels_password_the_pool_answers_no_master_known(
    group: PasswordSentinelGroup, sentinel_auth: str | None
) -> None:
    sentinels = group.password_sentinels()
    last_ids = [last_client_id(s) for s in sentinels]
    started = time.monotonic()
    with start_proxy(group, sentinel_auth, REDIS_PW, timeout_ms=REFUSED_TIMEOUT_MS) as p:
        # it listens after waiting its timeout for a master, not sooner, not much later
        assert REFUSED_TIMEOUT_MS / 1000.0 <= time.monotonic() - started < 10.0
        _assert_not_served(p, group, REDIS_PW)
        # its watch connections were refused by every sentinel (logged, retried), and none of
        # them is subscribed
        for s, last_id in zip(sentinels, last_ids):
            poll_until(
                lambda: f"sentinel 127.0.0.1:{s.port} refused to be watched" in p.log(),
                f"refused watch on sentinel {s.port}",
                10,
            )
            assert subscribers_since(s, last_id)[0] == 0


@pytest.mark.parametrize("redis_auth", ["not-the-password", None], ids=["wrong", "missing"])
def test_without_the_masters_password_the_pool_answers_no_master_known(
    group: PasswordSentinelGroup, redis_auth: str | None
) -> None:
    started = time.monotonic()
    with start_proxy(group, SENTINEL_PW, redis_auth, timeout_ms=REFUSED_TIMEOUT_MS) as p:
        assert REFUSED_TIMEOUT_MS / 1000.0 <= time.monotonic() - started < 10.0
        _assert_not_served(p, group, redis_auth)


def test_failover_through_authenticated_sentinels_is_followed(
    proxy: ResProxy, group: PasswordSentinelGroup
) -> None:
    port: int = proxy.port
    mport: int = proxy.metrics_port
    old = group.current_master()
    first = Metrics(mport)
    holds = first.value("resproxy_sentinel_holds_total", pool=POOL)
    switches = first.value("resproxy_sentinel_switches_total", pool=POOL)
    stop = threading.Event()
    writer = Writer(port, "fo", stop, password=REDIS_PW)
    writer.start()
    try:
        poll_until(lambda: writer.ops > 50, "writes flowing", 30)
        # Time the failover so that the pool's next periodic re-ask (REFRESH_S after its last
        # ROLE check of the master) lands ~0.25 s into the hold (which lasts ~0.3-1.2 s): it
        # finds the old master still named and still "master" to ROLE, and must not end the
        # hold, or writes acknowledged after the promotion are lost on the old master.
        roles = old.cmdstat("role", password=REDIS_PW)  # (refused ones are not counted)

        def role_checked() -> bool:
            return old.cmdstat("role", password=REDIS_PW) > roles

        poll_until(role_checked, "the pool's periodic ROLE check", REFRESH_S + 5, 0.02)
        time.sleep(REFRESH_S - 0.25)  # aiming a fault at a moment, not waiting for an event
        started = time.monotonic()
        assert group.sentinels[0].call("SENTINEL", "FAILOVER", NAME) == b"OK"
        poll_until(lambda: group.current_master_port() != old.port, "sentinels switched", 30, 0.1)
        new = group.current_master()
        probe = redis.Redis(port=port, password=REDIS_PW, socket_timeout=CLIENT_TIMEOUT_S)

        def proxy_writes_to_the_new_master() -> bool:
            try:
                probe.set("fo:probe", "1")
            except redis.RedisError:
                return False
            return bool(new.call("GET", "fo:probe", password=REDIS_PW) == b"1")

        try:
            poll_until(proxy_writes_to_the_new_master, "resproxy writes to the new master", 30, 0.1)
        finally:
            probe.close()
        switched = time.monotonic()
        mark = writer.ops
        poll_until(lambda: writer.ops > mark + 100, "writes after the switch", 30)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert not writer.is_alive()
    # errors (if any) only between the failover command and the proxy writing to the new
    # master, none of them a hang
    assert writer.errors_outside(started, switched) == [], writer.errors[:5]
    assert all(took < TIMEOUT_MS / 1000.0 + 1.0 for _, took, _ in writer.errors), writer.errors[:5]
    assert writer.missing_on(new, password=REDIS_PW) == []  # every acknowledged write is there
    # +try-failover (the hold) and +switch-master arrive only through the authenticated
    # subscription; the periodic re-ask (every 5 s) would not start a hold
    after = Metrics(mport)
    assert after.value("resproxy_sentinel_holds_total", pool=POOL) == holds + 1
    assert after.value("resproxy_sentinel_switches_total", pool=POOL) == switches + 1
    assert after.value("resproxy_sentinel_hold_timeouts_total", pool=POOL) == 0
    assert "sentinel says +switch-master" in proxy.log()
    status, body = http_get(mport, "/healthz")
    assert status == 200, body
