"""The proxy-wide budget for what clients make the proxy hold (leaf module: pure, no asyncio).

Every client connection reports the bytes it holds that can grow with what the client does:
unframed request bytes, and owed replies past its own pause point (``max_reply_bytes``, below
which each client is bounded by its socket buffer limit anyway). Against ``max_bytes``
(``max_buffered_bytes``):

* past three quarters of it the budget is *over*: clients that hold something stop reading at
  their next read (backpressure: no new requests from them), and once the sum is back under
  half of it every client the budget paused is resumed (one that holds nothing any more is
  resumed at once: a client that reads never waits on one that does not);
* past all of it (replies to requests sent before the pause keep coming), the client holding
  the most is closed, as Redis's ``maxmemory-clients`` evicts: the proxy's memory stays
  bounded whatever clients do, and no client can stall the others by not reading.
"""

from __future__ import annotations

from collections.abc import Callable


class Budget:
    """Bytes held for clients, process-wide, against one limit."""

    __slots__ = ("max_bytes", "used", "over", "pauses", "evictions", "_paused", "_held", "_evict")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.over = False
        self.pauses = 0  # times the budget went over (reading stopped), for metrics
        self.evictions = 0  # clients closed for holding the most past max_bytes
        self._paused: dict[int, Callable[[], None]] = {}  # client id -> its resume
        self._held: dict[int, int] = {}  # client id -> bytes it holds (only those holding some)
        self._evict: dict[int, Callable[[], None]] = {}  # client id -> how to close it

    def hold(self, client_id: int, held: int, evict: Callable[[], None]) -> None:
        """Client ``client_id`` holds ``held`` bytes now; ``evict`` closes it if it must go."""
        old = self._held.pop(client_id, 0)
        if held:
            self._held[client_id] = held
            self._evict[client_id] = evict
        else:
            self._evict.pop(client_id, None)
        used = self.used = self.used + held - old
        if self.over:
            if used <= self.max_bytes // 2:
                self.over = False
                paused, self._paused = self._paused, {}
                for resume in paused.values():
                    resume()
        elif used > self.max_bytes * 3 // 4:
            self.over = True
            self.pauses += 1
        while self.used > self.max_bytes and self._held:
            victim = max(self._held, key=self._held.__getitem__)
            self.used -= self._held.pop(victim)
            self.evictions += 1
            self._evict.pop(victim)()

    def wait(self, client_id: int, resume: Callable[[], None]) -> None:
        """A client stopped reading for the budget; ``resume`` is called when it is back under."""
        self._paused[client_id] = resume

    def release(self, client_id: int) -> None:
        """A client is gone."""
        self._paused.pop(client_id, None)
        self.hold(client_id, 0, _nothing)


def _nothing() -> None:
    pass
