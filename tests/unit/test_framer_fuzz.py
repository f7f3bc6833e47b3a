"""Request framing fuzzed: the two framer twins (``_speedups.RequestFramer`` in C and
``PyRequestParser``, the reference) and ``RequestParser`` around them, against what the stream
was built from, and the twins against each other.

Streams are built from parts whose framing is known: multibulk commands (random argument
counts and lengths, binary bytes, empty arguments, now and then one over 64 KB), inline lines
quoted the ways Redis reads them, ``*0`` / ``*-1`` (which Redis skips), empty lines; then cut
short, or followed by a corruption. Each stream is fed whole, byte by byte (short ones), and in
random pieces, to each twin and to RequestParser both through ``feed`` + ``commands()`` and the
way the client calls it (``frame(data)``, else ``commands(data)``). Every run must give the
commands the stream was built from, with raw bytes that are their canonical encoding, then
exactly the expected ProtocolError text (or none, holding exactly the unfinished tail), and no
other exception.

The differential tests drive the twins side by side over streams nobody wrote the answer for
(random bytes, mutated commands, small and unauthenticated limits, AUTH part way, big bulks
whose streaming offers are accepted or declined) and require the same result after every read:
the same commands and raw bytes, the same error at the same read, the same state (``again``,
``offer``, ``held``, ``buffered()``) and the same streamed bytes.

Seeds are fixed: a failure names its stream, and reruns the same.
"""

from __future__ import annotations

import random
import re
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from proxy import _speedups
from proxy.resp import (
    DEFAULT_LIMITS,
    ProtocolError,
    PyRequestParser,
    RequestFramer,
    RequestLimits,
    RequestParser,
    encode_command,
)
from tests.unit.test_inline_split import inline_line

Request = tuple[list[bytes], bytes]


@dataclass
class Outcome:
    commands: list[Request] = field(default_factory=list)
    error: str | None = None  # the ProtocolError's text
    buffered: int = 0  # buffered() at the end
    other: str | None = None  # any other exception: always a failure
    too_much: str | None = None  # buffered() once exceeded the bytes fed so far
    parser: object = None  # kept alive, for measuring what it holds

    def key(self) -> tuple[object, ...]:
        return (self.commands, self.error, None if self.error else self.buffered, self.other, self.too_much)


@dataclass
class Case:
    kind: str
    stream: bytes
    commands: list[Request]  # what must be yielded
    error: str | None = None  # what must be raised after them
    tail: int = 0  # with no error: the unfinished command's bytes, which buffered() must equal


# --- the parsers, driven the ways the proxy drives them --------------------------------------

Run = Callable[[Sequence[bytes], random.Random], Outcome]


def _drive(step: Callable[[bytes], None], buffered: Callable[[], int], chunks: Sequence[bytes]) -> Outcome:
    out = Outcome()
    fed = 0
    try:
        for chunk in chunks:
            fed += len(chunk)
            try:
                step(chunk)
            finally:
                if buffered() > fed and out.too_much is None:
                    out.too_much = f"buffered() {buffered()} after {fed} bytes fed"
    except ProtocolError as exc:
        out.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - the point: nothing but ProtocolError may escape
        out.other = f"{type(exc).__name__}: {exc}"
    out.buffered = buffered()
    return out


TWINS: dict[str, Callable[[RequestLimits, bool], RequestFramer]] = {
    "PyRequestParser": PyRequestParser,
    "RequestFramer (C)": _speedups.RequestFramer,
}


def frame_read(framer: RequestFramer, data: bytes, got: list[Request] | None = None) -> list[Request]:
    """A read through a twin as RequestParser does it: frame, again while ``again``; the
    commands are added to ``got``, then the ProtocolError ``error`` names is raised."""
    got = [] if got is None else got
    got += framer.frame(data)
    while framer.again:
        got += framer.frame()
    if framer.error is not None:
        raise ProtocolError(framer.error)
    return got


def _run_twin(make: Callable[[RequestLimits, bool], RequestFramer]) -> Run:
    def run(chunks: Sequence[bytes], rng: random.Random) -> Outcome:
        p = make(DEFAULT_LIMITS, True)
        got: list[Request] = []

        def step(chunk: bytes) -> None:
            frame_read(p, chunk, got)

        out = _drive(step, p.buffered, chunks)
        out.commands = got
        out.parser = p
        return out

    return run


