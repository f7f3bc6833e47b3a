"""Commands the proxy answers itself, never sending them to a server (``Kind.LOCAL``).

``serve`` is the one switch: PING, ECHO, QUIT, SELECT (0 only), AUTH and HELLO (the users of
acl.py: ``users:``, and ``redis_auth`` as the ``default`` user's password; failures counted,
logged rate-limited, the connection closed past ``auth_failure_limit``), ACL WHOAMI and ACL
CAT, INFO (the proxy's sections plus the servers'
``# Server``/``# Keyspace``: keyspace.py), MONITOR (monitor.py), RESET, COMMAND (from the
command table: Redis's own metadata, with its docs) and CLIENT (over the clients of the same
listen address, ``LocalHost.peers``: names, ids, CLIENT LIST lines with Redis's field names,
CLIENT KILL in its old and new forms).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from proxy import __version__, acl, errors, keyspace
from proxy.commands import (
    CommandSpec,
    Refusal,
    UnroutableKeys,
    command_docs,
    command_names,
    command_rows,
    keys_of,
    lookup,
)
from proxy.inflight import ReplyQueue
from proxy.resp import OK, PONG, encode_bulk, encode_map, encode_value
from proxy.target import Pool

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0  # per peer address and kind: how often a closed or failing client is logged
_last_logged: dict[tuple[str, str], float] = {}


def log_limited(kind: str, peer: str, message: str, *args: object) -> None:
    """Log a client's failure at most once per LOG_EVERY_S per (kind, peer address)."""
    now = time.monotonic()
    key = (kind, peer)
    if now - _last_logged.get(key, -LOG_EVERY_S) < LOG_EVERY_S:
        return
    if len(_last_logged) > 10000:  # bounded: forget the oldest half
        for old in sorted(_last_logged, key=_last_logged.__getitem__)[:5000]:
            del _last_logged[old]
    _last_logged[key] = now
    log.warning(message, *args)


class Auth:
    """One client's authentication against its pool's or listener's users (acl.py): who it
    is (``default`` until it AUTHs, if ``default`` needs no password), and its failed AUTHs."""

    __slots__ = ("users", "user", "ok", "failures")

    def __init__(self, users: acl.Users) -> None:
        self.users = users
        self.user: acl.User | None = None
        self.ok = False
        self.failures = 0
        self.as_new()

    def as_new(self) -> None:
        """Who a new connection is (and RESET's): ``default`` if it needs no password, else
        nobody until AUTH."""
        default = self.users.default
        self.user = default if default is not None and default.nopass else None
        self.ok = self.user is not None  # no password: every client is authenticated

    def login(self, args: Sequence[bytes]) -> acl.User | None:
        """The user ``[user] password`` (as AUTH and HELLO AUTH take them) names, if right."""
        name, password = (b"default", args[0]) if len(args) == 1 else (args[0], args[1])
        return self.users.authenticate(name, password)

    def default_has_no_password(self) -> bool:
        default = self.users.default
        return default is not None and default.nopass


class LocalHost(keyspace.KeyspaceHost, Protocol):
    """What these commands need of a client connection."""

    id: int
    name: bytes
    addr: str
    laddr: str
    created: float
    last_read: float
    last_command: str
    queue: ReplyQueue
    resp3: bool
    auth: Auth
    peer: str

    @property
    def pool(self) -> Pool: ...

    def now(self) -> float: ...

    def peers(self) -> Iterable[LocalHost]: ...

    def begin_shutdown(self) -> None: ...

    def abort(self) -> None: ...

    def set_resp3(self, on: bool) -> None: ...

    def authenticated(self, user: acl.User) -> None: ...

    def close_after_replies(self, reason: str | None = None) -> None: ...

    def info_text(self, section: str | None) -> bytes: ...

    def start_monitor(self) -> None: ...

    def reset(self) -> None: ...


def serve(host: LocalHost, spec: CommandSpec, args: list[bytes]) -> None:
    """Answer one local command (its name normalised, its arity checked by the table)."""
    queue = host.queue
    name = args[0]
    if name == b"PING":
        if len(args) > 2:
            queue.push_error(errors.wrong_arity("ping"))
        else:
            queue.push_reply(PONG if len(args) == 1 else encode_bulk(args[1]))
    elif name == b"ECHO":
        queue.push_reply(encode_bulk(args[1]))
    elif name == b"QUIT":
        queue.push_reply(OK)
        host.close_after_replies()
    elif name == b"SELECT":
        select(host, args[1])
    elif name == b"AUTH":
        auth(host, args[1:])
    elif name == b"HELLO":
        hello(host, args[1:])
    elif name == b"COMMAND":
        command(host, args[1:])
    elif name == b"CLIENT":
        client(host, spec, args)
    elif name == b"INFO":
        info(host, args[1:])
    elif name == b"MONITOR":
        host.start_monitor()
    elif name == b"ACL":
        acl_command(host, args)
    elif name == b"RESET":
        host.reset()
        queue.push_reply(b"+RESET\r\n")
    else:
        queue.push_error(errors.refused(spec.fullname, spec.flags))


def select(host: LocalHost, arg: bytes) -> None:
    """SELECT: only database 0 (a pool's servers may each use another: ``redis_db``)."""
    try:
        db = int(arg)
    except ValueError:
        host.queue.push_error(errors.SELECT_INVALID)
        return
    if db == 0:
        host.queue.push_reply(OK)
    else:
        host.queue.push_error(errors.SELECT_ONLY_ZERO)


