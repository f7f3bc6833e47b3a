"""Commands the proxy answers about itself and its clients: COMMAND and CLIENT.

COMMAND answers from the command table (commands.py: Redis's own metadata, with its docs);
CLIENT over the proxy's clients of the same listen address (``LocalHost.peers``): names, ids,
CLIENT LIST lines with Redis's field names, CLIENT KILL in its old and new forms.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from proxy import errors
from proxy.commands import (
    CommandSpec,
    UnroutableKeys,
    command_docs,
    command_names,
    command_rows,
    keys_of,
    lookup,
)
from proxy.inflight import ReplyQueue
from proxy.resp import OK, encode_bulk, encode_map, encode_value
from proxy.target import Pool


class LocalHost(Protocol):
    """What these commands need of a client connection."""

    id: int
    name: bytes
    addr: str
    laddr: str
    created: float
    last_read: float
    last_command: str
    _queue: ReplyQueue
    _resp3: bool

    @property
    def pool(self) -> Pool: ...

    def now(self) -> float: ...

    def peers(self) -> Iterable[LocalHost]: ...

    def begin_shutdown(self) -> None: ...

    def abort(self) -> None: ...


def command(host: LocalHost, args: Sequence[bytes]) -> None:
    """COMMAND [COUNT|INFO|LIST|DOCS|GETKEYS]: answered from the command table."""
    queue = host._queue
    sub = args[0].upper() if args else b""
    if not args:
        queue.push_reply(encode_value(command_rows(None)))
    elif sub == b"COUNT":
        queue.push_reply(encode_value(len(command_rows(None))))
    elif sub == b"INFO":
        queue.push_reply(encode_value(command_rows([a.upper() for a in args[1:]])))
    elif sub == b"LIST":
        queue.push_reply(encode_value([name.lower() for name in command_names()]))
    elif sub == b"DOCS":
        resp3 = host._resp3
        docs = [(name, encode_map(fields, resp3)) for name, fields in command_docs(args[1:])]
        items = b"".join(encode_bulk(name) + body for name, body in docs)
        queue.push_reply(b"%c%d\r\n" % (b"%" if resp3 else b"*", len(docs) * (1 if resp3 else 2)) + items)
    elif sub == b"GETKEYS":
        target = [args[1].upper(), *args[2:]] if len(args) > 1 else []
        found = lookup(target) if target else errors.wrong_arity("command|getkeys")
        if isinstance(found, str):
            queue.push_error(found)
            return
        try:
            queue.push_reply(encode_value(keys_of(found, target)))
        except UnroutableKeys as exc:
            queue.push_error(str(exc))
    else:
        queue.push_error(errors.refused(f"command|{sub.decode(errors='replace').lower()}"))


def client(host: LocalHost, spec: CommandSpec, args: Sequence[bytes]) -> None:
    """CLIENT SETNAME|GETNAME|SETINFO|ID|INFO|LIST|KILL (the rest is refused)."""
    queue = host._queue
    sub = spec.name
    if sub == b"SETNAME":
        if any(c < 0x21 or c > 0x7E for c in args[2]):
            queue.push_error(errors.CLIENT_NAME)
            return
        host.name = args[2]
        queue.push_reply(OK)
    elif sub == b"GETNAME":
        queue.push_reply(encode_bulk(host.name or None))
    elif sub == b"SETINFO":
        queue.push_reply(OK)
    elif sub == b"ID":
        queue.push_reply(b":%d\r\n" % host.id)
    elif sub == b"INFO":
        queue.push_reply(encode_bulk(describe(host) + b"\n"))
    elif sub == b"LIST":
        peers = host.peers()
        text = b"".join(describe(c) + b"\n" for c in sorted(peers, key=lambda c: c.id))
        queue.push_reply(encode_bulk(text))
    elif sub == b"KILL":
        kill(host, args[2:])
    else:
        queue.push_error(errors.refused(spec.fullname, spec.flags))


def describe(host: LocalHost) -> bytes:
    """A client as CLIENT LIST shows it (Redis's field names, the ones a proxy knows)."""
    now = host.now()
    return (
        f"id={host.id} addr={host.addr} laddr={host.laddr} name=".encode()
        + host.name
        + f" age={int(now - host.created)} idle={int(now - host.last_read)} "
        f"cmd={host.last_command or 'NULL'} pool={host.pool.name}".encode()
    )


def kill(host: LocalHost, args: Sequence[bytes]) -> None:
    """CLIENT KILL addr (old form: +OK) or CLIENT KILL ID id | ADDR addr | LADDR addr |
    SKIPME yes/no ... (new form: the number killed), over this listen address's clients."""
    queue = host._queue
    peers = list(host.peers())
    if len(args) == 1:
        found = [c for c in peers if c.addr == args[0].decode("utf-8", "replace")]
        if not found:
            queue.push_error(errors.NO_SUCH_CLIENT)
            return
        queue.push_reply(OK)
        found[0].begin_shutdown() if found[0] is host else found[0].abort()
        return
    if len(args) % 2:
        queue.push_error(errors.SYNTAX)
        return
    skipme = True
    for option, value in zip(args[::2], args[1::2]):
        text = value.decode("utf-8", "replace")
        option = option.upper()
        if option == b"ID":
            if not value.isdigit() or int(value) <= 0:
                queue.push_error(errors.CLIENT_ID)
                return
            peers = [c for c in peers if c.id == int(value)]
        elif option == b"TYPE":
            kind = value.lower()
            if kind not in (b"normal", b"master", b"replica", b"slave", b"pubsub"):
                queue.push_error(errors.unknown_client_type(text))
                return
            if kind != b"normal":  # (every client of the proxy is a normal one)
                peers = []
        elif option == b"ADDR":
            peers = [c for c in peers if c.addr == text]
        elif option == b"LADDR":
            peers = [c for c in peers if c.laddr == text]
        elif option == b"SKIPME" and value.lower() in (b"yes", b"no"):
            skipme = value.lower() == b"yes"
        else:
            queue.push_error(errors.SYNTAX)
            return
    killed = [c for c in peers if not (skipme and c is host)]
    queue.push_reply(b":%d\r\n" % len(killed))
    for peer in killed:
        if peer is host:
            host.begin_shutdown()  # (after this reply)
        else:
            peer.abort()