def run_fed(chunks: Sequence[bytes], rng: random.Random) -> Outcome:
    """RequestParser through feed() + commands()."""
    p = RequestParser()
    got: list[Request] = []

    def step(chunk: bytes) -> None:
        p.feed(chunk)
        for command in p.commands():
            got.append(command)

    out = _drive(step, p.buffered, chunks)
    out.commands = got
    out.parser = p
    return out


def run_client(chunks: Sequence[bytes], rng: random.Random) -> Outcome:
    """RequestParser as proxy/client.py calls it: commands(data) per read."""
    p = RequestParser()
    got: list[Request] = []

    def step(chunk: bytes) -> None:
        for command in p.commands(chunk):
            got.append(command)

    out = _drive(step, p.buffered, chunks)
    out.commands = got
    out.parser = p
    return out


RUNS: dict[str, Run] = {
    **{name: _run_twin(make) for name, make in TWINS.items()},
    "RequestParser.feed": run_fed,
    "RequestParser.frame": run_client,
}


def chunkings(stream: bytes, rng: random.Random) -> list[list[bytes]]:
    """All at once, byte by byte (short streams), and random pieces."""
    out = [[stream]]
    if len(stream) < 2:
        return out
    if len(stream) <= 160:
        out.append([stream[i : i + 1] for i in range(len(stream))])
    for _ in range(2):
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(1, 8))))
        out.append([stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])])
    return out


SLOW_S = 2.0  # one run frames a few KB (or refuses a header): microseconds to milliseconds


def check(case: Case, rng: random.Random, failures: list[tuple[str, str]]) -> None:
    """Every parser, every chunking: the case's commands, then its error (or its tail)."""
    want = Outcome(case.commands, case.error, case.tail)
    for chunks in chunkings(case.stream, rng):
        for name, run in RUNS.items():
            started = time.monotonic()
            got = run(chunks, rng)
            got.parser = None  # freed here, inside the timing
            took = time.monotonic() - started
            if got.key() != want.key():
                failures.append((case.kind, _explain(case, name, chunks, got)))
                return
            if took > SLOW_S:
                failures.append(
                    (case.kind, f"{name} took {took:.1f} s to frame and free {case.stream[:80]!r}")
                )
                return


def _explain(case: Case, name: str, chunks: Sequence[bytes], got: Outcome) -> str:
    def short(x: object) -> str:
        text = repr(x)
        return text if len(text) < 300 else text[:300] + "..."

    lines = [f"{name}, {len(chunks)} chunk(s), stream {short(case.stream)}"]
    if got.other or got.too_much:
        lines.append(f"  {got.other or got.too_much}")
    n = 0
    while n < min(len(got.commands), len(case.commands)) and got.commands[n] == case.commands[n]:
        n += 1
    if n < len(got.commands) or n < len(case.commands):
        lines.append(
            f"  commands agree up to #{n}: expected {short(case.commands[n : n + 1])}, "
            f"got {short(got.commands[n : n + 1])}"
        )
    if got.error != case.error:
        lines.append(f"  error: expected {case.error!r}, got {got.error!r}")
    elif not case.error and got.buffered != case.tail:
        lines.append(f"  buffered(): expected {case.tail}, got {got.buffered}")
    return "\n".join(lines)


def report(failures: list[tuple[str, str]], cases: int) -> str:
    kinds: dict[str, list[str]] = {}
    for kind, text in failures:
        kinds.setdefault(kind, []).append(text)
    parts = [f"{len(failures)} of {cases} streams framed wrongly"]
    for kind, texts in sorted(kinds.items()):
        parts.append(f"[{kind}] x{len(texts)}, first:\n{texts[0]}")
    return "\n".join(parts)


# --- stream parts -----------------------------------------------------------------------------


def random_arg(rng: random.Random, big: bool = True) -> bytes:
    r = rng.random()
    if r < 0.1:
        return b""
    if r < 0.6:
        n = rng.randrange(1, 12)
    elif r < 0.95 or not big:
        n = rng.randrange(12, 200)
    elif r < 0.99:
        n = rng.randrange(200, 5000)
    else:
        n = rng.randrange(64 * 1024, 150 * 1024)  # past the 64 KB partial-frame threshold
    if rng.random() < 0.5:
        return rng.randbytes(n)
    return bytes(rng.choices(b"ab*$:+-\r\n 0123456789", k=n))  # RESP-looking bytes


