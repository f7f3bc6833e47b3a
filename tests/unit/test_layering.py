"""Imports point one way: each module imports only what the table below allows (the layers of
docs/architecture.md)."""

from __future__ import annotations

import ast
import pathlib

import pytest

PROXY = pathlib.Path(__file__).resolve().parents[2] / "proxy"

# Bottom-up: leaves; sans-IO protocol and tables; connections; one server; what a pool is
# (target); the pool kinds; the client's features; the client; the wiring. Nothing imports
# upwards: client features know pools only as ``target.Pool``/``upstream.Server``.
ALLOWED: dict[str, set[str]] = {
    # leaves
    "__init__": set(),
    "accel": set(),  # the one switch between the C and Python twins
    "errors": set(),
    "metrics": set(),
    "budget": set(),
    "slotmap": set(),
    "command_data": set(),
    # who may run what (ACL users), and the security settings' config (TLS, users)
    "acl": {"command_data"},
    "security": {"acl"},
    # sans-IO protocol, hashing, tables (accel: their C twins, unless RESPROXY_PURE=1)
    "resp": {"accel"},
    "hashing": {"accel"},
    "ring": {"hashing", "accel"},
    "commands": {"errors", "command_data"},
    "config": {"command_data", "acl", "security"},
    "tls": {"security"},  # SSL contexts, and the handshake of a TLS front's clients
    "inflight": {"errors", "accel"},
    "fanout": {"commands", "resp", "inflight", "errors"},
    "scripts": {"inflight", "resp"},
    # connections to servers, one server, what a pool is to its users
    "backend": {"resp", "inflight", "errors", "metrics", "tls"},
    "upstream": {"backend", "config", "errors", "inflight", "metrics", "resp", "scripts", "tls"},
    "target": {"config", "inflight", "metrics", "upstream"},
    # the pool kinds
    "follow": {"inflight"},
    "pool": {"config", "errors", "hashing", "metrics", "ring", "target", "upstream"},
    "cluster": {
        "backend",
        "config",
        "errors",
        "follow",
        "hashing",
        "inflight",
        "metrics",
        "pool",
        "resp",
        "slotmap",
        "target",
        "upstream",
    },
    "sentinel": {
        "backend",
        "config",
        "errors",
        "follow",
        "inflight",
        "metrics",
        "pool",
        "resp",
        "security",
        "target",
        "tls",
        "upstream",
    },
    "router": {"config", "errors", "inflight", "metrics", "target", "upstream"},
    # what a client connection does beyond forwarding
    "local": {"acl", "commands", "errors", "inflight", "keyspace", "resp", "target", "__init__"},
    "pubsub": {"backend", "config", "errors", "inflight", "resp", "target", "upstream"},
    "monitor": {"backend", "errors", "inflight", "target"},
    "blocking": {"backend", "commands", "errors", "inflight", "target"},
    "transaction": {"backend", "commands", "errors", "inflight", "resp", "scripts", "target", "upstream"},
    "keyspace": {
        "accel",
        "commands",
        "errors",
        "inflight",
        "resp",
        "scripts",
        "target",
        "upstream",
        "__init__",
    },
    "stream": {"backend", "commands", "inflight", "metrics", "pool", "resp", "target", "upstream"},
    # the client connection
    "client": {
        "acl",
        "blocking",
        "budget",
        "commands",
        "errors",
        "fanout",
        "inflight",
        "keyspace",
        "local",
        "metrics",
        "monitor",
        "pubsub",
        "resp",
        "scripts",
        "stream",
        "target",
        "tls",
        "transaction",
        "__init__",
    },
    # wiring
    "server": {
        "accel",
        "budget",
        "client",
        "cluster",
        "config",
        "inflight",
        "metrics",
        "pool",
        "local",
        "router",
        "security",
        "sentinel",
        "target",
        "tls",
        "__init__",
    },
    "cli": {"config", "server", "__init__"},
    "__main__": {"cli"},
}
PURE = {
    "resp",
    "hashing",
    "ring",
    "commands",
    "command_data",
    "fanout",
    "inflight",
    "config",
    "scripts",
    "errors",
    "slotmap",
    "budget",
    "accel",
    "acl",
    "security",
}


def _imports(path: pathlib.Path) -> tuple[set[str], set[str]]:
    ours: set[str] = set()
    other: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "proxy":
                ours.update(a.name if a.name != "__version__" else "__init__" for a in node.names)
            elif node.module.startswith("proxy."):
                ours.add(node.module.split(".")[1])
            else:
                other.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("proxy."):
                    ours.add(a.name.split(".")[1])
                else:
                    other.add(a.name.split(".")[0])
    return ours, other


MODULES = sorted(p.stem for p in PROXY.glob("*.py"))


def test_every_module_is_in_the_table() -> None:
    assert set(MODULES) <= set(ALLOWED), set(MODULES) - set(ALLOWED)


@pytest.mark.parametrize("module", MODULES)
def test_imports_follow_the_layering(module: str) -> None:
    ours, other = _imports(PROXY / f"{module}.py")
    assert ours <= ALLOWED[module], f"{module} imports {ours - ALLOWED[module]}"
    if module in PURE:
        assert not other & {"asyncio", "socket", "uvloop", "logging"}, f"{module} does I/O: {other}"
