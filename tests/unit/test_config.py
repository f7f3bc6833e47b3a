"""Config loading: native and nutcracker.yml shapes, twemproxy defaults, precise errors."""

from __future__ import annotations

import pytest

from proxy.config import (
    DEFAULT_TIMEOUT_MS,
    Address,
    ClusterPoolConfig,
    ConfigError,
    RingPoolConfig,
    SentinelPoolConfig,
    parse,
)

NUTCRACKER_YML = """
alpha:
  listen: 127.0.0.1:22121
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: true
  redis: true
  server_retry_timeout: 2000
  server_failure_limit: 1
  servers:
   - 127.0.0.1:6379:1
   - 127.0.0.1:11211:1
   - 127.0.0.1:6380:2 server2
beta:
  listen: /tmp/beta.sock 0666
  hash_tag: "{}"
  redis: true
  timeout: 400
  servers:
   - /var/run/redis.sock:1 sock
"""


def test_nutcracker_yml_is_accepted_as_is_with_twemproxy_defaults() -> None:
    cfg = parse(NUTCRACKER_YML, "nutcracker.yml")
    alpha, beta = cfg.pools
    assert isinstance(alpha, RingPoolConfig) and isinstance(beta, RingPoolConfig)
    assert alpha.name == "alpha" and alpha.listen == Address("127.0.0.1", 22121)
    assert alpha.auto_eject_hosts and alpha.server_retry_timeout_ms == 2000
    assert alpha.server_failure_limit == 1
    assert alpha.timeout_ms == DEFAULT_TIMEOUT_MS  # twemproxy waits forever; we never hang
    assert alpha.server_connections == 1 and alpha.preconnect is False and alpha.redis_db == 0
    # Names: "host:port" by default, "host" alone for libmemcached's 11211, else the given name.
    assert [s.name for s in alpha.servers] == ["127.0.0.1:6379", "127.0.0.1", "server2"]
    assert [s.weight for s in alpha.servers] == [1, 1, 2]
    assert beta.listen is not None
    assert beta.listen.unix_path == "/tmp/beta.sock" and beta.listen.unix_mode == 0o666
    assert beta.hash_tag == b"{}" and beta.timeout_ms == 400
    assert beta.servers[0].address.unix_path == "/var/run/redis.sock"


def test_native_shape_with_pools_key() -> None:
    cfg = parse(
        "pools:\n  default:\n    listen: 127.0.0.1:1\n    redis_auth: secret\n    redis_db: 3\n"
        "    servers: ['127.0.0.1:7001:1 a']\n"
    )
    [pool] = cfg.pools
    assert isinstance(pool, RingPoolConfig)
    assert pool.redis_auth == "secret" and pool.redis_db == 3 and pool.hash == "fnv1a_64"


