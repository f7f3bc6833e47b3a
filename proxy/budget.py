"""The proxy-wide budget for what clients make the proxy hold (leaf module: pure, no asyncio).

Every client connection reports the bytes it holds that can grow with what the client does:
unframed request bytes, and owed replies past its own pause point (``max_reply_bytes``, below
which each client is bounded by its socket buffer limit anyway). When the sum passes
``max_bytes`` the budget is *over*: clients stop reading at their next read (backpressure, never
an out-of-memory kill), and once the sum is back under half of it every client the budget paused
is resumed.

Imports: nothing of ours.
"""

from __future__ import annotations

from collections.abc import Callable


class Budget:
    """Bytes held for clients, process-wide, against one limit."""

    __slots__ = ("max_bytes", "used", "over", "pauses", "_paused")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.over = False
        self.pauses = 0  # times the budget went over (reading stopped), for metrics
        self._paused: dict[int, Callable[[], None]] = {}  # client id -> its resume

    def change(self, delta: int) -> None:
        """A client holds ``delta`` more bytes (negative: fewer)."""
        used = self.used = self.used + delta
        if self.over:
            if used <= self.max_bytes // 2:
                self.over = False
                paused, self._paused = self._paused, {}
                for resume in paused.values():
                    resume()
        elif used > self.max_bytes:
            self.over = True
            self.pauses += 1

    def hold(self, client_id: int, resume: Callable[[], None]) -> None:
        """A client stopped reading for the budget; ``resume`` is called when it is back under."""
        self._paused[client_id] = resume

    def release(self, client_id: int) -> None:
        """A client the budget paused is gone."""
        self._paused.pop(client_id, None)
