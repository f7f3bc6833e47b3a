"""twemproxy's hash functions: C and Python agree; standard check values; hash tags; ketama."""

from __future__ import annotations

import random

import pytest

from proxy import _speedups, ring
from proxy.hashing import HASH_NAMES, PY_FUNCTIONS, hash_function, hash_tag_key


def _keys() -> list[bytes]:
    rng = random.Random(11)
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))) for _ in range(2000)]
    keys += [b"a", b"ab", b"abc", b"abcd", b"\xff", b"\x80key", b"x" * 300, b"key:000000012345"]
    return keys


@pytest.mark.parametrize("name", HASH_NAMES)
def test_c_and_python_hashes_agree_on_every_key(name: str) -> None:
    slow = PY_FUNCTIONS[name]
    fast = getattr(_speedups, name) if name != "md5" else slow  # md5 is hashlib's in both
    for key in _keys():
        assert fast(key) == slow(key), (name, key)
        assert 0 <= fast(key) < 2**32


# Where twemproxy's function is a standard one, its standard check value.
@pytest.mark.parametrize(
    "name, key, value",
    [
        ("crc32a", b"123456789", 0xCBF43926),  # CRC-32/ISO-HDLC check value
        ("crc32", b"123456789", (0xCBF43926 >> 16) & 0x7FFF),  # libmemcached's 15 bits of it
        ("fnv1a_32", b"a", 0xE40C292C),  # FNV-1a 32-bit test vector
        ("fnv1_32", b"a", 0x050C5D7E),  # FNV-1 32-bit test vector
        ("one_at_a_time", b"a", 0xCA2E9442),  # Jenkins one-at-a-time of "a"
        ("md5", b"a", 0xB975C10C),  # md5("a") = 0cc175b9...: first word, little-endian
    ],
)
def test_standard_check_values(name: str, key: bytes, value: int) -> None:
    assert hash_function(name)(key) == value
    assert PY_FUNCTIONS[name](key) == value


def test_crc16_keeps_twemproxys_unmasked_accumulator() -> None:
    # The low 16 bits are CRC-16/XMODEM (check value 0x31C3); the upper bits are the shifted-out
    # ones twemproxy never masks, and they decide ketama placement.
    h = hash_function("crc16")(b"123456789")
    assert h & 0xFFFF == 0x31C3
    assert h > 0xFFFF


def test_fnv1a_64_is_twemproxys_32_bit_variant() -> None:
    # uint32 accumulator seeded with the low half of the 64-bit basis, times 0x1b3
    h = 0x84222325
    for b in b"hello":
        h = ((h ^ b) * 0x1B3) & 0xFFFFFFFF
    assert hash_function("fnv1a_64")(b"hello") == h


def test_key_bytes_are_signed_chars_where_twemproxy_widens_them() -> None:
    # 0xff as a C char is -1: sign-extended before the xor, unlike the unsigned reading.
    unsigned = ((0x811C9DC5 ^ 0xFF) * 0x01000193) & 0xFFFFFFFF
    signed = ((0x811C9DC5 ^ 0xFFFFFFFF) * 0x01000193) & 0xFFFFFFFF
    assert hash_function("fnv1a_32")(b"\xff") == signed != unsigned


def test_unknown_hash_name() -> None:
    with pytest.raises(ValueError, match="unknown hash 'sha1'"):
        hash_function("sha1")


@pytest.mark.parametrize(
    "key, tag, hashed",
    [
        (b"user:{42}:name", b"{}", b"42"),
        (b"{a}{b}", b"{}", b"a"),  # the first tag
        (b"user:{}:x", b"{}", b"user:{}:x"),  # empty tag: whole key
        (b"user:{42", b"{}", b"user:{42"),  # unclosed: whole key
        (b"}x{y}", b"{}", b"y"),  # a close before the open does not count
        (b"a$b$c", b"$$", b"b"),
        (b"plain", b"", b"plain"),  # no hash_tag configured
    ],
)
def test_hash_tag(key: bytes, tag: bytes, hashed: bytes) -> None:
    assert hash_tag_key(key, tag) == hashed


def test_ketama_point_counts_follow_twemproxys_float32_formula() -> None:
    assert [ring.ketama_point_count(1, 3, 3) for _ in range(3)] == [160, 160, 160]
    # weights 1, 2, 1: 4 live servers' worth of points split by weight
    assert [ring.ketama_point_count(w, 4, 3) for w in (1, 2, 1)] == [120, 240, 120]
    continuum = ring.build(
        "ketama", [ring.RingServer(0, "a", 1), ring.RingServer(1, "b", 2), ring.RingServer(2, "c", 1)]
    )
    assert len(continuum.points) == 480
    assert [v for v, _ in continuum.points] == sorted(v for v, _ in continuum.points)


def test_modula_has_one_entry_per_unit_of_weight_in_server_order() -> None:
    continuum = ring.build("modula", [ring.RingServer(0, "a", 1), ring.RingServer(1, "b", 2)])
    assert continuum.points == ((0, 0), (0, 1), (0, 1))
    assert [continuum.dispatch(h) for h in range(6)] == [0, 1, 1, 0, 1, 1]
