"""redis-py (sync and redis.asyncio) through resproxy, each test against a ring pool, a cluster
pool and a listener with routes: transactions (with and without WATCH), a cross-server
transaction refused whole, Lock, register_script (and EVALSHA after a restart), scan_iter over
10,000 keys, INFO and DBSIZE. Every outcome is checked on the servers themselves."""

from __future__ import annotations

import re

import pytest
import redis
import redis.asyncio

from tests.clients.conftest import Target, restart_server, sync_client

SCAN_KEYS = 10_000
INCR_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def _value_on_servers(target: Target, key: str) -> bytes | None:
    """``key``'s value on the one server that holds it (None if none does)."""
    holders = target.holders(key)
    assert len(holders) <= 1, (key, [h.port for h in holders])
    value = holders[0].call("GET", key) if holders else None
    assert value is None or isinstance(value, bytes)
    return value


def _cross_pairs(target: Target, tag: str) -> list[tuple[str, str]]:
    """Key pairs one transaction may not span: two servers of the (default) pool; through the
    listener also two routes."""
    a, b = target.keys_on_distinct_servers(f"xs:{tag}:")
    pairs = [(a, b)]
    if target.name == "listener":
        pairs.append((f"rq:xs:{tag}", a))
    return pairs


# --- transactions: sync -------------------------------------------------------------------


def test_pipeline_transaction_on_one_server(clean: Target) -> None:
    r = sync_client(clean)
    try:
        pipe = r.pipeline()  # transaction=True, redis-py's default
        pipe.set("{tx}:a", 1)
        pipe.incr("{tx}:a")
        pipe.set("{tx}:b", "x")
        pipe.get("{tx}:b")
        assert pipe.execute() == [True, 2, True, b"x"]
        assert _value_on_servers(clean, "{tx}:a") == b"2"
        assert _value_on_servers(clean, "{tx}:b") == b"x"
        with r.pipeline() as pipe:  # keyless commands inside too
            pipe.ping()
            pipe.incr("{tx}:a")
            pipe.echo("e")
            assert pipe.execute() == [True, 3, b"e"]
    finally:
        r.close()


def test_pipeline_transaction_with_watch(clean: Target) -> None:
    r = sync_client(clean)
    try:
        r.set("{tx}:w", 10)
        with r.pipeline() as pipe:
            pipe.watch("{tx}:w")  # type: ignore[no-untyped-call]
            current = pipe.get("{tx}:w")
            assert current == b"10"
            pipe.multi()
            pipe.set("{tx}:w", int(current) + 1)
            pipe.set("{tx}:w2", "done")
            assert pipe.execute() == [True, True]
        assert _value_on_servers(clean, "{tx}:w") == b"11"
        assert _value_on_servers(clean, "{tx}:w2") == b"done"
    finally:
        r.close()


def test_watch_conflict_raises_watch_error(clean: Target) -> None:
    r, other = sync_client(clean), sync_client(clean)
    try:
        r.set("{tx}:c", 1)
        with r.pipeline() as pipe:
            pipe.watch("{tx}:c")  # type: ignore[no-untyped-call]
            assert pipe.get("{tx}:c") == b"1"
            assert other.set("{tx}:c", "other")  # a second client, between WATCH and EXEC
            pipe.multi()
            pipe.set("{tx}:c", "mine")
            pipe.set("{tx}:c2", "mine")
            with pytest.raises(redis.WatchError):
                pipe.execute()
        assert _value_on_servers(clean, "{tx}:c") == b"other"
        assert clean.anywhere("{tx}:c2") == []
        assert r.ping() is True  # the connection is usable afterwards
    finally:
        r.close()
        other.close()