BASE = "pools:\n  p1:\n    listen: 127.0.0.1:22121\n    servers: ['127.0.0.1:7001:1']\n"


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ("    hash: nope\n", "pool 'p1': key 'hash': unknown value 'nope'"),
        ("    distribution: cluster2\n", "pool 'p1': key 'distribution'"),
        ("    bogus: 1\n", "pool 'p1': unknown key 'bogus'"),
        ("    timeout: fast\n", "pool 'p1': key 'timeout'"),
        ("    server_connections: 0\n", "pool 'p1': key 'server_connections': must be >= 1"),
        ("    hash_tag: '{'\n", "pool 'p1': key 'hash_tag'"),
        ("    auto_eject_hosts: maybe\n", "pool 'p1': key 'auto_eject_hosts'"),
        ("    redis: false\n", "pool 'p1': key 'redis'"),
    ],
)
def test_bad_keys_are_named_with_file_and_pool(extra: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(BASE + extra, "my.yml")
    assert str(err.value).startswith("my.yml: ")
    assert fragment in str(err.value)


@pytest.mark.parametrize(
    "servers, fragment",
    [
        ("['127.0.0.1:7001']", "expected 'host:port:weight"),
        ("['127.0.0.1:notaport:1']", "invalid port"),
        ("['127.0.0.1:7001:0']", "weight must be >= 1"),
        ("[]", "non-empty list"),
        ("['127.0.0.1:7001:1 a', '127.0.0.1:7002:1 a']", "duplicate server name 'a'"),
    ],
)
def test_bad_server_lines(servers: str, fragment: str) -> None:
    text = f"pools:\n  p1:\n    listen: 127.0.0.1:22121\n    servers: {servers}\n"
    with pytest.raises(ConfigError, match="key 'servers'") as err:
        parse(text, "my.yml")
    assert fragment in str(err.value)


@pytest.mark.parametrize("listen", ["nope", "127.0.0.1:99999", "127.0.0.1:"])
def test_bad_listen(listen: str) -> None:
    text = f"pools:\n  p1:\n    listen: '{listen}'\n    servers: ['127.0.0.1:7001:1']\n"
    with pytest.raises(ConfigError, match="pool 'p1': key 'listen'"):
        parse(text, "my.yml")


def test_two_pools_on_one_listen_address_are_refused() -> None:
    text = BASE + "  p2:\n    listen: 127.0.0.1:22121\n    servers: ['127.0.0.1:7002:1']\n"
    with pytest.raises(ConfigError, match="pool 'p2': key 'listen'"):
        parse(text, "my.yml")


def test_not_yaml_or_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse("a: [", "x.yml")
    with pytest.raises(ConfigError, match="mapping of pools"):
        parse("- 1\n", "x.yml")
    with pytest.raises(ConfigError, match="unknown top-level key 'extra'"):
        parse(BASE + "extra: 1\n", "x.yml")


def test_cluster_pool_takes_seed_nodes_and_cluster_keys() -> None:
    cfg = parse(
        "pools:\n  c:\n    listen: 127.0.0.1:22121\n    distribution: cluster\n"
        "    read_from: replica\n    cluster_refresh_interval: 5000\n"
        "    servers:\n      - 127.0.0.1:7000\n      - 127.0.0.1:7001:1\n      - 10.0.0.1:7002:1 n\n",
        "c.yml",
    )
    pool = cfg.pools[0]
    assert isinstance(pool, ClusterPoolConfig) and pool.read_from == "replica"
    assert pool.cluster_refresh_interval_ms == 5000
    assert [str(s.address) for s in pool.servers] == ["127.0.0.1:7000", "127.0.0.1:7001", "10.0.0.1:7002"]


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ("    distribution: cluster\n    hash: md5\n", "key 'hash': not used with distribution: cluster"),
        ("    distribution: cluster\n    hash_tag: '{}'\n", "key 'hash_tag': not used"),
        ("    distribution: cluster\n    auto_eject_hosts: true\n", "key 'auto_eject_hosts'"),
        ("    distribution: cluster\n    read_from: any\n", "key 'read_from': unknown value"),
        ("    read_from: replica\n", "key 'read_from': only used with distribution: cluster"),
        ("    cluster_refresh_interval: 50\n    distribution: cluster\n", "must be >= 100"),
        ("    distribution: cluster\n    redis_db: 3\n", "key 'redis_db': Redis Cluster has only"),
    ],
)
def test_cluster_keys_are_checked(extra: str, fragment: str) -> None:
    text = "pools:\n  c:\n    listen: 127.0.0.1:22121\n" + extra + "    servers:\n      - 127.0.0.1:7000\n"
    with pytest.raises(ConfigError) as err:
        parse(text, "c.yml")
    assert "c.yml: pool 'c'" in str(err.value) and fragment in str(err.value)


def test_example_configs_are_valid() -> None:
    import pathlib

    from proxy.config import load

    examples = sorted((pathlib.Path(__file__).resolve().parents[2] / "config").glob("*.yml"))
    assert len(examples) >= 2
    for path in examples:
        assert load(str(path)).pools, path


LISTENER_BASE = (
    "pools:\n"
    "  s:\n    distribution: sentinel\n    master_name: m\n    sentinels: [127.0.0.1:26379]\n"
    "  c:\n    distribution: cluster\n    servers: [127.0.0.1:7000]\n"
    "  r:\n    servers: ['127.0.0.1:7001:1']\n"
    "  r2:\n    servers: ['127.0.0.1:7002:1']\n"
)


