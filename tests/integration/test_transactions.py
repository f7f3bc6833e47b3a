"""MULTI/EXEC/DISCARD/WATCH/UNWATCH through resproxy (issue 11), with real redis-servers.

One resproxy for the module, in front of: a ring pool of three redis-servers (tag ``{}``), a
3-master Redis Cluster (refreshed only by MOVED, so a slot can move behind its back), a
master + replica under three sentinels, and a listener routing ``cart:`` to the ring and
``sess:`` to a one-server pool. A plain redis-server (``reference``) answers the same sequences
directly where the proxy must say what Redis says.

Replies are read as exact RESP frames (``Client.last_raw``) as well as decoded. "Nothing of the
transaction reached a server" is checked on the servers themselves: their keys and INFO
commandstats (``cmdstat_multi``, ``cmdstat_set``...).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import hiredis
import pytest

from proxy.config import parse
from proxy.hashing import key_slot
from tests.integration.harness.clients import RawClient, comparable, encode, error_text
from tests.integration.harness.cluster import RedisCluster
from tests.integration.harness.configs import (
    MURMUR_RING,
    listener_yaml,
    native_config,
    pool_yaml,
    route,
    sentinel_pool_yaml,
    server_lines,
)
from tests.integration.harness.deployments import running_backends
from tests.integration.harness.metrics import Metrics
from tests.integration.harness.placement import ring_port
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import ResProxy
from tests.integration.harness.sentinel import SentinelGroup
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until

EXECABORT = "EXECABORT Transaction discarded because of previous errors."
RING_NAMES = ("alpha", "beta", "gamma")
TX_COMMANDS = ("multi", "exec", "discard", "set", "incr")  # what a refused transaction must not run
RELOAD_TIMEOUT_S = 30.0

Arg = bytes | str | int
Cmd = tuple[Arg, ...]


# --- exact replies -------------------------------------------------------------------------


def _frame_end(buf: bytes, pos: int) -> int | None:
    """The end offset of the RESP2/RESP3 reply starting at ``pos`` (None: not all here yet)."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        return None
    kind, head, after = buf[pos : pos + 1], buf[pos + 1 : eol], eol + 2
    if kind in (b"$", b"!", b"="):  # bulk, blob error, verbatim
        n = int(head)
        if n < 0:
            return after
        return after + n + 2 if len(buf) >= after + n + 2 else None
    if kind in (b"*", b"~", b">", b"%", b"|"):  # array, set, push, map, attribute
        n = int(head)
        if n < 0:
            return after
        for _ in range(n * 2 if kind in (b"%", b"|") else n):
            nxt = _frame_end(buf, after)
            if nxt is None:
                return None
            after = nxt
        return after
    return after  # + - : _ , # ( : one line


class Client(RawClient):
    """RawClient that keeps each reply's exact bytes (``last_raw``) as well as decoding it."""

    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        super().__init__(port, timeout_s)
        self.buf = b""
        self.last_raw = b""

    def read_raw(self) -> bytes:
        while True:  # each recv is bounded by the socket timeout
            end = _frame_end(self.buf, 0) if self.buf else None
            if end is not None:
                frame, self.buf = self.buf[:end], self.buf[end:]
                return frame
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by peer")
            self.buf += chunk

    def read(self) -> Any:
        self.last_raw = self.read_raw()
        reader = hiredis.Reader()
        reader.feed(self.last_raw)
        return reader.gets()

    def raw(self, *args: Arg) -> bytes:
        """One command; its reply's exact bytes."""
        self.call(*args)
        return self.last_raw

    def raw_pipeline(self, commands: Sequence[Cmd]) -> list[bytes]:
        """Every command in one write; each reply's exact bytes, in order."""
        self.send(b"".join(encode(*c) for c in commands))
        return [self.read_raw() for _ in commands]


# --- the deployments -----------------------------------------------------------------------


class Stack:
    """The module's deployments and the resproxy in front of them (not started yet)."""

    def __init__(self, servers: list[RedisServer], cluster: RedisCluster, group: SentinelGroup) -> None:
        *self.ring, self.one, self.ref = servers  # the ring's, the solo pool's, the reference
        self.c, self.g = cluster, group
        self.ring_port, self.cluster_port, self.sentinel_port = free_port(), free_port(), free_port()
        self.edge_port, self.metrics_port = free_port(), free_port()
        self.text = self.render()
        self.config = parse(self.text)
        self.p = ResProxy(self.text, metrics_port=self.metrics_port)

    def render(self, ring_timeout_ms: int = 1000) -> str:
        ring = server_lines(self.ring, RING_NAMES)
        return native_config(
            pool_yaml("ring", self.ring_port, ring, **MURMUR_RING, timeout=ring_timeout_ms),
            pool_yaml("solo", None, server_lines([self.one], ["solo"]), timeout=2000),
            pool_yaml(
                "cluster",
                self.cluster_port,
                self.c.seeds(),
                distribution="cluster",
                timeout=2000,
                cluster_refresh_interval=60000,
            ),
            sentinel_pool_yaml("sessions", self.g, self.sentinel_port, timeout=3000),
            listeners=[
                listener_yaml(
                    "edge",
                    self.edge_port,
                    route("cart:", "ring"),
                    route("sess:", "solo"),
                    default_pool="solo",
                )
            ],
            metrics_port=self.metrics_port,
        )

    def master(self) -> RedisServer:
        return self.g.current_master()

    def ring_owner(self, key: str) -> RedisServer:
        """The ring server the ring pool puts ``key`` on (twemproxy's rule, from the config)."""
        port = ring_port(self.config, "ring", key.encode())
        return next(s for s in self.ring if s.port == port)

    def ring_name(self, server: RedisServer) -> str:
        return RING_NAMES[self.ring.index(server)]

    def cluster_owner(self, key: str) -> RedisServer:
        return self.c.slot_owner(key_slot(key.encode()))

    def every_data_node(self) -> list[RedisServer]:
        return [*self.ring, self.one, *self.c.masters(), self.master()]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    cluster, group = RedisCluster(masters=3, replicas=0), SentinelGroup("txsessions")
    with running_backends(5, cluster, group) as plain:  # in parallel: the cluster and the
        st = Stack(plain, cluster, group)  # sentinels take seconds
        with st.p.start(pools=4):  # ring, cluster, sessions, edge
            yield st


