"""twemproxy's key hash functions and hash tags (leaf module).

Every function returns exactly what twemproxy 0.5's ``src/hashkit`` returns for the same key, an
unsigned 32-bit integer, so a ring pool places each key on the server twemproxy would. That
includes twemproxy's quirks, kept on purpose:

* ``fnv1a_64`` is really 32-bit: the accumulator is a ``uint32_t`` seeded with the low 32 bits
  of the 64-bit offset basis and multiplied by the low 32 bits of the 64-bit prime.
* key bytes are C ``char``: signed on x86, so a byte >= 0x80 is sign-extended where twemproxy
  casts it to a wider integer (one_at_a_time, fnv*).
* ``crc16`` never masks its accumulator to 16 bits; ``crc32`` returns libmemcached's 15-bit
  ``(~crc >> 16) & 0x7fff`` while ``crc32a`` is the plain CRC-32.
* ``murmur`` seeds MurmurHash2 with ``0xdeadbeef * length``; ``jenkins`` is lookup3's
  ``hashlittle`` with initval 13; ``hsieh`` is SuperFastHash starting from 0, not from length.

The byte loops run in C (proxy/_speedups.c) when the build compiled it; the Python functions
here are the reference (tests check the two agree) and the fallback.
"""

from __future__ import annotations

import hashlib
import zlib
from binascii import crc_hqx
from collections.abc import Callable

from proxy import accel

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF

# A C char widened to uint32 / uint64 (sign extension of bytes >= 0x80).
_SX32 = tuple(b if b < 0x80 else (b | 0xFFFFFF00) for b in range(256))
_SX64 = tuple(b if b < 0x80 else (b | 0xFFFFFFFFFFFFFF00) for b in range(256))


def _crc16_table() -> tuple[int, ...]:
    # CRC-16/XMODEM (poly 0x1021), the table twemproxy's nc_crc16.c and Redis's crc16.c use.
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16 = _crc16_table()


def one_at_a_time(key: bytes) -> int:
    value = 0
    for b in key:
        value = (value + _SX32[b]) & M32
        value = (value + (value << 10)) & M32
        value ^= value >> 6
    value = (value + (value << 3)) & M32
    value ^= value >> 11
    return (value + (value << 15)) & M32


def md5(key: bytes) -> int:
    return int.from_bytes(hashlib.md5(key).digest()[:4], "little")


def crc16(key: bytes) -> int:
    crc = 0
    for b in key:
        crc = ((crc << 8) & M32) ^ _CRC16[((crc >> 8) ^ b) & 0xFF]
    return crc


def crc32(key: bytes) -> int:
    return (zlib.crc32(key) >> 16) & 0x7FFF


def crc32a(key: bytes) -> int:
    return zlib.crc32(key)


_FNV64_INIT = 0xCBF29CE484222325
_FNV64_PRIME = 0x100000001B3
_FNV32_INIT = 0x811C9DC5
_FNV32_PRIME = 0x01000193


def fnv1_64(key: bytes) -> int:
    h = _FNV64_INIT
    for b in key:
        h = ((h * _FNV64_PRIME) & M64) ^ _SX64[b]
    return h & M32


def fnv1a_64(key: bytes) -> int:
    # uint32 accumulator and truncated constants: twemproxy's, see the module docstring.
    h = _FNV64_INIT & M32
    for b in key:
        h = ((h ^ _SX32[b]) * 0x1B3) & M32
    return h


def fnv1_32(key: bytes) -> int:
    h = _FNV32_INIT
    for b in key:
        h = ((h * _FNV32_PRIME) & M32) ^ _SX32[b]
    return h


def fnv1a_32(key: bytes) -> int:
    h = _FNV32_INIT
    for b in key:
        h = ((h ^ _SX32[b]) * _FNV32_PRIME) & M32
    return h


def hsieh(key: bytes) -> int:
    n = len(key)
    h = 0
    i = 0
    for _ in range(n >> 2):
        h = (h + (key[i] | (key[i + 1] << 8))) & M32
        tmp = (((key[i + 2] | (key[i + 3] << 8)) << 11) ^ h) & M32
        h = ((h << 16) & M32) ^ tmp
        i += 4
        h = (h + (h >> 11)) & M32
    rem = n & 3
    if rem == 3:
        h = (h + (key[i] | (key[i + 1] << 8))) & M32
        h ^= (h << 16) & M32
        h ^= (_SX32[key[i + 2]] << 18) & M32
        h = (h + (h >> 11)) & M32
    elif rem == 2:
        h = (h + (key[i] | (key[i + 1] << 8))) & M32
        h ^= (h << 11) & M32
        h = (h + (h >> 17)) & M32
    elif rem == 1:
        h = (h + _SX32[key[i]]) & M32
        h ^= (h << 10) & M32
        h = (h + (h >> 1)) & M32
    h ^= (h << 3) & M32
    h = (h + (h >> 5)) & M32
    h ^= (h << 4) & M32
    h = (h + (h >> 17)) & M32
    h ^= (h << 25) & M32
    return (h + (h >> 6)) & M32