def test_listeners_route_prefixes_to_pools_without_listen() -> None:
    cfg = parse(
        LISTENER_BASE + "listeners:\n  app:\n    listen: 127.0.0.1:22121\n    default_pool: r\n"
        "    routes:\n      - {prefix: 'session:', pool: s}\n"
        "      - {prefix: 'product:', pool: c, strip_prefix: true}\n"
        "      - {prefix: 'cart:', pool: r, mirror: r2, mirror_mode: all}\n",
        "l.yml",
    )
    [lc] = cfg.listeners
    assert lc.default_pool == "r" and [r.prefix for r in lc.routes] == [b"session:", b"product:", b"cart:"]
    assert lc.routes[1].strip_prefix and lc.routes[2].mirror == "r2" and lc.routes[2].mirror_mode == "all"
    pools = {p.name: p for p in cfg.pools}
    sentinel = pools["s"]
    assert isinstance(sentinel, SentinelPoolConfig)
    assert sentinel.master_name == "m" and sentinel.listen is None
    assert [str(a) for a in sentinel.sentinels] == ["127.0.0.1:26379"]


@pytest.mark.parametrize(
    "listeners, fragment",
    [
        (
            "  app:\n    listen: 127.0.0.1:1\n    routes: [{prefix: 'a', pool: nope}]\n",
            "no pool named 'nope'",
        ),
        ("  app:\n    listen: 127.0.0.1:1\n    routes: [{prefix: '', pool: r}]\n", "key 'prefix'"),
        (
            "  app:\n    listen: 127.0.0.1:1\n    routes: [{prefix: 'a', pool: r}, {prefix: 'a', pool: s}]\n",
            "a prefix appears twice",
        ),
        (
            "  app:\n    listen: 127.0.0.1:1\n    routes: [{prefix: 'a', pool: r, mirror: r}]\n",
            "key 'mirror'",
        ),
        (
            "  app:\n    listen: 127.0.0.1:1\n    routes: [{prefix: 'a', pool: r, mirror_mode: x}]\n",
            "key 'mirror_mode'",
        ),
        (
            "  app:\n    listen: 127.0.0.1:1\n    routes: [{prefix: 'a', pool: r, bogus: 1}]\n",
            "unknown key 'bogus'",
        ),
        (
            "  app:\n    listen: 127.0.0.1:1\n    default_pool: zz\n    routes: [{prefix: 'a', pool: r}]\n",
            "key 'default_pool'",
        ),
        ("  r:\n    listen: 127.0.0.1:1\n    routes: [{prefix: 'a', pool: r}]\n", "a pool has the same name"),
        ("  app:\n    routes: [{prefix: 'a', pool: r}]\n", "key 'listen'"),
        (
            "  app:\n    listen: 127.0.0.1:1\n"
            "    routes: [{prefix: 'a', pool: r}, {prefix: 'b', pool: r2}]\n",
            "pool 's': key 'listen': missing",
        ),
    ],
)
def test_listener_errors_name_the_listener_and_key(listeners: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(LISTENER_BASE + "listeners:\n" + listeners, "l.yml")
    assert fragment in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "pool, fragment",
    [
        ("    distribution: sentinel\n    master_name: m\n", "key 'sentinels'"),
        ("    distribution: sentinel\n    sentinels: [127.0.0.1:1]\n", "key 'master_name'"),
        (
            "    distribution: sentinel\n    master_name: m\n    sentinels: [h:1]\n    servers: [h:2:1]\n",
            "key 'servers': a sentinel pool's servers come from its sentinels",
        ),
        (
            "    distribution: sentinel\n    master_name: m\n    sentinels: [h:1]\n    hash: md5\n",
            "key 'hash': not used with distribution: sentinel",
        ),
        (
            "    servers: ['h:1:1']\n    master_name: m\n",
            "key 'master_name': only used with distribution: sentinel",
        ),
        (
            "    servers: ['h:1:1']\n    read_from: replica\n",
            "key 'read_from': only used with distribution: cluster or sentinel",
        ),
    ],
)
def test_sentinel_pool_keys_are_checked(pool: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse("pools:\n  p:\n    listen: 127.0.0.1:1\n" + pool, "p.yml")
    assert fragment in str(err.value), str(err.value)


# --- client limits: client_output_buffer_limit, client_query_buffer_limit, client_timeout,
# auth_failure_limit (pools and listeners) and the native form's max_buffered_bytes ----------
# (Imported here rather than at the top: this section was appended on its own.)
import os  # noqa: E402

from proxy.config import ClientLimitsConfig, parse_size  # noqa: E402

MIB = 1024 * 1024


@pytest.mark.parametrize(
    "text, size",
    [
        ("0", 0),
        ("1", 1),
        ("100", 100),
        ("100b", 100),
        ("1k", 1000),
        ("1kb", 1024),
        ("1K", 1000),
        ("1KB", 1024),
        ("4Kb", 4096),
        ("3m", 3_000_000),
        ("16mb", 16 * MIB),
        ("512MB", 512 * MIB),
        ("1Mb", MIB),
        ("2g", 2_000_000_000),
        ("1gb", 1024**3),
        ("1GB", 1024**3),
    ],
)
def test_parse_size_reads_redis_units(text: str, size: int) -> None:
    # Redis's memtoll: k/m/g are powers of 1000, kb/mb/gb powers of 1024, any case
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "abc", "mb", "-1", "-1mb", "1.5mb", "1 mb", "1tb", "1mbb", "0x10", "1e6"]
)
def test_parse_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


