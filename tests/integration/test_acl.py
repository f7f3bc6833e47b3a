"""ACL users at the proxy, end to end against real redis-servers.

One resproxy serves, at once:

* listener ``app``: routes ``app1:`` to ring pool ``ring1`` (two servers, also the default
  pool) and ``app2:`` / ``shared:`` to ring pool ``ring2`` (one server); its ``users:`` are
  app1 (read/write on ``app1:*``), app2 (read-only on ``app2:*``, ``shared:*``), a
  ``password_sha256`` user, a user with two passwords, a ``nopass`` user and an admin with every
  command and key; no ``default`` user and no ``redis_auth``, so the default user is off;
* pool ``guarded`` (its server has ``requirepass``): ``redis_auth`` (the ``default`` user's
  password) beside a read-only user;
* pools ``named``, ``unnamed`` and ``bare`` in front of a redis-server whose ``default`` user is
  off and whose user ``app`` has every right: with ``redis_username: app``, with ``redis_auth``
  only, and with no credentials at all.

A plain redis-server (``reference``) carries the same users' rules as ``ACL SETUSER``: the
proxy's refusals must read exactly as Redis's own. A refused command must never reach a
server: INFO commandstats (calls, rejected and failed calls) of every backend is compared
before and after.

"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.integration.harness.clients import RawClient, client_list, comparable, encode, error_text
from tests.integration.harness.configs import MURMUR_RING, native_config, pool_yaml, route, server_lines
from tests.integration.harness.metrics import Metrics
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import ResProxy
from tests.integration.harness.servers import RedisServer, running

NOPERM_KEY = "NOPERM this user has no permissions to access one of the keys used as arguments"
NOPERM_CHANNEL = "NOPERM this user has no permissions to access one of the channels used as arguments"
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
NOAUTH = "NOAUTH Authentication required."
EXECABORT = "EXECABORT Transaction discarded because of previous errors."


def noperm(command: str) -> str:
    return f"NOPERM this user has no permissions to run the '{command}' command"


APP1_COMMANDS = [
    "+@read",
    "+@write",
    "-@dangerous",
    "+@connection",
    "+@transaction",
    "+@pubsub",
    "+eval",
    "+acl|whoami",
]
APP2_COMMANDS = ["+@read", "+acl|whoami"]
USERS: dict[str, dict[str, Any]] = {
    "app1": {"password": "pw1", "commands": APP1_COMMANDS, "keys": ["app1:*"], "channels": ["news.*"]},
    "app2": {"password": "pw2", "commands": APP2_COMMANDS, "keys": ["~app2:*", "shared:*"]},
    "hasher": {
        "password_sha256": hashlib.sha256(b"pw3").hexdigest(),
        "commands": ["+@read", "+acl|whoami"],
        "keys": ["app1:*"],
    },
    "rotating": {"passwords": ["old-pw", "new-pw"], "commands": ["+acl|whoami"]},
    "guest": {"nopass": True, "commands": ["+get", "+acl|whoami"], "keys": ["app1:*"]},
    "admin": {"password": "adminpw", "commands": ["allcommands"], "keys": ["allkeys"]},
    "sorter": {"password": "pw4", "commands": ["+sort", "+rpush"], "keys": ["app1:*"]},
}
PASSWORDS = {"app1": "pw1", "app2": "pw2", "hasher": "pw3", "admin": "adminpw", "sorter": "pw4"}
# The same rules as Redis takes them (7.0: a new user has no channels: resetchannels)
REFERENCE_USERS = {
    "app1": ["reset", "on", ">pw1", "~app1:*", "&news.*", *APP1_COMMANDS],
    "app2": ["reset", "on", ">pw2", "~app2:*", "~shared:*", *APP2_COMMANDS],
    "hasher": ["reset", "on", ">pw3", "~app1:*", "+@read", "+acl|whoami"],
    "sorter": ["reset", "on", ">pw4", "~app1:*", "+sort", "+rpush"],
}
# What a proxy may send to a server on its own (connection setup), and the harness's INFO
SETUP_COMMANDS = frozenset({"info", "ping", "auth", "hello", "select", "readonly", "command"})
# Administrative commands: never forwarded, whatever the user's rights
ADMIN_COMMANDS: list[tuple[str, ...]] = [
    ("CONFIG", "GET", "maxmemory"),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("DEBUG", "SLEEP", "0"),
    ("SHUTDOWN", "NOSAVE"),
    ("REPLICAOF", "NO", "ONE"),
    ("SLAVEOF", "NO", "ONE"),
    ("ACL", "SETUSER", "x"),
    ("ACL", "DELUSER", "x"),
    ("ACL", "LIST"),
    ("ACL", "USERS"),
    ("ACL", "GETUSER", "app1"),
    ("ACL", "LOG"),
    ("MODULE", "LIST"),
    ("CLUSTER", "INFO"),
    ("CLUSTER", "NODES"),
    ("BGSAVE",),
    ("SAVE",),
    ("BGREWRITEAOF",),
    ("FAILOVER",),
    ("SWAPDB", "0", "1"),
    ("SYNC",),
    ("PSYNC", "?", "-1"),
    ("LATENCY", "RESET"),
    ("SLOWLOG", "RESET"),
    ("MEMORY", "PURGE"),
]
ADMIN_NAMES = frozenset(c[0].lower() for c in ADMIN_COMMANDS)


class _Flow:
    """A value written into the config as JSON (a YAML flow collection or scalar)."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return json.dumps(self.value)


def listener_text(name: str, port: int, routes: Sequence[str], **keys: object) -> str:
    """One listener's YAML, with keys the harness's listener_yaml does not take (users...)."""
    lines = [f"  {name}:", f"    listen: 127.0.0.1:{port}"]
    lines += [f"    {key}: {json.dumps(value)}" for key, value in keys.items()]
    lines.append("    routes:")
    lines += [f"      - {r}" for r in routes]
    return "\n".join(lines) + "\n"


def app_listener(port: int, users: dict[str, dict[str, Any]], **keys: object) -> str:
    routes = [route("app1:", "ring1"), route("app2:", "ring2"), route("shared:", "ring2")]
    return listener_text("app", port, routes, default_pool="ring1", users=users, **keys)


def ring_pools(ring1: Sequence[RedisServer], ring2: RedisServer) -> list[str]:
    """Pools ring1 (two servers, hash tags) and ring2 (one server), reached through listeners."""
    return [
        pool_yaml("ring1", None, server_lines(ring1, "r1-"), timeout=2000, preconnect=True, **MURMUR_RING),
        pool_yaml("ring2", None, server_lines([ring2], "r2-"), timeout=2000, preconnect=True),
    ]