def murmur(key: bytes) -> int:
    m = 0x5BD1E995
    n = len(key)
    h = ((0xDEADBEEF * n) & M32) ^ n
    i = 0
    while n - i >= 4:
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * m) & M32
        k ^= k >> 24
        k = (k * m) & M32
        h = ((h * m) & M32) ^ k
        i += 4
    rem = n - i
    if rem == 3:
        h ^= key[i + 2] << 16
    if rem >= 2:
        h ^= key[i + 1] << 8
    if rem >= 1:
        h ^= key[i]
        h = (h * m) & M32
    h ^= h >> 13
    h = (h * m) & M32
    return h ^ (h >> 15)


_JENKINS_INITVAL = 13  # libmemcached's, kept by twemproxy


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & M32


def jenkins(key: bytes) -> int:
    # lookup3 hashlittle(key, length, 13), byte by byte (same result as its aligned paths).
    n = len(key)
    a = b = c = (0xDEADBEEF + n + _JENKINS_INITVAL) & M32
    i = 0
    while n - i > 12:
        a = (a + int.from_bytes(key[i : i + 4], "little")) & M32
        b = (b + int.from_bytes(key[i + 4 : i + 8], "little")) & M32
        c = (c + int.from_bytes(key[i + 8 : i + 12], "little")) & M32
        # mix(a, b, c)
        a = (a - c) & M32
        a ^= _rot(c, 4)
        c = (c + b) & M32  # noqa: E702
        b = (b - a) & M32
        b ^= _rot(a, 6)
        a = (a + c) & M32  # noqa: E702
        c = (c - b) & M32
        c ^= _rot(b, 8)
        b = (b + a) & M32  # noqa: E702
        a = (a - c) & M32
        a ^= _rot(c, 16)
        c = (c + b) & M32  # noqa: E702
        b = (b - a) & M32
        b ^= _rot(a, 19)
        a = (a + c) & M32  # noqa: E702
        c = (c - b) & M32
        c ^= _rot(b, 4)
        b = (b + a) & M32  # noqa: E702
        i += 12
    rem = n - i
    if rem == 0:
        return c
    tail = key[i:] + b"\x00" * (12 - rem)
    a = (a + int.from_bytes(tail[0:4], "little")) & M32
    b = (b + int.from_bytes(tail[4:8], "little")) & M32
    c = (c + int.from_bytes(tail[8:12], "little")) & M32
    # final(a, b, c)
    c ^= b
    c = (c - _rot(b, 14)) & M32  # noqa: E702
    a ^= c
    a = (a - _rot(c, 11)) & M32  # noqa: E702
    b ^= a
    b = (b - _rot(a, 25)) & M32  # noqa: E702
    c ^= b
    c = (c - _rot(b, 16)) & M32  # noqa: E702
    a ^= c
    a = (a - _rot(c, 4)) & M32  # noqa: E702
    b ^= a
    b = (b - _rot(a, 14)) & M32  # noqa: E702
    c ^= b
    c = (c - _rot(b, 24)) & M32  # noqa: E702
    return c


HashFunction = Callable[[bytes], int]

_FUNCTIONS: dict[str, HashFunction] = {
    "one_at_a_time": one_at_a_time,
    "md5": md5,
    "crc16": crc16,
    "crc32": crc32,
    "crc32a": crc32a,
    "fnv1_64": fnv1_64,
    "fnv1a_64": fnv1a_64,
    "fnv1_32": fnv1_32,
    "fnv1a_32": fnv1a_32,
    "hsieh": hsieh,
    "murmur": murmur,
    "jenkins": jenkins,
}
HASH_NAMES: tuple[str, ...] = tuple(_FUNCTIONS)
PY_FUNCTIONS: dict[str, HashFunction] = dict(_FUNCTIONS)  # the reference implementations

_speedups = accel.c_module("_speedups")  # the C byte loops, unless RESPROXY_PURE=1 or not built
if _speedups is not None:
    for _name in HASH_NAMES:
        if hasattr(_speedups, _name):
            _FUNCTIONS[_name] = getattr(_speedups, _name)


def hash_function(name: str) -> HashFunction:
    """twemproxy's hash function called ``name`` (ValueError if there is none)."""
    try:
        return _FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown hash {name!r}; one of {', '.join(HASH_NAMES)}") from None


def hash_tag_key(key: bytes, tag: bytes) -> bytes:
    """The part of ``key`` to hash under twemproxy's ``hash_tag`` (the whole key if none).

    The tag's content is what lies between the first ``tag[0]`` and the next ``tag[1]`` after
    it, used only when non-empty (``user:{}x`` hashes whole).
    """
    if not tag:
        return key
    start = key.find(tag[:1])
    if start < 0:
        return key
    end = key.find(tag[1:2], start + 1)
    if end - start > 1:
        return key[start + 1 : end]
    return key


CLUSTER_SLOTS = 16384


def key_slot(key: bytes) -> int:
    """Redis Cluster's hash slot of ``key`` (CLUSTER KEYSLOT): CRC16-XMODEM mod 16384.

    Only the part between the first ``{`` and the next ``}`` is hashed when it is non-empty
    (Redis's hash tag; fixed to ``{}``, unlike a ring pool's configurable ``hash_tag``).
    ``binascii.crc_hqx`` is that CRC in C.
    """
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc_hqx(key, 0) & 0x3FFF