def auth(host: LocalHost, args: Sequence[bytes]) -> None:
    """AUTH [user] password."""
    queue = host.queue
    if len(args) > 2:
        queue.push_error(errors.SYNTAX)
    elif len(args) == 1 and host.auth.default_has_no_password():
        queue.push_error(errors.AUTH_NOT_CONFIGURED)
    elif (user := host.auth.login(args)) is not None:
        host.authenticated(user)
        queue.push_reply(OK)
    else:
        auth_failed(host)


def acl_command(host: LocalHost, args: Sequence[bytes]) -> None:
    """ACL WHOAMI (who this connection is) and ACL CAT [category] (Redis's categories)."""
    queue = host.queue
    sub = args[1].upper()
    if sub == b"WHOAMI":
        user = host.auth.user
        queue.push_reply(encode_bulk((user.name if user else "default").encode()))
    elif sub == b"CAT" and len(args) == 2:
        queue.push_reply(encode_value(sorted(c.encode() for c in acl.CATEGORIES if c != "all")))
    elif sub == b"CAT":
        cat = args[2].decode("utf-8", "replace").lower()
        if cat not in acl.CATEGORIES or cat == "all":
            queue.push_error(f"ERR Unknown category '{cat}'")
            return
        names = sorted(n.encode() for n, cats in acl.COMMANDS.items() if cat in cats)
        queue.push_reply(encode_value(names))
    else:
        queue.push_error(errors.refused("acl|" + sub.decode("utf-8", "replace").lower()))


def auth_failed(host: LocalHost) -> None:
    """-WRONGPASS, counted and logged (rate-limited); past the limit, the connection closes."""
    host.queue.push_error(errors.WRONGPASS)
    pool = host.pool
    pool.stats.auth_failures += 1
    host.auth.failures += 1
    limit = pool.config.client_limits.auth_failure_limit
    log_limited(
        "auth",
        host.peer,
        "pool %s: failed AUTH from %s (%d on this connection)",
        pool.name,
        host.peer,
        host.auth.failures,
    )
    if limit and host.auth.failures >= limit:
        host.close_after_replies("auth_failure_limit")


def valid_name(name: bytes) -> bool:
    """A client name as Redis takes one: printable, no spaces (CLIENT LIST stays one line each)."""
    return all(0x21 <= c <= 0x7E for c in name)


def hello(host: LocalHost, args: Sequence[bytes]) -> None:
    """HELLO [2|3 [AUTH user pass] [SETNAME name]]: Redis's handshake, RESP2 or RESP3."""
    queue = host.queue
    resp3 = host.resp3
    if args:
        try:
            version = int(args[0])
        except ValueError:
            queue.push_error(errors.PROTO_NOT_INTEGER)
            return
        if version not in (2, 3):
            queue.push_error(errors.NOPROTO)
            return
        resp3 = version == 3
    i = 1
    while i < len(args):
        option = args[i].upper()
        if option == b"AUTH" and i + 2 < len(args):
            user = host.auth.login(args[i + 1 : i + 3])
            if user is None:
                auth_failed(host)
                return
            host.authenticated(user)
            i += 3
        elif option == b"SETNAME" and i + 1 < len(args):
            if not valid_name(args[i + 1]):
                queue.push_error(errors.CLIENT_NAME)
                return
            host.name = args[i + 1]
            i += 2
        else:
            queue.push_error(errors.SYNTAX)
            return
    if not host.auth.ok:
        queue.push_error(errors.NOAUTH_HELLO)
        return
    host.set_resp3(resp3)
    fields: list[tuple[bytes, Any]] = [
        (b"server", b"resproxy"),
        (b"version", __version__.encode()),
        (b"proto", 3 if resp3 else 2),
        (b"id", host.id),
        (b"mode", b"proxy"),
        (b"role", b"master"),
        (b"modules", []),
    ]
    queue.push_reply(encode_map(fields, resp3))


def info(host: LocalHost, args: Sequence[bytes]) -> None:
    """INFO [section ...]: the proxy's own sections, and the servers' where asked."""
    sections = list(dict.fromkeys(a.decode("utf-8", "replace").lower() for a in args))
    every = not sections or any(s in keyspace.EVERY_SECTION for s in sections)
    wanted: list[str | None] = [None] if every else list(sections)
    keyspace.info(host, sections, b"".join(host.info_text(s) for s in wanted))


def command(host: LocalHost, args: Sequence[bytes]) -> None:
    """COMMAND [COUNT|INFO|LIST|DOCS|GETKEYS]: answered from the command table."""
    queue = host.queue
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
        resp3 = host.resp3
        docs = [(name, encode_map(fields, resp3)) for name, fields in command_docs(args[1:])]
        items = b"".join(encode_bulk(name) + body for name, body in docs)
        queue.push_reply(b"%c%d\r\n" % (b"%" if resp3 else b"*", len(docs) * (1 if resp3 else 2)) + items)
    elif sub == b"GETKEYS":
        target = [args[1].upper(), *args[2:]] if len(args) > 1 else []
        found = lookup(target) if target else Refusal(errors.wrong_arity("command|getkeys"), "command")
        if isinstance(found, Refusal):
            queue.push_error(found.text)
            return
        try:
            queue.push_reply(encode_value(keys_of(found, target)))
        except UnroutableKeys as exc:
            queue.push_error(str(exc))
    else:
        queue.push_error(errors.refused(f"command|{sub.decode(errors='replace').lower()}"))


def client(host: LocalHost, spec: CommandSpec, args: Sequence[bytes]) -> None:
    """CLIENT SETNAME|GETNAME|SETINFO|ID|INFO|LIST|KILL (the rest is refused)."""
    queue = host.queue
    sub = spec.name
    if sub == b"SETNAME":
        if not valid_name(args[2]):
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
    queue = host.queue
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