@pytest.fixture()
def st(stack: Stack) -> Stack:
    """The module's deployments, every data node emptied directly (not through the proxy)."""
    assert stack.p.alive(), stack.p.log()[-3000:]
    for node in [*stack.every_data_node(), stack.ref]:
        node.call("FLUSHALL")
    return stack


class Place:
    """Where a transaction's keys go: the front's port, a key maker, the server that must hold
    them and the servers that must not."""

    def __init__(self, port: int, prefix: str, owner: RedisServer, others: list[RedisServer]):
        self.port, self.prefix, self.owner, self.others = port, prefix, owner, others

    def key(self, tag: str, name: str) -> str:
        return f"{self.prefix}{{{tag}}}:{name}"


PLACES = ["ring", "cluster", "sentinel", "edge_ring", "edge_solo"]


def place(st: Stack, kind: str, tag: str) -> Place:
    if kind == "ring":
        owner = st.ring_owner(f"{{{tag}}}")
        return Place(st.ring_port, "", owner, [s for s in st.ring if s is not owner])
    if kind == "cluster":
        owner = st.cluster_owner(f"{{{tag}}}")
        return Place(st.cluster_port, "", owner, [m for m in st.c.masters() if m is not owner])
    if kind == "sentinel":
        return Place(st.sentinel_port, "", st.master(), [])
    if kind == "edge_ring":  # cart: → the ring pool
        owner = st.ring_owner(f"{{{tag}}}")
        others = [s for s in st.ring if s is not owner] + [st.one]
        return Place(st.edge_port, "cart:", owner, others)
    assert kind == "edge_solo"  # sess: → the one-server pool
    return Place(st.edge_port, "sess:", st.one, list(st.ring))


def holds(node: RedisServer, key: str) -> bool:
    """``node`` has ``key`` (a cluster node is asked for the slot's keys: it would redirect)."""
    reply = node.call("EXISTS", key)
    if isinstance(reply, hiredis.ReplyError):  # MOVED/ASK: a cluster node, not the slot's owner
        keys = node.call("CLUSTER", "GETKEYSINSLOT", key_slot(key.encode()), 1000)
        return key.encode() in keys
    return bool(reply == 1)


def holders(nodes: Sequence[RedisServer], *keys: str) -> list[tuple[int, str]]:
    """Which of ``nodes`` hold which of ``keys`` (``[]``: none anywhere)."""
    return [(n.port, k) for n in nodes for k in keys if holds(n, k)]


def cmdstats(nodes: Sequence[RedisServer]) -> dict[tuple[int, str], int]:
    return {(n.port, c): n.cmdstat(c) for n in nodes for c in TX_COMMANDS}


def ring_tags_on_distinct_servers(st: Stack, prefix: str) -> tuple[str, str]:
    """Two hash tags the ring puts on two different servers."""
    first = f"{prefix}0"
    owner = st.ring_owner(f"{{{first}}}")
    for i in range(1, 1000):
        tag = f"{prefix}{i}"
        if st.ring_owner(f"{{{tag}}}") is not owner:
            return first, tag
    raise LookupError("no second tag")


def names(text: str, *alternatives: str) -> bool:
    """``text`` names one of ``alternatives`` (a whole word: slot 12 is not slot 123)."""
    return any(re.search(rf"(?<![\w.:]){re.escape(a)}(?![\w.])", text) for a in alternatives)


def run(port: int, commands: Sequence[Cmd]) -> list[Any]:
    """The commands one by one on a new connection; normalised replies."""
    with Client(port) as c:
        return [comparable(c.call(*cmd)) for cmd in commands]