@dataclass
class Stack:
    ring1: list[RedisServer]
    ring2: RedisServer
    reference: RedisServer  # a plain redis-server with REFERENCE_USERS as ACL users
    secured: RedisServer  # default user off; user "app" (password "pw") has every right
    guarded: RedisServer  # requirepass defpw: the server of pool "guarded"
    proxy: ResProxy
    ports: dict[str, int]
    metrics_port: int

    @property
    def backends(self) -> list[RedisServer]:
        """The servers behind listener ``app``."""
        return [*self.ring1, self.ring2]

    def login(self, user: str, password: str | None = None, front: str = "app") -> RawClient:
        """A connection to ``front`` authenticated as ``user``."""
        c = RawClient(self.ports[front])
        assert c.call("AUTH", user, password or PASSWORDS[user]) == b"OK"
        return c

    def holders(self, key: str) -> list[int]:
        """The ports of the backends holding ``key`` (asked directly)."""
        return [s.port for s in self.backends if s.call("EXISTS", key) == 1]


def call_as(server: RedisServer, user: str, password: str, *args: str) -> Any:
    """One command straight to ``server`` as ``user`` (the harness's call AUTHs as default)."""
    with RawClient(server.port) as c:
        assert c.call("AUTH", user, password) == b"OK"
        return c.call(*args)


def commandstats(server: RedisServer, password: str | None = None) -> dict[str, str]:
    """INFO commandstats as {command: "calls=..,rejected_calls=..,failed_calls=.."}, without the
    commands a proxy sends to set up a connection (and the INFO that reads them)."""
    text = server.call("INFO", "commandstats", password=password)
    out = {}
    for line in text.decode().splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, fields = line[len("cmdstat_") :].split(":", 1)
        if name.partition("|")[0] in SETUP_COMMANDS:
            continue
        counts = [
            f for f in fields.split(",") if f.split("=")[0] in ("calls", "rejected_calls", "failed_calls")
        ]
        out[name] = ",".join(counts)
    return out


def server_side(servers: Sequence[RedisServer]) -> dict[int, dict[str, str]]:
    return {s.port: commandstats(s) for s in servers}


def metric(stack: Stack, name: str, **labels: str) -> float:
    return Metrics(stack.metrics_port).total(name, **labels)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    ring1 = [RedisServer(), RedisServer()]
    ring2, reference, secured = RedisServer(), RedisServer(), RedisServer()
    guarded = RedisServer(extra=["--requirepass", "defpw"])
    with running([*ring1, ring2, reference, secured, guarded]):
        for user, rules in REFERENCE_USERS.items():
            assert reference.call("ACL", "SETUSER", user, *rules) == b"OK"
        assert secured.call("ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all") == b"OK"
        assert secured.call("ACL", "SETUSER", "default", "off") == b"OK"
        ports = {name: free_port() for name in ("app", "guarded", "named", "unnamed", "bare")}
        metrics_port = free_port()
        secured_line = server_lines([secured], "sec")
        ro = {"ro": {"password": "ro-pw", "commands": ["+@read", "+acl|whoami"], "keys": ["allkeys"]}}
        text = native_config(
            *ring_pools(ring1, ring2),
            pool_yaml(
                "guarded",
                ports["guarded"],
                server_lines([guarded], "g"),
                timeout=2000,
                redis_auth="defpw",
                users=_Flow(ro),
            ),
            pool_yaml(
                "named", ports["named"], secured_line, timeout=2000, redis_auth="pw", redis_username="app"
            ),
            pool_yaml("unnamed", ports["unnamed"], secured_line, timeout=2000, redis_auth="pw"),
            pool_yaml("bare", ports["bare"], secured_line, timeout=2000),
            listeners=[app_listener(ports["app"], USERS, auth_failure_limit=3)],
            metrics_port=metrics_port,
        )
        with ResProxy(text, port=ports["app"], metrics_port=metrics_port).start(pools=len(ports)) as proxy:
            yield Stack(ring1, ring2, reference, secured, guarded, proxy, ports, metrics_port)
            assert "Traceback" not in proxy.log()


@pytest.fixture()
def fresh(stack: Stack) -> None:
    """The backends behind ``app`` emptied directly (not through the proxy) before the test."""
    for s in stack.backends:
        assert s.call("FLUSHALL") == b"OK"


# --- 1. two users, one listener ---------------------------------------------------------------


def test_two_users_through_one_listener_each_with_its_own_rights(stack: Stack, fresh: None) -> None:
    assert stack.ring2.call("SET", "app2:seed", "two") == b"OK"
    assert stack.ring2.call("SET", "shared:seed", "both") == b"OK"
    with stack.login("app1") as app1, stack.login("app2") as app2:
        # allowed: each user on its own keys, routed to its own pool
        assert app1.call("SET", "app1:k", "v1") == b"OK"
        assert app1.call("GET", "app1:k") == b"v1"
        assert app1.call("INCR", "app1:n") == 1
        assert app1.call("HSET", "app1:h", "f", "x") == 1
        assert stack.holders("app1:k") and set(stack.holders("app1:k")) <= {s.port for s in stack.ring1}
        assert app2.call("GET", "app2:seed") == b"two"
        assert app2.call("GET", "shared:seed") == b"both"
        assert app2.call("MGET", "app2:seed", "shared:seed", "app2:none") == [b"two", b"both", None]
        assert app2.call("EXISTS", "app2:seed", "shared:seed") == 2

        denials_before = metric(stack, "resproxy_acl_denials_total", pool="app")
        before = server_side(stack.backends)
        denied = [
            (app1, ("GET", "app2:seed"), NOPERM_KEY),
            (app1, ("SET", "shared:seed", "x"), NOPERM_KEY),
            (app1, ("GET", "other:1"), NOPERM_KEY),  # the default pool's keys are not app1's
            (app1, ("FLUSHALL",), noperm("flushall")),
            (app1, ("KEYS", "*"), noperm("keys")),
            (app1, ("FLUSHDB",), noperm("flushdb")),
            (app2, ("SET", "app2:seed", "x"), noperm("set")),
            (app2, ("DEL", "app2:seed"), noperm("del")),
            (app2, ("INCR", "shared:n"), noperm("incr")),
            (app2, ("GET", "app1:k"), NOPERM_KEY),
            (app2, ("HGETALL", "app1:h"), NOPERM_KEY),
            (app2, ("MGET", "app2:seed", "app1:k"), NOPERM_KEY),
        ]
        for client, command, text in denied:
            assert error_text(client.call(*command)) == text, command
        assert server_side(stack.backends) == before  # none of them reached a server
        assert metric(stack, "resproxy_acl_denials_total", pool="app") - denials_before == len(denied)
        # both connections are still usable, with their rights unchanged
        assert app1.call("GET", "app1:k") == b"v1"
        assert app2.call("GET", "app2:seed") == b"two"
    assert stack.ring2.call("GET", "app2:seed") == b"two"
    assert stack.ring2.call("GET", "shared:seed") == b"both"


