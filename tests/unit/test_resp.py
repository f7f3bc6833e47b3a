"""RESP framing: requests and replies, fed whole and one byte at a time."""

from __future__ import annotations

import re
from collections.abc import Callable

import hiredis
import pytest

from proxy import _speedups, resp
from proxy.resp import (
    DEFAULT_LIMITS,
    ProtocolError,
    PyRequestParser,
    ReplyParser,
    RequestFramer,
    RequestLimits,
    RequestParser,
    encode_command,
    encode_error,
    encode_value,
)

REQUESTS = [
    [b"GET", b"k"],
    [b"SET", b"key:1", b"v" * 1000],
    [b"MSET", b"a", b"", b"b", b"\r\n\x00\xff"],
    [b"PING"],
]


Request = tuple[list[bytes], bytes]
TWINS: list[Callable[[RequestLimits], RequestFramer]] = [
    PyRequestParser,
    _speedups.RequestFramer,
]  # Python, C


def _frame(framer: RequestFramer, data: bytes, out: list[Request]) -> None:
    """A read through a framer twin: frame (again while ``again``); its ProtocolError raised."""
    out += framer.frame(data)
    while framer.again:
        out += framer.frame()
    if framer.error is not None:
        raise ProtocolError(framer.error)


def _parse_all(parser: RequestParser | RequestFramer, data: bytes, step: int) -> list[Request]:
    out: list[Request] = []
    for i in range(0, len(data), step):
        if isinstance(parser, RequestParser):
            parser.feed(data[i : i + step])
            out.extend(parser.commands())
        else:
            _frame(parser, data[i : i + step], out)
    return out


@pytest.mark.parametrize("step", [1, 3, 7, 10_000])
def test_requests_framed_whole_or_byte_by_byte_keep_raw_bytes(step: int) -> None:
    stream = b"".join(encode_command(r) for r in REQUESTS)
    got = _parse_all(RequestParser(), stream, step)
    assert [args for args, _ in got] == REQUESTS
    assert b"".join(raw for _, raw in got) == stream


def test_args_and_raw_bytes_are_kept_as_sent() -> None:
    p = RequestParser()
    p.feed(encode_command([b"get", b"Key"]))
    [(args, raw)] = list(p.commands())
    assert args == [b"get", b"Key"]
    assert raw == encode_command([b"get", b"Key"])


def test_inline_commands_are_reencoded_as_multibulk() -> None:
    p = RequestParser()
    p.feed(b"set  k v\r\nPING\n\r\n")
    got = list(p.commands())
    assert got == [
        ([b"set", b"k", b"v"], encode_command([b"set", b"k", b"v"])),
        ([b"PING"], encode_command([b"PING"])),
    ]


def test_big_value_in_small_reads_is_assembled() -> None:
    value = bytes(range(256)) * 4096  # 1 MiB
    stream = encode_command([b"SET", b"k", value])
    p = RequestParser(RequestLimits(stream_min_bytes=0))  # (never offered for streaming)
    got = _parse_all(p, stream, 65536)
    assert got == [([b"SET", b"k", value], stream)]
    assert p.buffered() == 0


@pytest.mark.parametrize(
    "data, message",
    [
        (b"*x\r\n", "invalid multibulk length"),
        (b"*1\r\n$999999999999\r\n", "invalid bulk length"),
        (b"*99999999999\r\n", "invalid multibulk length"),
        (b"*1\r\n+GET\r\n", "expected '$', got '+'"),
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
    ],
)
def test_corrupt_requests_raise_protocol_error(data: bytes, message: str) -> None:
    p = RequestParser()
    p.feed(data)
    with pytest.raises(ProtocolError, match=re.escape(message)):
        list(p.commands())