# --- the basics ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PLACES)
def test_transaction_runs_as_one_multi_exec_on_the_keys_server(st: Stack, kind: str) -> None:
    pl = place(st, kind, "acct1")
    balance, ops = pl.key("acct1", "balance"), pl.key("acct1", "ops")
    multi_before, exec_before = pl.owner.cmdstat("multi"), pl.owner.cmdstat("exec")
    with Client(pl.port) as c:
        assert c.raw("MULTI") == b"+OK\r\n"
        assert c.raw("SET", balance, "100") == b"+QUEUED\r\n"
        assert c.raw("INCR", ops) == b"+QUEUED\r\n"
        assert c.raw("INCRBY", balance, "5") == b"+QUEUED\r\n"
        assert c.raw("EXEC") == b"*3\r\n+OK\r\n:1\r\n:105\r\n"
        assert c.call("GET", balance) == b"105"  # the connection carries on, out of MULTI
        assert c.call("MULTI") == b"OK"  # and a second transaction on it
        assert c.call("INCR", ops) == b"QUEUED"
        assert c.call("EXEC") == [2]
    assert pl.owner.call("MGET", balance, ops) == [b"105", b"2"]
    for other in pl.others:
        assert holders([other], balance, ops) == []
    # the server ran real transactions (not the queued commands one by one)
    assert pl.owner.cmdstat("multi") == multi_before + 2
    assert pl.owner.cmdstat("exec") == exec_before + 2


@pytest.mark.parametrize("kind", ["ring", "cluster", "sentinel", "edge_solo"])
def test_keyless_commands_are_queued_and_a_keyless_transaction_runs(st: Stack, kind: str) -> None:
    pl = place(st, kind, "kl")
    key = pl.key("kl", "a")
    with Client(pl.port) as c:
        assert c.call("MULTI") == b"OK"
        for cmd in (("PING",), ("ECHO", "hi"), ("TIME",)):
            assert c.call(*cmd) == b"QUEUED", cmd
        reply = c.call("EXEC")
        assert isinstance(reply, list) and reply[:2] == [b"PONG", b"hi"], reply
        assert abs(int(reply[2][0]) - time.time()) < 60, reply  # TIME: [seconds, microseconds]
        # keyless commands around keyed ones: the key picks the server
        assert (
            c.pipeline([("MULTI",), ("PING",), ("SET", key, "1"), ("TIME",), ("GET", key), ("EXEC",)])[:5]
            == [b"OK"] + [b"QUEUED"] * 4
        )
        assert c.last_raw.startswith(b"*4\r\n+PONG\r\n+OK\r\n*2\r\n"), c.last_raw
        assert c.last_raw.endswith(b"$1\r\n1\r\n"), c.last_raw
    assert pl.owner.call("GET", key) == b"1"


# --- Redis's own answers -------------------------------------------------------------------

# K and N are keys of one tag; each sequence runs through the proxy and straight on a server
SEQUENCES: dict[str, list[Cmd]] = {
    "discard": [
        ("MULTI",),
        ("SET", "K", "1"),
        ("INCR", "N"),
        ("DISCARD",),
        ("MGET", "K", "N"),
        ("EXEC",),
        ("DISCARD",),
    ],
    "nested_multi": [("MULTI",), ("SET", "K", "1"), ("MULTI",), ("INCR", "N"), ("EXEC",), ("MGET", "K", "N")],
    "exec_discard_without_multi": [("EXEC",), ("DISCARD",), ("SET", "K", "x"), ("EXEC",), ("GET", "K")],
    "watch_inside_multi": [
        ("MULTI",),
        ("SET", "K", "1"),
        ("WATCH", "N"),
        ("INCR", "N"),
        ("EXEC",),
        ("MGET", "K", "N"),
    ],
    "unknown_command": [
        ("MULTI",),
        ("SET", "K", "1"),
        ("FOOBAR", "x", "y"),
        ("INCR", "N"),
        ("EXEC",),
        ("MGET", "K", "N"),
    ],
    "wrong_arity": [("MULTI",), ("SET", "K", "1"), ("INCR",), ("INCR", "N"), ("EXEC",), ("MGET", "K", "N")],
    "wrong_arity_set": [("MULTI",), ("SET", "K"), ("EXEC",), ("GET", "K")],
    "wrong_type_runs_the_rest": [
        ("SET", "K", "text"),
        ("MULTI",),
        ("INCR", "K"),
        ("INCR", "N"),
        ("EXEC",),
        ("MGET", "K", "N"),
    ],
    "watch_read_unwatch": [
        ("WATCH", "K", "N"),
        ("GET", "K"),
        ("MULTI",),
        ("INCR", "K"),
        ("EXEC",),
        ("WATCH", "K"),
        ("UNWATCH",),
        ("MULTI",),
        ("INCR", "K"),
        ("EXEC",),
        ("GET", "K"),
    ],
    "own_write_breaks_watch": [
        ("WATCH", "K"),
        ("SET", "K", "5"),
        ("MULTI",),
        ("INCR", "K"),
        ("EXEC",),
        ("GET", "K"),
    ],
    "watch_discard": [("WATCH", "K"), ("MULTI",), ("INCR", "K"), ("DISCARD",), ("EXEC",), ("GET", "K")],
    "empty_transaction": [("MULTI",), ("EXEC",), ("MULTI",), ("DISCARD",)],
}
MUST_SAY = {  # texts the spec names, so a sequence cannot pass by being wrong on both sides
    "nested_multi": "ERR MULTI calls can not be nested",
    "exec_discard_without_multi": "ERR DISCARD without MULTI",
    "watch_inside_multi": "ERR WATCH inside MULTI is not allowed",
    "unknown_command": EXECABORT,
    "wrong_arity": EXECABORT,
    "wrong_arity_set": EXECABORT,
}


