"""The C ketama route (``_speedups.KetamaRoute``) places every key where the Python one does."""

from __future__ import annotations

import asyncio
import random

import pytest

from proxy.config import parse
from proxy.pool import RingPool
from proxy.ring import C_HASHES


def _pool(hash_name: str, tag: str, python: bool, monkeypatch: pytest.MonkeyPatch) -> RingPool:
    servers = "".join(
        f"      - 127.0.0.1:{7000 + i}:{w}{name}\n"
        for i, (w, name) in enumerate([(1, " alpha"), (3, ""), (2, " gamma"), (1, " d")])
    )
    tag_line = f'    hash_tag: "{tag}"\n' if tag else ""
    cfg = parse(f"pools:\n  p:\n    listen: 127.0.0.1:1\n    hash: {hash_name}\n{tag_line}"
                f"    servers:\n{servers}")  # fmt: skip
    monkeypatch.setattr(RingPool, "python_route", python)
    return RingPool(cfg.pools[0], asyncio.new_event_loop())


@pytest.mark.parametrize("hash_name", sorted(C_HASHES))
@pytest.mark.parametrize("tag", ["", "{}", "::"])
def test_c_route_equals_python_route(
    hash_name: str, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    c_pool = _pool(hash_name, tag, False, monkeypatch)
    py_pool = _pool(hash_name, tag, True, monkeypatch)
    assert type(c_pool.route).__name__ == "builtin_function_or_method"  # the C route runs
    assert type(py_pool.route).__name__ == "function"
    rng = random.Random(hash_name + tag)
    keys = [b"", b"{}", b"{a}", b"x{}y", b"::k:", b"\xff\x80\x00", b"k" * 300]
    keys += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24))) for _ in range(400)]
    keys += [f"user:{{{i % 7}}}:{i}".encode() for i in range(100)]
    for key in keys:
        c, py = c_pool.route(key), py_pool.route(key)
        assert c is not None and py is not None
        assert c.name == py.name, key  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        c_pool.route("not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("hash_name", sorted(C_HASHES))
def test_c_router_split_equals_split_command(hash_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy import _speedups

    pool = _pool(hash_name, "{}", False, monkeypatch)
    assert pool._ketama is not None
    continuum = pool._continuum
    assert continuum is not None
    values, owners = continuum._packed_arrays()
    rng = random.Random(hash_name)
    for _ in range(50):
        keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12))) for _ in range(10)]
        for name, step in ((b"MGET", 1), (b"MSET", 2)):
            args = [name] + ([x for k in keys for x in (k, b"v")] if step == 2 else keys)
            assert pool.split_command(args) == _speedups.split_command(
                args, step, b"{}", hash_name, values, owners, pool.servers
            )
