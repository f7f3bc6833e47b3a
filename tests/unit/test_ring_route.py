"""The C ketama route (``_speedups.KetamaRoute``) places every key where its Python twin
(``Continuum.ketama_route``) does, and splits fan-out commands as ``group`` + ``fanout.split`` do.

The two are built side by side here, whatever ``RESPROXY_PURE`` selects for the proxy."""

from __future__ import annotations

import random

import pytest

from proxy import _speedups, resp
from proxy.fanout import split
from proxy.ring import C_HASHES, Continuum, RingServer, build

SERVERS = [
    RingServer(i, name, w) for i, (w, name) in enumerate([(1, "alpha"), (3, "b"), (2, "gamma"), (1, "d")])
]


def _continuum() -> Continuum:
    return build("ketama", SERVERS)


def _keys(seed: str) -> list[bytes]:
    rng = random.Random(seed)
    keys = [b"", b"{}", b"{a}", b"x{}y", b"::k:", b"\xff\x80\x00", b"k" * 300]
    keys += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 24))) for _ in range(400)]
    keys += [f"user:{{{i % 7}}}:{i}".encode() for i in range(100)]
    return keys


@pytest.mark.parametrize("hash_name", sorted(C_HASHES))
@pytest.mark.parametrize("tag", ["", "{}", "::"])
def test_c_route_equals_python_route(hash_name: str, tag: str) -> None:
    continuum = _continuum()
    servers = [s.name for s in SERVERS]
    values, owners = continuum.packed_arrays()
    c_route = _speedups.KetamaRoute(values, owners, servers, hash_name, tag.encode())
    py_route = continuum.ketama_route(hash_name, tag.encode(), servers)
    for key in _keys(hash_name + tag):
        assert c_route.route(key) == py_route(key), key
    with pytest.raises(TypeError):
        c_route.route("not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("hash_name", sorted(C_HASHES))
def test_c_split_equals_python_group_and_split(hash_name: str) -> None:
    continuum = _continuum()
    indexes = list(range(len(SERVERS)))
    values, owners = continuum.packed_arrays()
    c_route = _speedups.KetamaRoute(values, owners, indexes, hash_name, b"{}")
    rng = random.Random(hash_name)

    def group(ks: list[bytes]) -> list[tuple[int, list[int]]]:
        return continuum.group(ks, b"{}", hash_name)

    for _ in range(50):
        keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12))) for _ in range(10)]
        keys += [b"user:{%d}:x" % i for i in range(5)] + [b"{}", b"{", b"a{}b", b""]
        for name, step in ((b"MGET", 1), (b"MSET", 2), (b"DEL", 1)):
            args = [name] + ([x for k in keys for x in (k, b"v" + k)] if step == 2 else keys)
            slow = [(i, resp._py_encode_command(sub), pos) for i, sub, pos in split(args, group)]
            assert c_route.split(args, step) == slow
            assert len(slow) > 1 or hash_name == "crc32"  # 15-bit crc32: one server (twemproxy too)