@pytest.mark.parametrize("kind", ["ring", "cluster", "edge_solo"])
@pytest.mark.parametrize("name", list(SEQUENCES))
def test_replies_and_effects_match_redis(st: Stack, kind: str, name: str) -> None:
    pl = place(st, kind, "seq")
    k, n = pl.key("seq", "k"), pl.key("seq", "n")
    subst = {"K": k, "N": n}
    commands = [tuple(subst.get(a, a) if isinstance(a, str) else a for a in cmd) for cmd in SEQUENCES[name]]
    want = run(st.ref.port, commands)
    assert repr(want).find(MUST_SAY.get(name, "")) >= 0, want  # the reference says it
    got = run(pl.port, commands)
    assert got == want
    # and the server holds what the reference holds
    assert pl.owner.call("MGET", k, n) == st.ref.call("MGET", k, n)


def test_keyspace_wide_command_inside_multi_aborts(st: Stack) -> None:
    pl = place(st, "ring", "kw")
    key = pl.key("kw", "a")
    for command in (("KEYS", "*"), ("FLUSHDB",), ("DBSIZE",)):
        before = cmdstats(st.ring)
        with Client(pl.port) as c:
            assert c.call("MULTI") == b"OK"
            assert c.call("SET", key, "1") == b"QUEUED"
            assert error_text(c.call(*command)).startswith("ERR "), command
            assert error_text(c.call("EXEC")) == EXECABORT
            assert c.call("PING") == b"PONG"
        assert holders(st.ring, key) == []
        assert cmdstats(st.ring) == before, command


# --- refused whole: nothing reaches any server ---------------------------------------------


def _assert_refused_whole(
    c: Client,
    queued: Sequence[Cmd],
    crossing: Cmd,
    places: tuple[Sequence[str], Sequence[str]],
    nodes: Sequence[RedisServer],
    keys: Sequence[str],
    hint: tuple[str, ...] = ("hash tag",),
) -> None:
    before = cmdstats(nodes)
    assert c.call("MULTI") == b"OK"
    for cmd in queued:
        assert c.call(*cmd) == b"QUEUED", cmd
    text = error_text(c.call(*crossing))
    assert text.startswith("CROSSSLOT"), text
    assert names(text, *places[0]) and names(text, *places[1]), (text, places)
    assert any(h in text.lower() for h in hint), text
    assert c.call("SET", keys[0], "after-the-error") == b"QUEUED"  # still inside MULTI
    assert c.raw("EXEC") == b"-" + EXECABORT.encode() + b"\r\n"
    assert error_text(c.call("EXEC")) == "ERR EXEC without MULTI"  # the transaction is over
    assert holders(nodes, *keys) == []
    assert cmdstats(nodes) == before  # not one MULTI, SET, INCR or EXEC reached a server


def test_cross_server_key_on_a_ring_refuses_the_whole_transaction(st: Stack) -> None:
    a, b = ring_tags_on_distinct_servers(st, "x")
    sa, sb = st.ring_owner(f"{{{a}}}"), st.ring_owner(f"{{{b}}}")
    ka, kn, kb = f"{{{a}}}:k", f"{{{a}}}:n", f"{{{b}}}:k"
    with Client(st.ring_port) as c:
        _assert_refused_whole(
            c,
            [("SET", ka, "1"), ("INCR", kn), ("PING",)],
            ("SET", kb, "2"),
            ([st.ring_name(sa), f"127.0.0.1:{sa.port}"], [st.ring_name(sb), f"127.0.0.1:{sb.port}"]),
            st.ring,
            [ka, kn, kb],
        )
        # a multi-key command spanning servers inside MULTI: the same
        _assert_refused_whole(
            c,
            [("INCR", kn)],
            ("MSET", ka, "1", kb, "2"),
            ([st.ring_name(sa), f"127.0.0.1:{sa.port}"], [st.ring_name(sb), f"127.0.0.1:{sb.port}"]),
            st.ring,
            [ka, kn, kb],
        )
        # the connection is fine: a transaction on one server runs
        assert c.pipeline([("MULTI",), ("SET", kb, "2"), ("EXEC",)]) == [b"OK", b"QUEUED", [b"OK"]]
    assert sb.call("GET", kb) == b"2"


