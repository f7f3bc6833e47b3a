"""Split multi-key commands per server and merge their replies as Redis answers (pure).

MGET, MSET, DEL, UNLINK, EXISTS and TOUCH may name keys on several servers. ``split`` groups the
keys by the server ``locate(key)`` names, keeping each key's position, one sub-command per server
(twemproxy's fragmenting, but per server rather than per key). An ``inflight.Gather`` collects
the sub-replies and completes the client's slot once with ``merge``, what a single Redis would
have said:

* MGET: one array in the client's key order; if any part failed, that one error instead;
* DEL / UNLINK / EXISTS / TOUCH: the sum of the parts' integers (duplicates count as Redis
  counts them, since each key goes to exactly one server), or the first error;
* MSET: ``+OK`` when every part said OK, else the first error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from proxy import errors
from proxy.resp import ERROR_TYPES, OK, encode_error, encode_int, merge_arrays

T = TypeVar("T")

Part = tuple[T, list[bytes], list[int]]
"""(target, sub-command args, positions of its keys in the client's key list)"""

SUM_COMMANDS = frozenset({b"DEL", b"UNLINK", b"EXISTS", b"TOUCH"})


def split(args: Sequence[bytes], group: Callable[[list[bytes]], list[tuple[T, list[int]]]]) -> list[Part[T]]:
    """Group a MGET/MSET/DEL-like command's keys by target, in first-seen order.

    ``group(keys)`` gives each target with the positions of its keys (the pool routes the whole
    key list in one call). MSET's arguments are key/value pairs (the caller checks they are
    even). A single-element result means every key is on one target and the original bytes
    can be forwarded.
    """
    name = args[0]
    pairs = name == b"MSET"
    keys = list(args[1::2] if pairs else args[1:])
    parts: list[Part[T]] = []
    for target, positions in group(keys):
        sub = [name]
        if pairs:
            for pos in positions:
                sub.append(args[2 * pos + 1])
                sub.append(args[2 * pos + 2])
        else:
            sub.extend([keys[pos] for pos in positions])
        parts.append((target, sub, positions))
    return parts


def merge(name: bytes, parts: Sequence[tuple[Any, ...]], nkeys: int, datas: list[bytes]) -> bytes:
    """The reply a single Redis would have given, from the sub-replies ``datas`` of ``parts``
    (each part's last item is its key positions: the split's tuples serve as they are). An
    ``inflight.Gather`` calls it once every part is in."""
    for raw in datas:
        if raw[:1] in ERROR_TYPES:  # resp.is_error, inlined: it runs for every part
            return raw
    if name == b"MGET":
        # Each part's items are cut out of its raw reply and put back in the client's key
        # order unchanged: no decoding, and nils stay in the client's protocol ($-1 or RESP3
        # _), since its server connections speak that protocol.
        merged = merge_arrays(datas, parts, nkeys)
        return merged if merged is not None else encode_error(errors.MERGE_MISMATCH)
    if name in SUM_COMMANDS:
        total = 0
        for raw in datas:
            if raw[:1] != b":":
                return encode_error(errors.MERGE_MISMATCH)
            total += int(raw[1:-2])
        return encode_int(total)
    if name == b"MSET":
        return OK if all(raw == OK for raw in datas) else encode_error(errors.MERGE_MISMATCH)
    return encode_error(errors.MERGE_MISMATCH)
