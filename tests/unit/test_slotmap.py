"""Redis Cluster slot maps and redirections as data (slotmap.py), and Redis's key slot."""

from __future__ import annotations

import binascii

import pytest

from proxy.hashing import key_slot
from proxy.slotmap import Redirect, SlotMapError, SlotRange, parse_redirect, parse_slots

ASKED = ("10.0.0.9", 7000)


def test_key_slot_matches_redis_examples() -> None:
    # CRC16/XMODEM of "123456789" is 0x31C3 (the CRC catalogue's check value; Redis's test too)
    assert binascii.crc_hqx(b"123456789", 0) == 0x31C3
    assert key_slot(b"123456789") == 0x31C3 % 16384
    assert key_slot(b"foo") == 12182  # redis.io's CLUSTER KEYSLOT example
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers")
    assert key_slot(b"{user1000}.following") == key_slot(b"user1000")
    assert key_slot(b"foo{}{bar}") == key_slot(b"foo{}{bar}")  # empty tag: whole key hashed
    assert key_slot(b"foo{}{bar}") != key_slot(b"bar")
    assert key_slot(b"foo{{bar}}zap") == key_slot(b"{bar")  # first { to the next }
    assert key_slot(b"foo{bar}{zap}") == key_slot(b"bar")


def test_parse_cluster_slots_reply() -> None:
    reply = [
        [0, 5460, [b"127.0.0.1", 30001, b"id1", []], [b"127.0.0.1", 30004, b"id4", []]],
        [5461, 10922, [b"", 30002, b"id2"]],  # empty endpoint: the node that was asked
        [10923, 16383, [b"?", 30003, b"id3"]],  # unknown endpoint: left unserved
        [16383, 16383, [b"127.0.0.1", 30003, b"id3"], [b"?", 1, b"x"]],
    ]
    assert parse_slots(reply, ASKED) == [
        SlotRange(0, 5460, ("127.0.0.1", 30001), (("127.0.0.1", 30004),)),
        SlotRange(5461, 10922, ("10.0.0.9", 30002), ()),
        SlotRange(16383, 16383, ("127.0.0.1", 30003), ()),
    ]


@pytest.mark.parametrize(
    "reply",
    [b"OK", [[0]], [[0, 16384, [b"h", 1]]], [[5, 4, [b"h", 1]]], [[0, 1, [b"h", b"port"]]]],
)
def test_malformed_cluster_slots_replies_are_errors(reply: object) -> None:
    with pytest.raises(SlotMapError):
        parse_slots(reply, ASKED)


def test_parse_redirect() -> None:
    assert parse_redirect(b"-MOVED 3999 127.0.0.1:6381\r\n", ASKED) == Redirect(
        False, 3999, ("127.0.0.1", 6381)
    )
    assert parse_redirect(b"-ASK 1 10.1.1.1:7\r\n", ASKED) == Redirect(True, 1, ("10.1.1.1", 7))
    assert parse_redirect(b"-MOVED 2 :7001\r\n", ASKED) == Redirect(False, 2, ("10.0.0.9", 7001))
    assert parse_redirect(b"-MOVED 2 ::1:7001\r\n", ASKED) == Redirect(False, 2, ("::1", 7001))
    for raw in [
        b"-ERR x\r\n",
        b"-MOVED x h:1\r\n",
        b"-MOVED 99999 h:1\r\n",
        b"-ASK 1\r\n",
        b"-MOVED 1 host\r\n",
        b"+MOVED 1 h:1\r\n",
        b"-TRYAGAIN Multiple keys\r\n",
    ]:
        assert parse_redirect(raw, ASKED) is None, raw