def multibulk(rng: random.Random) -> tuple[bytes, list[Request]]:
    n = rng.choice([1, 1, 2, 2, 3, 3, 4, 5, 8, rng.randrange(1, 40)])
    args = [random_arg(rng) for _ in range(n)]
    raw = encode_command(args)
    return raw, [(args, raw)]


def inline(rng: random.Random) -> tuple[bytes, list[Request]]:
    args = [random_arg(rng, big=False)[:30] for _ in range(rng.randrange(1, 7))]
    line = inline_line(args, rng)
    if line[:1] == b"*":  # a line starting with '*' is multibulk: start it with a blank
        line = b" " + line
    return line + rng.choice([b"\r\n", b"\n"]), [(args, encode_command(args))]


SKIPPED = [b"*0\r\n", b"*-1\r\n", b"*-2\r\n", b"*-100\r\n", b"\r\n", b"\n", b"  \t\r\n"]


def part(rng: random.Random, inline_too: bool) -> tuple[bytes, list[Request]]:
    r = rng.random()
    if r < 0.65:
        return multibulk(rng)
    if r < 0.9:
        return inline(rng) if inline_too else multibulk(rng)
    skipped = rng.choice(SKIPPED)
    return (skipped if skipped[:1] == b"*" or inline_too else b"*0\r\n"), []


def valid_parts(rng: random.Random, count: int) -> tuple[str, list[tuple[bytes, list[Request]]]]:
    """(kind, parts): a third of the streams are multibulk only, the rest mix in inline lines
    (the kind tells them apart, so a failure report separates framing from quoting)."""
    inline_too = rng.random() < 0.67
    return ("multibulk+inline" if inline_too else "multibulk"), [part(rng, inline_too) for _ in range(count)]


# Corruptions and Redis 7's reply texts for them (checked against redis-server 7.0; the proxy
# adds "bulk string not terminated by CRLF" where Redis skips two bytes unchecked, and refuses
# more than 1048576 arguments, where Redis's bound is INT_MAX).
BAD_COUNTS = [
    b"*x\r\n",
    b"*\r\n",
    b"*03\r\n",
    b"*00\r\n",
    b"*+3\r\n",
    b"*-0\r\n",
    b"* 1\r\n",
    b"*1 \r\n",
    b"*1x\r\n",
    b"*99999999999999999999999\r\n",
    b"*1048577\r\n",
    b"*1\n$4\r\nPING\r\n",
]
HUGE_COUNTS = [
    b"*2147483648\r\n",
    b"*4294967295\r\n",
    b"*2147483647\r\n",
    b"*9223372036854775807\r\n",
    b"*18446744073709551616\r\n",
]
BAD_BULKS = [
    b"$x\r\n",
    b"$\r\n",
    b"$03\r\nabc\r\n",
    b"$00\r\n\r\n",
    b"$+3\r\nabc\r\n",
    b"$-1\r\n",
    b"$-5\r\n",
    b"$-0\r\n",
    b"$ 3\r\nabc\r\n",
    b"$3 \r\nabc\r\n",
    b"$536870913\r\n",
    b"$99999999999999999999\r\n",
    b"$3\nabc\r\n",
]
HUGE_BULKS = [b"$1073741824\r\n", b"$4294967296\r\n", b"$9223372036854775807\r\n"]
NOT_BULKS = [b":1\r\n", b"+OK\r\n", b"*1\r\n$1\r\na\r\n", b"PING\r\n", b"-ERR x\r\n", b"%1\r\n"]
UNTERMINATED = [b"$3\r\nabcXY", b"$3\r\nabc\n\r", b"$0\r\nxx", b"$3\r\nabc\r\r"]