@pytest.mark.parametrize("nodes", ["two_nodes", "one_node"])
def test_cross_slot_key_on_a_cluster_refuses_the_whole_transaction(st: Stack, nodes: str) -> None:
    first = "cs0"
    slot_a = key_slot(f"{{{first}}}".encode())
    owner_a = st.c.slot_owner(slot_a)
    for i in range(1, 10000):  # bounded
        tag = f"cs{i}"
        slot_b = key_slot(f"{{{tag}}}".encode())
        same_node = st.c.slot_owner(slot_b) is owner_a
        if slot_b != slot_a and same_node == (nodes == "one_node"):
            break
    else:
        raise LookupError("no second tag")
    ka, kn, kb = f"{{{first}}}:k", f"{{{first}}}:n", f"{{{tag}}}:k"
    owner_b = st.c.slot_owner(slot_b)
    where_a = [str(slot_a)] + ([] if nodes == "one_node" else [f"127.0.0.1:{owner_a.port}"])
    where_b = [str(slot_b)] + ([] if nodes == "one_node" else [f"127.0.0.1:{owner_b.port}"])
    with Client(st.cluster_port) as c:
        _assert_refused_whole(
            c,
            [("SET", ka, "1"), ("INCR", kn)],
            ("SET", kb, "2"),
            (where_a, where_b),
            st.c.masters(),
            [ka, kn, kb],
        )
        assert c.pipeline([("MULTI",), ("SET", kb, "2"), ("EXEC",)]) == [b"OK", b"QUEUED", [b"OK"]]
    assert owner_b.call("GET", kb) == b"2"


def test_cross_route_key_through_a_listener_refuses_the_whole_transaction(st: Stack) -> None:
    nodes = [*st.ring, st.one]
    with Client(st.edge_port) as c:
        # sess: (pool solo) then cart: (pool ring)
        _assert_refused_whole(
            c,
            [("SET", "sess:{u1}:k", "1"), ("INCR", "sess:{u1}:n")],
            ("SET", "cart:{u1}:k", "2"),
            (["solo", "sess:"], ["ring", "cart:"]),
            nodes,
            ["sess:{u1}:k", "sess:{u1}:n", "cart:{u1}:k"],
            hint=("hash tag", "route"),
        )
        # inside one route the pool's own rule holds: cart: keys on two ring servers
        a, b = ring_tags_on_distinct_servers(st, "r")
        sa, sb = st.ring_owner(f"{{{a}}}"), st.ring_owner(f"{{{b}}}")
        ka, kb = f"cart:{{{a}}}:k", f"cart:{{{b}}}:k"
        _assert_refused_whole(
            c,
            [("SET", ka, "1")],
            ("SET", kb, "2"),
            ([st.ring_name(sa), f"127.0.0.1:{sa.port}"], [st.ring_name(sb), f"127.0.0.1:{sb.port}"]),
            nodes,
            [ka, kb],
        )
        assert c.pipeline([("MULTI",), ("SET", "sess:{u1}:k", "1"), ("INCR", "sess:{u1}:n"), ("EXEC",)]) == [
            b"OK",
            b"QUEUED",
            b"QUEUED",
            [b"OK", 1],
        ]
    assert st.one.call("MGET", "sess:{u1}:k", "sess:{u1}:n") == [b"1", b"1"]


def test_watched_key_picks_the_server_for_the_transaction(st: Stack) -> None:
    a, b = ring_tags_on_distinct_servers(st, "w")
    sa, sb = st.ring_owner(f"{{{a}}}"), st.ring_owner(f"{{{b}}}")
    kw, kb = f"{{{a}}}:watched", f"{{{b}}}:k"
    before = cmdstats(st.ring)
    with Client(st.ring_port) as c:
        assert c.call("WATCH", kw) == b"OK"
        assert c.call("MULTI") == b"OK"
        text = error_text(c.call("SET", kb, "1"))
        assert text.startswith("CROSSSLOT") and names(text, st.ring_name(sb), f"127.0.0.1:{sb.port}")
        assert names(text, st.ring_name(sa), f"127.0.0.1:{sa.port}"), text
        assert error_text(c.call("EXEC")) == EXECABORT
    assert holders(st.ring, kb) == []
    assert cmdstats(st.ring) == before


# --- WATCH ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PLACES)
def test_watch_conflict_from_another_client_gives_a_nil_array(st: Stack, kind: str) -> None:
    pl = place(st, kind, "wc")
    key, other = pl.key("wc", "k"), pl.key("wc", "other")
    with Client(pl.port) as a, Client(pl.port) as b:
        assert a.call("SET", key, "start") == b"OK"
        assert a.call("WATCH", key) == b"OK"
        assert a.call("GET", key) == b"start"  # the watching client's reads are fine
        assert b.call("SET", key, "theirs") == b"OK"  # another client writes the watched key
        assert a.call("MULTI") == b"OK"
        assert a.call("SET", key, "mine") == b"QUEUED"
        assert a.call("SET", other, "mine") == b"QUEUED"
        assert a.raw("EXEC") == b"*-1\r\n"
        # the watch is gone with EXEC: the same client's next transaction runs
        assert a.pipeline([("MULTI",), ("INCR", other), ("EXEC",)]) == [b"OK", b"QUEUED", [1]]
    assert pl.owner.call("MGET", key, other) == [b"theirs", b"1"]


