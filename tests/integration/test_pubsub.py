"""Pub/sub through the proxy: channels placed like keys, patterns on every server a channel
could be on, the client's own subscription counts, RESP2 arrays and RESP3 pushes."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import hiredis
import pytest
import redis

from tests.integration.harness.clients import RawClient, encode
from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.configs import native_config, pool_yaml, route, server_lines
from tests.integration.harness.deployments import Fronts, FrontsSpec, running_fronts
from tests.integration.harness.metrics import Metrics
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import ResProxy
from tests.integration.harness.servers import RedisServer, running_redis_servers
from tests.integration.harness.waiting import poll_until

CHANNELS = 20
MESSAGES = 1000

# ring, cluster (seeded with every master), a listener ``edge`` routing rq: to ``jobs``; /metrics
SPEC = FrontsSpec(
    listeners={"edge": [route("rq:", "jobs")]},
    ring_keys={"hash_tag": "{}"},
    names="r",
    seeds=None,
    solo="jobs",
    metrics=True,
)


@pytest.fixture(scope="module")
def solo() -> Iterator[RedisServer]:
    """The one server of the ``jobs`` pool."""
    with RedisServer().start() as server:
        yield server


@pytest.fixture(scope="module")
def fronts(backends: list[RedisServer], cluster: RedisCluster, solo: RedisServer) -> Iterator[Fronts]:
    with running_fronts(SPEC, backends, cluster, solo) as started:
        yield started


class Sub:
    """A raw subscriber connection: sends commands, reads replies and pushes as they come."""

    def __init__(self, port: int, resp3: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(10)
        self.reader = hiredis.Reader()
        if resp3:
            self.send("HELLO", "3")
            assert isinstance(self.read(), dict)

    def send(self, *args: Any) -> None:
        self.sock.sendall(encode(*args))

    def read(self) -> Any:
        while (reply := self.reader.gets()) is False:
            data = self.sock.recv(65536)
            assert data, "closed"
            self.reader.feed(data)
        return reply

    def raw(self, count: int) -> bytes:
        """The next ``count`` replies' bytes exactly (for comparing with a redis-server)."""
        out = b""
        reader = hiredis.Reader()
        got = 0
        while got < count:
            data = self.sock.recv(65536)
            assert data, "closed"
            out += data
            reader.feed(data)
            while reader.gets() is not False:
                got += 1
        return out

    def close(self) -> None:
        self.sock.close()


def test_1000_messages_on_20_channels_arrive_in_order_to_subscribers_and_patterns(
    fronts: Fronts,
) -> None:
    port = fronts.ports["ring"]
    channels = [f"news.{i * 7919}.{i}" for i in range(CHANNELS)]
    subs, psub, sub3 = Sub(port), Sub(port), Sub(port, resp3=True)
    try:
        subs.send("SUBSCRIBE", *channels)
        for n, ch in enumerate(channels, 1):
            assert subs.read() == [b"subscribe", ch.encode(), n]
        psub.send("PSUBSCRIBE", "news.*")
        assert psub.read() == [b"psubscribe", b"news.*", 1]
        sub3.send("SUBSCRIBE", *channels)
        for n, ch in enumerate(channels, 1):
            assert sub3.read() == [b"subscribe", ch.encode(), n]
        # each channel is on the server a key of its name is on (so PUBLISH meets SUBSCRIBE)
        with RawClient(port) as c:
            for ch in channels:
                assert c.call("SET", ch, "probe") == b"OK"
                key_home = [s.port for s in fronts.ring if s.call("EXISTS", ch) == 1]
                channel_home = [s.port for s in fronts.ring if s.call("PUBSUB", "NUMSUB", ch)[1] == 2]
                assert key_home == channel_home and len(key_home) == 1, (ch, key_home, channel_home)
                assert c.call("DEL", ch) == 1
        with RawClient(port) as pub:
            sent: dict[str, list[bytes]] = {ch: [] for ch in channels}
            for i in range(MESSAGES):
                ch = channels[i % CHANNELS]
                payload = b"m%d" % i
                sent[ch].append(payload)
                assert pub.call("PUBLISH", ch, payload) == 3  # two channel and one pattern subscriber
        got: dict[str, list[bytes]] = {ch: [] for ch in channels}
        got3: dict[str, list[bytes]] = {ch: [] for ch in channels}
        gotp: dict[str, list[bytes]] = {ch: [] for ch in channels}
        for _ in range(MESSAGES):
            kind, ch, payload = subs.read()
            assert kind == b"message"
            got[ch.decode()].append(payload)
            kind, pattern, ch, payload = psub.read()
            assert (kind, pattern) == (b"pmessage", b"news.*")
            gotp[ch.decode()].append(payload)
            kind, ch, payload = sub3.read()
            assert kind == b"message"
            got3[ch.decode()].append(payload)
        assert got == sent and gotp == sent and got3 == sent
        m = Metrics(fronts.ports["metrics"])
        assert m.value("resproxy_pubsub_subscribers", pool="ring") == 3
        assert m.value("resproxy_pubsub_subscriptions", pool="ring") == 2 * CHANNELS + 1
        assert m.value("resproxy_pubsub_messages_total", pool="ring") >= 3 * MESSAGES
    finally:
        for s in (subs, psub, sub3):
            s.close()


