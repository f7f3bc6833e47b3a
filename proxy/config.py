"""Load and validate resproxy's YAML config into frozen dataclasses (leaf module).

Two shapes are accepted:

* native: ``pools:`` at the top, one mapping per pool;
* twemproxy's ``nutcracker.yml`` as it is: pool names at the top level.

Pool keys are twemproxy's, with twemproxy's defaults, except ``timeout``: twemproxy waits
forever when it is absent; resproxy never lets a request hang, so it applies
``DEFAULT_TIMEOUT_MS``. Unknown keys are errors. Every error names the file, the pool and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import yaml

from proxy import acl, command_data
from proxy.security import ServerTlsConfig, TlsConfig, parse_server_tls, parse_tls, parse_users

HASHES = (
    "one_at_a_time",
    "md5",
    "crc16",
    "crc32",
    "crc32a",
    "fnv1_64",
    "fnv1a_64",
    "fnv1_32",
    "fnv1a_32",
    "hsieh",
    "murmur",
    "jenkins",
)
DEFAULT_DEDICATED_CONNECTIONS = 64
DISTRIBUTIONS = ("ketama", "modula", "random", "cluster", "sentinel")
READ_FROM = ("master", "replica", "prefer_replica")
# Ring-only keys: a cluster pool places keys by Redis Cluster's own slots (CRC16, "{}" tags) and
# the cluster, not the proxy, decides when a node is out; a sentinel pool has one master.
RING_ONLY_KEYS = ("hash", "hash_tag", "auto_eject_hosts", "server_retry_timeout", "server_failure_limit")
CLUSTER_ONLY_KEYS = ("cluster_refresh_interval",)
SENTINEL_ONLY_KEYS = ("sentinels", "master_name", "sentinel_auth", "sentinel_username", "sentinel_tls")
MIRROR_MODES = ("writes", "all")
DEFAULT_TIMEOUT_MS = 5000
KETAMA_DEFAULT_PORT = 11211  # twemproxy leaves this port out of a server's default name


class ConfigError(Exception):
    """The config cannot be used; the message names file, pool and key."""


class ConfigUnreadable(ConfigError):
    """The config file cannot be read at all (missing, permissions)."""


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


def parse_size(text: str | int) -> int:
    """A memory size as Redis's config reads it (memtoll): ``1gb`` = 1024**3, ``1g`` = 10**9,
    plain numbers are bytes. ValueError if it is not one."""
    if isinstance(text, bool):
        raise ValueError(f"expected a size, got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"expected a size >= 0, got {text}")
        return text
    t = str(text).strip().lower()
    digits = t.rstrip("kmgb")
    unit = t[len(digits) :]
    if not digits.isdigit() or unit not in _UNITS:
        raise ValueError(f"expected a size such as 512mb, got {text!r}")
    return int(digits) * _UNITS[unit]


@dataclass(frozen=True, slots=True)
class ClientLimitsConfig:
    """What one client connection may hold (a pool's or listener's keys, Redis's names).

    ``client_output_buffer_limit: "HARD SOFT SECONDS"``: replies owed to a client (written,
    not yet read by it) past HARD, or past SOFT for SECONDS, close it, as Redis closes it.
    ``client_query_buffer_limit``: unframed request bytes past it close the client.
    ``client_timeout`` (ms): a client idle that long is closed. ``auth_failure_limit``: failed
    AUTHs after which the connection is closed. 0 turns each off.
    """

    output_hard_bytes: int = 512 * 1024**2
    output_soft_bytes: int = 128 * 1024**2
    output_soft_seconds: int = 60
    query_buffer_bytes: int = 1024**3
    idle_timeout_ms: int = 0
    auth_failure_limit: int = 10


DEFAULT_CLIENT_LIMITS = ClientLimitsConfig()
CLIENT_LIMIT_KEYS = (
    "client_output_buffer_limit",
    "client_query_buffer_limit",
    "client_timeout",
    "auth_failure_limit",
)


def _client_limits(where: str, body: dict[Any, Any]) -> ClientLimitsConfig:
    """The client limit keys of a pool or listener mapping."""

    def err(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}: key '{key}': {msg}")

    d = DEFAULT_CLIENT_LIMITS
    hard, soft, seconds = d.output_hard_bytes, d.output_soft_bytes, d.output_soft_seconds
    if "client_output_buffer_limit" in body:
        value = body["client_output_buffer_limit"]
        fields = str(value).split() if isinstance(value, str) else []
        try:
            if len(fields) != 3 or not fields[2].isdigit():
                raise ValueError
            hard, soft, seconds = parse_size(fields[0]), parse_size(fields[1]), int(fields[2])
        except ValueError:
            raise err(
                "client_output_buffer_limit",
                f'expected "HARD SOFT SECONDS" such as "512mb 128mb 60", got {value!r}',
            ) from None
    query = d.query_buffer_bytes
    if "client_query_buffer_limit" in body:
        try:
            query = parse_size(body["client_query_buffer_limit"])
        except ValueError as exc:
            raise err("client_query_buffer_limit", str(exc)) from None
        if query < 1024 * 1024:
            raise err("client_query_buffer_limit", "must be at least 1mb (as in Redis)")

    def count(key: str, default: int) -> int:
        v = body.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise err(key, f"expected an integer >= 0, got {v!r}")
        return v

    return ClientLimitsConfig(
        output_hard_bytes=hard,
        output_soft_bytes=soft,
        output_soft_seconds=seconds,
        query_buffer_bytes=query,
        idle_timeout_ms=count("client_timeout", d.idle_timeout_ms),
        auth_failure_limit=count("auth_failure_limit", d.auth_failure_limit),
    )


def default_max_buffered_bytes() -> int:
    """A quarter of physical memory: what the proxy may hold for all clients together."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError):
        return 1024**3


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP ``host:port`` or a unix socket ``path`` (port 0)."""

    host: str
    port: int
    unix_path: str | None = None
    unix_mode: int | None = None

    def __str__(self) -> str:
        return self.unix_path if self.unix_path else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """One backend server line: ``host:port:weight [name]``."""

    address: Address
    weight: int
    name: str  # what ketama points are named after (and what logs and errors show)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """What every pool has: a listener, its servers, timeouts, client limits.

    One subclass per kind holds the rest; every default is written once, here or there, and
    the parser reads its defaults from these classes (``_defaults``)."""

    name: str
    listen: Address | None  # None: only reached through a listener's routes
    servers: tuple[ServerConfig, ...]
    distribution: str = "ketama"  # ketama | modula | random (ring), cluster, sentinel
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    backlog: int = 512
    client_connections: int = 0  # 0: no limit
    preconnect: bool = False
    redis_auth: str | None = None
    redis_db: int = 0
    server_connections: int = 1
    tcpkeepalive: bool = False
    client_limits: ClientLimitsConfig = DEFAULT_CLIENT_LIMITS
    # commands clients may not run (upper case; "SCRIPT|FLUSH" for one subcommand)
    deny_commands: frozenset[bytes] = frozenset()
    # per server: connections held by one client (transactions' WATCH and EXEC, streamed values)
    dedicated_connections: int = DEFAULT_DEDICATED_CONNECTIONS
    dedicated_idle_timeout_ms: int = 60000  # an idle one (kept for reuse) is closed after it
    allow_monitor: bool = True  # MONITOR through the proxy (every server's stream)
    redis_username: str | None = None  # with redis_auth: AUTH user pass to the servers
    tls: TlsConfig | None = None  # clients connect with TLS (listen serves TLS only)
    server_tls: ServerTlsConfig | None = None  # the proxy connects to the servers with TLS
    users: tuple[acl.User, ...] = ()  # ACL users clients AUTH as (acl.py); redis_auth: default's


@dataclass(frozen=True, slots=True)
class RingPoolConfig(PoolConfig):
    """A ring pool (ketama, modula, random): twemproxy's keys."""

    hash: str = "fnv1a_64"
    hash_tag: bytes = b""
    auto_eject_hosts: bool = False
    server_retry_timeout_ms: int = 30000
    server_failure_limit: int = 2


@dataclass(frozen=True, slots=True)
class ReplicaPoolConfig(PoolConfig):
    """A pool whose servers have replicas the proxy knows (cluster, sentinel)."""

    read_from: str = "master"  # master | replica | prefer_replica


@dataclass(frozen=True, slots=True)
class ClusterPoolConfig(ReplicaPoolConfig):
    """A Redis Cluster pool: ``servers`` are seed nodes; the slot map comes from the cluster."""

    distribution: str = "cluster"
    cluster_refresh_interval_ms: int = 10000


@dataclass(frozen=True, slots=True)
class SentinelPoolConfig(ReplicaPoolConfig):
    """A sentinel pool: the master of ``master_name``, as its ``sentinels`` name it."""

    distribution: str = "sentinel"
    sentinels: tuple[Address, ...] = ()
    master_name: str = ""
    sentinel_auth: str | None = None
    sentinel_username: str | None = None
    sentinel_tls: ServerTlsConfig | None = None


def _defaults(cls: type[PoolConfig]) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


_POOL_CLASSES: dict[str, type[PoolConfig]] = {"cluster": ClusterPoolConfig, "sentinel": SentinelPoolConfig}


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """Keys starting with ``prefix`` go to ``pool`` (longest prefix wins)."""

    prefix: bytes
    pool: str
    strip_prefix: bool = False  # the pool sees the key without the prefix
    mirror: str | None = None  # a second pool that gets a copy, fire-and-forget
    mirror_mode: str = "writes"  # writes | all


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    """One client-facing address routing keys by prefix to several pools."""

    name: str
    listen: Address
    routes: tuple[RouteConfig, ...]
    default_pool: str | None = None  # unmatched keys; without it they get an error
    redis_auth: str | None = None  # the password clients AUTH with
    backlog: int = 512
    client_connections: int = 0
    client_limits: ClientLimitsConfig = DEFAULT_CLIENT_LIMITS
    deny_commands: frozenset[bytes] = frozenset()
    allow_monitor: bool = True
    tls: TlsConfig | None = None
    users: tuple[acl.User, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    pools: tuple[PoolConfig, ...] = field(default_factory=tuple)
    metrics_listen: Address | None = None  # /metrics and /healthz (native form: metrics.listen)
    metrics_tls: TlsConfig | None = None  # metrics.tls: scrapes over HTTPS
    metrics_token: str | None = None  # metrics.token: scrapes of /metrics need this bearer token
    listeners: tuple[ListenerConfig, ...] = field(default_factory=tuple)
    # what the proxy may hold for all clients together; past it, it stops reading from them
    max_buffered_bytes: int = field(default_factory=default_max_buffered_bytes)


# What pools and listeners both have: TLS to their clients, ACL users.
SECURITY_KEYS = ("tls", "users")
_POOL_KEYS = {
    "listen",
    "servers",
    "hash",
    "hash_tag",
    "distribution",
    "timeout",
    "backlog",
    "client_connections",
    "preconnect",
    "redis",
    "redis_auth",
    "redis_db",
    "server_connections",
    "auto_eject_hosts",
    "server_retry_timeout",
    "server_failure_limit",
    "tcpkeepalive",
    "read_from",
    *CLUSTER_ONLY_KEYS,
    *SENTINEL_ONLY_KEYS,
    *CLIENT_LIMIT_KEYS,
    "deny_commands",
    "dedicated_connections",
    "dedicated_idle_timeout",
    "allow_monitor",
    *SECURITY_KEYS,
    "redis_username",
    "server_tls",
}
_NATIVE_TOP_KEYS = {"pools", "metrics", "listeners", "max_buffered_bytes"}
_LISTENER_KEYS = {
    "listen",
    "routes",
    "default_pool",
    "redis_auth",
    "backlog",
    "client_connections",
    "deny_commands",
    "allow_monitor",
    *CLIENT_LIMIT_KEYS,
    *SECURITY_KEYS,
}
_ROUTE_KEYS = {"prefix", "pool", "strip_prefix", "mirror", "mirror_mode"}


def load(path: str) -> Config:
    """Read and validate the config file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigUnreadable(f"{path}: cannot read config: {exc.strerror}") from None
    return parse(text, path)


def parse(text: str, path: str = "<config>") -> Config:
    """Validate config text; ``path`` is only used in messages."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # (PyYAML names a string it was given "<unicode string>": name the file instead)
        detail = str(exc).replace('"<unicode string>"', path).replace("<unicode string>", path)
        raise ConfigError(f"{path}: invalid YAML: {detail}") from None
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{path}: expected a mapping of pools at the top level")
    if "pools" in doc:
        unknown = sorted(str(k) for k in doc if k not in _NATIVE_TOP_KEYS)
        if unknown:
            raise ConfigError(
                f"{path}: unknown top-level key '{unknown[0]}'{_did_you_mean(unknown[0], _NATIVE_TOP_KEYS)}"
            )
        pools_doc = doc["pools"]
        if not isinstance(pools_doc, dict) or not pools_doc:
            raise ConfigError(f"{path}: key 'pools': expected a mapping of pool names")
        metrics = _metrics(path, doc.get("metrics"))
        listeners_doc = doc.get("listeners") or {}
        if not isinstance(listeners_doc, dict):
            raise ConfigError(f"{path}: key 'listeners': expected a mapping of listener names")
        budget = default_max_buffered_bytes()
        if "max_buffered_bytes" in doc:
            try:
                budget = parse_size(doc["max_buffered_bytes"])
            except ValueError as exc:
                raise ConfigError(f"{path}: key 'max_buffered_bytes': {exc}") from None
            if budget < 1024 * 1024:
                raise ConfigError(f"{path}: key 'max_buffered_bytes': must be at least 1mb")
    else:
        pools_doc = doc  # nutcracker.yml: pool names at the top level
        metrics = None
        listeners_doc = {}
        budget = default_max_buffered_bytes()
    nutcracker = "pools" not in doc
    pools = tuple(_pool(path, str(name), body, nutcracker) for name, body in pools_doc.items())
    names = {p.name for p in pools}
    listeners = tuple(_listener(path, str(n), body, names) for n, body in listeners_doc.items())
    for lc in listeners:
        if lc.name in names:
            raise ConfigError(f"{path}: listener '{lc.name}': a pool has the same name")
    routed = (
        {r.pool for lc in listeners for r in lc.routes}
        | {lc.default_pool for lc in listeners if lc.default_pool}
        | {r.mirror for lc in listeners for r in lc.routes if r.mirror}
    )
    for p in pools:
        if p.listen is None and p.name not in routed:
            raise ConfigError(
                f"{path}: pool '{p.name}': key 'listen': missing (host:port or /unix/path), "
                "and no listener routes to the pool"
            )
    _check_unique_listen(path, pools, listeners)
    config = Config(
        path=os.path.abspath(path) if path != "<config>" else path,
        pools=pools,
        listeners=listeners,
        max_buffered_bytes=budget,
        **_metrics_security(path, doc.get("metrics") if "pools" in doc else None),
    )
    return with_metrics(config, metrics) if metrics is not None else config


def with_metrics(config: Config, listen: str | Address) -> Config:
    """``config`` with its metrics endpoint at ``listen`` (host:port), e.g. from the command line."""
    where = config.path if isinstance(listen, Address) else "--metrics"
    address = listen if isinstance(listen, Address) else _metrics(where, {"listen": listen})
    assert address is not None
    taken = {str(p.listen) for p in config.pools} | {str(lc.listen) for lc in config.listeners}
    if str(address) in taken:
        raise ConfigError(f"{where}: metrics listen {address} is also a pool's listen")
    return dataclasses.replace(config, metrics_listen=address)


def _listener(path: str, name: str, body: Any, pools: set[str]) -> ListenerConfig:
    where = f"{path}: listener '{name}'"
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping of listener keys")
    for key in body:
        if key not in _LISTENER_KEYS:
            raise ConfigError(f"{where}: unknown key '{key}'{_did_you_mean(key, _LISTENER_KEYS)}")
    try:
        listen = _listen(body.get("listen"))
    except ValueError as exc:
        raise ConfigError(f"{where}: key 'listen': {exc}") from None
    raw_routes = body.get("routes")
    if not isinstance(raw_routes, list) or not raw_routes:
        raise ConfigError(f"{where}: key 'routes': expected a list of {{prefix, pool}}")
    routes = []
    for i, r in enumerate(raw_routes):
        at = f"{where}: key 'routes'[{i}]"
        if not isinstance(r, dict):
            raise ConfigError(f"{at}: expected a mapping with prefix and pool")
        for key in r:
            if key not in _ROUTE_KEYS:
                raise ConfigError(f"{at}: unknown key '{key}'{_did_you_mean(key, _ROUTE_KEYS)}")
        prefix, pool = r.get("prefix"), r.get("pool")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError(f"{at}: key 'prefix': expected a non-empty string")
        if pool not in pools:
            raise ConfigError(f"{at}: key 'pool': no pool named {pool!r}")
        mirror = r.get("mirror")
        if mirror is not None and (mirror not in pools or mirror == pool):
            raise ConfigError(f"{at}: key 'mirror': expected another pool's name, got {mirror!r}")
        mode = r.get("mirror_mode", "writes")
        if mode not in MIRROR_MODES:
            raise ConfigError(f"{at}: key 'mirror_mode': one of {', '.join(MIRROR_MODES)}")
        strip = r.get("strip_prefix", False)
        if not isinstance(strip, bool):
            raise ConfigError(f"{at}: key 'strip_prefix': expected true or false")
        routes.append(RouteConfig(prefix.encode(), str(pool), strip, mirror, str(mode)))
    prefixes = [r.prefix for r in routes]
    if len(set(prefixes)) != len(prefixes):
        raise ConfigError(f"{where}: key 'routes': a prefix appears twice")
    default = body.get("default_pool")
    if default is not None and default not in pools:
        raise ConfigError(f"{where}: key 'default_pool': no pool named {default!r}")
    auth = body.get("redis_auth")
    backlog, limit = body.get("backlog", 512), body.get("client_connections", 0)
    for key, value in (("backlog", backlog), ("client_connections", limit)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: key '{key}': expected an integer >= 0")
    return ListenerConfig(
        name=name,
        listen=listen,
        routes=tuple(routes),
        default_pool=default,
        redis_auth=None if auth is None else str(auth),
        backlog=backlog or 512,
        client_connections=limit,
        client_limits=_client_limits(where, body),
        deny_commands=_deny_commands(where, body),
        allow_monitor=_allow_monitor(where, body),
        **_security(where, body),
    )


METRICS_KEYS = {"listen", "tls", "token"}


def _metrics(path: str, body: Any) -> Address | None:
    """``metrics.listen``: ``host:port``, or a port alone (loopback: 127.0.0.1)."""
    if body is None:
        return None
    if not isinstance(body, dict) or "listen" not in body or set(body) - METRICS_KEYS:
        raise ConfigError(
            f"{path}: key 'metrics': expected a mapping with 'listen: host:port' (and optional tls, token)"
        )
    listen = body["listen"]
    if isinstance(listen, int) and not isinstance(listen, bool) or str(listen).strip().isdigit():
        listen = f"127.0.0.1:{str(listen).strip()}"  # a port alone binds loopback only
    try:
        address = _listen(listen)
    except ValueError as exc:
        raise ConfigError(f"{path}: key 'metrics': listen: {exc}") from None
    if address.unix_path:
        raise ConfigError(f"{path}: key 'metrics': listen: expected host:port")
    return address


def _metrics_security(path: str, body: Any) -> dict[str, Any]:
    """``metrics.tls`` and ``metrics.token`` (checked by ``_metrics`` to be in a mapping)."""
    out: dict[str, Any] = {}
    if not isinstance(body, dict):
        return out
    if body.get("tls") is not None:
        try:
            out["metrics_tls"] = parse_tls(body["tls"])
        except ValueError as exc:
            raise ConfigError(f"{path}: key 'metrics': tls: {exc}") from None
    token = body.get("token")
    if token is not None:
        if not isinstance(token, str) or len(token) < 16:
            raise ConfigError(f"{path}: key 'metrics': token: expected a string of 16 characters or more")
        out["metrics_token"] = token
    return out


def _did_you_mean(key: object, known: Collection[str]) -> str:
    """`` (did you mean 'timeout'?)`` for a key close to a known one, else nothing."""
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.75)
    return f" (did you mean '{close[0]}'?)" if close else ""


# YAML keys whose PoolConfig field has a unit in its name
_FIELDS = {
    "timeout": "timeout_ms",
    "server_retry_timeout": "server_retry_timeout_ms",
    "cluster_refresh_interval": "cluster_refresh_interval_ms",
    "dedicated_idle_timeout": "dedicated_idle_timeout_ms",
}


def _pool(path: str, name: str, body: Any, nutcracker: bool = False) -> PoolConfig:
    where = f"{path}: pool '{name}'"
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: expected a mapping of pool keys")
    for key in body:
        if key not in _POOL_KEYS:
            raise ConfigError(f"{where}: unknown key '{key}'{_did_you_mean(key, _POOL_KEYS)}")
    if nutcracker and "redis" not in body:
        raise ConfigError(
            f"{where}: key 'redis': missing; in nutcracker.yml a pool without 'redis: true' is "
            "a memcached pool, and resproxy speaks only Redis: add 'redis: true' (as twemproxy "
            "needs for a Redis pool)"
        )

    def err(key: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}: key '{key}': {msg}")

    def integer(key: str, minimum: int = 0) -> int:
        v = body.get(key, defaults[_FIELDS.get(key, key)])
        if isinstance(v, bool) or not isinstance(v, int):
            raise err(key, f"expected an integer, got {v!r}")
        if v < minimum:
            raise err(key, f"must be >= {minimum}, got {v}")
        return v

    def boolean(key: str) -> bool:
        v = body.get(key, defaults[key])
        if not isinstance(v, bool):
            raise err(key, f"expected true or false, got {v!r}")
        return v

    def choice(key: str, options: tuple[str, ...], default: str | None = None) -> str:
        v = body.get(key, defaults[key] if default is None else default)
        if v not in options:
            raise err(key, f"unknown value {v!r}; one of {', '.join(options)}")
        return str(v)

    distribution = choice("distribution", DISTRIBUTIONS, _defaults(PoolConfig)["distribution"])
    cls = _POOL_CLASSES.get(distribution, RingPoolConfig)
    defaults = _defaults(cls)
    cluster = distribution == "cluster"
    sentinel = distribution == "sentinel"
    ring = not cluster and not sentinel
    for key in body:
        if key in RING_ONLY_KEYS and not ring:
            raise err(key, f"not used with distribution: {distribution}")
        if key in CLUSTER_ONLY_KEYS and not cluster:
            raise err(key, "only used with distribution: cluster")
        if key in SENTINEL_ONLY_KEYS and not sentinel:
            raise err(key, "only used with distribution: sentinel")
        if key == "read_from" and ring:
            raise err(key, "only used with distribution: cluster or sentinel")
        if key == "servers" and sentinel:
            raise err(key, "a sentinel pool's servers come from its sentinels (key 'sentinels')")

    if cluster and body.get("redis_db", defaults["redis_db"]) != 0:
        raise err("redis_db", "Redis Cluster has only database 0")

    listen: Address | None = None
    if "listen" in body:
        try:
            listen = _listen(body["listen"])
        except ValueError as exc:
            raise err("listen", str(exc)) from None

    if body.get("redis", True) is not True:
        raise err("redis", "resproxy speaks only the Redis protocol (redis: true)")

    hash_tag = body.get("hash_tag", "")  # (ring pools only: RING_ONLY_KEYS)
    if not isinstance(hash_tag, str) or len(hash_tag) not in (0, 2):
        raise err("hash_tag", f'expected two characters such as "{{}}", got {hash_tag!r}')

    auth = body.get("redis_auth")
    if auth is not None and not isinstance(auth, (str, int)):
        raise err("redis_auth", "expected a string")

    timeout = body.get("timeout", defaults["timeout_ms"])
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout == 0 or timeout < -1:
        raise err("timeout", f"expected milliseconds > 0, got {timeout!r}")
    if body.get("redis_username") is not None and auth is None:
        raise err("redis_username", "needs redis_auth (the user's password on the servers)")
    if body.get("sentinel_username") is not None and body.get("sentinel_auth") is None:
        raise err("sentinel_username", "needs sentinel_auth (the user's password on the sentinels)")
    if timeout == -1:  # twemproxy's "wait forever"
        timeout = DEFAULT_TIMEOUT_MS

    sentinels: list[Address] = []
    master_name = ""
    if sentinel:
        raw = body.get("sentinels")
        if not isinstance(raw, list) or not raw:
            raise err("sentinels", "expected a non-empty list of host:port")
        for line in raw:
            try:
                sentinels.append(_seed(line).address)
            except ValueError as exc:
                raise err("sentinels", f"{line!r}: {exc}") from None
        named = body.get("master_name")
        if not isinstance(named, str) or not named:
            raise err("master_name", "expected the name the sentinels monitor the master by")
        master_name = named
    sentinel_auth = body.get("sentinel_auth")
    if sentinel_auth is not None and not isinstance(sentinel_auth, (str, int)):
        raise err("sentinel_auth", "expected a string")

    raw_servers = [] if sentinel else body.get("servers")
    if not isinstance(raw_servers, list) or (not sentinel and not raw_servers):
        raise err("servers", "expected a non-empty list of 'host:port:weight [name]'")
    servers = []
    for line in raw_servers:
        try:
            servers.append(_seed(line) if cluster else _server(line))
        except ValueError as exc:
            raise err("servers", f"{line!r}: {exc}") from None
    seen: set[str] = set()
    for s in servers:
        if s.name in seen:
            raise err("servers", f"duplicate server name {s.name!r}")
        seen.add(s.name)

    common: dict[str, Any] = dict(
        name=name,
        listen=listen,
        servers=tuple(servers),
        distribution=distribution,
        timeout_ms=timeout,
        backlog=integer("backlog", 1),
        client_connections=integer("client_connections"),
        preconnect=boolean("preconnect"),
        redis_auth=None if auth is None else str(auth),
        redis_db=integer("redis_db"),
        server_connections=integer("server_connections", 1),
        tcpkeepalive=boolean("tcpkeepalive"),
        client_limits=_client_limits(where, body),
        deny_commands=_deny_commands(where, body),
        dedicated_connections=integer("dedicated_connections", 1),
        dedicated_idle_timeout_ms=integer("dedicated_idle_timeout", 1),
        allow_monitor=boolean("allow_monitor"),
        redis_username=_optional_string(where, body, "redis_username"),
        server_tls=_server_tls(where, body, "server_tls"),
        **_security(where, body),
    )
    if cluster:
        return ClusterPoolConfig(
            **common,
            read_from=choice("read_from", READ_FROM),
            cluster_refresh_interval_ms=integer("cluster_refresh_interval", 100),
        )
    if sentinel:
        return SentinelPoolConfig(
            **common,
            read_from=choice("read_from", READ_FROM),
            sentinels=tuple(sentinels),
            master_name=master_name,
            sentinel_auth=None if sentinel_auth is None else str(sentinel_auth),
            sentinel_username=_optional_string(where, body, "sentinel_username"),
            sentinel_tls=_server_tls(where, body, "sentinel_tls"),
        )
    return RingPoolConfig(
        **common,
        hash=choice("hash", HASHES),
        hash_tag=hash_tag.encode(),
        auto_eject_hosts=boolean("auto_eject_hosts"),
        server_retry_timeout_ms=integer("server_retry_timeout", 1),
        server_failure_limit=integer("server_failure_limit", 1),
    )


def _security(where: str, body: dict[Any, Any]) -> dict[str, Any]:
    """``tls`` and ``users`` of a pool or listener."""
    out: dict[str, Any] = {}
    for key, parse in (("tls", parse_tls), ("users", parse_users)):
        if body.get(key) is not None:
            try:
                out[key] = parse(body[key])
            except ValueError as exc:
                raise ConfigError(f"{where}: key '{key}': {exc}") from None
    return out


def _server_tls(where: str, body: dict[Any, Any], key: str) -> ServerTlsConfig | None:
    if body.get(key) in (None, False):
        return None
    try:
        return parse_server_tls(body[key])
    except ValueError as exc:
        raise ConfigError(f"{where}: key '{key}': {exc}") from None


def _optional_string(where: str, body: dict[Any, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: key '{key}': expected a string, got {value!r}")
    return value


def _allow_monitor(where: str, body: dict[Any, Any]) -> bool:
    value = body.get("allow_monitor", True)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: key 'allow_monitor': expected true or false, got {value!r}")
    return value


def _deny_commands(where: str, body: dict[Any, Any]) -> frozenset[bytes]:
    """``deny_commands: [flushall, keys, script|flush]``: names checked against Redis's table."""
    raw = body.get("deny_commands", [])
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: key 'deny_commands': expected a list of command names")
    names = set()
    for item in raw:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where}: key 'deny_commands': expected command names, got {item!r}")
        name = item.strip().upper().encode()
        container, bar, sub = name.partition(b"|")
        known = sub in command_data.SUBCOMMANDS.get(container, {}) if bar else name in command_data.COMMANDS
        if not known:
            raise ConfigError(f"{where}: key 'deny_commands': unknown command {item!r}")
        names.add(name)
    return frozenset(names)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port {text!r}")
    return int(text)


def _listen(value: Any) -> Address:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected host:port or /unix/path, got {value!r}")
    text = value.strip()
    if text.startswith("/"):
        path, _, mode = text.partition(" ")
        try:
            unix_mode = int(mode.strip(), 8) if mode.strip() else None
        except ValueError:
            raise ValueError(f"invalid unix socket permissions {mode.strip()!r}") from None
        return Address(host="", port=0, unix_path=path, unix_mode=unix_mode)
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {text!r}")
    return Address(host=host.strip("[]"), port=_port(port))


def _server(value: Any) -> ServerConfig:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected 'host:port:weight [name]'")
    addr_part, _, name = value.strip().partition(" ")
    name = name.strip()
    if " " in name:
        raise ValueError("server name must be one word")
    rest, sep, weight_text = addr_part.rpartition(":")
    if not sep or not weight_text.isdigit():
        raise ValueError("expected 'host:port:weight [name]' (weight missing)")
    weight = int(weight_text)
    if weight < 1:
        raise ValueError("weight must be >= 1")
    if rest.startswith("/"):
        address = Address(host="", port=0, unix_path=rest)
        default_name = rest
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep or not host:
            raise ValueError("expected 'host:port:weight [name]'")
        address = Address(host=host, port=_port(port_text))
        # twemproxy (conf_add_server): without a name, ketama points are named "host:port",
        # or just "host" when the port is libmemcached's 11211.
        default_name = host if address.port == KETAMA_DEFAULT_PORT else f"{host}:{port_text}"
    return ServerConfig(address=address, weight=weight, name=name or default_name)


def _seed(value: Any) -> ServerConfig:
    """A cluster seed node: ``host:port`` (a ``:weight`` and a name are allowed and unused)."""
    if isinstance(value, str):
        addr = value.strip().partition(" ")[0]
        host, sep, port = addr.rpartition(":")
        if sep and host and ":" not in host and port.isdigit() and not addr.startswith("/"):
            address = Address(host=host, port=_port(port))
            return ServerConfig(address=address, weight=1, name=str(address))
    server = _server(value)
    if server.address.unix_path:
        raise ValueError("cluster seed nodes are host:port")
    return ServerConfig(address=server.address, weight=1, name=str(server.address))


def _check_unique_listen(
    path: str, pools: tuple[PoolConfig, ...], listeners: tuple[ListenerConfig, ...] = ()
) -> None:
    seen: dict[str, str] = {}
    owners = [(f"pool '{p.name}'", p.listen) for p in pools if p.listen is not None]
    owners += [(f"listener '{lc.name}'", lc.listen) for lc in listeners]
    for who, listen in owners:
        key = str(listen)
        if key in seen:
            raise ConfigError(f"{path}: {who}: key 'listen': {key} is also used by {seen[key]}")
        seen[key] = who
