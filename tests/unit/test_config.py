"""Config loading: native and nutcracker.yml shapes, twemproxy defaults, precise errors."""

from __future__ import annotations

import pytest

from proxy.config import DEFAULT_TIMEOUT_MS, Address, ConfigError, parse

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
    assert pool.cluster and pool.read_from == "replica"
    assert pool.cluster_refresh_interval_ms == 5000
    assert [str(s.address) for s in pool.servers] == [
        "127.0.0.1:7000", "127.0.0.1:7001", "10.0.0.1:7002"
    ]  # fmt: skip


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
    assert pools["s"].sentinel and pools["s"].master_name == "m" and pools["s"].listen is None
    assert [str(a) for a in pools["s"].sentinels] == ["127.0.0.1:26379"]


@pytest.mark.parametrize(
    "listeners, fragment",
    [
        ("  app:\n    listen: 127.0.0.1:1\n    routes: [{prefix: 'a', pool: nope}]\n", "no pool named 'nope'"),
        ("  app:\n    listen: 127.0.0.1:1\n    routes: [{prefix: '', pool: r}]\n", "key 'prefix'"),
        ("  app:\n    listen: 127.0.0.1:1\n    routes: [{prefix: 'a', pool: r}, {prefix: 'a', pool: s}]\n", "a prefix appears twice"),
        ("  app:\n    listen: 127.0.0.1:1\n    routes: [{prefix: 'a', pool: r, mirror: r}]\n", "key 'mirror'"),
        ("  app:\n    listen: 127.0.0.1:1\n    routes: [{prefix: 'a', pool: r, mirror_mode: x}]\n", "key 'mirror_mode'"),
        ("  app:\n    listen: 127.0.0.1:1\n    routes: [{prefix: 'a', pool: r, bogus: 1}]\n", "unknown key 'bogus'"),
        ("  app:\n    listen: 127.0.0.1:1\n    default_pool: zz\n    routes: [{prefix: 'a', pool: r}]\n", "key 'default_pool'"),
        ("  r:\n    listen: 127.0.0.1:1\n    routes: [{prefix: 'a', pool: r}]\n", "a pool has the same name"),
        ("  app:\n    routes: [{prefix: 'a', pool: r}]\n", "key 'listen'"),
        ("  app:\n    listen: 127.0.0.1:1\n    routes: [{prefix: 'a', pool: r}, {prefix: 'b', pool: r2}]\n", "pool 's': key 'listen': missing"),
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
        ("    distribution: sentinel\n    master_name: m\n    sentinels: [h:1]\n    servers: [h:2:1]\n",
         "key 'servers': a sentinel pool's servers come from its sentinels"),
        ("    distribution: sentinel\n    master_name: m\n    sentinels: [h:1]\n    hash: md5\n",
         "key 'hash': not used with distribution: sentinel"),
        ("    servers: ['h:1:1']\n    master_name: m\n", "key 'master_name': only used with distribution: sentinel"),
        ("    servers: ['h:1:1']\n    read_from: replica\n", "key 'read_from': only used with distribution: cluster or sentinel"),
    ],
)
def test_sentinel_pool_keys_are_checked(pool: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse("pools:\n  p:\n    listen: 127.0.0.1:1\n" + pool, "p.yml")
    assert fragment in str(err.value), str(err.value)