# --- 2. the refusals read as Redis's own ----------------------------------------------------

# (user, command): each refused by the proxy and by a redis-server with the same ACL rules
REFUSED_LIKE_REDIS: list[tuple[str, tuple[str, ...]]] = [
    ("app1", ("GET", "app2:x")),
    ("app1", ("SET", "shared:x", "1")),
    ("app1", ("MGET", "app1:a", "app2:b")),
    ("app1", ("MSET", "app1:a", "1", "app2:b", "2")),
    ("app1", ("DEL", "app1:a", "zzz:b")),
    ("app1", ("EXISTS", "app2:a")),
    ("app1", ("EVAL", "return 1", "2", "app1:a", "app2:b")),
    ("app1", ("RENAME", "app1:a", "app2:b")),
    ("app1", ("COPY", "app1:a", "zzz:b")),
    ("app1", ("BLPOP", "app1:q", "app2:q", "0")),
    ("app1", ("SUNIONSTORE", "zzz:d", "app1:s")),
    ("app1", ("XREAD", "BLOCK", "0", "STREAMS", "app1:s", "app2:s", "0", "0")),
    ("app1", ("WATCH", "app1:w", "app2:w")),
    ("app1", ("OBJECT", "ENCODING", "app2:x")),
    ("app1", ("FLUSHALL",)),
    ("app1", ("KEYS", "*")),
    ("app1", ("SWAPDB", "0", "1")),
    ("app1", ("CONFIG", "GET", "maxmemory")),
    ("app1", ("SUBSCRIBE", "secret.x")),
    ("app1", ("SUBSCRIBE", "news.a", "secret.b")),
    ("app1", ("PUBLISH", "secret.x", "hi")),
    ("app1", ("PSUBSCRIBE", "news.s*")),
    ("app1", ("PSUBSCRIBE", "*")),
    ("app2", ("SET", "app2:x", "1")),
    ("app2", ("DEL", "app2:x")),
    ("app2", ("INCR", "shared:n")),
    ("app2", ("GET", "app1:x")),
    ("app2", ("SUBSCRIBE", "news.x")),
    ("app2", ("EVAL", "return 1", "1", "app2:x")),
    ("app2", ("MULTI",)),
    ("app2", ("CLIENT", "ID")),
    ("hasher", ("ACL", "CAT")),
    ("hasher", ("SET", "app1:x", "1")),
]


def test_noperm_texts_are_redis_own(stack: Stack) -> None:
    for user in ("app1", "app2", "hasher"):
        commands = [c for u, c in REFUSED_LIKE_REDIS if u == user]
        with stack.login(user) as proxied, RawClient(stack.reference.port) as direct:
            assert direct.call("AUTH", user, PASSWORDS[user]) == b"OK"
            for command in commands:
                theirs = error_text(direct.call(*command))
                assert theirs.startswith("NOPERM"), (command, theirs)
                assert error_text(proxied.call(*command)) == theirs, command
            # ACL WHOAMI where granted, as Redis
            assert proxied.call("ACL", "WHOAMI") == direct.call("ACL", "WHOAMI") == user.encode()


def test_transactions_and_auth_failures_answer_as_redis(stack: Stack) -> None:
    transaction = [
        ("MULTI",),
        ("SET", "app1:m", "1"),
        ("SET", "app2:m", "2"),
        ("FLUSHALL",),
        ("GET", "app1:m"),
        ("EXEC",),
    ]
    with stack.login("app1") as proxied, RawClient(stack.reference.port) as direct:
        assert direct.call("AUTH", "app1", "pw1") == b"OK"
        theirs = [comparable(r) for r in direct.pipeline(transaction)]
        assert theirs == [
            b"OK",
            b"QUEUED",
            ("error", NOPERM_KEY),
            ("error", noperm("flushall")),
            b"QUEUED",
            ("error", EXECABORT),
        ]
        assert [comparable(r) for r in proxied.pipeline(transaction)] == theirs
        # a wrong password, then a user nobody made
        for attempt in (("AUTH", "app1", "nope"), ("AUTH", "nobody", "pw1")):
            assert error_text(proxied.call(*attempt)) == error_text(direct.call(*attempt)) == WRONGPASS
        assert proxied.call("ACL", "WHOAMI") == direct.call("ACL", "WHOAMI") == b"app1"  # still app1
    # NOAUTH before AUTH, where the default user is off (the secured server's is)
    with RawClient(stack.ports["app"]) as proxied, RawClient(stack.secured.port) as direct:
        assert error_text(proxied.call("GET", "app1:x")) == error_text(direct.call("GET", "app1:x")) == NOAUTH


def test_acl_cat_is_answered_as_redis(stack: Stack) -> None:
    with stack.login("admin") as proxied, RawClient(stack.reference.port) as direct:
        assert sorted(proxied.call("ACL", "CAT")) == sorted(direct.call("ACL", "CAT"))
        for category in ("read", "dangerous", "pubsub"):
            assert sorted(proxied.call("ACL", "CAT", category)) == sorted(direct.call("ACL", "CAT", category))
        assert error_text(proxied.call("ACL", "CAT", "nosuch")) == error_text(
            direct.call("ACL", "CAT", "nosuch")
        )
        text = error_text(proxied.call("ACL", "SETUSER", "x", "on"))  # the rest of ACL: why not
        assert text.startswith("ERR 'acl|setuser' is not served by the proxy") and "users:" in text


# --- 3. multi-key commands: one forbidden key refuses the whole command ----------------------