def corruption(rng: random.Random, huge: bool) -> tuple[str, bytes, str]:
    """(kind, bytes, error) of a corrupt request, to put at a command boundary."""
    r = rng.random()
    if huge:
        if r < 0.5:
            bad = rng.choice(HUGE_COUNTS)
            return f"count {bad!r}", bad, "invalid multibulk length"
        return _in_command(rng, rng.choice(HUGE_BULKS), "bulk", "invalid bulk length")
    if r < 0.3:
        bad = rng.choice(BAD_COUNTS)
        return f"count {bad!r}", bad, "invalid multibulk length"
    if r < 0.6:
        return _in_command(rng, rng.choice(BAD_BULKS), "bulk", "invalid bulk length")
    if r < 0.8:
        bad = rng.choice(NOT_BULKS)
        return _in_command(rng, bad, "not a bulk", f"expected '$', got '{chr(bad[0])}'")
    if r < 0.9:
        bad = rng.choice(UNTERMINATED)
        return _in_command(rng, bad, "unterminated", "bulk string not terminated by CRLF")
    bad = rng.choice(
        [b'GET "a\r\n', b"SET 'a b\r\n", b'GET "a"b\r\n', b'SET "a""b" c\r\n', b"ECHO 'x\\'\r\n", b' "\r\n']
    )
    return f"inline {bad!r}", bad, "unbalanced quotes in request"


def _in_command(rng: random.Random, bad: bytes, kind: str, error: str) -> tuple[str, bytes, str]:
    """``bad`` as element k of a multibulk command of n > k elements."""
    n = rng.randrange(1, 5)
    k = rng.randrange(0, n)
    before = b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in (random_arg(rng, False) for _ in range(k)))
    return f"{kind} {bad!r}", b"*%d\r\n" % n + before + bad, error


def corrupt_case(rng: random.Random, huge: bool = False) -> Case:
    family, parts = valid_parts(rng, rng.randrange(0, 6))
    kind, bad, error = corruption(rng, huge)
    after = b"".join(p[0] for p in valid_parts(rng, rng.randrange(0, 3))[1])  # never framed
    stream = b"".join(p[0] for p in parts) + bad + after
    return Case(f"{family}, then {kind}", stream, [c for p in parts for c in p[1]], error)


def valid_case(rng: random.Random) -> Case:
    family, parts = valid_parts(rng, rng.randrange(1, 12))
    stream = b"".join(p[0] for p in parts)
    commands = [c for p in parts for c in p[1]]
    if rng.random() < 0.4:  # cut short: only the parts that ended before the cut come out
        cut = rng.randrange(0, len(stream))
        done, end = [], 0
        for raw, cmds in parts:
            if end + len(raw) > cut:
                break
            end += len(raw)
            done += cmds
        return Case(f"{family}, cut short", stream[:cut], done, None, cut - end)
    return Case(family, stream, commands)


# --- tests --------------------------------------------------------------------------------------


def test_valid_and_truncated_streams_frame_the_same_in_every_chunking() -> None:
    rng = random.Random(1)
    failures: list[tuple[str, str]] = []
    cases = 1500
    for _ in range(cases):
        check(valid_case(rng), rng, failures)
    assert not failures, report(failures, cases)


def test_corrupt_streams_raise_redis_error_after_the_commands_before_it() -> None:
    rng = random.Random(2)
    failures: list[tuple[str, str]] = []
    cases = 1500
    for _ in range(cases):
        check(corrupt_case(rng), rng, failures)
    assert not failures, report(failures, cases)


def test_huge_counts_and_lengths_anywhere_are_refused_at_once() -> None:
    """``*2147483648``, ``$1073741824``... after random commands, in random pieces: the same
    error, promptly (hiredis once pre-allocated a 16 GB array for the first, then took ~8 s
    to free it)."""
    rng = random.Random(3)
    failures: list[tuple[str, str]] = []
    cases = 300
    for _ in range(cases):
        check(corrupt_case(rng, huge=True), rng, failures)
        if any("to frame and free" in text for _, text in failures):
            break  # each further one would cost as much again
    assert not failures, report(failures, cases)


def test_every_request_framed_is_forwarded_canonically() -> None:
    """raw is always encode_command(args): servers only ever see canonical RESP."""
    rng = random.Random(4)
    for _ in range(300):
        case = valid_case(rng)
        for run in RUNS.values():
            out = run([case.stream], rng)
            assert all(raw == encode_command(args) for args, raw in out.commands)
            assert all(type(a) is bytes for args, _ in out.commands for a in args)