def test_resp3_subscribers_get_pushes(fronts: Fronts) -> None:
    sub = Sub(fronts.ports["ring"], resp3=True)
    try:
        sub.send("SUBSCRIBE", "{p3}ch")
        assert sub.raw(1) == b">3\r\n$9\r\nsubscribe\r\n$6\r\n{p3}ch\r\n:1\r\n"
        with RawClient(fronts.ports["ring"]) as pub:
            assert pub.call("PUBLISH", "{p3}ch", "hi") == 1
        assert sub.raw(1) == b">3\r\n$7\r\nmessage\r\n$6\r\n{p3}ch\r\n$2\r\nhi\r\n"
        sub.send("GET", "{p3}k")  # RESP3: any command while subscribed
        assert sub.read() is None
    finally:
        sub.close()


@pytest.mark.parametrize("front", ["ring", "listener"])
def test_counts_and_subscribed_mode_as_one_redis(fronts: Fronts, reference: RedisServer, front: str) -> None:
    """The same sequence to the proxy and to one redis-server: the same bytes."""
    sequence: list[tuple[Any, ...]] = [
        ("SUBSCRIBE", "a", "b", "a"),
        ("PSUBSCRIBE", "x*"),
        ("GET", "k"),
        ("PING",),
        ("PING", "hello"),
        ("UNSUBSCRIBE", "b", "zz"),
        ("PUNSUBSCRIBE",),
        ("UNSUBSCRIBE",),
        ("UNSUBSCRIBE",),
        ("PING",),
        ("SET", "k", "v"),
    ]
    replies = [3, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1]
    raws = []
    for port in (fronts.front(front).port, reference.port):
        sub = Sub(port)
        try:
            out = b""
            for cmd, count in zip(sequence, replies):
                sub.send(*cmd)
                out += sub.raw(count)
            raws.append(out)
        finally:
            sub.close()
    assert raws[0] == raws[1]


def test_pubsub_introspection_is_merged_over_the_servers(fronts: Fronts) -> None:
    port = fronts.ports["ring"]
    channels = [f"intro.{i}" for i in range(9)]
    a, b = Sub(port), Sub(port)
    try:
        a.send("SUBSCRIBE", *channels)
        b.send("SUBSCRIBE", *channels[:3])
        b.send("PSUBSCRIBE", "intro.*")
        for _ in range(len(channels)):
            a.read()
        for _ in range(4):
            b.read()
        with RawClient(port) as c:
            numsub = c.call("PUBSUB", "NUMSUB", *channels)
            assert numsub == [x for ch in channels for x in (ch.encode(), 2 if ch in channels[:3] else 1)]
            assert sorted(c.call("PUBSUB", "CHANNELS", "intro.*")) == sorted(ch.encode() for ch in channels)
            assert c.call("PUBSUB", "NUMPAT") == 1
    finally:
        a.close()
        b.close()


