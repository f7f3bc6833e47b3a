"""The command line (-t, nutcracker.yml as is, clean stop) and redis_auth end to end."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import hiredis
import pytest

from tests.integration.harness.clients import RawClient, encode
from tests.integration.harness.configs import native_config, pool_yaml
from tests.integration.harness.proxyproc import run_proxy_check, start_ring_proxy
from tests.integration.harness.servers import RedisServer, running_redis_servers

VALID = native_config(pool_yaml("p1", 22999, ["127.0.0.1:7001:1 a", "127.0.0.1:7002:1 b"]))


def test_check_mode_accepts_a_valid_config() -> None:
    result = run_proxy_check(VALID)
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stdout


@pytest.mark.parametrize(
    "text, words",
    [
        (VALID.replace("servers:", "bogus_key: 1\n    servers:"), ["pool 'p1'", "'bogus_key'"]),
        (
            VALID.replace("listen: 127.0.0.1:22999", "listen: 127.0.0.1:notaport"),
            ["pool 'p1'", "key 'listen'"],
        ),
        (VALID.replace("127.0.0.1:7001:1 a", "127.0.0.1:7001"), ["pool 'p1'", "key 'servers'"]),
        (VALID.replace("servers:", "hash: sha256\n    servers:"), ["pool 'p1'", "key 'hash'"]),
        ("pools: [\n", ["invalid YAML"]),
    ],
)
def test_check_mode_names_file_pool_and_key_of_a_bad_config(text: str, words: list[str]) -> None:
    result = run_proxy_check(text)
    assert result.returncode != 0
    assert "check.yml" in result.stderr
    for word in words:
        assert word in result.stderr


def test_a_nutcracker_yml_is_accepted_as_it_is() -> None:
    text = (
        'alpha:\n  listen: 127.0.0.1:22121\n  hash: fnv1a_64\n  hash_tag: "{}"\n'
        "  distribution: ketama\n  auto_eject_hosts: true\n  redis: true\n"
        "  server_retry_timeout: 2000\n  server_failure_limit: 1\n  servers:\n"
        "   - 127.0.0.1:6379:1\n   - 127.0.0.1:6380:1 two\n"
        "beta:\n  listen: 127.0.0.1:22122\n  redis: true\n  servers:\n   - 127.0.0.1:6381:1\n"
    )
    result = run_proxy_check(text)
    assert result.returncode == 0, result.stderr


def test_sigterm_answers_what_is_owed_then_exits_zero(backends: list[RedisServer]) -> None:
    with start_ring_proxy(backends, name="p", names=None, timeout=2000) as proxy:
        with RawClient(proxy.port) as c:
            assert c.call("SET", "warm", "up") == b"OK"  # every server connection is open
            # The servers hold writes for a moment, so the SETs are still owed at SIGTERM; the
            # GET in front is answered at once, which shows the proxy has read the whole
            # pipeline (one 6 KB write, one read) before the signal.
            for b in backends:
                assert b.call("CLIENT", "PAUSE", "400", "WRITE") == b"OK"
            c.send(encode("GET", "warm") + b"".join(encode("SET", f"t{i}", "v") for i in range(200)))
            assert c.read() == b"up"
            proxy.send_signal(signal.SIGTERM)
            assert [c.read() for _ in range(200)] == [b"OK"] * 200
            assert c.closed_by_peer()
        assert proxy.stop(timeout_s=10) == 0


@pytest.fixture(scope="module")
def auth_servers() -> Iterator[list[RedisServer]]:
    with running_redis_servers(2, extra=["--requirepass", "s3cret"]) as started:
        yield started


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_auth_clients_auth_to_the_proxy_and_the_proxy_to_servers(
    auth_servers: list[RedisServer], protocol: int
) -> None:
    proxy = start_ring_proxy(auth_servers, name="p", names=None, redis_auth="s3cret", redis_db=2)
    try:
        with RawClient(proxy.port) as c:
            reply = c.call("GET", "k")
            assert isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOAUTH")
            assert str(c.call("AUTH", "wrong")).startswith("WRONGPASS")
            if protocol == 3:
                assert c.call("HELLO", 3, "AUTH", "default", "s3cret")[b"proto"] == 3
            else:
                assert c.call("AUTH", "s3cret") == b"OK"
            assert c.call("MSET", "a", "1", "b", "2", "c", "3", "d", "4") == b"OK"
            assert c.call("MGET", "a", "b", "c", "d") == [b"1", b"2", b"3", b"4"]
        # the keys are in database 2 of the servers (redis_db), spread over both
        found = [s.call("DBSIZE", password="s3cret") for s in auth_servers]
        assert found == [0, 0]
        in_db2 = 0
        for s in auth_servers:
            with RawClient(s.port) as direct:
                direct.call("AUTH", "s3cret")
                direct.call("SELECT", 2)
                in_db2 += direct.call("DBSIZE")
        assert in_db2 == 4
    finally:
        proxy.cleanup()
        for s in auth_servers:
            with RawClient(s.port) as direct:
                direct.call("AUTH", "s3cret")
                direct.call("FLUSHALL")


def test_a_wrong_redis_auth_gives_clear_prompt_errors(auth_servers: list[RedisServer]) -> None:
    with start_ring_proxy(auth_servers, name="p", names=None, redis_auth="not-it") as proxy:
        with RawClient(proxy.port) as c:
            assert c.call("AUTH", "not-it") == b"OK"  # the client side is satisfied...
            for _ in range(3):  # ...but the servers refuse the proxy: said, not hung
                reply = c.call("GET", "k")
                assert isinstance(reply, hiredis.ReplyError)
                assert "WRONGPASS" in str(reply) or "unavailable" in str(reply), reply
        assert "is up" not in proxy.log()  # never reported up while its AUTH is refused
