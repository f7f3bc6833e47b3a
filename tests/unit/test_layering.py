"""Imports point one way: each module imports only what ARCHITECTURE.md's table allows."""

from __future__ import annotations

import ast
import pathlib

import pytest

PROXY = pathlib.Path(__file__).resolve().parents[2] / "proxy"

ALLOWED: dict[str, set[str]] = {
    "__main__": {"cli"},
    "cli": {"config", "server", "__init__"},
    "server": {
        "config",
        "pool",
        "cluster",
        "sentinel",
        "router",
        "client",
        "inflight",
        "metrics",
        "budget",
        "accel",
        "__init__",
    },
    "sentinel": {"pool", "backend", "resp", "inflight", "errors", "config", "metrics"},
    "router": {"pool", "inflight", "errors", "config", "metrics"},
    "client": {
        "resp",
        "commands",
        "fanout",
        "pool",
        "inflight",
        "budget",
        "stream",
        "errors",
        "metrics",
        "transaction",
        "keyspace",
        "scripts",
        "blocking",
        "backend",
        "pubsub",
        "monitor",
        "local",
        "__init__",
    },
    "local": {"commands", "errors", "inflight", "pool", "resp"},
    "pubsub": {"backend", "config", "errors", "inflight", "pool", "resp"},
    "monitor": {"backend", "errors", "inflight", "pool"},
    "blocking": {"backend", "commands", "errors", "inflight", "pool"},
    "transaction": {"backend", "commands", "errors", "inflight", "pool", "resp", "scripts"},
    "keyspace": {"accel", "commands", "errors", "inflight", "pool", "resp", "scripts", "__init__"},
    "scripts": {"inflight", "resp"},
    "stream": {"backend", "commands", "pool", "resp", "inflight", "metrics"},
    "budget": set(),
    "fanout": {"commands", "resp", "inflight", "errors"},
    "commands": {"errors", "command_data"},
    "command_data": set(),
    "pool": {"backend", "ring", "hashing", "resp", "inflight", "errors", "config", "metrics", "scripts"},
    "cluster": {"pool", "backend", "slotmap", "hashing", "resp", "inflight", "errors", "config", "metrics"},
    "slotmap": set(),
    "backend": {"resp", "inflight", "errors", "metrics"},
    "metrics": set(),
    "inflight": {"errors", "accel"},  # accel: its C twin, unless RESPROXY_PURE=1
    "ring": {"hashing", "accel"},  # the C ketama route
    "hashing": {"accel"},  # the C hash loops
    "resp": {"accel"},  # the C framers
    "accel": set(),  # the one switch between the C and Python twins
    "config": {"command_data"},
    "errors": set(),
    "__init__": set(),
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
