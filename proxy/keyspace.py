"""Commands about the whole keyspace: asked of every server (or of one) and merged.

The pool's ``keyspace_servers()`` are the servers that together hold every key (a ring's
servers, a cluster's masters, a sentinel pool's master, each pool of a listener once):

* ``SCAN`` walks them one after another. The client's cursor is one unsigned 64-bit number:

      bits 63..24: the server's own cursor   bits 23..10: check   bits 9..0: server index

  A server's cursor 0 moves on to the next server; after the last, 0. Each server keeps
  Redis's guarantee for its own keys, so every key present for the whole scan is returned.
  ``check`` is a fingerprint of the server list: a cursor from before a reload that changed
  the servers is refused (it would skip or repeat keys), and any proxy with the same config
  continues any other's cursor (sidecars stay stateless). MATCH, COUNT and TYPE pass through.
* ``KEYS`` concatenated, ``DBSIZE`` summed, ``RANDOMKEY`` one non-nil answer picked at random,
  ``FLUSHDB``/``FLUSHALL`` on every server; ``LASTSAVE``, ``TIME`` from the first server.
* ``SCRIPT LOAD`` everywhere (and the body kept: scripts.py), ``SCRIPT EXISTS`` 1 only where
  every server has it, ``SCRIPT FLUSH`` everywhere (the kept bodies forgotten), ``SCRIPT KILL``
  everywhere (OK if any server had one running); ``FUNCTION LOAD/DELETE/FLUSH/RESTORE/KILL``
  everywhere, ``FUNCTION LIST/DUMP/STATS`` from the first server (they are alike everywhere).
* ``INFO`` gains ``# Server`` (``redis_version``: the lowest of the servers') and
  ``# Keyspace`` (summed) around the proxy's own sections.

Every server's reply is waited for (a down server's error fails the command: a partial KEYS or
DBSIZE would be a wrong answer, not a smaller one).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

from proxy import __version__, accel, errors
from proxy.commands import CommandSpec
from proxy.inflight import Gather, Merge, ReplyQueue, ReplySlot
from proxy.resp import (
    ERROR_TYPES,
    OK,
    decode_reply,
    encode_bulk,
    encode_command,
    encode_error,
    encode_int,
    encode_value,
)
from proxy.scripts import CACHE
from proxy.target import Pool, fingerprint
from proxy.upstream import Server

INDEX_BITS = 10
CHECK_BITS = 14
CURSOR_SHIFT = INDEX_BITS + CHECK_BITS
MAX_SERVERS = 1 << INDEX_BITS
SERVER_CURSOR_LIMIT = 1 << (64 - CURSOR_SHIFT)
# FUNCTION and SCRIPT subcommands answered by the first server alone
ONE_SERVER = frozenset(
    {"lastsave", "time", "function|list", "function|dump", "function|stats", "function|help", "script|help"}
)
_last_version = ""  # the lowest redis_version seen, for INFO while no server answers


class KeyspaceHost(Protocol):
    """What these commands need of their client connection."""

    id: int
    queue: ReplyQueue
    _pool: Pool
    resp3: bool


def serve(host: KeyspaceHost, spec: CommandSpec, args: list[bytes], raw: bytes) -> None:
    """Answer a KEYSPACE command (commands.Kind.KEYSPACE)."""
    queue = host.queue
    servers = host._pool.keyspace_servers(replicas=spec.fullname.startswith("script|"))
    if isinstance(servers, str):
        queue.push_error(servers)
        return
    full = spec.fullname
    if full == "scan":
        _scan(host, servers, args)
        return
    if full in ONE_SERVER:
        servers[0].send(raw, queue.push(), resp3=host.resp3, lane=host.id)
        return
    if full == "script|load":
        CACHE.remember(args[2], preload=True)
    elif full == "script|flush":
        CACHE.clear()
    merge = MERGES.get(full, merge_same)
    broadcast(host, servers, raw, merge, queue.push())


def broadcast(
    host: KeyspaceHost, servers: Sequence[Server], payload: bytes, merge: Merge, slot: ReplySlot
) -> None:
    """Send ``payload`` to every server; ``slot`` gets ``merge`` of their replies."""
    parts: list[tuple[Server, bytes, list[int]]] = [(server, payload, []) for server in servers]
    gather = Gather(slot, merge, b"", 0, parts)
    resp3, client = host.resp3, host.id
    for server, child in zip(servers, gather.slots):
        server.send(payload, child, resp3=resp3, lane=client)


# --- merges: merge(name, parts, nkeys, replies) -> the one reply ----------------------------


def _first_error(datas: list[bytes]) -> bytes | None:
    for raw in datas:
        if raw[:1] in ERROR_TYPES:
            return raw
    return None


def merge_same(name: bytes, parts: Sequence[tuple[Any, ...]], nkeys: int, datas: list[bytes]) -> bytes:
    """Every server did the same (FLUSHDB, SCRIPT LOAD...): the first reply, or an error."""
    return _first_error(datas) or datas[0]


def merge_sum(name: bytes, parts: Sequence[tuple[Any, ...]], nkeys: int, datas: list[bytes]) -> bytes:
    error = _first_error(datas)
    if error is not None:
        return error
    try:
        return encode_int(sum(int(raw[1:-2]) for raw in datas))
    except ValueError:
        return encode_error(errors.MERGE_MISMATCH)


def _array_items(raw: bytes) -> tuple[int, bytes] | None:
    """(count, the items' bytes) of an array reply, or None (nil or not an array)."""
    if raw[:1] != b"*":
        return None
    end = raw.index(b"\r\n")
    count = int(raw[1:end])
    return (count, raw[end + 2 :]) if count >= 0 else None


def merge_concat(name: bytes, parts: Sequence[tuple[Any, ...]], nkeys: int, datas: list[bytes]) -> bytes:
    """KEYS: every server's array, one after another."""
    error = _first_error(datas)
    if error is not None:
        return error
    total = 0
    bodies = []
    for raw in datas:
        items = _array_items(raw)
        if items is None:
            return encode_error(errors.MERGE_MISMATCH)
        total += items[0]
        bodies.append(items[1])
    return b"*%d\r\n" % total + b"".join(bodies)


def merge_all(name: bytes, parts: Sequence[tuple[Any, ...]], nkeys: int, datas: list[bytes]) -> bytes:
    """SCRIPT EXISTS: 1 where every server said 1."""
    error = _first_error(datas)
    if error is not None:
        return error
    rows = []
    for raw in datas:
        items = _array_items(raw)
        if items is None:
            return encode_error(errors.MERGE_MISMATCH)
        rows.append(items[1].split(b"\r\n")[:-1])
    merged = [min(column) for column in zip(*rows)]  # b":0" < b":1"
    return b"*%d\r\n" % len(merged) + b"".join(item + b"\r\n" for item in merged)


def merge_random(name: bytes, parts: Sequence[tuple[Any, ...]], nkeys: int, datas: list[bytes]) -> bytes:
    """RANDOMKEY: one server's key, picked at random among the servers that have keys."""
    error = _first_error(datas)
    if error is not None:
        return error
    found = [raw for raw in datas if raw not in (b"$-1\r\n", b"_\r\n")]
    return random.choice(found) if found else datas[0]


def merge_any_ok(name: bytes, parts: Sequence[tuple[Any, ...]], nkeys: int, datas: list[bytes]) -> bytes:
    """SCRIPT KILL / FUNCTION KILL: OK if one server had something to kill."""
    return OK if OK in datas else datas[0]


def merge_union(name: bytes, parts: Sequence[tuple[Any, ...]], nkeys: int, datas: list[bytes]) -> bytes:
    """PUBSUB CHANNELS: every server's channels, each once."""
    error = _first_error(datas)
    if error is not None:
        return error
    seen: dict[bytes, None] = {}
    for raw in datas:
        values = decode_reply(raw)
        if not isinstance(values, list):
            return encode_error(errors.MERGE_MISMATCH)
        seen.update(dict.fromkeys(v for v in values if isinstance(v, bytes)))
    return encode_value(list(seen))


def merge_numsub(name: bytes, parts: Sequence[tuple[Any, ...]], nkeys: int, datas: list[bytes]) -> bytes:
    """PUBSUB NUMSUB: each channel's subscribers, summed over the servers (in the asked order)."""
    error = _first_error(datas)
    if error is not None:
        return error
    merged: list[Any] = []
    for raw in datas:
        values = decode_reply(raw)
        if isinstance(values, dict):
            values = [x for pair in values.items() for x in pair]
        if not isinstance(values, list) or (merged and len(values) != len(merged)):
            return encode_error(errors.MERGE_MISMATCH)
        if not merged:
            merged = list(values)
            continue
        for i in range(1, len(values), 2):  # (by position: a channel asked twice counts twice)
            merged[i] = int(merged[i]) + int(values[i])
    return encode_value(merged)


def merge_max(name: bytes, parts: Sequence[tuple[Any, ...]], nkeys: int, datas: list[bytes]) -> bytes:
    """PUBSUB NUMPAT: a pattern is subscribed on every server a channel could be on, so each
    server counts it: the largest count, not the sum."""
    error = _first_error(datas)
    if error is not None:
        return error
    return encode_int(max(int(raw[1:-2]) for raw in datas))


MERGES: dict[str, Merge] = {
    "keys": merge_concat,
    "dbsize": merge_sum,
    "randomkey": merge_random,
    "script|exists": merge_all,
    "script|kill": merge_any_ok,
    "function|kill": merge_any_ok,
    "pubsub|channels": merge_union,
    "pubsub|shardchannels": merge_union,
    "pubsub|numsub": merge_numsub,
    "pubsub|shardnumsub": merge_numsub,
    "pubsub|numpat": merge_max,
}


# --- SCAN -----------------------------------------------------------------------------------


def encode_cursor(index: int, server_cursor: int, check: int) -> int:
    return (server_cursor << CURSOR_SHIFT) | (check << INDEX_BITS) | index


def decode_cursor(cursor: int, servers: int, check: int) -> tuple[int, int] | None:
    """(server index, that server's cursor); None when the cursor is not of these servers."""
    if cursor == 0:
        return 0, 0
    index = cursor & (MAX_SERVERS - 1)
    if (cursor >> INDEX_BITS) & ((1 << CHECK_BITS) - 1) != check or index >= servers:
        return None
    return index, cursor >> CURSOR_SHIFT


def _check(servers: Sequence[Server]) -> int:
    return fingerprint(servers) & ((1 << CHECK_BITS) - 1)


def _scan(host: KeyspaceHost, servers: Sequence[Server], args: list[bytes]) -> None:
    queue = host.queue
    try:
        cursor = int(args[1])
        if not args[1].isdigit() or cursor >= 1 << 64:
            raise ValueError
    except ValueError:
        queue.push_error(errors.INVALID_CURSOR)
        return
    if len(servers) > MAX_SERVERS:
        queue.push_error(errors.scan_too_many_servers(len(servers), MAX_SERVERS))
        return
    check = _check(servers)
    found = decode_cursor(cursor, len(servers), check)
    if found is None:
        queue.push_error(errors.SCAN_SERVERS_CHANGED)
        return
    index, server_cursor = found
    payload = encode_command([b"SCAN", b"%d" % server_cursor, *args[2:]])
    slot = ReplySlot(_ScanReply(queue.push(), index, len(servers), check))
    servers[index].send(payload, slot, resp3=host.resp3, lane=host.id)


class _ScanReply:
    """One server's SCAN reply, its cursor turned into the proxy's."""

    __slots__ = ("target", "index", "count", "check")

    def __init__(self, target: ReplySlot, index: int, count: int, check: int) -> None:
        self.target = target
        self.index = index
        self.count = count
        self.check = check

    def slot_done(self, slot: ReplySlot) -> None:
        raw = slot.data or b""
        if not raw.startswith(b"*2\r\n$"):
            self.target.complete(raw)  # an error (a server down...), as it came
            return
        end = raw.index(b"\r\n", 5)
        size = int(raw[5:end])
        server_cursor = int(raw[end + 2 : end + 2 + size])
        rest = raw[end + 2 + size + 2 :]
        if server_cursor:
            if server_cursor >= SERVER_CURSOR_LIMIT:
                self.target.fail(errors.SCAN_CURSOR_OVERFLOW)
                return
            cursor = encode_cursor(self.index, server_cursor, self.check)
        elif self.index + 1 < self.count:
            cursor = encode_cursor(self.index + 1, 0, self.check)
        else:
            cursor = 0
        self.target.complete(b"*2\r\n" + encode_bulk(b"%d" % cursor) + rest)


# --- INFO -----------------------------------------------------------------------------------

INFO_SERVER = encode_command([b"INFO", b"server"])
INFO_KEYSPACE = encode_command([b"INFO", b"keyspace"])
EVERY_SECTION = ("all", "default", "everything")


def info(host: KeyspaceHost, sections: list[str], local: bytes) -> None:
    """INFO: the proxy's own sections (``local``), with ``# Server`` and ``# Keyspace`` from
    the servers when asked for (no section, all, default, everything, server, keyspace)."""
    every = not sections or any(s in EVERY_SECTION for s in sections)
    want_server = every or "server" in sections
    want_keyspace = every or "keyspace" in sections
    queue = host.queue
    if not (want_server or want_keyspace):
        queue.push_reply(encode_bulk(local))
        return
    servers = host._pool.keyspace_servers()
    if isinstance(servers, str):
        servers = []
    slot = queue.push()

    def merge(name: bytes, parts: Sequence[tuple[Any, ...]], nkeys: int, datas: list[bytes]) -> bytes:
        texts = [_bulk_text(raw) for raw in datas]
        return encode_bulk(info_text(texts, local, want_server, want_keyspace))

    if not servers:
        slot.complete(merge(b"", (), 0, []))
        return
    parts: list[tuple[Server, bytes, list[int]]] = [
        (s, p, []) for s in servers for p in (INFO_SERVER, INFO_KEYSPACE)
    ]
    gather = Gather(slot, merge, b"", 0, parts)
    for (server, payload, _), child in zip(parts, gather.slots):
        server.send(payload, child, resp3=host.resp3, lane=host.id)


def _bulk_text(raw: bytes) -> bytes:
    """The text of a bulk (RESP2) or verbatim (RESP3 ``=``) string reply; b"" otherwise."""
    if raw[:1] not in (b"$", b"="):
        return b""
    start = raw.find(b"\r\n") + 2
    body = raw[start:-2]
    return body[4:] if raw[:1] == b"=" else body  # (a verbatim string starts "txt:")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in text.split("."))


def info_text(texts: list[bytes], local: bytes, server: bool, keyspace: bool) -> bytes:
    """Merge the servers' INFO replies with the proxy's own sections."""
    global _last_version
    versions: list[str] = []
    dbs: dict[str, list[int]] = {}
    for text in texts:
        for line in text.decode("utf-8", "replace").splitlines():
            name, _, value = line.partition(":")
            if name == "redis_version":
                versions.append(value.strip())
            elif name.startswith("db") and name[2:].isdigit():
                fields = dict(f.split("=", 1) for f in value.split(",") if "=" in f)
                counts = dbs.setdefault(name, [0, 0])
                counts[0] += int(fields.get("keys", 0))
                counts[1] += int(fields.get("expires", 0))
    if versions:
        _last_version = min(versions, key=_version)
    blocks: list[bytes] = []
    if server:
        blocks.append(
            f"# Server\r\nredis_version:{_last_version or '0.0.0'}\r\nredis_mode:proxy\r\n"
            f"resproxy_version:{__version__}\r\nresproxy_implementation:{accel.implementation()}\r\n".encode()
        )
    if local.strip():
        blocks.append(local.rstrip(b"\r\n") + b"\r\n")
    if keyspace:
        lines = [
            f"{db}:keys={keys},expires={expires},avg_ttl=0\r\n" for db, (keys, expires) in sorted(dbs.items())
        ]
        blocks.append(("# Keyspace\r\n" + "".join(lines)).encode())
    return b"\r\n".join(blocks)