@pytest.mark.parametrize("kind", ["ring", "cluster"])
def test_unwatch_and_discard_forget_the_watch(st: Stack, kind: str) -> None:
    pl = place(st, kind, "uw")
    key = pl.key("uw", "k")
    with Client(pl.port) as a, Client(pl.port) as b:
        assert a.call("WATCH", key) == b"OK"  # no conflict: applied
        assert a.pipeline([("MULTI",), ("SET", key, "1"), ("EXEC",)]) == [b"OK", b"QUEUED", [b"OK"]]
        assert a.call("WATCH", key) == b"OK"
        assert a.call("UNWATCH") == b"OK"
        assert b.call("SET", key, "b1") == b"OK"
        assert a.pipeline([("MULTI",), ("SET", key, "2"), ("EXEC",)]) == [b"OK", b"QUEUED", [b"OK"]]
        assert pl.owner.call("GET", key) == b"2"
        assert a.call("WATCH", key) == b"OK"
        assert a.pipeline([("MULTI",), ("SET", key, "x"), ("DISCARD",)]) == [b"OK", b"QUEUED", b"OK"]
        assert pl.owner.call("GET", key) == b"2"  # discarded
        assert b.call("SET", key, "b2") == b"OK"
        assert a.pipeline([("MULTI",), ("SET", key, "3"), ("EXEC",)]) == [b"OK", b"QUEUED", [b"OK"]]
        assert b.call("GET", key) == b"3"
    assert pl.owner.call("GET", key) == b"3"


# --- clients that go away ------------------------------------------------------------------


def _no_multi_state(server: RedisServer) -> bool:
    """No connection of ``server`` is inside MULTI (flags x)."""
    return not any("x" in r.get("flags", "") for r in server.clients())


def _proxy_clients(st: Stack, pool: str) -> float:
    return Metrics(st.metrics_port).value("resproxy_client_connections", pool=pool)


def test_client_gone_mid_multi_leaves_nothing_queued(st: Stack) -> None:
    pl = place(st, "ring", "dc")
    key = pl.key("dc", "k")
    before = cmdstats(st.ring)
    gone = Client(pl.port)
    assert gone.call("MULTI") == b"OK"
    connected = _proxy_clients(st, "ring")
    assert gone.call("SET", key, "1") == b"QUEUED"
    assert gone.call("INCR", pl.key("dc", "n")) == b"QUEUED"
    gone.close()
    poll_until(lambda: _proxy_clients(st, "ring") < connected, "the proxy saw the client go", 10)
    poll_until(lambda: _no_multi_state(pl.owner), "no MULTI state on the server", 10)
    assert holders(st.ring, key, pl.key("dc", "n")) == []
    assert cmdstats(st.ring) == before
    with Client(pl.port) as nxt:  # the next client on that server runs a normal transaction
        assert nxt.pipeline([("MULTI",), ("SET", key, "2"), ("INCR", pl.key("dc", "n")), ("EXEC",)]) == [
            b"OK",
            b"QUEUED",
            b"QUEUED",
            [b"OK", 1],
        ]
    assert pl.owner.call("MGET", key, pl.key("dc", "n")) == [b"2", b"1"]


def test_client_gone_while_watching_leaves_nothing(st: Stack) -> None:
    pl = place(st, "ring", "dw")
    key = pl.key("dw", "k")

    def watching_now() -> set[str]:
        return {r["id"] for r in pl.owner.clients() if r.get("cmd") == "watch"}

    earlier = watching_now()
    gone = Client(pl.port)
    assert gone.call("WATCH", key) == b"OK"
    connected = _proxy_clients(st, "ring")
    # WATCH went to the key's server at once, on a connection of that client's own
    watching = watching_now() - earlier
    assert len(watching) == 1, pl.owner.clients()
    assert gone.call("MULTI") == b"OK"
    assert gone.call("SET", key, "mine") == b"QUEUED"
    gone.close()
    poll_until(lambda: _proxy_clients(st, "ring") < connected, "the proxy saw the client go", 10)
    # that connection is closed, or reset (its last command is no longer the WATCH)
    poll_until(lambda: not watching & watching_now(), "the watching connection closed", 10)
    assert _no_multi_state(pl.owner)
    assert holders(st.ring, key) == []
    with Client(pl.port) as nxt:
        assert nxt.call("WATCH", key) == b"OK"
        assert nxt.pipeline([("MULTI",), ("SET", key, "2"), ("EXEC",)]) == [b"OK", b"QUEUED", [b"OK"]]
    assert pl.owner.call("GET", key) == b"2"


# --- sequences -----------------------------------------------------------------------------


def test_twenty_transactions_in_a_row_on_one_connection(st: Stack) -> None:
    pl = place(st, "ring", "row")
    k, n = pl.key("row", "k"), pl.key("row", "n")
    with Client(pl.port) as c:
        for i in range(20):
            assert c.call("MULTI") == b"OK", i
            assert c.call("SET", k, i) == b"QUEUED", i
            assert c.call("INCR", n) == b"QUEUED", i
            assert c.call("GET", k) == b"QUEUED", i
            assert c.raw("EXEC") == b"*3\r\n+OK\r\n:%d\r\n$%d\r\n%d\r\n" % (i + 1, len(str(i)), i)
            assert c.call("GET", n) == str(i + 1).encode()  # a plain command in between
    assert pl.owner.call("MGET", k, n) == [b"19", b"20"]


