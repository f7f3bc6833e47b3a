"""Keyspace-wide merges, the SCAN cursor and the script cache (pure parts, no servers)."""

from __future__ import annotations

import hashlib

import pytest

from proxy import accel
from proxy.keyspace import (
    CHECK_BITS,
    MAX_SERVERS,
    SERVER_CURSOR_LIMIT,
    decode_cursor,
    encode_cursor,
    info_text,
    merge_all,
    merge_any_ok,
    merge_concat,
    merge_random,
    merge_same,
    merge_sum,
)
from proxy.scripts import ScriptCache


@pytest.mark.parametrize("index", [0, 1, 5, MAX_SERVERS - 1])
@pytest.mark.parametrize("server_cursor", [0, 1, 12345, SERVER_CURSOR_LIMIT - 1])
def test_cursor_round_trips_within_64_bits(index: int, server_cursor: int) -> None:
    check = 0x2A5
    cursor = encode_cursor(index, server_cursor, check)
    assert 0 <= cursor < 1 << 64
    if cursor:
        assert decode_cursor(cursor, MAX_SERVERS, check) == (index, server_cursor)


def test_cursor_zero_starts_at_the_first_server() -> None:
    assert decode_cursor(0, 3, 7) == (0, 0)


def test_moving_to_the_next_server_is_never_cursor_zero() -> None:
    for check in (0, 1, (1 << CHECK_BITS) - 1):
        assert encode_cursor(1, 0, check) != 0


def test_cursor_of_another_server_list_is_refused() -> None:
    cursor = encode_cursor(2, 99, check=100)
    assert decode_cursor(cursor, 3, check=101) is None  # the fingerprint changed
    assert decode_cursor(cursor, 2, check=100) is None  # fewer servers now


def test_merges_answer_as_one_server_would() -> None:
    assert merge_sum(b"", (), 0, [b":3\r\n", b":4\r\n"]) == b":7\r\n"
    assert merge_concat(b"", (), 0, [b"*1\r\n$1\r\na\r\n", b"*0\r\n", b"*2\r\n$1\r\nb\r\n$1\r\nc\r\n"]) == (
        b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
    )
    assert merge_all(b"", (), 0, [b"*2\r\n:1\r\n:1\r\n", b"*2\r\n:1\r\n:0\r\n"]) == b"*2\r\n:1\r\n:0\r\n"
    assert merge_same(b"", (), 0, [b"+OK\r\n", b"+OK\r\n"]) == b"+OK\r\n"
    assert merge_any_ok(b"", (), 0, [b"-NOTBUSY No scripts\r\n", b"+OK\r\n"]) == b"+OK\r\n"
    assert merge_random(b"", (), 0, [b"$-1\r\n", b"$1\r\nk\r\n", b"$-1\r\n"]) == b"$1\r\nk\r\n"
    assert merge_random(b"", (), 0, [b"$-1\r\n", b"$-1\r\n"]) == b"$-1\r\n"


def test_an_error_from_any_server_is_the_reply() -> None:
    error = b"-ERR server b unavailable: connection refused\r\n"
    for merge in (merge_sum, merge_concat, merge_all, merge_same, merge_random):
        assert merge(b"", (), 0, [b":1\r\n", error]) == error


def test_info_takes_the_lowest_version_and_sums_the_keyspace() -> None:
    servers = [
        b"# Server\r\nredis_version:7.2.4\r\nredis_mode:standalone\r\n",
        b"# Keyspace\r\ndb0:keys=10,expires=2,avg_ttl=5\r\n",
        b"# Server\r\nredis_version:7.0.15\r\n",
        b"# Keyspace\r\ndb0:keys=5,expires=1,avg_ttl=0\r\ndb1:keys=1,expires=0,avg_ttl=0\r\n",
    ]
    text = info_text(servers, b"# Proxy\r\npools:1\r\n", True, True).decode()
    assert text.startswith("# Server\r\nredis_version:7.0.15\r\nredis_mode:proxy\r\n")
    assert f"resproxy_implementation:{accel.implementation()}\r\n" in text  # c, or python if PURE
    assert "\r\n\r\n# Proxy\r\npools:1\r\n\r\n# Keyspace\r\n" in text
    assert "db0:keys=15,expires=3,avg_ttl=0\r\n" in text
    assert "db1:keys=1,expires=0,avg_ttl=0\r\n" in text


def test_script_cache_names_bodies_as_redis_does_and_stays_bounded() -> None:
    cache = ScriptCache(max_bytes=100)
    body = b"return redis.call('GET', KEYS[1])"
    sha = cache.remember(body)
    assert sha == hashlib.sha1(body).hexdigest().encode()
    assert cache.get(sha.upper()) == body
    for i in range(20):
        cache.remember(b"return %d -- padding padding" % i)
    assert cache.used <= 100 and cache.get(sha) is None  # the oldest went first
    cache.clear()
    assert len(cache) == 0 and cache.used == 0


def test_scripts_called_by_sha_are_preloaded_within_their_bound() -> None:
    cache = ScriptCache()
    evaluated = b"return 1"
    loaded = b"return 2"
    cache.remember(evaluated)  # EVAL: kept, not preloaded
    cache.remember(loaded, preload=True)  # SCRIPT LOAD: preloaded
    assert cache.preload() == [b"*3\r\n$6\r\nSCRIPT\r\n$4\r\nLOAD\r\n$8\r\nreturn 2\r\n"]
    cache.get(hashlib.sha1(evaluated).hexdigest().encode())  # EVALSHA found it: preloaded too
    assert len(cache.preload()) == 2
    cache.clear()
    assert cache.preload() == []