REDIS_CLIENT_LIMITS = ClientLimitsConfig(
    output_hard_bytes=512 * MIB,
    output_soft_bytes=128 * MIB,
    output_soft_seconds=60,
    query_buffer_bytes=1024**3,
    idle_timeout_ms=0,
    auth_failure_limit=10,
)


def test_client_limits_default_to_redis_values_on_every_pool_kind_and_listener() -> None:
    cfg = parse(
        LISTENER_BASE + "listeners:\n  app:\n    listen: 127.0.0.1:22121\n    default_pool: r\n"
        "    routes: [{prefix: 's:', pool: s}, {prefix: 'c:', pool: c}, {prefix: 'x:', pool: r2}]\n",
        "l.yml",
    )
    assert ClientLimitsConfig() == REDIS_CLIENT_LIMITS
    assert [p.client_limits for p in cfg.pools] == [REDIS_CLIENT_LIMITS] * 4
    assert cfg.listeners[0].client_limits == REDIS_CLIENT_LIMITS
    assert parse(NUTCRACKER_YML).pools[0].client_limits == REDIS_CLIENT_LIMITS


def test_client_limit_keys_on_a_native_pool() -> None:
    cfg = parse(
        BASE + '    client_output_buffer_limit: "16mb 0 0"\n    client_query_buffer_limit: 1mb\n'
        "    client_timeout: 500\n    auth_failure_limit: 3\n",
        "my.yml",
    )
    assert cfg.pools[0].client_limits == ClientLimitsConfig(
        output_hard_bytes=16 * MIB,
        output_soft_bytes=0,
        output_soft_seconds=0,
        query_buffer_bytes=MIB,
        idle_timeout_ms=500,
        auth_failure_limit=3,
    )


def test_client_limit_keys_in_nutcracker_yml() -> None:
    cfg = parse(
        "alpha:\n  listen: 127.0.0.1:22121\n  redis: true\n"
        '  client_output_buffer_limit: "0 2mb 1"\n  client_query_buffer_limit: 2gb\n'
        "  client_timeout: 30000\n  auth_failure_limit: 0\n  servers:\n   - 127.0.0.1:6379:1\n",
        "nutcracker.yml",
    )
    assert cfg.pools[0].client_limits == ClientLimitsConfig(
        output_hard_bytes=0,
        output_soft_bytes=2 * MIB,
        output_soft_seconds=1,
        query_buffer_bytes=2 * 1024**3,
        idle_timeout_ms=30000,
        auth_failure_limit=0,
    )