def test_cluster_publish_and_sharded_pubsub(fronts: Fronts) -> None:
    port = fronts.ports["cluster"]
    sub = Sub(port)
    try:
        sub.send("SUBSCRIBE", "c1", "c2", "c3")
        for n in range(3):
            assert sub.read()[2] == n + 1
        sub.send("SSUBSCRIBE", "s1")
        assert sub.read() == [b"ssubscribe", b"s1", 1]
        with RawClient(port) as pub:
            for ch in ("c1", "c2", "c3"):
                assert pub.call("PUBLISH", ch, ch + "!") >= 1
            assert pub.call("SPUBLISH", "s1", "sharded") == 1
        for ch in ("c1", "c2", "c3"):
            assert sub.read() == [b"message", ch.encode(), (ch + "!").encode()]
        assert sub.read() == [b"smessage", b"s1", b"sharded"]
    finally:
        sub.close()


def test_listener_routes_channels_by_prefix(fronts: Fronts, solo: RedisServer) -> None:
    port = fronts.ports["edge"]
    sub = Sub(port)
    try:
        sub.send("SUBSCRIBE", "rq:pubsub:worker1", "other")
        sub.read()
        sub.read()
        # the rq: channel is on the rq: route's server, the other on the default ring
        assert solo.call("PUBSUB", "NUMSUB", "rq:pubsub:worker1") == [b"rq:pubsub:worker1", 1]
        with RawClient(port) as pub:
            assert pub.call("PUBLISH", "rq:pubsub:worker1", "stop") == 1
            assert pub.call("PUBLISH", "other", "x") == 1
        assert sub.read() == [b"message", b"rq:pubsub:worker1", b"stop"]
        assert sub.read() == [b"message", b"other", b"x"]
    finally:
        sub.close()


def test_redis_py_pubsub_and_a_subscriber_that_leaves(fronts: Fronts) -> None:
    r = redis.Redis(port=fronts.ports["ring"], socket_timeout=10)
    p = r.pubsub()  # type: ignore[no-untyped-call]
    try:
        p.subscribe("rp.ch")
        p.psubscribe("rp.*")
        assert p.get_message(timeout=5)["type"] == "subscribe"
        assert p.get_message(timeout=5)["type"] == "psubscribe"
        assert r.publish("rp.ch", "hello") == 2
        kinds = set()
        for _ in range(2):
            msg = p.get_message(timeout=5)
            assert msg is not None and msg["data"] == b"hello"
            kinds.add(msg["type"])
        assert kinds == {"message", "pmessage"}
    finally:
        p.close()
    # gone: its subscriptions are gone from the servers too
    poll_until(lambda: r.publish("rp.ch", "again") == 0, "the left subscriber unsubscribed", 10)
    r.close()


def test_a_subscriber_whose_server_goes_away_is_closed_to_resubscribe(
    fronts: Fronts, solo: RedisServer
) -> None:
    sub = Sub(fronts.ports["edge"])
    try:
        sub.send("SUBSCRIBE", "rq:gone")
        sub.read()
        victims = [c["id"] for c in solo.clients() if c["cmd"] == "subscribe"]
        assert len(victims) == 1
        solo.call("CLIENT", "KILL", "ID", victims[0])
        sub.sock.settimeout(10)
        deadline = time.monotonic() + 10
        closed = False
        while time.monotonic() < deadline and not closed:
            closed = sub.sock.recv(65536) == b""
        assert closed
    finally:
        sub.close()