@pytest.mark.parametrize("make", TWINS)
def test_both_framers_check_the_crlf_after_a_bulk(make: Callable[[RequestLimits], RequestFramer]) -> None:
    # (Redis skips those two bytes unchecked: the proxy refuses what it could not forward as is)
    p = make(DEFAULT_LIMITS)
    assert p.frame(b"*1\r\n$3\r\nGET\r\n*1\r\n$3\r\nGETxx") == [([b"GET"], b"*1\r\n$3\r\nGET\r\n")]
    assert p.error == "bulk string not terminated by CRLF"
    assert p.frame(encode_command([b"PING"])) == []  # nothing after a corruption


@pytest.mark.parametrize("make", [RequestParser, *TWINS])
@pytest.mark.parametrize("step", [1, 5, 100])
def test_every_framer_agrees_on_a_mixed_stream(make: type, step: int) -> None:
    stream = b"".join(encode_command(r) for r in REQUESTS) + b"*0\r\n" + encode_command([b"GET", b"x"])
    got = _parse_all(make(DEFAULT_LIMITS), stream, step)
    assert [a for a, _ in got] == REQUESTS + [[b"GET", b"x"]]


def test_commands_before_corruption_are_yielded_first() -> None:
    p = RequestParser()
    p.feed(encode_command([b"PING"]) + b"*x\r\n")
    it = p.commands()
    assert next(it)[0] == [b"PING"]
    with pytest.raises(ProtocolError):
        next(it)


def test_endless_inline_line_is_refused() -> None:
    p = RequestParser(RequestLimits(max_inline_bytes=1024))
    p.feed(b"a" * 2000)
    with pytest.raises(ProtocolError, match="too big inline request"):
        list(p.commands())