@pytest.mark.parametrize("kind", ["ring", "cluster", "edge_solo"])
def test_pipelined_transaction_between_plain_commands(st: Stack, kind: str) -> None:
    pl = place(st, kind, "pp")
    k, n, o = pl.key("pp", "k"), pl.key("pp", "n"), pl.key("pp", "other")
    commands: list[Cmd] = [
        ("GET", k),
        ("SET", o, "plain"),
        ("MULTI",),
        ("SET", k, "1"),
        ("INCR", n),
        ("GET", o),
        ("EXEC",),
        ("GET", k),
        ("MULTI",),
        ("INCR", n),
        ("DISCARD",),
        ("GET", n),
        ("EXEC",),
        ("MULTI",),
        ("PING",),
        ("EXEC",),
        ("MGET", k, n, o),
    ]
    with Client(st.ref.port) as ref:
        want = ref.raw_pipeline(commands)
    with Client(pl.port) as c:
        got = c.raw_pipeline(commands)  # one write, replies in order
    assert got == want
    assert got[6] == b"*3\r\n+OK\r\n:1\r\n$5\r\nplain\r\n"
    assert pl.owner.call("MGET", k, n, o) == [b"1", b"1", b"plain"]


@pytest.mark.parametrize("kind", ["ring", "cluster"])
def test_concurrent_transactions_on_one_key(st: Stack, kind: str) -> None:
    pl = place(st, kind, "cnt")
    key = pl.key("cnt", "n")
    seen: list[int] = []
    problems: list[str] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        try:
            with Client(pl.port) as c:
                for j in range(50):
                    replies = c.pipeline([("MULTI",), ("INCR", key), ("EXEC",)])
                    if replies[:2] != [b"OK", b"QUEUED"] or not isinstance(replies[2], list):
                        problems.append(f"client {i} tx {j}: {replies!r}")
                        return
                    with lock:
                        seen.append(replies[2][0])
        except Exception as exc:  # reported below
            problems.append(f"client {i}: {exc!r}")

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert problems == [], problems[:5]
    assert sorted(seen) == list(range(1, 501))  # every INCR ran alone, none twice
    assert pl.owner.call("GET", key) == b"500"


# --- reloads -------------------------------------------------------------------------------


def _reload(st: Stack, ring_timeout_ms: int) -> None:
    """Rewrite the config (the ring pool's timeout changes) and SIGHUP; await its outcome."""
    assert st.p.reload(st.render(ring_timeout_ms), RELOAD_TIMEOUT_S), st.p.log()[-3000:]
    last = Metrics(st.metrics_port).value("resproxy_config_last_reload_successful")
    assert last == 1, st.p.log()[-3000:]


def _applied_or_clean(
    reply: Any, want: list[Any], holder: RedisServer, keys: list[str], values: list[bytes | None]
) -> None:
    """EXEC either ran whole (``want``, the keys hold ``values``) or failed with nothing run."""
    if isinstance(reply, hiredis.ReplyError) or reply is None:
        assert holders([holder], *keys) == [], reply
    else:
        assert reply == want
        assert holder.call("MGET", *keys) == values


def test_reload_between_multi_and_exec(st: Stack) -> None:
    pl = place(st, "ring", "rl")
    outcomes: list[str] = []
    with Client(pl.port) as c, Client(pl.port) as w:
        for step, timeout in enumerate((1500, 1000)):
            a, n, b = pl.key("rl", f"a{step}"), pl.key("rl", f"n{step}"), pl.key("rl", f"b{step}")
            wk = pl.key("rl", f"w{step}")
            assert c.call("MULTI") == b"OK"
            assert c.call("SET", a, "1") == b"QUEUED"
            assert w.call("WATCH", wk) == b"OK"
            _reload(st, timeout)
            queued = [c.call("INCR", n), c.call("SET", b, "2")]
            assert all(q == b"QUEUED" or isinstance(q, hiredis.ReplyError) for q in queued), queued
            wreply = w.pipeline([("MULTI",), ("SET", wk, "w"), ("EXEC",)])[2]
            _applied_or_clean(wreply, [b"OK"], pl.owner, [wk], [b"w"])
            reply = c.call("EXEC")
            _applied_or_clean(reply, [b"OK", 1, b"OK"], pl.owner, [a, n, b], [b"1", b"1", b"2"])
            outcomes.append(f"step {step}: {comparable(reply)!r} / watcher {comparable(wreply)!r}")
            for s in pl.others:
                assert holders([s], a, n, b, wk) == []
            # the held connections carry on
            assert c.call("SET", pl.key("rl", "plain"), step) == b"OK"
            assert w.pipeline([("MULTI",), ("INCR", pl.key("rl", "after")), ("EXEC",)]) == [
                b"OK",
                b"QUEUED",
                [step + 1],
            ]
    with Client(pl.port) as fresh:
        assert fresh.call("GET", pl.key("rl", "plain")) == b"1"
        assert fresh.pipeline([("MULTI",), ("INCR", pl.key("rl", "after")), ("EXEC",)]) == [
            b"OK",
            b"QUEUED",
            [3],
        ]
    print("\n".join(outcomes))


# --- cluster slots moving under a transaction ----------------------------------------------


def _is_retry_abort(reply: Any) -> bool:
    text = error_text(reply)
    assert text.startswith("EXECABORT") and "retry" in text.lower(), text
    return True


