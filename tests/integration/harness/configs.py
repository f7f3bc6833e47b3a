"""Config texts for resproxy (and nutcracker): pools, listeners with routes, the metrics endpoint."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.integration.harness.sentinel import SentinelGroup
    from tests.integration.harness.servers import RedisServer

# The ring most modules use: ketama over murmur (which spreads short keys evenly), tags in {}.
MURMUR_RING: dict[str, object] = {"hash": "murmur", "distribution": "ketama", "hash_tag": "{}"}


def _scalar(value: object) -> str:
    """A YAML scalar (or flow list): booleans as true/false, strings quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return str(value)


def server_lines(
    servers: Sequence[RedisServer], names: str | Sequence[str] | None = "s", weight: int = 1
) -> list[str]:
    """A pool's ``servers:`` entries: named ``names`` + index (``s0``, ``s1``...), the names
    given one by one, or (``None``) unnamed."""
    if names is None:
        return [f"127.0.0.1:{s.port}:{weight}" for s in servers]
    if isinstance(names, str):
        names = [f"{names}{i}" for i in range(len(servers))]
    return [f"127.0.0.1:{s.port}:{weight} {n}" for s, n in zip(servers, names)]


def _pool(
    name: str,
    listen_port: int | None,
    entries: Sequence[str],
    keys: Mapping[str, object],
    native: bool = True,
    list_key: str = "servers",
) -> str:
    indent = "    " if native else "  "
    lines = [f"{indent[:-2]}{name}:"]
    if listen_port is not None:
        lines.append(f"{indent}listen: 127.0.0.1:{listen_port}")
    lines.extend(f"{indent}{key}: {_scalar(value)}" for key, value in keys.items())
    lines.append(f"{indent}{list_key}:")
    lines.extend(f"{indent}  - {s}" for s in entries)
    return "\n".join(lines) + "\n"


def pool_yaml(name: str, listen_port: int | None, servers: Sequence[str], **keys: object) -> str:
    """One pool's YAML under ``pools:``; no ``listen`` without a port (a pool that only a
    listener's routes reach)."""
    return _pool(name, listen_port, servers, keys)


def nutcracker_pool_yaml(name: str, listen_port: int, servers: Sequence[str], **keys: object) -> str:
    """One pool's YAML in nutcracker.yml's form (read as it is by both proxies)."""
    return _pool(name, listen_port, servers, keys, native=False)


def sentinel_pool_yaml(
    name: str, group: SentinelGroup, listen_port: int | None = None, **keys: object
) -> str:
    """A native sentinel pool's YAML (with ``listen`` when a port is given)."""
    keys = {"distribution": "sentinel", "master_name": group.name, **keys}
    return _pool(name, listen_port, group.seeds(), keys, list_key="sentinels")


def route(prefix: str, pool: str, **keys: object) -> str:
    """One route of a listener (a YAML flow mapping)."""
    fields = {"prefix": prefix, "pool": pool, **keys}
    return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in fields.items()) + "}"


def listener_yaml(name: str, listen_port: int, *routes: str, default_pool: str | None = None) -> str:
    """One listener's YAML (under ``listeners:``): its routes in order, then its default pool."""
    lines = [f"  {name}:", f"    listen: 127.0.0.1:{listen_port}"]
    if default_pool is not None:
        lines.append(f"    default_pool: {default_pool}")
    if routes:
        lines.append("    routes:")
        lines.extend(f"      - {r}" for r in routes)
    return "\n".join(lines) + "\n"


def native_config(*pools: str, listeners: Sequence[str] = (), metrics_port: int | None = None) -> str:
    """A native config: these pools, then these listeners, and /metrics on ``metrics_port``."""
    text = "pools:\n" + "".join(pools)
    if listeners:
        text += "listeners:\n" + "".join(listeners)
    if metrics_port is not None:
        text += f"metrics:\n  listen: 127.0.0.1:{metrics_port}\n"
    return text