# --- header refusals, as Redis words them, and what a hostile header costs --------------------

REFUSED = [
    (b"*2147483648\r\n", "invalid multibulk length"),
    (b"*4294967295\r\n", "invalid multibulk length"),
    (b"*1048577\r\n", "invalid multibulk length"),  # the proxy's max_args (Redis: INT_MAX)
    (b"*03\r\n", "invalid multibulk length"),
    (b"*+1\r\n", "invalid multibulk length"),
    (b"*-0\r\n", "invalid multibulk length"),
    (b"*\r\n", "invalid multibulk length"),
    (b"*1\r\n$1073741824\r\n", "invalid bulk length"),
    (b"*1\r\n$536870913\r\n", "invalid bulk length"),
    (b"*1\r\n$04\r\nPING\r\n", "invalid bulk length"),
    (b"*1\r\n$+4\r\nPING\r\n", "invalid bulk length"),
    (b"*1\r\n$-1\r\n", "invalid bulk length"),
    (b"*1\r\n:1\r\n", "expected '$', got ':'"),
]


@pytest.mark.parametrize("data, error", REFUSED, ids=[repr(d)[2:-1] for d, _ in REFUSED])
def test_header_refused_with_redis_text(data: bytes, error: str) -> None:
    for run in RUNS.values():
        out = run([data], random.Random(0))
        assert (out.commands, out.error, out.other) == ([], error, None)


def test_skipped_and_in_limit_headers_are_not_errors() -> None:
    """``*0``, ``*-1``, ``*-5`` are skipped as Redis does; headers at the limits wait for data."""
    ping = encode_command([b"PING"])
    for data in (b"*0\r\n" + ping, b"*-1\r\n" + ping, b"*-5\r\n" + ping):
        for run in RUNS.values():
            out = run([data], random.Random(0))
            assert (out.commands, out.error, out.other, out.buffered) == ([([b"PING"], ping)], None, None, 0)
    for data in (b"*1048576\r\n", b"*1\r\n$536870912\r\n", b"*2\r\n$3\r\nSET\r\n$536870912\r\n"):
        for run in RUNS.values():
            out = run([data], random.Random(0))
            assert (out.commands, out.error, out.other, out.buffered) == ([], None, None, len(data))


def _vm_kb() -> dict[str, int]:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) for k in ("VmSize", "VmRSS")}


REFUSED_HEADERS = [
    b"*2147483648\r\n",
    b"*2147483648\r\n$1\r\n",
    b"*4294967295\r\n",
    b"*4294967295\r\n$1\r\na\r\n",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1073741824\r\n",
    b"*1\r\n$1073741824\r\n",
    b"*1048577\r\n",
]
WAITING_HEADERS = [  # in the limits, data not sent yet
    b"*1048576\r\n",
    b"*1048576\r\n$1\r\n",
    b"*1\r\n$536870912\r\n",
    b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870912\r\n",
]
MAX_TRACED = 4 * 1024 * 1024  # bytes of Python allocations
MAX_VM_KB = 64 * 1024  # VmSize/VmRSS growth (C allocations tracemalloc cannot see)


def _measure(header: bytes, refused: bool) -> None:
    prefix = encode_command([b"SET", b"k", b"v"])
    rng = random.Random(5)
    for data in (header, prefix + header):
        for chunks in ([data], [data[:-3], data[-3:]], [data[i : i + 1] for i in range(len(data))]):
            for name, run in RUNS.items():
                vm = _vm_kb()
                tracemalloc.start()
                started = time.monotonic()
                try:
                    out = run(chunks, rng)
                    held, peak = tracemalloc.get_traced_memory()
                    grown = {k: v - vm[k] for k, v in _vm_kb().items()}
                    result = (out.error, out.other, out.buffered)
                    del out  # and the parser with it (no cycles: freed here)
                finally:
                    tracemalloc.stop()
                took = time.monotonic() - started
                where = f"{name}, {len(chunks)} chunk(s) of {data!r}"
                if refused:  # nothing at all may be allocated for the header
                    assert peak < MAX_TRACED, f"{where}: {peak / 2**20:.0f} MB allocated"
                    assert result[0] is not None and result[1] is None, f"{where}: {result}"
                else:  # nothing may be held for data that has not come
                    assert held < MAX_TRACED, f"{where}: {held / 2**20:.0f} MB held"
                    assert result == (None, None, len(header)), f"{where}: {result}"
                assert max(grown.values()) < MAX_VM_KB, f"{where}: grew {grown} kB"
                assert took < 2.0, f"{where}: {took:.1f} s to frame and free"


