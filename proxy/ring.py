"""The continuum of a ring pool: which server a key hash lands on (pure; imports hashing only).

Built from the *live* servers of a pool, in twemproxy's order (sorted by name: pool._ordered),
exactly as twemproxy 0.5 builds it (nc_ketama.c, nc_modula.c, nc_random.c), so keys land where
twemproxy puts them:

* ketama: each server gets ``floor(pct * 160 / 4 * nlive + 1e-10) * 4`` points, computed in C
  ``float`` (float32) arithmetic with the 1e-10 added in double, as twemproxy does (it matters:
  float32 rounding changes the point count for some weight mixes). Points are named
  ``"<server name>-<i>"``; each md5 of a name gives 4 points (little-endian words). The sorted
  continuum is searched for the first point >= hash, wrapping to the first.
* modula: one entry per unit of weight, in server order; ``hash % entries``.
* random: any live server, ignoring the hash.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import struct
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from proxy import accel
from proxy.hashing import HASH_NAMES, hash_function, hash_tag_key

# proxy/_speedups.c's KetamaRoute: route a key, or split a fan-out command, in one C call.
_speedups = accel.c_module("_speedups")
# The hashes KetamaRoute knows (md5 is hashlib's, so it stays on the Python path).
C_HASHES = frozenset(HASH_NAMES) - {"md5"}

T = TypeVar("T")

POINTS_PER_SERVER = 160
POINTS_PER_HASH = 4
DISTRIBUTIONS = ("ketama", "modula", "random")
_MAX_POINT_NAME = 85  # KETAMA_MAX_HOSTLEN - 1

_F32 = struct.Struct("<f")


def _f32(x: float) -> float:
    """Round a double to the nearest C float, as a float32 operation would."""
    return float(_F32.unpack(_F32.pack(x))[0])


@dataclass(frozen=True, slots=True)
class RingServer:
    """A live server as the continuum sees it: its index in the pool, name and weight."""

    index: int
    name: str
    weight: int


def ketama_point_count(weight: int, total_weight: int, nlive: int) -> int:
    """twemproxy's points for one server, in its float32 arithmetic."""
    pct = _f32(_f32(weight) / _f32(total_weight))
    x = _f32(_f32(_f32(pct * POINTS_PER_SERVER) / 4) * _f32(nlive))
    return int(math.floor(_f32(x + 0.0000000001))) * 4


class Continuum:
    """Maps a key hash to a server index."""

    __slots__ = ("distribution", "points", "_values", "_indexes", "_live", "_packed")

    def __init__(self, distribution: str, points: Sequence[tuple[int, int]], live: Sequence[int]):
        self.distribution = distribution
        self.points: tuple[tuple[int, int], ...] = tuple(points)
        self._values = [v for v, _ in self.points]
        self._indexes = [i for _, i in self.points]
        self._live = tuple(live)
        self._packed: tuple[bytes, bytes] | None = None  # for the C kernels

    def dispatch(self, hash_value: int) -> int:
        """The index of the server that owns ``hash_value``."""
        if self.distribution == "ketama":
            at = bisect.bisect_left(self._values, hash_value)
            return self._indexes[at if at < len(self._indexes) else 0]
        if self.distribution == "modula":
            return self._indexes[hash_value % len(self._indexes)]
        return random.choice(self._live)

    def c_router(self, hash_name: str, tag: bytes, servers: list[T]) -> Any:
        """A ``_speedups.KetamaRoute`` over this continuum: ``.route(key) -> servers[owner]``
        (hash tag, hash and search in one C call) and ``.split(args, step)`` (a fan-out command
        routed, grouped by server and encoded); None where it does not apply (not ketama, md5,
        the Python twins selected): the caller uses ``ketama_route`` and ``group`` (same
        results; tests/unit/test_ring_route.py compares them)."""
        if self.distribution != "ketama" or _speedups is None or hash_name not in C_HASHES:
            return None
        values, owners = self.packed_arrays()
        return _speedups.KetamaRoute(values, owners, servers, hash_name, tag)

    def ketama_route(self, hash_name: str, tag: bytes, servers: list[T]) -> Callable[[bytes], T | None]:
        """``route(key) -> servers[owner]`` in Python: the twin of ``c_router(...).route``.

        A closure over the continuum's arrays (it runs for every request): hash tag, hash, and
        the first point >= the hash, wrapping to the first."""
        hash_key = hash_function(hash_name)
        open_tag, close_tag = tag[:1], tag[1:2]
        values = self._values
        owners = [servers[i] for i in self._indexes]
        first = owners[0] if owners else None
        count = len(values)
        find = bisect.bisect_left

        def route(key: bytes) -> T | None:
            if tag:  # twemproxy's hash_tag: hash only a non-empty {tag} (hashing.hash_tag_key)
                start = key.find(open_tag)
                if start >= 0:
                    end = key.find(close_tag, start + 1)
                    if end - start > 1:
                        key = key[start + 1 : end]
            if not key:
                return owners[find(values, 0)] if count else None
            at = find(values, hash_key(key))
            return owners[at] if at < count else first

        return route

    def packed_arrays(self) -> tuple[bytes, bytes]:
        """The points as C arrays: uint32 values and uint16 owner indexes."""
        packed = self._packed
        if packed is None:
            packed = self._packed = (
                array("I", self._values).tobytes(),
                array("H", self._indexes).tobytes(),
            )
        return packed

    def group(self, keys: list[bytes], tag: bytes, hash_name: str) -> list[tuple[int, list[int]]]:
        """Key positions grouped by the server index that owns each key, in first-seen order."""
        hash_key = hash_function(hash_name)
        groups: dict[int, list[int]] = {}
        for pos, key in enumerate(keys):
            key = hash_tag_key(key, tag)
            server = self.dispatch(hash_key(key) if key else 0)
            group = groups.get(server)
            if group is None:
                groups[server] = [pos]
            else:
                group.append(pos)
        return list(groups.items())


def build(distribution: str, servers: Sequence[RingServer]) -> Continuum:
    """The continuum over ``servers`` (the live ones, in the pool's order)."""
    live = [s.index for s in servers if s.weight > 0]
    if distribution == "ketama":
        return Continuum(distribution, _ketama_points(servers), live)
    if distribution == "modula":
        points = [(0, s.index) for s in servers for _ in range(s.weight)]
        return Continuum(distribution, points, live)
    if distribution == "random":
        return Continuum(distribution, [], live)
    raise ValueError(f"unknown distribution {distribution!r}")


def _ketama_points(servers: Sequence[RingServer]) -> list[tuple[int, int]]:
    total = sum(s.weight for s in servers)
    nlive = len(servers)
    points: list[tuple[int, int]] = []
    for s in servers:
        count = ketama_point_count(s.weight, total, nlive)
        name = s.name.encode()
        for i in range(count // POINTS_PER_HASH):
            # twemproxy formats the point name into char[86]: at most 85 bytes are hashed.
            digest = hashlib.md5((name + b"-%d" % i)[:_MAX_POINT_NAME]).digest()
            for x in range(POINTS_PER_HASH):
                points.append((int.from_bytes(digest[4 * x : 4 * x + 4], "little"), s.index))
    # twemproxy sorts with qsort by value only; equal values (an md5 collision on 32 bits) are
    # left in qsort's order, which no test of ours can pin down; we keep server order for them.
    points.sort(key=lambda p: p[0])
    return points