def _retry_until_done(port: int, commands: list[Cmd], want: list[Any]) -> int:
    """A client's retry loop (bounded): every failure a clean EXECABORT ... retry; the attempts."""
    attempts = 0

    def attempt() -> bool:
        nonlocal attempts
        attempts += 1
        assert attempts <= 5, "still failing after 5 retries"
        with Client(port) as c:
            replies = c.pipeline([("MULTI",), *commands, ("EXEC",)])
        assert replies[:-1] == [b"OK"] + [b"QUEUED"] * len(commands), replies
        if isinstance(replies[-1], hiredis.ReplyError):
            return not _is_retry_abort(replies[-1])
        assert replies[-1] == want
        return True

    poll_until(attempt, "the transaction retried after the slot moved", 10)
    return attempts


def test_cluster_slot_moved_between_queuing_and_exec(st: Stack) -> None:
    slot = key_slot(b"{mv}")
    source = st.c.slot_owner(slot)
    target = next(m for m in st.c.masters() if m is not source)
    with Client(st.cluster_port) as c:
        assert c.call("SET", "{mv}a", "10") == b"OK"
        assert c.call("MULTI") == b"OK"
        assert c.call("INCR", "{mv}a") == b"QUEUED"
        assert c.call("SET", "{mv}b", "new") == b"QUEUED"
        # the slot moves, keys and all; the proxy is not told (no refresh for 60 s)
        st.c.begin_migration(slot, source, target)
        assert st.c.migrate(source, target, "{mv}a") == b"OK"
        st.c.set_slot_owner(slot, target)
        assert _is_retry_abort(c.call("EXEC"))
        assert c.call("PING") == b"PONG"
    st.c.wait_healthy()
    assert target.call("GET", "{mv}a") == b"10"  # nothing applied
    assert holders(st.c.masters(), "{mv}b") == []
    _retry_until_done(st.cluster_port, [("INCR", "{mv}a"), ("SET", "{mv}b", "new")], [11, b"OK"])
    assert target.call("MGET", "{mv}a", "{mv}b") == [b"11", b"new"]


def test_cluster_slot_migrating_ask_between_queuing_and_exec(st: Stack) -> None:
    slot = key_slot(b"{ask}")
    source = st.c.slot_owner(slot)
    target = next(m for m in st.c.masters() if m is not source)
    with Client(st.cluster_port) as c:
        assert c.call("SET", "{ask}old", "1") == b"OK"
        assert c.call("MULTI") == b"OK"
        assert c.call("SET", "{ask}new", "v") == b"QUEUED"
        assert c.call("INCR", "{ask}old") == b"QUEUED"
        # the slot starts migrating and {ask}old leaves: the source answers ASK for both keys
        st.c.begin_migration(slot, source, target)
        assert st.c.migrate(source, target, "{ask}old") == b"OK"
        assert _is_retry_abort(c.call("EXEC"))
    with RawClient(target.port) as t:  # nothing applied on the target either
        assert t.pipeline([("ASKING",), ("GET", "{ask}old"), ("ASKING",), ("EXISTS", "{ask}new")]) == [
            b"OK",
            b"1",
            b"OK",
            0,
        ]
    assert holders([source], "{ask}new", "{ask}old") == []
    st.c.set_slot_owner(slot, target)  # the migration ends
    st.c.wait_healthy()
    _retry_until_done(st.cluster_port, [("SET", "{ask}new", "v"), ("INCR", "{ask}old")], [b"OK", 2])
    assert target.call("MGET", "{ask}new", "{ask}old") == [b"v", b"2"]


# --- RESP3 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ring", "cluster"])
def test_resp3_transaction_replies_in_resp3(st: Stack, kind: str) -> None:
    pl = place(st, kind, "r3")
    s, h, z, m = (pl.key("r3", x) for x in ("s", "h", "z", "missing"))
    commands: list[Cmd] = [
        ("MULTI",),
        ("SET", s, "1"),
        ("HSET", h, "f", "v"),
        ("HGETALL", h),
        ("ZADD", z, "1.5", "m"),
        ("ZSCORE", z, "m"),
        ("GET", m),
        ("EXEC",),
    ]
    replies: dict[str, list[bytes]] = {}
    for who, port in (("reference", st.ref.port), ("proxy", pl.port)):
        with Client(port) as c, Client(port) as other:
            assert isinstance(c.call("HELLO", "3"), dict)
            replies[who] = c.raw_pipeline(commands)
            # a WATCH conflict's nil in RESP3
            assert c.call("WATCH", s) == b"OK"
            assert other.call("SET", s, "2") == b"OK"
            replies[who].extend(c.raw_pipeline([("MULTI",), ("INCR", s), ("EXEC",)]))
    assert replies["proxy"] == replies["reference"]
    assert replies["proxy"][7] == (b"*6\r\n+OK\r\n:1\r\n%1\r\n$1\r\nf\r\n$1\r\nv\r\n:1\r\n,1.5\r\n_\r\n")
    assert replies["proxy"][-1] == b"_\r\n"
    assert pl.owner.call("GET", s) == b"2"
    assert pl.owner.call("HGET", h, "f") == b"v"