def test_client_limit_keys_on_a_listener_are_its_own() -> None:
    cfg = parse(
        LISTENER_BASE + "listeners:\n  app:\n    listen: 127.0.0.1:22121\n    default_pool: r\n"
        "    routes: [{prefix: 's:', pool: s}, {prefix: 'c:', pool: c}, {prefix: 'x:', pool: r2}]\n"
        '    client_output_buffer_limit: "1gb 256MB 30"\n    client_query_buffer_limit: 8mb\n'
        "    client_timeout: 1000\n    auth_failure_limit: 5\n",
        "l.yml",
    )
    assert cfg.listeners[0].client_limits == ClientLimitsConfig(
        output_hard_bytes=1024**3,
        output_soft_bytes=256 * MIB,
        output_soft_seconds=30,
        query_buffer_bytes=8 * MIB,
        idle_timeout_ms=1000,
        auth_failure_limit=5,
    )
    assert {p.name: p.client_limits for p in cfg.pools}["r"] == REDIS_CLIENT_LIMITS


def test_client_limit_keys_on_cluster_and_sentinel_pools() -> None:
    cfg = parse(
        "pools:\n  c:\n    listen: 127.0.0.1:1\n    distribution: cluster\n    client_timeout: 7\n"
        "    servers: [127.0.0.1:7000]\n"
        "  s:\n    listen: 127.0.0.1:2\n    distribution: sentinel\n    master_name: m\n"
        "    sentinels: [127.0.0.1:26379]\n    auth_failure_limit: 2\n",
        "p.yml",
    )
    c, s = cfg.pools
    assert c.client_limits.idle_timeout_ms == 7 and s.client_limits.auth_failure_limit == 2


@pytest.mark.parametrize(
    "line, key",
    [
        ("client_output_buffer_limit: abc", "client_output_buffer_limit"),
        ('client_output_buffer_limit: "1mb 2mb"', "client_output_buffer_limit"),
        ('client_output_buffer_limit: "1mb 2mb 3 4"', "client_output_buffer_limit"),
        ('client_output_buffer_limit: "-1mb 0 0"', "client_output_buffer_limit"),
        ('client_output_buffer_limit: "1mb -2mb 0"', "client_output_buffer_limit"),
        ('client_output_buffer_limit: "1mb 0 -1"', "client_output_buffer_limit"),
        ('client_output_buffer_limit: "1mb 0 1.5"', "client_output_buffer_limit"),
        ('client_output_buffer_limit: "1xb 0 0"', "client_output_buffer_limit"),
        ("client_output_buffer_limit: 0", "client_output_buffer_limit"),
        ("client_query_buffer_limit: abc", "client_query_buffer_limit"),
        ("client_query_buffer_limit: -1mb", "client_query_buffer_limit"),
        ("client_query_buffer_limit: 1.5gb", "client_query_buffer_limit"),
        ("client_query_buffer_limit: 512kb", "client_query_buffer_limit"),  # Redis's min: 1mb
        ("client_timeout: -1", "client_timeout"),
        ("client_timeout: soon", "client_timeout"),
        ("client_timeout: 1.5", "client_timeout"),
        ("auth_failure_limit: -1", "auth_failure_limit"),
        ("auth_failure_limit: many", "auth_failure_limit"),
        ("auth_failure_limit: true", "auth_failure_limit"),
    ],
)
def test_bad_client_limits_name_the_file_pool_and_key(line: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(BASE + f"    {line}\n", "my.yml")
    assert str(err.value).startswith("my.yml: ")
    assert f"pool 'p1': key '{key}'" in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "line, key",
    [
        ("client_timeout: -5", "client_timeout"),
        ('client_output_buffer_limit: "1mb 2mb"', "client_output_buffer_limit"),
        ("client_query_buffer_limit: lots", "client_query_buffer_limit"),
        ("auth_failure_limit: -3", "auth_failure_limit"),
    ],
)
def test_bad_client_limits_on_a_listener_name_the_listener_and_key(line: str, key: str) -> None:
    text = (
        LISTENER_BASE + "listeners:\n  app:\n    listen: 127.0.0.1:22121\n    default_pool: r\n"
        "    routes: [{prefix: 's:', pool: s}, {prefix: 'c:', pool: c}, {prefix: 'x:', pool: r2}]\n"
        f"    {line}\n"
    )
    with pytest.raises(ConfigError) as err:
        parse(text, "l.yml")
    assert f"listener 'app': key '{key}'" in str(err.value), str(err.value)