@pytest.mark.parametrize("header", REFUSED_HEADERS, ids=[repr(h)[2:-1] for h in REFUSED_HEADERS])
def test_refused_header_allocates_nothing_and_frees_fast(header: bytes) -> None:
    _measure(header, refused=True)


@pytest.mark.parametrize("header", WAITING_HEADERS, ids=[repr(h)[2:-1] for h in WAITING_HEADERS])
def test_header_in_the_limits_holds_nothing_ahead_of_its_data(header: bytes) -> None:
    _measure(header, refused=False)


def test_limits_are_the_parsers_own() -> None:
    small = RequestLimits(max_args=3, max_bulk_bytes=10)
    makers: list[Callable[[RequestLimits, bool], RequestFramer | RequestParser]] = [
        *TWINS.values(),
        RequestParser,
    ]
    for make in makers:
        parser = make(small, True)
        parser.feed(b"*4\r\n")
        with pytest.raises(ProtocolError, match=re.escape("invalid multibulk length")):
            frame_read(parser, b"") if not isinstance(parser, RequestParser) else list(parser.commands())
        parser = make(small, True)
        parser.feed(b"*1\r\n$11\r\n")
        with pytest.raises(ProtocolError, match=re.escape("invalid bulk length")):
            frame_read(parser, b"") if not isinstance(parser, RequestParser) else list(parser.commands())
    limits = RequestLimits()
    assert (limits.unauth_max_args, limits.unauth_max_bulk) == (10, 16384)  # Redis 7's


def _all_commands(parser: RequestParser | RequestFramer, data: bytes) -> list[Request]:
    if isinstance(parser, RequestParser):
        return list(parser.commands(data))
    return frame_read(parser, data)


