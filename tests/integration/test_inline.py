"""Inline commands (``SET "a b" c\\r\\n`` typed into telnet) answered byte for byte as Redis does.

Each case is sent as raw bytes in one write, to a plain redis-server (the reference) and to
resproxy over three servers; the raw reply bytes and whether the connection was then closed
must be the same. Only commands that answer the same through a proxy are used: SET, GET, DEL,
EXISTS (keyed or summed over servers) and ECHO, PING (answered by the proxy itself).

The split table of tests/unit/test_inline_split.py is also run through both, so the unit
table is Redis's behaviour, checked in every run.
"""

from __future__ import annotations

import socket

import pytest

from tests.integration.harness.clients import RawClient, encode
from tests.integration.harness.proxyproc import ResProxy
from tests.integration.harness.servers import RedisServer
from tests.unit.test_inline_split import CASES as SPLIT_CASES

UNBALANCED = b"-ERR Protocol error: unbalanced quotes in request\r\n"
END = encode("ECHO", "--end--")  # answered after everything before it, on both
END_REPLY = b"$7\r\n--end--\r\n"


def exchange(port: int, payload: bytes, timeout_s: float = 10.0) -> tuple[bytes, bool]:
    """Send ``payload`` then END in one write; the raw replies before END's, and whether the
    peer closed the connection instead of answering END."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(payload + END)
        got = b""
        while not got.endswith(END_REPLY):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return got, True
            if not chunk:
                return got, True
            got += chunk
        return got[: -len(END_REPLY)], False


# (case id, payload). Keys are distinct per case; the ``clean`` fixture empties every server.
INLINE = [
    (
        "double-quoted key is stored unquoted",
        b'SET "user:1" hello\r\n' + encode("GET", "user:1") + encode("EXISTS", '"user:1"'),
    ),
    ("quoted key with a space", b'SET "a b" c\r\nGET "a b"\r\n' + encode("GET", "a b")),
    ("single quotes and an escaped quote", b"SET 'it\\'s' 'a b'\r\n" + encode("GET", "it's")),
    (
        "double-quote escapes",
        b'SET "nl:\\n" "\\t\\r\\n\\\\\\"\\b\\a\\x41\\xff\\q"\r\n' + encode("GET", "nl:\n"),
    ),
    ("binary key written as hex escapes", b'SET "\\x00\\xff\\x7f" bin\r\n' + encode("GET", b"\x00\xff\x7f")),
    ("invalid hex escapes are the bytes themselves", b'SET "\\xZZ\\x4" v\r\n' + encode("GET", "xZZx4")),
    ("a quote inside an argument", b'SET key"with space" v\r\n' + encode("GET", "keywith space")),
    ("empty quoted argument", b'SET k1 ""\r\nGET k1\r\nECHO ""\r\nSET \'\' empty\r\nGET ""\r\n'),
    ("tabs, repeated and trailing blanks", b"  SET\tk2 \t v2  \t\r\nGET    k2\t\r\n"),
    ("a bare newline ends a line too", b"SET k3 v3\nGET k3\n"),
    ("empty lines are skipped", b"\r\n\r\n  \r\nPING\r\n\r\n"),
    (
        "vertical tab does not end a bare argument",
        b"SET a\x0bb v\r\n" + encode("GET", b"a\x0bb") + encode("GET", "a"),
    ),
    ("a closing quote may be followed by a vertical tab", b'SET "k4"\x0b"v4"\r\nGET k4\r\n'),
    ("local commands with quotes", b'PING "hello world"\r\nECHO "a\\x41b"\r\nECHO \'x y\'\r\n'),
    (
        "multi-key DEL and EXISTS with quotes",
        b'SET "m 1" a\r\nSET \'m 2\' b\r\nEXISTS "m 1" \'m 2\' "m 3"\r\nDEL "m 1" "m 2"\r\nEXISTS "m 1"\r\n',
    ),
    (
        "inline after multibulk in one write",
        encode("SET", "mix", "1") + b"GET mix\r\n" + encode("GET", "mix") + b"EXISTS mix\r\n",
    ),
    (
        "quoted inline after multibulk in one write",
        encode("SET", "mix 2", "1") + b'GET "mix 2"\r\n' + encode("GET", "mix 2"),
    ),
    # unbalanced quotes: Redis answers the error and closes, after what came before
    ("unbalanced double quote", b'SET "a b c\r\n'),
    ("unbalanced single quote", b"GET 'x\r\n"),
    ("text after a closing quote", b'GET "a"b\r\n'),
    ("two quoted parts back to back", b'SET "a""b" c\r\n'),
    ("escaped closing quote", b'ECHO "abc\\"\r\n'),
    (
        "commands before the bad line are answered",
        b"SET u1 1\r\nGET u1\r\n" + encode("GET", "u1") + b'GET "u1\r\nGET u1\r\n',
    ),
]


@pytest.mark.parametrize("payload", [c[1] for c in INLINE], ids=[c[0] for c in INLINE])
def test_inline_replies_equal_redis(
    payload: bytes, reference: RedisServer, proxy: ResProxy, clean: None
) -> None:
    want = exchange(reference.port, payload)
    got = exchange(proxy.port, payload)
    assert got == want


def test_unbalanced_quotes_get_redis_error_and_close(
    reference: RedisServer, proxy: ResProxy, clean: None
) -> None:
    payload = b'SET "a b c\r\n'
    assert exchange(reference.port, payload) == (UNBALANCED, True)  # the reference itself
    assert exchange(proxy.port, payload) == (UNBALANCED, True)


def test_quoted_key_reaches_the_server_without_quotes(
    backends: list[RedisServer], proxy: ResProxy, clean: None
) -> None:
    """Observed on the servers themselves: the key is ``user:1``, never ``"user:1"``."""
    assert exchange(proxy.port, b"SET \"user:1\" hello\r\nSET 'a b' c\r\n") == (b"+OK\r\n+OK\r\n", False)
    keys = sorted(k for b in backends for k in b.call("KEYS", "*"))
    assert keys == [b"a b", b"user:1"]


CLOSED_UNBALANCED = "-ERR Protocol error: unbalanced quotes in request, then closed"


def _split_by(port: int, line: bytes, key: str) -> list[bytes] | str:
    """What a server (or the proxy) made of ``line``: the arguments after ``RPUSH key __``,
    or a description of the error it answered instead (CLOSED_UNBALANCED as Redis does)."""
    with RawClient(port) as c:
        c.call("DEL", key)
        c.send(b"RPUSH " + key.encode() + b" __ " + line + b"\r\n")
        try:
            first = c.read()
        except ConnectionError:
            return "closed without a reply"
        if isinstance(first, Exception):
            closed = c.closed_by_peer()
            return f"-{first}" + (", then closed" if closed else ", left open")
        items = c.call("LRANGE", key, 0, -1)
        if items[:1] != [b"__"] or first != len(items):
            return f"RPUSH answered {first!r}, LRANGE {items!r}"
        return list(items[1:])


@pytest.mark.parametrize("target", ["redis-server", "resproxy"])
def test_split_table_is_what_redis_does(
    target: str, reference: RedisServer, proxy: ResProxy, clean: None
) -> None:
    """Every row of the unit table, sent inline: Redis (and the proxy) split it that way."""
    port = reference.port if target == "redis-server" else proxy.port
    wrong = []
    for i, (line, expected) in enumerate(SPLIT_CASES):
        got = _split_by(port, line, f"split:{i}")
        if got != (CLOSED_UNBALANCED if expected is None else expected):
            wrong.append(f"{line!r}: table {expected!r}, {target} {got!r}")
    assert not wrong, f"{len(wrong)} of {len(SPLIT_CASES)} differ:\n" + "\n".join(wrong)