def test_max_buffered_bytes_is_a_native_top_level_size_defaulting_to_a_quarter_of_ram() -> None:
    assert parse("max_buffered_bytes: 64mb\n" + BASE).max_buffered_bytes == 64 * MIB
    assert parse(BASE + "max_buffered_bytes: 2g\n").max_buffered_bytes == 2_000_000_000
    quarter = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    for text in (BASE, NUTCRACKER_YML):
        assert abs(parse(text).max_buffered_bytes - quarter) <= quarter // 100


@pytest.mark.parametrize("value", ["abc", "-1", "-64mb", "1.5gb", "64 mb"])
def test_bad_max_buffered_bytes_names_the_key(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(f"max_buffered_bytes: '{value}'\n" + BASE, "my.yml")
    assert str(err.value).startswith("my.yml: ") and "key 'max_buffered_bytes'" in str(err.value)


def test_max_buffered_bytes_is_not_a_nutcracker_yml_key() -> None:
    # nutcracker.yml has pool names at the top level: this would be a pool without keys
    with pytest.raises(ConfigError):
        parse("max_buffered_bytes: 64mb\n" + NUTCRACKER_YML, "nutcracker.yml")


def test_a_nutcracker_yml_pool_without_redis_true_is_refused_as_memcached() -> None:
    text = "alpha:\n  listen: 127.0.0.1:22121\n  servers:\n    - 127.0.0.1:6379:1\n"
    with pytest.raises(ConfigError) as err:
        parse(text, "nutcracker.yml")
    message = str(err.value)
    assert message.startswith("nutcracker.yml: pool 'alpha': key 'redis': missing")
    assert "memcached" in message and "redis: true" in message
    parse(text + "  redis: true\n", "nutcracker.yml")  # as twemproxy wants it: fine


def test_an_unknown_key_suggests_the_known_one() -> None:
    text = "pools:\n  p:\n    listen: 127.0.0.1:22121\n    timout: 100\n    servers: ['127.0.0.1:6379:1']\n"
    with pytest.raises(ConfigError) as err:
        parse(text, "r.yml")
    assert str(err.value) == "r.yml: pool 'p': unknown key 'timout' (did you mean 'timeout'?)"


def test_yaml_errors_name_the_file() -> None:
    with pytest.raises(ConfigError) as err:
        parse("pools:\n  app:\n    listen: [\n", "/etc/resproxy.yml")
    assert "<unicode string>" not in str(err.value)
    assert "in /etc/resproxy.yml, line" in str(err.value)


def test_one_config_class_per_pool_kind_and_its_defaults_are_the_parsers() -> None:
    """A pool given only what it must have equals its class built with only that: the parser
    takes every default from the classes (each written once)."""
    cfg = parse(
        "pools:\n"
        "  r:\n    listen: 127.0.0.1:1\n    servers: ['127.0.0.1:7001:1 a']\n"
        "  c:\n    listen: 127.0.0.1:2\n    distribution: cluster\n    servers: ['127.0.0.1:7002']\n"
        "  s:\n    listen: 127.0.0.1:3\n    distribution: sentinel\n    master_name: m\n"
        "    sentinels: ['127.0.0.1:26379']\n"
    )
    r, c, s = cfg.pools
    assert isinstance(s, SentinelPoolConfig)
    assert r == RingPoolConfig(name="r", listen=r.listen, servers=r.servers)
    assert c == ClusterPoolConfig(name="c", listen=c.listen, servers=c.servers)
    assert s == SentinelPoolConfig(
        name="s", listen=s.listen, servers=(), master_name="m", sentinels=s.sentinels
    )
    assert (r.distribution, c.distribution, s.distribution) == ("ketama", "cluster", "sentinel")