# app1's keys with the hash tag {t} live on one server of ring1, and so do zzz:{t}... keys (the
# default pool): without the ACL these would run there. app2:... keys are on another pool.
WHOLE_REFUSALS: list[tuple[str, ...]] = [
    ("MGET", "app1:{t}a", "zzz:{t}b"),
    ("MGET", "app1:{t}a", "app2:b"),
    ("MSET", "app1:{t}a", "1", "zzz:{t}b", "2"),
    ("MSET", "app1:{t}a", "1", "app2:b", "2"),
    ("DEL", "app1:{t}seed", "zzz:{t}b"),
    ("UNLINK", "app2:b", "app1:{t}seed"),
    ("EXISTS", "app1:{t}seed", "app2:b"),
    ("TOUCH", "app1:{t}seed", "zzz:{t}b"),
    ("EVAL", "return redis.call('SET', KEYS[1], ARGV[1])", "2", "app1:{t}a", "zzz:{t}b", "v"),
    ("RENAME", "app1:{t}seed", "zzz:{t}b"),
    ("RENAME", "zzz:{t}b", "app1:{t}a"),
    ("COPY", "app1:{t}seed", "zzz:{t}c"),
    ("COPY", "app1:{t}seed", "app2:c"),
    ("LMOVE", "app1:{t}list", "zzz:{t}list", "LEFT", "LEFT"),
    ("SUNIONSTORE", "zzz:{t}dest", "app1:{t}set"),
    ("BLPOP", "app1:{t}q", "zzz:{t}q", "0"),
    ("BLPOP", "app1:{t}q", "app2:q", "0"),
    ("BLMOVE", "app1:{t}list", "zzz:{t}l", "LEFT", "LEFT", "0"),
    ("XREAD", "BLOCK", "0", "STREAMS", "app1:{t}s", "zzz:{t}s", "0", "0"),
]


def test_multi_key_commands_with_one_forbidden_key_are_refused_whole(stack: Stack, fresh: None) -> None:
    with stack.login("app1") as app1:
        assert app1.call("SET", "app1:{t}seed", "s") == b"OK"
        assert app1.call("RPUSH", "app1:{t}list", "x") == 1
        assert app1.call("SADD", "app1:{t}set", "m") == 1
        before = server_side(stack.backends)
        for command in WHOLE_REFUSALS:  # (BLPOP with 0: a refusal must come at once, not block)
            assert error_text(app1.call(*command)) == NOPERM_KEY, command
        assert server_side(stack.backends) == before
        # nothing was written, moved or deleted: the allowed halves did not run either
        for key in ("app1:{t}a", "zzz:{t}b", "zzz:{t}c", "app2:b", "app2:c", "zzz:{t}list", "zzz:{t}dest"):
            assert stack.holders(key) == [], key
        assert app1.call("GET", "app1:{t}seed") == b"s"
        assert app1.call("LRANGE", "app1:{t}list", "0", "-1") == [b"x"]
        # the same commands on app1's keys alone run: refused for the ACL, not for routing
        assert app1.call("MSET", "app1:{t}a", "1", "app1:{t}b", "2") == b"OK"
        assert app1.call("MGET", "app1:{t}a", "app1:x", "app1:{t}b") == [b"1", None, b"2"]
        # (a script's keys all allowed: still refused, for what the script could touch)
        script = ("EVAL", "return redis.call('GET', KEYS[2])", "2", "app1:{t}a", "app1:{t}b")
        assert "allcommands, allkeys and allchannels" in error_text(app1.call(*script))
        assert app1.call("RENAME", "app1:{t}b", "app1:{t}c") == b"OK"
        assert app1.call("COPY", "app1:{t}seed", "app1:{t}copy") == 1
        assert app1.call("BLPOP", "app1:{t}q", "app1:{t}list", "1") == [b"app1:{t}list", b"x"]
        assert app1.call("DEL", "app1:{t}a", "app1:{t}c", "app1:x") == 2


# --- 4. channels ------------------------------------------------------------------------------


def test_channels_and_patterns_are_checked_as_redis_does(stack: Stack) -> None:
    with stack.login("app1") as sub, stack.login("app1") as pub, stack.login("app1") as other:
        assert sub.call("SUBSCRIBE", "news.sports") == [b"subscribe", b"news.sports", 1]
        # refused on the subscribed connection too, and it stays subscribed
        assert error_text(sub.call("SUBSCRIBE", "secret.x")) == NOPERM_CHANNEL
        assert error_text(sub.call("SUBSCRIBE", "news.a", "secret.b")) == NOPERM_CHANNEL
        # news.a was refused with secret.b: nobody listens to it
        assert pub.call("PUBLISH", "news.a", "x") == 0
        assert sub.call("PSUBSCRIBE", "news.*") == [b"psubscribe", b"news.*", 2]
        assert pub.call("PUBLISH", "news.sports", "goal") == 2  # (the channel and the pattern)
        got = [sub.read(), sub.read()]  # the channel's message and the pattern's, in either order
        assert sorted(got, key=len) == [
            [b"message", b"news.sports", b"goal"],
            [b"pmessage", b"news.*", b"news.sports", b"goal"],
        ]
        # a pattern that would match granted channels, but is not granted as it is written
        assert error_text(other.call("PSUBSCRIBE", "news.s*")) == NOPERM_CHANNEL
        assert error_text(other.call("PSUBSCRIBE", "*")) == NOPERM_CHANNEL
        assert error_text(other.call("PSUBSCRIBE", "news.*", "secret.*")) == NOPERM_CHANNEL
        before = server_side(stack.backends)
        assert error_text(pub.call("PUBLISH", "secret.x", "leak")) == NOPERM_CHANNEL
        assert server_side(stack.backends) == before  # the PUBLISH reached no server
        assert other.call("PING") == b"PONG"  # (not left subscribed by a refused PSUBSCRIBE)
        assert sub.call("PING") == [b"pong", b""]
    with stack.login("app2") as app2:  # no +@pubsub at all
        assert error_text(app2.call("SUBSCRIBE", "news.sports")) == noperm("subscribe")
        assert error_text(app2.call("PUBLISH", "news.sports", "x")) == noperm("publish")


# --- 5. the forms of AUTH ---------------------------------------------------------------------