def test_subscriptions_follow_reloads(fronts: Fronts) -> None:
    """A reload that rebuilds the pool keeps every subscription; one that adds a server moves
    the channels it now owns there; both twice. Every message still arrives, once, and a
    channel's message comes before its pattern message (one server, one connection).

    Order *across* servers is not asserted: Redis writes the PUBLISH reply before the
    subscriber's message (clients_pending_write is filled head-first), so when that server is
    descheduled between the two writes (a loaded machine), the next PUBLISH, to another server,
    can be delivered first. No proxy, and no cluster client, orders two servers' streams."""
    with running_redis_servers(4) as servers:
        port = free_port()

        def config(count: int, timeout: int) -> str:
            return native_config(pool_yaml("ring", port, server_lines(servers[:count]), timeout=timeout))

        channels = [f"reload.{i * 31}.{i}" for i in range(40)]
        with ResProxy(config(3, 1000), port=port).start() as proxy:
            sub = Sub(port)
            try:
                sub.send("SUBSCRIBE", *channels)
                for _ in channels:
                    sub.read()
                sub.send("PSUBSCRIBE", "reload.*")
                sub.read()
                steps = [(3, 1100), (4, 1100), (4, 1200), (3, 1300), (4, 1400)]
                for step, (count, timeout) in enumerate(steps):
                    assert proxy.reload(config(count, timeout)), step
                    with RawClient(port) as pub:
                        for ch in channels:
                            assert pub.call("PUBLISH", ch, f"s{step}") == 2, (step, ch)
                    got = [sub.read() for _ in range(2 * len(channels))]
                    for ch in channels:
                        message = [b"message", ch.encode(), f"s{step}".encode()]
                        pmessage = [b"pmessage", b"reload.*", ch.encode(), f"s{step}".encode()]
                        assert got.count(message) == got.count(pmessage) == 1, (step, ch, got)
                        assert got.index(message) < got.index(pmessage), (step, ch, got)
            finally:
                sub.close()


def test_a_sharded_subscription_follows_its_slot_through_a_migration(
    fronts: Fronts, cluster: RedisCluster
) -> None:
    from proxy.hashing import key_slot

    channel = "{shard-move}news"
    slot = key_slot(channel.encode())
    source = cluster.slot_owner(slot)
    target = next(m for m in cluster.masters() if m is not source)

    sub = Sub(fronts.ports["cluster"])
    try:
        sub.send("SSUBSCRIBE", channel)
        assert sub.read() == [b"ssubscribe", channel.encode(), 1]
        with RawClient(fronts.ports["cluster"]) as pub:
            assert pub.call("SPUBLISH", channel, "before") == 1
            assert sub.read() == [b"smessage", channel.encode(), b"before"]
            cluster.set_slot_owner(slot, target)
            # the proxy learns the map (the node's sunsubscribe, a MOVED) and subscribes there
            poll_until(
                lambda: target.call("PUBSUB", "SHARDNUMSUB", channel)[1] == 1,
                "subscribed again on the slot's new owner",
                10,
            )
            assert pub.call("SPUBLISH", channel, "after") == 1
            assert sub.read() == [b"smessage", channel.encode(), b"after"]
    finally:
        sub.close()
        cluster.set_slot_owner(slot, source)


@pytest.mark.parametrize("resp3", [False, True])
def test_pipelined_subscribe_then_unsubscribe_or_publish_as_one_redis(
    fronts: Fronts, reference: RedisServer, resp3: bool
) -> None:
    """In one write: what follows a SUBSCRIBE waits for the servers' confirmations (a PUBLISH
    right after finds the subscription; an UNSUBSCRIBE right after is answered in order)."""
    sequences: list[list[tuple[Any, ...]]] = [
        [("SUBSCRIBE", "pa", "pb"), ("UNSUBSCRIBE", "pb"), ("UNSUBSCRIBE",), ("PING",)],
        [("PSUBSCRIBE", "px*"), ("PUNSUBSCRIBE",), ("PING", "x", "y"), ("PING",)],
        [("SUBSCRIBE", "pa"), ("RESET",)],
        [("PUBSUB", "NUMSUB", "pq", "pq", "zz")],
    ]
    counts = [5, 4, 2, 1]  # (UNSUBSCRIBE of all lists in Redis's hash order: one name left)
    for sequence, count in zip(sequences, counts):
        raws = []
        for port in (fronts.ports["ring"], reference.port):
            sub = Sub(port, resp3=resp3)
            try:
                sub.sock.sendall(b"".join(encode(*c) for c in sequence))
                raws.append(sub.raw(count))
            finally:
                sub.close()
        assert raws[0] == raws[1], sequence
    # a PUBLISH right behind a SUBSCRIBE of the same client finds it
    sub = Sub(fronts.ports["ring"], resp3=True)
    try:
        sub.sock.sendall(encode("SUBSCRIBE", "pp.now") + encode("PUBLISH", "pp.now", "m"))
        replies = [sub.read() for _ in range(3)]
        assert [b"subscribe", b"pp.now", 1] in replies and 1 in replies, replies
        assert [b"message", b"pp.now", b"m"] in replies, replies
    finally:
        sub.close()