def test_cross_server_transaction_refused_whole(clean: Target) -> None:
    r = sync_client(clean)
    try:
        for first, second in _cross_pairs(clean, "sync"):
            pipe = r.pipeline()
            pipe.set(first, "1")
            pipe.set(second, "2")
            pipe.incr(first)
            with pytest.raises(redis.ResponseError) as err:
                pipe.execute()
            # nothing of it reached any server (checked first: a half-applied transaction is
            # the worst outcome), then the refusal is the clear one
            assert clean.anywhere(first, second) == [], f"applied despite {err.value}"
            # (redis-py maps the CROSSSLOT prefix to ClusterCrossSlotError and drops the word)
            assert isinstance(err.value, redis.exceptions.ClusterCrossSlotError), repr(err.value)
            assert "hash tag" in str(err.value) or "route" in str(err.value), str(err.value)
            assert r.ping() is True
        with r.pipeline() as pipe:  # the next transaction on this client runs normally
            pipe.set("{tx}:after", "ok")
            pipe.get("{tx}:after")
            assert pipe.execute() == [True, b"ok"]
    finally:
        r.close()


# --- transactions: asyncio ----------------------------------------------------------------


async def test_async_pipeline_transaction_on_one_server(clean: Target) -> None:
    r = redis.asyncio.Redis(port=clean.port, socket_timeout=10)
    try:
        async with r.pipeline() as pipe:
            pipe.set("{atx}:a", 1)
            pipe.incr("{atx}:a")
            pipe.set("{atx}:b", "y")
            pipe.get("{atx}:b")
            assert await pipe.execute() == [True, 2, True, b"y"]
        assert _value_on_servers(clean, "{atx}:a") == b"2"
        assert _value_on_servers(clean, "{atx}:b") == b"y"
    finally:
        await r.aclose()


async def test_async_pipeline_transaction_with_watch(clean: Target) -> None:
    r = redis.asyncio.Redis(port=clean.port, socket_timeout=10)
    try:
        await r.set("{atx}:w", 5)
        async with r.pipeline() as pipe:
            await pipe.watch("{atx}:w")
            current = await pipe.get("{atx}:w")
            assert current == b"5"
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set("{atx}:w", int(current) * 2)
            assert await pipe.execute() == [True]
        assert _value_on_servers(clean, "{atx}:w") == b"10"
    finally:
        await r.aclose()


async def test_async_watch_conflict_raises_watch_error(clean: Target) -> None:
    r = redis.asyncio.Redis(port=clean.port, socket_timeout=10)
    other = redis.asyncio.Redis(port=clean.port, socket_timeout=10)
    try:
        await r.set("{atx}:c", 1)
        async with r.pipeline() as pipe:
            await pipe.watch("{atx}:c")
            assert await pipe.get("{atx}:c") == b"1"
            assert await other.set("{atx}:c", "other")
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set("{atx}:c", "mine")
            with pytest.raises(redis.WatchError):
                await pipe.execute()
        assert _value_on_servers(clean, "{atx}:c") == b"other"
    finally:
        await r.aclose()
        await other.aclose()


async def test_async_cross_server_transaction_refused_whole(clean: Target) -> None:
    r = redis.asyncio.Redis(port=clean.port, socket_timeout=10)
    try:
        for first, second in _cross_pairs(clean, "async"):
            async with r.pipeline() as pipe:
                pipe.set(first, "1")
                pipe.set(second, "2")
                pipe.incr(first)
                with pytest.raises(redis.ResponseError) as err:
                    await pipe.execute()
            assert clean.anywhere(first, second) == [], f"applied despite {err.value}"
            # (redis-py maps the CROSSSLOT prefix to ClusterCrossSlotError and drops the word)
            assert isinstance(err.value, redis.exceptions.ClusterCrossSlotError), repr(err.value)
            assert "hash tag" in str(err.value) or "route" in str(err.value), str(err.value)
            assert await r.ping() is True
    finally:
        await r.aclose()


# --- Lock ---------------------------------------------------------------------------------


def test_lock_acquire_extend_release(clean: Target) -> None:
    r = sync_client(clean)
    try:
        lock = r.lock("lock:sync", timeout=10)
        assert lock.acquire(blocking=False)
        assert lock.locked() and lock.owned()
        assert not r.lock("lock:sync", timeout=10).acquire(blocking=False)  # held
        assert lock.extend(10)
        [holder] = clean.holders("lock:sync")
        assert holder.call("PTTL", "lock:sync") > 10_000  # extended on the server
        lock.release()
        assert not lock.locked()
        assert clean.anywhere("lock:sync") == []
    finally:
        r.close()