def test_auth_forms_and_whoami(stack: Stack, fresh: None) -> None:
    with RawClient(stack.ports["app"]) as c:
        # users without a default user: nothing before AUTH
        for command in (("GET", "app1:x"), ("ACL", "WHOAMI"), ("PING",), ("SUBSCRIBE", "news.x")):
            assert error_text(c.call(*command)) == NOAUTH, command
        assert error_text(c.call("HELLO", "3")).startswith("NOAUTH ")
        assert error_text(c.call("AUTH", "pw1")) == WRONGPASS  # AUTH pass is the (off) default's
        # AUTH user pass
        assert c.call("AUTH", "app1", "pw1") == b"OK"
        assert c.call("ACL", "WHOAMI") == b"app1"
        assert c.call("SET", "app1:who", "1") == b"OK"
        # a second AUTH switches users: app2's rights from the next command
        assert c.call("AUTH", "app2", "pw2") == b"OK"
        assert c.call("ACL", "WHOAMI") == b"app2"
        assert error_text(c.call("SET", "app1:who", "2")) == noperm("set")
        assert error_text(c.call("GET", "app1:who")) == NOPERM_KEY
        assert c.call("GET", "app2:who") is None
        # a failed AUTH leaves the connection's user as it was
        assert error_text(c.call("AUTH", "app1", "wrong")) == WRONGPASS
        assert c.call("ACL", "WHOAMI") == b"app2"
        assert c.call("AUTH", "app1", "pw1") == b"OK"
        assert c.call("GET", "app1:who") == b"1"
    # HELLO 3 AUTH user pass: a RESP3 map, and the user from then on
    with RawClient(stack.ports["app"]) as c:
        hello = c.call("HELLO", "3", "AUTH", "app2", "pw2", "SETNAME", "acl-test")
        assert isinstance(hello, dict) and hello[b"proto"] == 3, hello
        assert c.call("ACL", "WHOAMI") == b"app2"
        assert c.call("HGETALL", "app2:none") == {}  # a RESP3 map, not an array
        assert error_text(c.call("HSET", "app2:h", "f", "v")) == noperm("hset")
        assert error_text(c.call("HELLO", "3", "AUTH", "app1", "bad")) == WRONGPASS
        assert c.call("ACL", "WHOAMI") == b"app2"
    # password_sha256, one of several passwords, nopass
    for user, password in (
        ("hasher", "pw3"),
        ("rotating", "old-pw"),
        ("rotating", "new-pw"),
        ("guest", "any"),
    ):
        with RawClient(stack.ports["app"]) as c:
            assert c.call("AUTH", user, password) == b"OK", user
            assert c.call("ACL", "WHOAMI") == user.encode()
    with stack.login("hasher") as c:
        assert c.call("GET", "app1:who") == b"1"
        assert error_text(c.call("SET", "app1:who", "3")) == noperm("set")
        assert error_text(c.call("AUTH", "hasher", hashlib.sha256(b"pw3").hexdigest())) == WRONGPASS
    # AUTH pass: the default user, whose password is redis_auth (pool guarded)
    with RawClient(stack.ports["guarded"]) as c:
        assert error_text(c.call("GET", "app2:x")) == NOAUTH
        assert c.call("AUTH", "defpw") == b"OK"
        assert c.call("ACL", "WHOAMI") == b"default"
        assert c.call("SET", "anything", "1") == b"OK"  # the default user has every right
        assert c.call("DEL", "anything") == 1
        assert c.call("AUTH", "ro", "ro-pw") == b"OK"  # a user of that pool
        assert c.call("ACL", "WHOAMI") == b"ro"
        assert error_text(c.call("SET", "anything", "1")) == noperm("set")
        assert c.call("AUTH", "default", "defpw") == b"OK"
        assert c.call("ACL", "WHOAMI") == b"default"
        assert error_text(c.call("AUTH", "app1", "pw1")) == WRONGPASS  # the listener's users only there
    with RawClient(stack.ports["guarded"]) as c:
        hello = c.call("HELLO", "3", "AUTH", "default", "defpw")
        assert isinstance(hello, dict) and hello[b"proto"] == 3
        assert c.call("ACL", "WHOAMI") == b"default"


# --- 6. failed AUTHs --------------------------------------------------------------------------


def _auth_warnings(stack: Stack) -> int:
    return sum(1 for line in stack.proxy.log().splitlines() if " WARNING " in line and "failed AUTH" in line)


def test_failed_auths_are_counted_logged_and_close_the_connection_at_the_limit(stack: Stack) -> None:
    failures_before = metric(stack, "resproxy_auth_failures_total", pool="app")
    closed_before = metric(stack, "resproxy_client_closed_total", pool="app", reason="auth_failure_limit")
    warnings_before = _auth_warnings(stack)
    with RawClient(stack.ports["app"]) as c:
        assert error_text(c.call("AUTH", "app1", "nope")) == WRONGPASS
        assert error_text(c.call("AUTH", "nobody", "nope")) == WRONGPASS
        assert c.call("AUTH", "app1", "pw1") == b"OK"  # (a success in between changes nothing)
        assert c.call("ACL", "WHOAMI") == b"app1"
        # the third failure (auth_failure_limit: 3) is answered, then the connection closes
        c.send(encode("HELLO", "3", "AUTH", "app1", "bad") + encode("PING"))
        assert error_text(c.read()) == WRONGPASS
        assert c.closed_by_peer()  # (the PING after it was not answered)
    with RawClient(stack.ports["app"]) as c:  # each connection has its own count
        for _ in range(2):
            assert error_text(c.call("AUTH", "app2", "nope")) == WRONGPASS
        assert c.call("AUTH", "app2", "pw2") == b"OK"
        assert c.call("GET", "app2:x") is None
    after = Metrics(stack.metrics_port)
    assert after.total("resproxy_auth_failures_total", pool="app") - failures_before == 5
    assert after.total("resproxy_client_closed_total", pool="app", reason="auth_failure_limit") == (
        closed_before + 1
    )
    # logged at WARNING, at most once a minute per client address: 5 failures, one line at most
    assert _auth_warnings(stack) >= 1
    assert _auth_warnings(stack) - warnings_before <= 1
    assert "Traceback" not in stack.proxy.log()


# --- 7. transactions --------------------------------------------------------------------------


def test_a_denied_command_in_multi_aborts_the_transaction_before_any_server_sees_it(
    stack: Stack, fresh: None
) -> None:
    with stack.login("app1") as c:
        before = server_side(stack.backends)
        assert c.call("MULTI") == b"OK"
        assert c.call("SET", "app1:{m}a", "1") == b"QUEUED"
        assert c.call("INCR", "app1:{m}n") == b"QUEUED"
        assert error_text(c.call("SET", "zzz:{m}b", "2")) == NOPERM_KEY  # at queue time
        assert error_text(c.call("KEYS", "*")) == noperm("keys")
        assert c.call("GET", "app1:{m}a") == b"QUEUED"
        assert error_text(c.call("EXEC")) == EXECABORT
        assert server_side(stack.backends) == before  # no MULTI, SET, INCR or EXEC on a server
        for key in ("app1:{m}a", "app1:{m}n", "zzz:{m}b"):
            assert stack.holders(key) == []
        # the connection is out of MULTI and the next transaction runs
        assert c.pipeline([("MULTI",), ("SET", "app1:{m}a", "1"), ("INCR", "app1:{m}n"), ("EXEC",)]) == [
            b"OK",
            b"QUEUED",
            b"QUEUED",
            [b"OK", 1],
        ]