@pytest.fixture(params=["c", "python"])
def scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run reply tests with the C scanner and with its Python twin."""
    if request.param == "python":
        monkeypatch.setattr(resp, "scan_reply", resp._py_scan_reply)
        monkeypatch.setattr(resp, "split_replies", resp._py_split_replies)
    else:  # the C build, whatever RESPROXY_PURE selects for the proxy
        monkeypatch.setattr(resp, "scan_reply", _speedups.scan_reply)
        monkeypatch.setattr(resp, "split_replies", _speedups.split_replies)
    return str(request.param)


REPLIES = [
    b"+OK\r\n",
    b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
    b":42\r\n",
    b"$-1\r\n",
    b"$0\r\n\r\n",
    b"$5\r\nhe\r\no\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"*3\r\n$1\r\na\r\n$-1\r\n*2\r\n:1\r\n*1\r\n+x\r\n",
    # RESP3
    b"_\r\n",
    b",3.14\r\n",
    b"#t\r\n",
    b"(12345678901234567890\r\n",
    b"!21\r\nSYNTAX invalid syntax\r\n",
    b"=15\r\ntxt:Some string\r\n",
    b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n*2\r\n_\r\n#f\r\n",
    b"~2\r\n+a\r\n+b\r\n",
    b"|1\r\n+key-popularity\r\n*2\r\n$1\r\na\r\n,0.19\r\n*1\r\n:1\r\n",
]


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_replies_framed_whole_or_byte_by_byte(step: int, scanner: str) -> None:
    stream = b"".join(REPLIES)
    p = ReplyParser()
    got: list[bytes] = []
    for i in range(0, len(stream), step):
        p.feed(stream[i : i + step])
        got.extend(p.replies())
    assert got == REPLIES


def test_split_replies_c_and_python_agree_on_random_cuts() -> None:
    import random

    stream = b"".join(REPLIES) * 3
    rng = random.Random(7)
    for _ in range(300):
        cut = rng.randrange(len(stream) + 1)
        for buf in (stream[:cut], bytearray(stream[:cut])):
            assert resp.split_replies(buf, 0, 1) == resp._py_split_replies(buf, 0, 1)
    whole = REPLIES[2]
    replies, start, _, _ = resp.split_replies(whole, 0, 1)
    assert replies == [whole] and replies[0] is whole and start == len(whole)  # no copy
    with pytest.raises(ValueError):
        resp.split_replies(b"?x\r\n", 0, 1)
    with pytest.raises(ValueError):
        resp._py_split_replies(b"?x\r\n", 0, 1)


def test_reply_parser_rejects_unknown_type_byte(scanner: str) -> None:
    p = ReplyParser()
    p.feed(b"?what\r\n")
    with pytest.raises(ProtocolError):
        p.replies()


def test_encode_decode_round_trip() -> None:
    value = [b"a", None, 7, [b"", [b"x"]]]
    reader = hiredis.Reader()
    reader.feed(encode_value(value))
    assert reader.gets() == value
    assert encode_error("ERR bad\r\nthing") == b"-ERR bad  thing\r\n"


def test_a_huge_array_arriving_in_pieces_is_not_rescanned(scanner: str) -> None:
    items = [b"$5\r\nvalue\r\n"] * 20000
    stream = b"*20000\r\n" + b"".join(items) + b"+OK\r\n"
    p = ReplyParser()
    got: list[bytes] = []
    for i in range(0, len(stream), 4096):
        p.feed(stream[i : i + 4096])
        got.extend(p.replies())
        assert p._pos <= len(p._buf)  # resumes where it stopped
    assert got == [stream[:-5], b"+OK\r\n"]


def test_c_framer_equals_its_python_twin_on_every_split() -> None:
    """The C framer and PyRequestParser, and RequestParser through each (RESPROXY_PURE picks
    one for the proxy): every split of a stream gives the same commands, then the same error."""
    import random

    rng = random.Random(11)
    commands = []
    for _ in range(200):
        n = rng.randrange(1, 6)
        commands.append([bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))) for _ in range(n)])
    stream = b"".join(encode_command(c) for c in commands)
    odd = b"*1\r\n$4\r\nPING\r\n*0\r\n*-1\r\nGET  k\n"  # skipped headers, an inline line
    noncanonical = b"*2\r\n$03\r\nGET\r\n$1\r\nk\r\n"  # a leading zero: refused as Redis does
    first = b"".join(encode_command(c) for c in commands[:20])

    def parse(make: object, data: bytes, cut: int, c_framer: bool) -> tuple[list[Request], str]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(resp, "_Framer", _speedups.RequestFramer if c_framer else PyRequestParser)
            p = RequestParser() if make is RequestParser else make(DEFAULT_LIMITS)  # type: ignore[operator]
        got: list[Request] = []
        error = ""
        try:
            for i in range(0, len(data), cut):
                if isinstance(p, RequestParser):
                    got.extend(p.commands(data[i : i + cut]))
                else:
                    _frame(p, data[i : i + cut], got)
        except ProtocolError as exc:  # the same error, after the same commands
            error = str(exc)
        return got, error

    cases = (
        stream,
        odd + stream,
        stream[:500] + odd + stream[500:],
        stream + b"*1\r\n:1\r\n",
        stream[:300] + b"GET inline\r\n" + stream[300:],
        first + noncanonical + stream[len(first) :],
    )
    for data in cases:
        for cut in (1, 7, 64, 1000, len(data)):
            want = parse(PyRequestParser, data, cut, False)
            for make, c_framer in (
                (_speedups.RequestFramer, True),
                (RequestParser, True),
                (RequestParser, False),
            ):
                assert parse(make, data, cut, c_framer) == want, (make, cut, data[:40])
    assert [args for args, _ in parse(RequestParser, stream, 4096, True)[0]] == commands
    assert parse(RequestParser, first + noncanonical, 100, True) == (
        [(c, encode_command(c)) for c in commands[:20]],
        "invalid bulk length",
    )


# --- streaming a big argument (PyRequestParser.offer / accept / stream) ---------------------

STREAM_LIMITS = RequestLimits(stream_min_bytes=1000)


def _stream_all(data: bytes, step: int, accept: bool) -> tuple[bytes, list[tuple[list[bytes], bytes]], int]:
    """Feed ``data`` in ``step``-byte reads; accept (or decline) every offer. Returns the bytes
    streamed, the commands framed and how many offers were made."""
    p = RequestParser(STREAM_LIMITS)
    streamed = bytearray()
    framed: list[tuple[list[bytes], bytes]] = []
    offers = 0
    streaming = False
    for i in range(0, len(data), step):
        chunk = data[i : i + step]
        if streaming:
            part, done = p.stream(chunk)
            streamed += part
            if not done:
                continue
            streaming = False
            chunk = b""
        framed.extend(p.commands(chunk))
        while p.offer is not None:
            offers += 1
            if not accept:
                p.decline()
                framed.extend(p.commands())
                break
            streamed += p.accept()
            streaming = True
            break
    return bytes(streamed), framed, offers


@pytest.mark.parametrize("step", [1, 7, 333, 4096, 100_000])
def test_a_big_argument_streams_with_what_follows_it_framed_after(step: int) -> None:
    big = bytes(range(256)) * 20  # 5120 bytes: over the 1000-byte stream_min_bytes
    streamed_cmd = encode_command([b"SET", b"k", big, b"EX", b"100"])
    after = encode_command([b"GET", b"k"]) + b"PING\r\n"
    data = encode_command([b"GET", b"a"]) + streamed_cmd + after
    streamed, framed, offers = _stream_all(data, step, accept=True)
    if step >= len(data):  # all in at once: nothing to stream
        assert offers == 0 and streamed == b"" and len(framed) == 4
        return
    assert offers == 1
    assert streamed == streamed_cmd  # the command's bytes, exactly, in order
    assert [args for args, _ in framed] == [[b"GET", b"a"], [b"GET", b"k"], [b"PING"]]


@pytest.mark.parametrize("step", [1, 333, 100_000])
def test_a_declined_offer_is_buffered_whole(step: int) -> None:
    big = b"x" * 3000
    data = encode_command([b"MSET", b"a", big, b"b", big]) + encode_command([b"GET", b"a"])
    streamed, framed, offers = _stream_all(data, step, accept=False)
    assert streamed == b""
    assert offers == (1 if step < 3000 else 0)  # offered only while the body is not all in
    assert [args for args, _ in framed] == [[b"MSET", b"a", big, b"b", big], [b"GET", b"a"]]


def test_two_big_arguments_stream_in_one_command() -> None:
    big = b"y" * 2500
    cmd = encode_command([b"HSET", b"h", b"f1", big, b"f2", big])
    streamed, framed, offers = _stream_all(cmd + encode_command([b"PING"]), 100, accept=True)
    assert offers == 1 and streamed == cmd and [a for a, _ in framed] == [[b"PING"]]


@pytest.mark.parametrize(
    "bad, message",
    [
        (b"XX", "bulk string not terminated by CRLF"),
        (b"\r\n$x\r\n", "invalid bulk length"),
        (b"\r\n+3\r\n", "expected '$', got '+'"),
    ],
)
def test_a_streamed_command_is_checked_as_it_passes(bad: bytes, message: str) -> None:
    head = b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2000\r\n"
    p = RequestParser(STREAM_LIMITS)
    assert list(p.commands(head + b"z" * 500)) == [] and p.offer is not None
    assert p.accept() == head + b"z" * 500
    part, done = p.stream(b"z" * 1500)
    assert (part, done) == (b"z" * 1500, False)
    with pytest.raises(ProtocolError, match=re.escape(message)):
        p.stream(bad)


def test_a_streamed_header_is_held_back_until_it_is_checked() -> None:
    """Redis ends a line at CR + any byte; an unchecked header passed on would let a client
    slip commands past the framing (found in review: FLUSHALL smuggled after a big SET)."""
    head = b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1500\r\n"
    p = RequestParser(STREAM_LIMITS)
    assert list(p.commands(head + b"v" * 1000)) == [] and p.offer is not None
    p.accept()
    part, done = p.stream(b"v" * 500 + b"\r\n")
    assert (part, done) == (b"v" * 500 + b"\r\n", False)
    smuggled = b"$2\rXab\rX*1\rX$8\rXFLUSHALL\rX"
    part, done = p.stream(smuggled)
    assert (part, done) == (b"", False)  # nothing of it handed out
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        p.stream(b"\r\n")


def test_a_header_cut_by_a_read_is_handed_out_whole_once_checked() -> None:
    big = b"w" * 1500
    command = encode_command([b"SET", b"k", big, b"EX", b"100"])
    p = RequestParser(STREAM_LIMITS)
    cut = command.index(b"$2\r\nEX") + 1  # "$" in one read, "2\r\nEX..." in the next
    assert list(p.commands(command[:1200])) == []
    out = p.accept()
    part, done = p.stream(command[1200:cut])
    out += part
    part, done = p.stream(command[cut:])
    out += part
    assert done and out == command


@pytest.mark.parametrize(
    "data", [b"*" + b"1" * 5000 + b"\r\n", b"*1\r\n$" + b"9" * 5000 + b"\r\n", b"*" + b"1" * 21 + b"\r\n"]
)
def test_overlong_length_headers_are_protocol_errors(data: bytes) -> None:
    parser = RequestParser()
    with pytest.raises(ProtocolError, match="invalid (multi)?bulk length"):
        list(parser.commands(data))
    for make in TWINS:
        with pytest.raises(ProtocolError, match="invalid (multi)?bulk length"):
            _frame(make(DEFAULT_LIMITS), data, [])


def test_an_offer_with_the_bulks_cr_already_in_streams_on() -> None:
    command = encode_command([b"SET", b"k", b"c" * 1500])
    p = RequestParser(STREAM_LIMITS)
    assert list(p.commands(command[:-1])) == [] and p.offer is not None  # all but the LF
    out = p.accept()
    part, done = p.stream(command[-1:])
    assert done and out + part == command
    # a wrong byte there is refused by stream(), never by accept() (whose caller is not the
    # framing loop that turns ProtocolError into the client's error reply)
    p = RequestParser(STREAM_LIMITS)
    assert list(p.commands(command[:-2] + b"X")) == [] and p.offer is not None
    p.accept()
    with pytest.raises(ProtocolError, match="not terminated by CRLF"):
        p.stream(b"\n")


@pytest.mark.parametrize("make", TWINS)
def test_held_counts_the_arguments_of_a_partial_command(
    make: Callable[[RequestLimits], RequestFramer],
) -> None:
    p = make(DEFAULT_LIMITS)
    assert p.frame(b"*100001\r\n" + b"$0\r\n\r\n" * 100000) == []
    assert p.buffered() == len(b"*100001\r\n") + 600000
    assert p.held >= p.buffered() + 100000 * 40  # each framed argument is an object
    assert p.frame(b"$1\r\nx\r\n")[0][0][-1] == b"x" and p.held == p.buffered() == 0


def test_streaming_random_commands_in_random_reads_hands_out_exactly_their_bytes() -> None:
    """A seeded check of the streaming state machine: random commands with big and small
    arguments, cut into random reads; every offer accepted. The streamed parts must be exactly
    the streamed commands' bytes, and everything else framed as the plain framer frames it."""
    import random

    rng = random.Random(20261202)
    limits = RequestLimits(stream_min_bytes=300)
    for _ in range(300):
        commands = []
        for _ in range(rng.randrange(1, 6)):
            args = [b"SET", b"k%d" % rng.randrange(100)]
            for _ in range(rng.randrange(1, 5)):
                size = rng.choice([0, 3, 50, 299, 300, 301, 1000, 2500])
                args.append(bytes(rng.randrange(256) for _ in range(size)))
            commands.append(args)
        stream = b"".join(encode_command(c) for c in commands)
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(1, 40))))
        reads = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        p = RequestParser(limits)
        out: list[bytes] = []  # each command's bytes, streamed or framed
        streaming = b""
        in_stream = False
        for data in reads:
            if in_stream:
                part, done = p.stream(data)
                streaming += part
                if not done:
                    continue
                out.append(streaming)
                streaming, in_stream = b"", False
                data = b""
            for _, raw in p.commands(data):
                out.append(raw)
            if p.offer is not None:
                streaming = p.accept()
                in_stream = True
        assert not in_stream and p.buffered() == 0
        assert out == [encode_command(c) for c in commands]
