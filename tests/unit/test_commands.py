"""The command table: Redis's key positions, arity, and what the proxy does with each command."""

from __future__ import annotations

import pytest

from proxy import errors
from proxy.commands import (
    FAST_SINGLE_KEY,
    TABLE,
    CommandSpec,
    Kind,
    Refusal,
    UnroutableKeys,
    is_blocking_call,
    keys_of,
    lookup,
)


def _spec(*args: bytes) -> CommandSpec:
    found = lookup(list(args))
    assert isinstance(found, CommandSpec), found
    return found


@pytest.mark.parametrize(
    "args, keys",
    [
        ([b"GET", b"k"], [b"k"]),
        ([b"SET", b"k", b"v", b"EX", b"10"], [b"k"]),
        ([b"MGET", b"a", b"b", b"c"], [b"a", b"b", b"c"]),
        ([b"MSET", b"a", b"1", b"b", b"2"], [b"a", b"b"]),
        ([b"RENAME", b"a", b"b"], [b"a", b"b"]),
        ([b"SUNIONSTORE", b"d", b"a", b"b"], [b"d", b"a", b"b"]),
        ([b"ZUNIONSTORE", b"d", b"2", b"a", b"b", b"WEIGHTS", b"1", b"2"], [b"d", b"a", b"b"]),
        ([b"EVAL", b"return 1", b"2", b"k1", b"k2", b"arg"], [b"k1", b"k2"]),
        ([b"EVALSHA", b"abc", b"0"], []),
        ([b"XREAD", b"COUNT", b"2", b"STREAMS", b"s1", b"s2", b"0", b"0"], [b"s1", b"s2"]),
        ([b"LMPOP", b"2", b"l1", b"l2", b"LEFT"], [b"l1", b"l2"]),
        ([b"SORT", b"k", b"STORE", b"dest"], [b"k", b"dest"]),  # as COMMAND GETKEYS says
        ([b"SORT", b"k", b"BY", b"w_*", b"GET", b"o_*"], [b"k"]),
        # the last STORE, options' arguments skipped (Redis's sortGetKeys)
        ([b"SORT", b"k", b"STORE", b"a", b"STORE", b"b"], [b"k", b"b"]),
        ([b"SORT", b"k", b"GET", b"STORE", b"LIMIT", b"0", b"1"], [b"k"]),
        ([b"SORT", b"k", b"LIMIT", b"0", b"1", b"STORE", b"d"], [b"k", b"d"]),
        # every STORE/STOREDIST of GEORADIUS (Redis stores into the last)
        (
            [b"GEORADIUS", b"g", b"1", b"2", b"3", b"km", b"STORE", b"a", b"STOREDIST", b"b"],
            [b"g", b"a", b"b"],
        ),
        ([b"OBJECT", b"ENCODING", b"k"], [b"k"]),
        ([b"BITOP", b"AND", b"dest", b"a", b"b"], [b"dest", b"a", b"b"]),
    ],
)
def test_keys_follow_redis_key_specs(args: list[bytes], keys: list[bytes]) -> None:
    assert keys_of(_spec(*args), args) == keys


def test_numkeys_larger_than_the_arguments_is_an_error() -> None:
    args = [b"EVAL", b"return 1", b"5", b"k1"]
    with pytest.raises(UnroutableKeys, match="greater than number of args"):
        keys_of(_spec(*args), args)


@pytest.mark.parametrize(
    "args, text",
    [
        ([b"NOSUCH", b"a"], "ERR unknown command 'NOSUCH', with args beginning with: 'a' "),
        ([b"GET"], "ERR wrong number of arguments for 'get' command"),
        ([b"CONFIG", b"NOPE"], "ERR unknown subcommand 'NOPE'. Try CONFIG HELP."),
        ([b"CONFIG", b"GET"], "ERR wrong number of arguments for 'config|get' command"),
    ],
)
def test_unknown_and_wrong_arity_use_redis_texts(args: list[bytes], text: str) -> None:
    found = lookup(args)
    assert isinstance(found, Refusal) and found.text == text
    assert found.label == ("unknown" if "unknown" in text else args[0].decode().lower())


