"""Bounded waits for another process's state, where it offers no event to wait for."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

READY_TIMEOUT_S = 15.0


def poll_until(check: Callable[[], bool], what: str, timeout_s: float = 30.0, every_s: float = 0.05) -> None:
    """Bounded polling of another process's state, where it offers no event to wait for."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ConnectionError):
            pass
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not within {timeout_s} s")


def wait_port(port: int, alive: Callable[[], bool], what: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Bounded wait until 127.0.0.1:``port`` accepts, for programs that print no ready line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout_s} s")
