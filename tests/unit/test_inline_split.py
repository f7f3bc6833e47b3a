"""Inline command lines split as Redis splits them (src/sds.c sdssplitargs).

Every row of ``CASES`` was checked against a real redis-server 7.0 (the line sent inline as
``RPUSH L <line>``, the list read back with a multibulk LRANGE); tests/integration/test_inline.py
repeats that check in every run, so this table stays Redis's behaviour and not our reading of it.
Every test runs on both splitters: resp.split_inline and its C twin _speedups.split_inline (the one
the C request framer uses).

The rules the rows pin down, from sdssplitargs:

* blanks *between* arguments are C's isspace() (space \\t \\n \\v \\f \\r), but an unquoted
  argument ends only at space, \\t, \\n, \\r or NUL: ``a\\vb`` is one argument;
* a quote may start in the middle of an argument (``a"b c"`` is ``ab c``), but a closing quote
  must be followed by a blank or the end of the line (``"a"b`` and ``"a""b"`` are errors);
* "double quotes": \\n \\r \\t \\b \\a, ``\\xHH`` (exactly two hex digits, either case), and a
  backslash before any other character gives that character (``"\\q"`` is ``q``, ``"\\x4"`` is
  ``x4``, ``"\\X41"`` is ``X41``);
* 'single quotes': only ``\\'`` is an escape; so ``'\\\\'`` (two backslashes, then the quote)
  reads the quote as escaped and never closes;
* a quote left open, or a backslash ending the line inside quotes, is
  ``ProtocolError("unbalanced quotes in request")``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from proxy import _speedups, resp
from proxy.resp import ProtocolError

UNBALANCED = "unbalanced quotes in request"


def _c_split_inline(line: bytes) -> list[bytes]:
    """The C splitter (what RequestFramer splits inline lines with) as resp.split_inline."""
    args = _speedups.split_inline(line)
    if args is None:
        raise ProtocolError(UNBALANCED)
    return args


SPLITTERS: dict[str, Callable[[bytes], list[bytes]]] = {"python": resp.split_inline, "c": _c_split_inline}


@pytest.fixture(params=list(SPLITTERS))
def split(request: pytest.FixtureRequest) -> Callable[[bytes], list[bytes]]:
    """Each test runs on resp.split_inline and on its C twin (_speedups.split_inline)."""
    return SPLITTERS[request.param]


# (line, arguments Redis makes of it, or None where Redis answers "unbalanced quotes")
CASES: list[tuple[bytes, list[bytes] | None]] = [
    # plain words and blanks
    (b"", []),
    (b"   \t  ", []),
    (b"PING", [b"PING"]),
    (b"SET k v", [b"SET", b"k", b"v"]),
    (b"  a \t b  ", [b"a", b"b"]),
    (b"a\tb\tc", [b"a", b"b", b"c"]),
    (b"a  \t\t  b", [b"a", b"b"]),
    (b"a\rb", [b"a", b"b"]),
    (b"\x0ba", [b"a"]),  # \v is skipped between arguments...
    (b"a\x0bb", [b"a\x0bb"]),  # ...but does not end an unquoted one
    (b"a\x0cb", [b"a\x0cb"]),
    (b"a\x0b", [b"a\x0b"]),
    (b"a\x0c b", [b"a\x0c", b"b"]),
    (b"\xff\xfe \x80", [b"\xff\xfe", b"\x80"]),
    (b"a\\nb", [b"a\\nb"]),  # no escapes outside quotes
    (b"user:1 {tag}x", [b"user:1", b"{tag}x"]),
    # double quotes
    (b'"user:1"', [b"user:1"]),
    (b'SET "a b" c', [b"SET", b"a b", b"c"]),
    (b'""', [b""]),
    (b'"" ""', [b"", b""]),
    (b'a ""', [b"a", b""]),
    (b'"a"\t"b"', [b"a", b"b"]),
    (b'"a"\x0b"b"', [b"a", b"b"]),  # a closing quote may be followed by any isspace()
    (b'"a"\x0c', [b"a"]),
    (b'"a"  ', [b"a"]),
    (b'"\\n\\r\\t\\b\\a\\\\\\""', [b'\n\r\t\x08\x07\\"']),
    (b'"\\q"', [b"q"]),
    (b'"\\\'"', [b"'"]),
    (b'"a\'b"', [b"a'b"]),
    (b'"\\x41\\x4a\\x4A\\x00\\xff"', [b"AJJ\x00\xff"]),
    (b'"\\x4"', [b"x4"]),  # one hex digit: not a \xHH escape
    (b'"\\xZZ"', [b"xZZ"]),
    (b'"\\x4g"', [b"x4g"]),
    (b'"\\X41"', [b"X41"]),  # only a lower-case x
    (b'"\\x414"', [b"A4"]),
    (b'"tab\there"', [b"tab\there"]),  # a literal tab inside quotes stays
    (b'"a b"c"', None),
    # a quote starting inside an argument
    (b'a"b c"', [b"ab c"]),
    (b"x'y z'", [b"xy z"]),
    (b'key"with space" v', [b"keywith space", b"v"]),
    (b'a"b"c', None),
    # single quotes
    (b"'a b'", [b"a b"]),
    (b"''", [b""]),
    (b"'it\\'s'", [b"it's"]),
    (b"'a\\nb'", [b"a\\nb"]),  # only \' is an escape
    (b"'a\"b'", [b'a"b']),
    (b"'\\x41'", [b"\\x41"]),
    (b"'\\\\'", None),  # \\ is two backslashes; the second one escapes the closing quote
    (b"'\\'", None),
    # closing quotes that are not followed by a blank
    (b'"a"b', None),
    (b'"a""b"', None),
    (b"'a'b", None),
    (b"'a''b'", None),
    (b"\"a\"'b'", None),
    # unbalanced
    (b'"unterminated', None),
    (b"'unterminated", None),
    (b'SET "a b c', None),
    (b'"', None),
    (b"'", None),
    (b'"\\"', None),  # the quote is escaped
    (b'"abc\\', None),  # a backslash ends the line inside quotes
    (b'a\\"b', None),  # a backslash outside quotes is a plain byte: the quote opens
]


def _id(line: bytes) -> str:
    return repr(line)[2:-1] or "empty"


@pytest.mark.parametrize("line, expected", CASES, ids=[_id(c[0]) for c in CASES])
def test_split_inline_follows_sdssplitargs(
    line: bytes, expected: list[bytes] | None, split: Callable[[bytes], list[bytes]]
) -> None:
    if expected is None:
        with pytest.raises(ProtocolError) as info:
            split(line)
        assert str(info.value) == UNBALANCED
    else:
        assert split(line) == expected


def test_a_nul_byte_ends_the_line_as_in_sdssplitargs(split: Callable[[bytes], list[bytes]]) -> None:
    # sdssplitargs reads a C string. (redis-server itself never splits such a line: it looks
    # for the newline with strchr, which stops at the NUL, so the client just hangs; the proxy
    # has to do something, and reading the line as sdssplitargs would is the natural choice.)
    assert split(b"SET a b\x00c d") == [b"SET", b"a", b"b"]
    assert split(b"\x00SET") == []
    with pytest.raises(ProtocolError, match=UNBALANCED):
        split(b'"ab\x00c"')  # the quote never closes before the NUL


# --- round trip: arguments quoted the ways a client may quote them split back unchanged ------

_PLAIN_UNSAFE = frozenset(b" \t\n\r\x0b\x0c\x00\"'")
_DOUBLE_ESCAPES = {10: b"\\n", 13: b"\\r", 9: b"\\t", 8: b"\\b", 7: b"\\a", 34: b'\\"', 92: b"\\\\"}
_NOT_IDENTITY = frozenset(b"nrtbax")  # a backslash before these is not the byte itself


def quote_double(arg: bytes, rng: random.Random) -> bytes:
    """``arg`` in double quotes, each byte written one of the ways sdssplitargs reads back."""
    out = bytearray(b'"')
    for c in arg:
        if c in _DOUBLE_ESCAPES:
            out += _DOUBLE_ESCAPES[c] if rng.random() < 0.7 else b"\\x%02x" % c
        elif c == 0 or c >= 0x7F or c < 0x20 or rng.random() < 0.1:
            out += (b"\\x%02x" if rng.random() < 0.5 else b"\\x%02X") % c
        elif c not in _NOT_IDENTITY and rng.random() < 0.1:
            out += b"\\" + bytes([c])  # "\q" is q
        else:
            out.append(c)
    out += b'"'
    return bytes(out)


def quote_single(arg: bytes) -> bytes | None:
    """``arg`` in single quotes, or None where that cannot be written (a NUL, a line end, a
    trailing backslash, which would escape the closing quote)."""
    if any(c in (0, 10, 13) for c in arg) or arg.endswith(b"\\"):
        return None
    return b"'" + arg.replace(b"'", b"\\'") + b"'"


def quote_inline(arg: bytes, rng: random.Random) -> bytes:
    """One argument as an inline client may write it: bare, quoted, or bare then quoted."""
    if arg and not any(c in _PLAIN_UNSAFE for c in arg) and rng.random() < 0.5:
        return arg
    single = quote_single(arg)
    if single is not None and rng.random() < 0.3:
        return single
    cut = 0
    while cut < len(arg) and arg[cut] not in _PLAIN_UNSAFE and rng.random() < 0.5:
        cut += 1
    return arg[:cut] + quote_double(arg[cut:], rng)  # a"b c" is "ab c"


def inline_line(args: list[bytes], rng: random.Random) -> bytes:
    """A whole inline line (no line end) that splits into ``args``."""
    blanks = [b" ", b"\t", b"  ", b" \t "]
    parts = [quote_inline(a, rng) for a in args]
    line = bytearray(rng.choice([b"", b" ", b"\t"]))
    for i, part in enumerate(parts):
        if i:
            line += rng.choice(blanks)
        line += part
    line += rng.choice([b"", b" ", b"\t "])
    return bytes(line)


def random_arg(rng: random.Random) -> bytes:
    n = rng.choice([0, 1, 2, 5, 10, 40])
    kind = rng.random()
    if kind < 0.4:
        return bytes(rng.choices(b"abcxyz:{}_-0123456789", k=n))
    if kind < 0.7:
        return bytes(rng.choices(b"ab \t\r\n\"'\\x\x00\x0b\x0c4f", k=n))
    return rng.randbytes(n)


def test_quoted_random_arguments_split_back_unchanged(split: Callable[[bytes], list[bytes]]) -> None:
    rng = random.Random(20240611)
    for _ in range(3000):
        args = [random_arg(rng) for _ in range(rng.randrange(1, 7))]
        line = inline_line(args, rng)
        assert split(line) == args, line


def test_random_lines_split_the_same_in_c_and_python() -> None:
    rng = random.Random(99)
    alphabet = b"ab \t\"'\\x4F\x0b\x0c\r\n\x00"
    for _ in range(20000):
        line = bytes(rng.choices(alphabet, k=rng.randrange(0, 16)))
        args: list[bytes] | None = None
        try:
            args = resp.split_inline(line)
            assert all(type(a) is bytes for a in args), line
        except ProtocolError as exc:
            assert str(exc) == UNBALANCED, line
        assert _speedups.split_inline(line) == args, line