@pytest.mark.parametrize("name", [b"WAIT", b"MIGRATE", b"MOVE", b"SHUTDOWN"])
def test_commands_a_sharding_proxy_cannot_serve_are_refused(name: bytes) -> None:
    assert TABLE[name].kind is Kind.REFUSED


@pytest.mark.parametrize(
    "name", [b"KEYS", b"SCAN", b"FLUSHALL", b"FLUSHDB", b"DBSIZE", b"RANDOMKEY", b"LASTSAVE", b"TIME"]
)
def test_keyspace_wide_commands_ask_every_server(name: bytes) -> None:
    assert TABLE[name].kind is Kind.KEYSPACE


@pytest.mark.parametrize(
    "name", [b"BLPOP", b"BRPOP", b"BRPOPLPUSH", b"BLMOVE", b"BLMPOP", b"BZPOPMIN", b"BZPOPMAX", b"BZMPOP"]
)
def test_blocking_commands_go_on_connections_of_their_own(name: bytes) -> None:
    assert TABLE[name].kind is Kind.BLOCKING


@pytest.mark.parametrize("name", [b"MULTI", b"EXEC", b"DISCARD", b"WATCH", b"UNWATCH"])
def test_transaction_commands_have_their_kind(name: bytes) -> None:
    assert TABLE[name].kind is Kind.TRANSACTION


def test_script_and_function_subcommands_are_keyspace_wide_except_the_debugger() -> None:
    assert _spec(b"SCRIPT", b"LOAD", b"x").kind is Kind.KEYSPACE
    assert _spec(b"FUNCTION", b"LIST").kind is Kind.KEYSPACE
    assert _spec(b"SCRIPT", b"DEBUG", b"yes").kind is Kind.REFUSED


def test_every_refusal_says_why_and_what_to_do() -> None:
    for spec in [s for s in TABLE.values() if s.kind is Kind.REFUSED] + [
        c for s in TABLE.values() for c in s.subcommands.values() if c.kind is Kind.REFUSED
    ]:
        text = errors.refused(spec.fullname, spec.flags)
        assert text.startswith(f"ERR '{spec.fullname}' is not served by the proxy: "), text
        assert len(text.split(": ", 1)[1]) > 20, text


def test_config_subcommands_are_refused_and_client_setname_is_local() -> None:
    assert _spec(b"CONFIG", b"GET", b"x").kind is Kind.REFUSED
    assert _spec(b"CLIENT", b"SETNAME", b"x").kind is Kind.LOCAL
    assert _spec(b"CLIENT", b"KILL", b"x").kind is Kind.LOCAL
    assert _spec(b"CLIENT", b"PAUSE", b"1").kind is Kind.REFUSED


def test_kinds_of_everyday_commands() -> None:
    assert {TABLE[n].kind for n in (b"MGET", b"MSET", b"DEL", b"UNLINK", b"EXISTS", b"TOUCH")} == {
        Kind.FANOUT
    }
    assert {TABLE[n].kind for n in (b"PING", b"ECHO", b"QUIT", b"SELECT", b"AUTH")} == {Kind.LOCAL}
    for name in (b"GET", b"SET", b"HSET", b"LPUSH", b"SADD", b"ZADD", b"INCR", b"EXPIRE"):
        assert FAST_SINGLE_KEY[name] is TABLE[name]
        assert FAST_SINGLE_KEY[name.lower()] is TABLE[name]
    assert b"MGET" not in FAST_SINGLE_KEY and b"EVAL" not in FAST_SINGLE_KEY


def test_xread_is_refused_only_with_block() -> None:
    plain = [b"XREAD", b"STREAMS", b"s", b"0"]
    assert TABLE[b"XREAD"].kind is Kind.KEYED
    assert not is_blocking_call(_spec(*plain), plain)
    blocking = [b"XREAD", b"BLOCK", b"0", b"STREAMS", b"s", b"0"]
    assert is_blocking_call(_spec(*blocking), blocking)


def test_a_refused_subcommand_gets_its_containers_reason() -> None:
    found = lookup([b"CLUSTER", b"INFO"])
    assert isinstance(found, CommandSpec) and found.kind is Kind.REFUSED
    assert "hides the cluster" in errors.refused(found.fullname, found.flags)
    assert "hides the cluster" in errors.refused("cluster")
