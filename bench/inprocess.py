#!/usr/bin/env python3
"""The proxy's request path in one process, without sockets: a steady measure of its own cost.

A ring pool of three servers whose backend connections write to in-memory transports, one
client connection, and a loop that feeds the client N GETs per read (the depth), answers every
backend write with one reply per request, and lets the event loop run the flushes. What it
counts is the Python (and C kernel) work per request, not the system calls.

    bench/inprocess.py DEPTH REQUESTS [mget]     # prints µs per request (mget: MGET of 10)
    valgrind --tool=callgrind bench/inprocess.py 16 40000
        # instruction counts: run it twice (e.g. 8000 and 40000 requests) and divide the
        # difference by the difference in requests: start-up cancels out, and the figure
        # does not move with the load of this shared machine (wall time does)
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import uvloop  # noqa: E402

from proxy.backend import BackendConnection  # noqa: E402
from proxy.client import ClientConnection, ClientLimits  # noqa: E402
from proxy.config import RingPoolConfig, parse  # noqa: E402
from proxy.inflight import Flusher  # noqa: E402
from proxy.pool import RingPool  # noqa: E402
from proxy.resp import encode_command  # noqa: E402


class MemoryTransport:
    """Collects what is written; the rest of the transport interface does nothing."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, items: Any) -> None:
        self.out.extend(items)

    def get_extra_info(self, name: str) -> None:
        return None

    def set_write_buffer_limits(self, high: int) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


async def run(depth: int, requests: int, mget: bool = False) -> float:
    loop = asyncio.get_running_loop()
    servers = "".join(f"      - 127.0.0.1:{7000 + i}:1\n" for i in range(3))
    config = parse(f"pools:\n  p:\n    listen: 127.0.0.1:1\n    servers:\n{servers}")
    ring = config.pools[0]
    assert isinstance(ring, RingPoolConfig)
    pool = RingPool(ring, loop)
    backends = []
    for server in pool.servers:
        conn = BackendConnection(
            server.name,
            pool.name,
            loop,
            timeout_ms=100_000,
            init_commands=[],
            on_lost=server._on_lost,
            on_ready=server._mark_up,
            stats=server.stats,
        )
        transport = MemoryTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        server._lanes[0] = conn
        server.direct = conn.send  # as Server._connect sets it for a one-lane server
        backends.append((conn, transport))
    client = ClientConnection(
        pool,
        flusher=Flusher(loop.call_soon),
        limits=ClientLimits(),
        on_open=lambda c: True,
        on_close=lambda c: None,
    )
    client_transport = MemoryTransport()
    client.connection_made(client_transport)  # type: ignore[arg-type]
    if mget:  # ten keys each, spread over the three servers
        read = b"".join(
            encode_command([b"MGET"] + [b"user:%d:%d" % (k * 7919 + i, k) for k in range(10)])
            for i in range(depth)
        )
    else:
        read = b"".join(encode_command([b"GET", b"key:%d" % i]) for i in range(depth))
    started = time.perf_counter()
    for _ in range(max(1, requests // depth)):
        client.data_received(read)
        await asyncio.sleep(0)  # the backend writes (call_soon)
        for conn, transport in backends:
            if transport.out:
                replies = [_answer(request) for request in transport.out]
                transport.out.clear()
                conn.data_received(b"".join(replies))
        await asyncio.sleep(0)  # the client's write
        client_transport.out.clear()
    return (time.perf_counter() - started) / requests * 1e6


def _answer(request: bytes) -> bytes:
    """What a server would say: a value per GET, an array of values for an MGET of n keys."""
    if request.startswith(b"*2\r\n$3\r\nGET"):
        return b"$1\r\nv\r\n"
    nkeys = int(request[1 : request.index(b"\r")]) - 1
    return b"*%d\r\n" % nkeys + b"$1\r\nv\r\n" * nkeys


def main() -> int:
    depth = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    requests = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    mget = len(sys.argv) > 3 and sys.argv[3] == "mget"
    took = uvloop.run(run(depth, requests, mget))
    print(f"depth {depth}{' mget' if mget else ''}: {took:.3f} µs per request (wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