@pytest.mark.parametrize("make", [RequestParser, *TWINS.values()], ids=["RequestParser", *TWINS])
def test_unauthenticated_limits_before_auth(
    make: Callable[[RequestLimits, bool], RequestParser | RequestFramer],
) -> None:
    """Redis 7's: more than 10 arguments or a bulk over 16384 bytes, at the header."""
    cases = [
        (b"*11\r\n", "unauthenticated multibulk length"),
        (b"*1\r\n$16385\r\n", "unauthenticated bulk length"),
        (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$104857600\r\n", "unauthenticated bulk length"),
        (b"*2147483648\r\n", "invalid multibulk length"),  # the general limits come first
        (b"*1\r\n$1073741824\r\n", "invalid bulk length"),
    ]
    for data, error in cases:
        p = make(DEFAULT_LIMITS, False)
        with pytest.raises(ProtocolError) as info:
            _all_commands(p, data)
        assert str(info.value) == error
    at_limits = [encode_command([b"MSET", *[b"k"] * 9]), encode_command([b"SET", b"k", b"v" * 16384])]
    p = make(DEFAULT_LIMITS, False)
    assert [raw for _, raw in _all_commands(p, b"".join(at_limits))] == at_limits
    for data in (b"*11\r\n$1\r\na\r\n", b"*1\r\n$16385\r\n"):
        p = make(DEFAULT_LIMITS, True)  # authenticated (a pool without redis_auth)
        assert _all_commands(p, data) == [] and p.buffered() == len(data)


def test_an_auth_lifts_the_limits_for_the_commands_after_it_in_the_same_read() -> None:
    """Redis runs each command before it reads the next header: the framer hands out one
    command at a time until the client has authenticated (``again``), and RequestParser asks
    for the next one only when the one before has been taken."""
    big = encode_command([b"SET", b"k", b"v" * 20000])
    data = encode_command([b"AUTH", b"pw"]) + big + encode_command([b"GET", b"k"])
    for make in TWINS.values():
        p = make(DEFAULT_LIMITS, False)
        assert p.frame(data) == [([b"AUTH", b"pw"], encode_command([b"AUTH", b"pw"]))] and p.again
        p.authenticated = True
        assert [args[0] for args, _ in p.frame()] == [b"SET", b"GET"] and not p.again
    p2 = RequestParser(authenticated=False)
    got = []
    for args, _ in p2.commands(data):
        got.append(args[0])
        if args[0] == b"AUTH":
            p2.authenticated = True
    assert got == [b"AUTH", b"SET", b"GET"] and p2.buffered() == 0
    p3 = RequestParser(authenticated=False)  # no AUTH: refused at the big header
    with pytest.raises(ProtocolError, match="unauthenticated bulk length"):
        list(p3.commands(data))


# --- the twins side by side -------------------------------------------------------------------

Event = tuple[object, ...]


def drive_twin(
    framer: RequestFramer, chunks: Sequence[bytes], seed: int, auth_word: bytes | None = b"AUTH"
) -> list[Event]:
    """Everything a twin does with ``chunks`` read by read, as the proxy would drive it: frame
    (again while ``again``), an AUTH among the commands authenticates, offers are accepted or
    declined at random (the same choices for both twins: one seed), streamed reads go to
    ``stream``. One event per call, with the state after it."""
    rng = random.Random(seed)
    log: list[Event] = []
    streaming = False

    def state() -> tuple[object, ...]:
        return (framer.error, framer.again, framer.offer, framer.held, framer.buffered())

    for chunk in chunks:
        if streaming:
            part, done = framer.stream(chunk)
            log.append(("stream", part, done, *state()))
            if framer.error is not None:
                return log
            if not done:
                continue
            streaming = False
            chunk = b""
        while True:
            commands = framer.frame(chunk)
            chunk = b""
            log.append(("frame", commands, *state()))
            if framer.error is not None:
                return log
            if any(args[0].upper() == auth_word for args, _ in commands):
                framer.authenticated = True
            if framer.offer is not None:
                if rng.random() < 0.5:
                    framer.decline()
                    log.append(("decline", *state()))
                    continue
                log.append(("accept", framer.accept(), *state()))
                streaming = True
                break
            if not framer.again:
                break
    return log


def _random_limits(rng: random.Random) -> RequestLimits:
    if rng.random() < 0.4:
        return RequestLimits(stream_min_bytes=rng.choice([0, 1, 40, 300, 1024 * 1024]))
    return RequestLimits(
        max_bulk_bytes=rng.choice([0, 5, 40, 300, 5000]),
        max_args=rng.choice([1, 2, 5, 40]),
        max_inline_bytes=rng.choice([1, 4, 30, 200]),
        unauth_max_args=rng.choice([0, 1, 3, 10]),
        unauth_max_bulk=rng.choice([0, 3, 50, 16384]),
        stream_min_bytes=rng.choice([0, 1, 20, 100, 1024 * 1024]),
    )


NOISE = b"*$\r\n0123456789-+: \"'\\xabAUTH\t\x00\xff"


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(out) + 1)
        r = rng.random()
        if r < 0.4 and at < len(out):
            out[at] = rng.choice(NOISE)
        elif r < 0.7:
            out[at:at] = bytes(rng.choices(NOISE, k=rng.randrange(1, 4)))
        else:
            del out[at : at + rng.randrange(1, 4)]
    return bytes(out)


def _auth_or_big(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.3:
        return encode_command([b"AUTH", b"pw"]) if rng.random() < 0.7 else b"auth pw\r\n"
    n = rng.choice([20, 99, 100, 101, 299, 300, 1000, 3000])
    args = [b"SET", b"k", rng.randbytes(n)] + [rng.randbytes(rng.choice([0, 5, 350]))] * rng.randrange(0, 3)
    return encode_command(args)


def differential_stream(rng: random.Random) -> tuple[str, bytes]:
    """(kind, bytes): a stream for the twins to agree on (no expected answer needed)."""
    r = rng.random()
    if r < 0.15:
        return "noise", bytes(rng.choices(NOISE, k=rng.randrange(1, 80)))
    pieces: list[bytes] = []
    for _ in range(rng.randrange(1, 8)):
        k = rng.random()
        if k < 0.45:
            pieces.append(part(rng, True)[0])
        elif k < 0.7:
            pieces.append(_auth_or_big(rng))
        elif k < 0.85:
            pieces.append(corruption(rng, rng.random() < 0.1)[1])
        else:
            pieces.append(rng.choice(BAD_BULKS + NOT_BULKS + UNTERMINATED + [b"*03\r\n", b"$03\r\nabc\r\n"]))
    stream = b"".join(pieces)
    if r < 0.45:
        return "mutated", _mutate(rng, stream)
    return "built", stream


def _cuts(rng: random.Random, stream: bytes) -> list[list[bytes]]:
    out = [[stream]]
    if len(stream) <= 200:
        out.append([stream[i : i + 1] for i in range(len(stream))])
    for _ in range(2):
        if len(stream) > 1:
            cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(1, 12))))
            out.append([stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])])
    return out


