"""Redis Cluster's slot map and redirections, as data (pure: no sockets, no asyncio).

A cluster pool learns which node serves each of the 16384 slots from ``CLUSTER SLOTS``:

    1) 1) (integer) 0             start slot
       2) (integer) 5460          end slot (inclusive)
       3) 1) "127.0.0.1"          the master: preferred endpoint, port, node id, ...
          2) (integer) 30001
          3) "09dbe9720cda62f7865eabc5fd8857c5d2678366"
       4) 1) "127.0.0.1"          then its replicas, same shape
          2) (integer) 30004
          ...

``parse_slots`` turns that reply (decoded by hiredis) into ``SlotRange`` values; an endpoint
that is an empty string means "the node you asked" (Redis says so when it does not know its own
address), and ``?`` means unknown, so that node is left out. ``parse_redirect`` reads
``-MOVED 3999 127.0.0.1:6381`` and ``-ASK 3999 127.0.0.1:6381`` error replies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SLOTS = 16384

Node = tuple[str, int]
"""(host, port) of a cluster node."""


@dataclass(frozen=True, slots=True)
class SlotRange:
    start: int
    end: int  # inclusive, as Redis reports it
    master: Node
    replicas: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class Redirect:
    ask: bool  # -ASK (one request, map unchanged) rather than -MOVED
    slot: int
    node: Node


class SlotMapError(ValueError):
    """A CLUSTER SLOTS reply that is not what Redis sends."""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise SlotMapError(f"expected a string, got {value!r}")


def _node(entry: Any, asked: Node) -> Node | None:
    if not isinstance(entry, list) or len(entry) < 2 or not isinstance(entry[1], int):
        raise SlotMapError(f"malformed node entry {entry!r}")
    host = _text(entry[0])
    if host == "?":
        return None
    if not host:
        host = asked[0]
    return (host, entry[1])


def parse_slots(reply: Any, asked: Node) -> list[SlotRange]:
    """The slot ranges of a decoded CLUSTER SLOTS reply; ``asked`` is the node that answered."""
    if not isinstance(reply, list):
        raise SlotMapError(f"CLUSTER SLOTS: expected an array, got {reply!r}")
    ranges: list[SlotRange] = []
    for row in reply:
        if not isinstance(row, list) or len(row) < 3:
            raise SlotMapError(f"CLUSTER SLOTS: malformed row {row!r}")
        start, end = row[0], row[1]
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end < SLOTS):
            raise SlotMapError(f"CLUSTER SLOTS: bad slot range {start!r}-{end!r}")
        master = _node(row[2], asked)
        if master is None:
            continue  # the owner's address is unknown: the slots stay unserved
        replicas = tuple(n for n in (_node(e, asked) for e in row[3:]) if n is not None)
        ranges.append(SlotRange(start, end, master, replicas))
    return ranges


def parse_redirect(raw: bytes, replied: Node) -> Redirect | None:
    """``-MOVED slot host:port`` or ``-ASK slot host:port``; None for any other reply.

    ``replied`` is the node that sent it: a redirect with an empty host means the same host.
    """
    if raw.startswith(b"-MOVED "):
        ask = False
    elif raw.startswith(b"-ASK "):
        ask = True
    else:
        return None
    parts = raw[1:].split()
    if len(parts) != 3:
        return None
    host, sep, port = parts[2].decode("utf-8", "replace").rpartition(":")
    if not sep or not port.isdigit() or not parts[1].isdigit():
        return None
    slot = int(parts[1])
    if slot >= SLOTS:
        return None
    return Redirect(ask, slot, (host.strip("[]") or replied[0], int(port)))
