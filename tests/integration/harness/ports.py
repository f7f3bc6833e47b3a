"""Free 127.0.0.1 ports for the processes the tests start."""

from __future__ import annotations

import random
import socket

_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(bus: bool = False) -> int:
    """A free 127.0.0.1 port below the kernel's ephemeral range.

    With ``bus``, port + 10000 (a cluster node's bus port) is free and below that range too.

    Asking the kernel for port 0 hands out an *ephemeral* port, which any outgoing connection
    (a proxy connecting to its servers) may take before our process binds it: seen here as
    "address already in use". Ports below ip_local_port_range are never used for outgoing
    connections, so only our own allocations can collide, and those are remembered.
    """
    low = _ephemeral_low()
    high = low - 10000 if bus else low
    for _ in range(1000):  # bounded
        port = random.randrange(10000, max(high, 10001))
        if port in _HANDED_OUT or not _bindable(port):
            continue
        if bus and (port + 10000 in _HANDED_OUT or not _bindable(port + 10000)):
            continue
        _HANDED_OUT.add(port)
        if bus:
            _HANDED_OUT.add(port + 10000)
        return port
    raise RuntimeError("no free port below the ephemeral range")