def _first_difference(a: list[Event], b: list[Event]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            at = next((k for k, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
            return (
                f"event #{i} ({x[0]}), field {at}:\n  Python {str(x[at : at + 1])[:600]}\n"
                f"  C      {str(y[at : at + 1])[:600]}\n  previous: {str(a[i - 1])[:300] if i else None}"
            )
    return f"Python made {len(a)} events, C {len(b)}"


def test_the_c_framer_and_its_python_twin_agree_read_by_read() -> None:
    rng = random.Random(13)
    failures: list[str] = []
    cases = 2500
    kinds: dict[str, int] = {}
    for case in range(cases):
        kind, stream = differential_stream(rng)
        limits = _random_limits(rng)
        authenticated = rng.random() < 0.6
        for chunks in _cuts(rng, stream):
            logs = []
            for make in TWINS.values():
                try:
                    logs.append(drive_twin(make(limits, authenticated), chunks, case))
                except Exception as exc:  # noqa: BLE001 - nothing may escape a twin
                    logs.append([("raised", f"{type(exc).__name__}: {exc}")])
            if logs[0] != logs[1]:
                failures.append(
                    f"[{kind}] {limits}, authenticated={authenticated}, {len(chunks)} read(s) of "
                    f"{stream[:200]!r}\n{_first_difference(logs[0], logs[1])}"
                )
                break
        kinds[kind] = kinds.get(kind, 0) + 1
    assert not failures, f"{len(failures)} of {cases} streams differ; first:\n{failures[0]}"
    assert min(kinds.values()) > cases // 10, kinds


def test_the_twins_agree_on_big_bulks_streamed_or_declined() -> None:
    """Commands with bulks past stream_min_bytes among small ones, in random reads: every offer
    accepted or declined (the same way for both), the streamed bytes checked as they pass."""
    rng = random.Random(14)
    limits = RequestLimits(stream_min_bytes=200)
    for case in range(400):
        commands = []
        for _ in range(rng.randrange(1, 6)):
            args = [rng.choice([b"SET", b"GET", b"APPEND"]), b"k"]
            for _ in range(rng.randrange(0, 4)):
                args.append(rng.randbytes(rng.choice([0, 3, 150, 199, 200, 201, 900, 2500])))
            commands.append(encode_command(args) if rng.random() < 0.9 else b"PING\r\n")
        stream = b"".join(commands)
        if rng.random() < 0.2:
            stream = _mutate(rng, stream)
        for chunks in _cuts(rng, stream)[1:]:
            py = drive_twin(PyRequestParser(limits), chunks, case)
            c = drive_twin(_speedups.RequestFramer(limits), chunks, case)
            assert py == c, _first_difference(py, c)


def test_a_big_read_is_framed_without_rescanning_in_both_twins() -> None:
    """A 64 MB value in 64 KB reads: each read costs the same (one length check), not more as
    the value grows; the buffer is copied O(1) times."""
    value = b"v" * (64 * 1024 * 1024)
    command = encode_command([b"SET", b"k", value])
    for make in TWINS.values():
        p = make(DEFAULT_LIMITS, True)
        started = time.monotonic()
        got: list[Request] = []
        for i in range(0, len(command), 65536):
            got += p.frame(command[i : i + 65536])
            if p.offer is not None:  # declined: the value is buffered whole
                p.decline()
                got += p.frame()
        took = time.monotonic() - started
        assert got == [([b"SET", b"k", value], command)] and p.buffered() == 0
        assert took < 5.0, f"{make}: {took:.1f} s"