# --- 8. a real client library -----------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_with_username_and_password(stack: Stack, fresh: None, protocol: int) -> None:
    r = redis.Redis(
        port=stack.ports["app"], username="app1", password="pw1", protocol=protocol, socket_timeout=10
    )
    try:
        assert r.set("app1:py", "1")
        assert r.get("app1:py") == b"1"
        assert r.acl_whoami() in ("app1", b"app1")
        with pytest.raises(redis.exceptions.NoPermissionError, match="keys used as arguments"):
            r.get("app2:py")
        # the default pipeline is a MULTI/EXEC transaction (one EXEC on a server)
        execs = sum(s.cmdstat("exec") for s in stack.backends)
        pipe = r.pipeline()
        pipe.set("app1:{p}a", "x")
        pipe.incr("app1:{p}n")
        pipe.get("app1:{p}a")
        pipe.mget("app1:{p}a", "app1:{p}n")
        assert pipe.execute() == [True, 1, b"x", [b"x", b"1"]]
        assert sum(s.cmdstat("exec") for s in stack.backends) == execs + 1
        pipe = r.pipeline()
        pipe.set("app1:{p}b", "y")
        pipe.set("app2:p", "z")
        pipe.incr("app1:{p}n")
        # (redis-py raises the first queued command's error, NOPERM, rather than EXECABORT)
        with pytest.raises(redis.exceptions.NoPermissionError, match="keys used as arguments"):
            pipe.execute()
        assert r.mget("app1:{p}b", "app1:{p}n") == [None, b"1"]  # nothing of it ran
        assert sum(s.cmdstat("exec") for s in stack.backends) == execs + 1
        assert stack.holders("app2:p") == []
    finally:
        r.close()
    # (no retries: redis-py 8 retries a failed connect with backoff, seconds in all)
    wrong = redis.Redis(
        port=stack.ports["app"],
        username="app1",
        password="bad",
        protocol=protocol,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        with pytest.raises(redis.exceptions.AuthenticationError):
            wrong.ping()
    finally:
        wrong.close()


# --- 9. the proxy's own username on the servers -----------------------------------------------


def test_redis_username_logs_the_proxy_in_as_that_user(stack: Stack) -> None:
    secured = stack.secured
    with RawClient(stack.ports["named"]) as c:
        assert error_text(c.call("GET", "named:k")) == NOAUTH  # clients AUTH with redis_auth
        assert c.call("AUTH", "pw") == b"OK"
        assert c.call("SET", "named:k", "v") == b"OK"
        assert c.call("GET", "named:k") == b"v"
        with RawClient(stack.ports["named"]) as c3:  # a RESP3 client: its own lane (HELLO 3 AUTH)
            assert c3.call("HELLO", "3", "AUTH", "default", "pw")[b"proto"] == 3
            assert c3.call("HGETALL", "named:none") == {}
            assert c3.call("GET", "named:k") == b"v"
            proxy_side = [
                e
                for e in client_list(call_as(secured, "app", "pw", "CLIENT", "LIST"))
                if e["cmd"] != "client|list"
            ]
    assert call_as(secured, "app", "pw", "GET", "named:k") == b"v"
    assert proxy_side, "the proxy holds connections to the server"
    assert {e["user"] for e in proxy_side} == {"app"}
    assert {e["resp"] for e in proxy_side} == {"2", "3"}
    # the same server through pools without the username: an error reply at once, no hang
    with RawClient(stack.ports["unnamed"]) as c:
        assert c.call("AUTH", "pw") == b"OK"
        for _ in range(2):
            text = error_text(c.call("GET", "named:k"))
            assert text.startswith("ERR server sec0 ") and "AUTH" in text, text
        assert c.call("PING") == b"PONG"
    with RawClient(stack.ports["bare"]) as c:
        assert error_text(c.call("GET", "named:k")) == NOAUTH  # the server's own reply
        assert c.call("PING") == b"PONG"


# --- 10. administrative commands are never forwarded ------------------------------------------


@pytest.mark.parametrize(
    "front, user, password",
    [("app", "admin", "adminpw"), ("guarded", "default", "defpw")],
    ids=["allcommands-allkeys-user", "default-user"],
)
def test_admin_commands_are_refused_for_every_user(
    stack: Stack, front: str, user: str, password: str
) -> None:
    with stack.login(user, password, front) as c:
        assert c.call("ACL", "WHOAMI") == user.encode()
        assert c.call("SET", "app1:admin", "1") == b"OK"  # every key and command it may route
        for command in ADMIN_COMMANDS:
            text = error_text(c.call(*command))
            assert text.startswith("ERR ") and "is not served by the proxy" in text, (command, text)
            assert c.call("PING") == b"PONG", command  # the connection stays usable
        assert c.call("GET", "app1:admin") == b"1"
    for s, pw in [(b, None) for b in stack.backends] + [(stack.guarded, "defpw")]:
        assert s.alive() and s.call("PING", password=pw) == b"PONG"
        assert s.info("memory", password=pw)["maxmemory"] == "0"  # CONFIG SET maxmemory 1 did not run
        assert s.info("replication", password=pw)["role"] == "master"
        # INFO commandstats names subcommands config|get...: both forms checked
        ran = [name for name in commandstats(s, pw) if name.partition("|")[0] in ADMIN_NAMES]
        assert ran == [], (s.port, ran)


# --- 11. a reload changes users' rights --------------------------------------------------------


class ReloadedProxy:
    """A resproxy of its own (listener ``app`` over ring1 and ring2) whose users a test reloads."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.port, self.metrics_port = free_port(), free_port()
        self.proxy = ResProxy(self.config(USERS), port=self.port, metrics_port=self.metrics_port)

    def config(self, users: dict[str, dict[str, Any]]) -> str:
        pools = ring_pools(self.stack.ring1, self.stack.ring2)
        listener = app_listener(self.port, users)
        return native_config(*pools, listeners=[listener], metrics_port=self.metrics_port)

    def reload(self, users: dict[str, dict[str, Any]]) -> None:
        assert self.proxy.reload(self.config(users)), self.proxy.log()[-2000:]

    def login(self, user: str) -> RawClient:
        c = RawClient(self.port)
        assert c.call("AUTH", user, PASSWORDS[user]) == b"OK"
        return c


def with_app1(commands: list[str]) -> dict[str, dict[str, Any]]:
    return {**USERS, "app1": {**USERS["app1"], "commands": commands}}


def test_a_reload_changes_rights_for_new_and_connected_clients(stack: Stack, fresh: None) -> None:
    read_only = [c for c in APP1_COMMANDS if c != "+@write"]
    front = ReloadedProxy(stack)
    with front.proxy.start(), front.login("app1") as held:
        assert held.call("SET", "app1:r", "1") == b"OK"

        # 1st reload: app1 loses +@write
        front.reload(with_app1(read_only))
        with front.login("app1") as new:
            assert error_text(new.call("SET", "app1:r", "2")) == noperm("set")
            assert new.call("GET", "app1:r") == b"1"
        # the connected client has the new rights at once (as after Redis's ACL SETUSER), and
        # stays connected
        assert error_text(held.call("SET", "app1:r", "2")) == noperm("set")
        assert held.call("GET", "app1:r") == b"1"
        assert held.call("ACL", "WHOAMI") == b"app1"

        # 2nd reload: app1 may write again, and its password changes
        users = with_app1(APP1_COMMANDS)
        users["app1"] = {**users["app1"], "password": "pw1-new"}
        front.reload(users)
        with RawClient(front.port) as new:
            assert error_text(new.call("AUTH", "app1", "pw1")) == WRONGPASS
            assert new.call("AUTH", "app1", "pw1-new") == b"OK"
            assert new.call("SET", "app1:r", "3") == b"OK"
        assert held.call("SET", "app1:r", "4") == b"OK"  # (logged in before: stays logged in)
        assert held.call("GET", "app1:r") == b"4"
        assert "reload rejected" not in front.proxy.log()
        assert "Traceback" not in front.proxy.log()


def test_a_reload_that_removes_a_user_closes_its_connections(stack: Stack) -> None:
    front = ReloadedProxy(stack)
    with front.proxy.start(), front.login("app2") as held:
        assert held.call("GET", "app2:x") is None
        users = {name: spec for name, spec in USERS.items() if name != "app2"}
        front.reload(users)
        with RawClient(front.port) as new:
            assert error_text(new.call("AUTH", "app2", "pw2")) == WRONGPASS
        closed = Metrics(front.metrics_port).total("resproxy_client_closed_total", reason="user_removed")
        assert closed == 1
        held.sock.settimeout(2.0)  # (closed at once by a proxy that closes it)
        assert held.closed_by_peer()


# --- a pipelined AUTH ---------------------------------------------------------------------------


def test_commands_pipelined_after_auth_are_checked_against_the_new_user(stack: Stack, fresh: None) -> None:
    with stack.login("app1") as app1:
        assert app1.call("SET", "app1:{pa}seed", "s") == b"OK"
    with RawClient(stack.ports["app"]) as c:
        replies = c.pipeline(
            [
                ("AUTH", "app2", "pw2"),  # read-only, and not on app1:* keys
                ("MSET", "app1:{pa}a", "1", "app2:pa", "2"),
                ("DEL", "app1:{pa}seed", "app1:{pa}a"),
                ("GET", "app1:{pa}a"),
            ]
        )
    assert [comparable(r) for r in replies] == [
        b"OK",
        ("error", noperm("mset")),
        ("error", noperm("del")),
        ("error", NOPERM_KEY),
    ]
    assert stack.holders("app1:{pa}a") == stack.holders("app2:pa") == []
    assert stack.holders("app1:{pa}seed") != []


# --- keys reached other than through a command's key arguments -----------------------------------


def test_a_script_cannot_reach_keys_its_user_may_not(stack: Stack, fresh: None) -> None:
    """A script runs on the server with the proxy's rights: Redis checks each redis.call against
    the user, the proxy cannot, so it serves scripts only to users with every right (a user
    with every command, key and channel runs them: tests/unit/test_acl.py)."""
    script = "return redis.call('SET', ARGV[1], 'stolen')"
    command = ("EVAL", script, "1", "app1:{s}k", "zzz:{s}other")  # (both keys on one server)
    with stack.login("app1") as proxied, RawClient(stack.reference.port) as direct:
        assert direct.call("AUTH", "app1", "pw1") == b"OK"
        assert "can't access at least one of the keys" in error_text(direct.call(*command))
        refused = error_text(proxied.call(*command))
        assert refused.startswith("NOPERM ") and "allcommands, allkeys and allchannels" in refused
    assert stack.holders("zzz:{s}other") == []


def test_sort_by_and_get_patterns_need_every_key_as_in_redis(stack: Stack, fresh: None) -> None:
    with stack.login("admin") as admin:
        assert admin.call("SET", "app1:{o}weight", "1") == b"OK"
        assert admin.call("SET", "zzz:{o}secret", "s3") == b"OK"
    with stack.login("sorter") as proxied, RawClient(stack.reference.port) as direct:
        assert direct.call("AUTH", "sorter", "pw4") == b"OK"
        for c in (proxied, direct):
            assert c.call("RPUSH", "app1:{o}list", "1") == 1
        for command in (
            ("SORT", "app1:{o}list", "BY", "zzz:{o}*"),
            ("SORT", "app1:{o}list", "GET", "zzz:{o}*"),
        ):
            theirs = error_text(direct.call(*command))
            assert "denied due to insufficient ACL permissions" in theirs
            assert comparable(proxied.call(*command)) == ("error", theirs), command


# --- found in review: rights reached around the command's key arguments ----------------------


def streamed_set(port: int, user: str, key: str, size: int) -> tuple[Any, Any]:
    """AUTH as ``user`` then SET ``key`` to a ``size``-byte value sent in two writes (a large
    value after its key: the proxy streams those to the server as they arrive)."""
    with RawClient(port) as c:
        assert c.call("AUTH", user, PASSWORDS[user]) == b"OK"
        c.send(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n" % (len(key), key.encode(), size) + b"v" * 1000)
        c.send(b"v" * (size - 1000) + b"\r\n")
        reply = c.read()
        return reply, c.call("STRLEN", key)


def test_a_large_value_is_checked_like_any_other(stack: Stack, fresh: None) -> None:
    """A value of 1 MiB or more after its key is streamed to the server as it arrives: the
    command and its key are checked first (it once went straight to the server)."""
    size = 2 * 1024 * 1024
    reply, _ = streamed_set(stack.ports["app"], "app2", "app2:big", size)  # read-only user
    assert error_text(reply) == noperm("set")
    reply, _ = streamed_set(stack.ports["app"], "app1", "zzz:big", size)  # not app1's key
    assert error_text(reply) == NOPERM_KEY
    assert stack.holders("app2:big") == stack.holders("zzz:big") == []
    reply, length = streamed_set(stack.ports["app"], "app1", "app1:big", size)  # allowed: stored
    assert reply == b"OK" and length == size


def test_every_store_destination_is_checked(stack: Stack, fresh: None) -> None:
    """SORT stores into its last STORE (options' arguments skipped, as Redis's sortGetKeys),
    GEORADIUS into its last STORE/STOREDIST: each one is a key the user must have."""
    with stack.login("admin") as admin:
        assert admin.call("RPUSH", "app1:{st}l", "3", "1", "2") == 3
        assert admin.call("GEOADD", "app1:{st}g", "15", "37", "p") == 1
    with stack.login("sorter") as sorter, RawClient(stack.reference.port) as direct:
        assert direct.call("AUTH", "sorter", "pw4") == b"OK"
        assert direct.call("RPUSH", "app1:{st}l", "3", "1", "2") == 3
        command = ("SORT", "app1:{st}l", "STORE", "app1:{st}x", "STORE", "zzz:{st}y")
        theirs = error_text(direct.call(*command))
        assert error_text(sorter.call(*command)) == theirs == NOPERM_KEY
        assert sorter.call("SORT", "app1:{st}l", "LIMIT", "0", "2", "STORE", "app1:{st}x") == 2
    with stack.login("app1") as app1:
        for option in ("STORE", "STOREDIST"):
            geo = (
                "GEORADIUS",
                "app1:{st}g",
                "15",
                "37",
                "200",
                "km",
                "STORE",
                "app1:{st}a",
                option,
                "zzz:{st}b",
            )
            assert error_text(app1.call(*geo)) == NOPERM_KEY
    assert stack.holders("zzz:{st}y") == stack.holders("zzz:{st}b") == []


def test_reset_logs_out_as_redis_does_and_sunsubscribe_needs_no_right(stack: Stack) -> None:
    with stack.login("app1") as app1:
        assert app1.call("ACL", "WHOAMI") == b"app1"
        assert app1.call("RESET") == b"RESET"
        # the default user is off on this listener: back to nobody, as Redis with a password
        assert error_text(app1.call("GET", "app1:x")) == NOAUTH
        assert app1.call("AUTH", "app1", "pw1") == b"OK"
        app1.send(b"*2\r\n$12\r\nSUNSUBSCRIBE\r\n$6\r\nnews.a\r\n")
        assert app1.read() == [b"sunsubscribe", b"news.a", 0]
    with RawClient(stack.ports["guarded"]) as c:  # redis_auth: the default user has a password
        assert c.call("AUTH", "ro", "ro-pw") == b"OK"
        assert c.call("RESET") == b"RESET"
        assert error_text(c.call("ACL", "WHOAMI")) == NOAUTH
        assert error_text(c.call("HELLO", "2", "SETNAME", "bad\nname")).startswith("ERR Client names")


def test_a_reload_checks_what_connected_clients_hold(stack: Stack, fresh: None) -> None:
    """After a reload: a subscriber that lost its channel is closed, a transaction being queued
    is discarded (EXEC: EXECABORT), as Redis does after ACL SETUSER."""
    front = ReloadedProxy(stack)
    with front.proxy.start(), front.login("app1") as subscriber, front.login("app1") as queuing:
        subscriber.send(b"*2\r\n$9\r\nSUBSCRIBE\r\n$6\r\nnews.a\r\n")
        assert subscriber.read() == [b"subscribe", b"news.a", 1]
        assert queuing.call("MULTI") == b"OK"
        assert queuing.call("SET", "app1:q", "1") == b"QUEUED"
        users = {**USERS, "app1": {**USERS["app1"], "channels": ["other.*"], "commands": APP1_COMMANDS[1:]}}
        front.reload(users)  # channels news.* gone, +@read gone
        assert subscriber.closed_by_peer()
        assert error_text(queuing.call("EXEC")).startswith(
            "EXECABORT Transaction discarded because of: the user"
        )
        assert stack.holders("app1:q") == []
        closed = Metrics(front.metrics_port).total("resproxy_client_closed_total", reason="rights_revoked")
        assert closed == 1


def test_a_reload_of_users_alone_keeps_the_pool_and_its_clients_work(stack: Stack, fresh: None) -> None:
    """A pool whose only change is a user's password is not a new pool: another user's
    blocked pop and WATCH go on, over two reloads."""
    port = free_port()
    users = {"admin": USERS["admin"], "sorter": USERS["sorter"]}

    def config(users: dict[str, dict[str, Any]]) -> str:
        return native_config(
            pool_yaml("solo", port, server_lines([stack.ring2], "s"), timeout=2000, users=_Flow(users))
        )

    with ResProxy(config(users), port=port).start() as proxy:
        with RawClient(port) as blocked, RawClient(port) as watcher:
            for c in (blocked, watcher):
                assert c.call("AUTH", "admin", "adminpw") == b"OK"
            assert watcher.call("WATCH", "app1:w") == b"OK"
            blocked.send(b"*3\r\n$5\r\nBLPOP\r\n$6\r\napp1:q\r\n$1\r\n0\r\n")
            for password in ("pw4-new", "pw4"):
                assert proxy.reload(config({**users, "sorter": {**USERS["sorter"], "password": password}}))
            with RawClient(port) as pusher:
                assert pusher.call("AUTH", "admin", "adminpw") == b"OK"
                assert pusher.call("RPUSH", "app1:q", "v") == 1
            assert blocked.read() == [b"app1:q", b"v"]
            assert watcher.call("MULTI") == b"OK"
            assert watcher.call("SET", "app1:w", "1") == b"QUEUED"
            assert watcher.call("EXEC") == [b"OK"]
            with RawClient(port) as sorter:
                assert sorter.call("AUTH", "sorter", "pw4") == b"OK"
        assert "Traceback" not in proxy.log()