async def test_async_lock_acquire_extend_release(clean: Target) -> None:
    r = redis.asyncio.Redis(port=clean.port, socket_timeout=10)
    try:
        lock = r.lock("lock:async", timeout=10)
        assert await lock.acquire(blocking=False)
        assert await lock.locked() and await lock.owned()
        assert await lock.extend(10)
        [holder] = clean.holders("lock:async")
        assert holder.call("PTTL", "lock:async") > 10_000
        await lock.release()
        assert not await lock.locked()
        assert clean.anywhere("lock:async") == []
    finally:
        await r.aclose()


# --- scripts --------------------------------------------------------------------------------


def test_register_script_called_several_times(clean: Target) -> None:
    r = sync_client(clean)
    try:
        incr = r.register_script(INCR_SCRIPT)
        keys = ["script:a", "script:b", "{tx}:script"]
        for n in range(1, 4):
            for key in keys:
                assert incr(keys=[key], args=[1]) == n
        for key in keys:
            assert _value_on_servers(clean, key) == b"3"
    finally:
        r.close()


async def test_async_register_script(clean: Target) -> None:
    r = redis.asyncio.Redis(port=clean.port, socket_timeout=10)
    try:
        incr = r.register_script(INCR_SCRIPT)
        for n in range(1, 4):
            assert await incr(keys=["script:async"], args=[2]) == 2 * n
        assert _value_on_servers(clean, "script:async") == b"6"
    finally:
        await r.aclose()


@pytest.mark.parametrize("target", ["ring"], indirect=True)
def test_evalsha_survives_a_server_restart(clean: Target) -> None:
    r = sync_client(clean)
    try:
        key = "script:restart"
        incr = r.register_script(INCR_SCRIPT)
        assert incr(keys=[key], args=[1]) == 1
        assert incr(keys=[key], args=[1]) == 2
        owner = clean.locate(key)
        restart_server(clean, owner, key)
        # (its script cache is gone; the proxy may have preloaded the script on reconnecting)
        # plain EVALSHA (no client-side fallback): the proxy loads the body it kept and retries
        assert r.evalsha(incr.sha, 1, key, 5) == 5
        assert owner.call("SCRIPT", "EXISTS", incr.sha) == [1]
        assert incr(keys=[key], args=[1]) == 6
    finally:
        r.close()


# --- keyspace-wide, INFO ------------------------------------------------------------------


def _fill(target: Target, prefix: str, count: int) -> set[bytes]:
    r = sync_client(target)
    try:
        keys = [f"{prefix}{i}".encode() for i in range(count)]
        for start in range(0, count, 1000):
            pipe = r.pipeline(transaction=False)
            for key in keys[start : start + 1000]:
                pipe.set(key, b"v")
            assert all(pipe.execute())
        return set(keys)
    finally:
        r.close()


def test_scan_iter_info_dbsize(clean: Target) -> None:
    expected = _fill(clean, "scan:", SCAN_KEYS)
    assert sum(n.call("DBSIZE") for n in clean.data_nodes) == SCAN_KEYS
    r = sync_client(clean)
    try:
        seen = list(r.scan_iter(match="scan:*", count=100))
        assert len(seen) == SCAN_KEYS and set(seen) == expected
        version = r.info()["redis_version"]
        assert re.fullmatch(r"\d+\.\d+\.\d+", str(version)), version
        assert (
            str(version)
            == clean.data_nodes[0].call("INFO", "server").decode().split("redis_version:")[1].split()[0]
        )
        assert r.dbsize() == SCAN_KEYS
    finally:
        r.close()


async def test_async_scan_iter(clean: Target) -> None:
    expected = _fill(clean, "ascan:", SCAN_KEYS)
    r = redis.asyncio.Redis(port=clean.port, socket_timeout=10)
    try:
        seen = [k async for k in r.scan_iter(match="ascan:*", count=100)]
        assert len(seen) == SCAN_KEYS and set(seen) == expected
        assert await r.dbsize() == SCAN_KEYS
        assert "redis_version" in await r.info("server")
    finally:
        await r.aclose()
