"""Lua script bodies the proxy has seen, so EVALSHA survives servers that lost them (pure).

Libraries load a script once (``SCRIPT LOAD``, or redis-py's ``register_script`` on its first
``NOSCRIPT``) and then call ``EVALSHA sha``. A server that restarted, or joined the pool in a
reload, has never seen the script. The proxy keeps every body it passes on (SCRIPT LOAD and
EVAL), keyed by its SHA1 as Redis computes it, and when a server answers an EVALSHA with
``-NOSCRIPT`` it loads the body there and sends the EVALSHA once more (``NoScriptRetry``) —
provided the client sent nothing after it meanwhile (else the retry would run after those).
Bodies are kept newest-first up to ``max_bytes`` (the oldest are forgotten first); ``SCRIPT
FLUSH`` through the proxy forgets them all, as it empties the servers' caches. The ones clients
call by SHA1 are loaded on every new server connection before anything else (``preload``):
a restarted server has them before the next EVALSHA, whatever else the client pipelined.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Protocol

from proxy.inflight import ReplySlot
from proxy.resp import encode_command

MAX_SCRIPT_BYTES = 64 * 1024 * 1024
PRELOAD_MAX_BYTES = 1024 * 1024
NOSCRIPT = b"-NOSCRIPT"


class ScriptCache:
    """Script bodies by SHA1 (lower-case hex bytes), bounded by their total size.

    Bodies clients call by SHA1 (SCRIPT LOAD, an EVALSHA that found one) are also *preloaded*:
    sent (SCRIPT LOAD) first on every new server connection, so a restarted server, or one a
    reload added, has them before the client's next EVALSHA arrives; up to PRELOAD_MAX_BYTES.
    """

    def __init__(self, max_bytes: int = MAX_SCRIPT_BYTES) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._bodies: OrderedDict[bytes, bytes] = OrderedDict()
        self._preload: OrderedDict[bytes, bytes] = OrderedDict()  # newest last
        self._preload_bytes = 0

    def remember(self, body: bytes, preload: bool = False) -> bytes:
        """Keep ``body``; its SHA1 as Redis names it."""
        sha = hashlib.sha1(body).hexdigest().encode()
        if sha in self._bodies:
            self._bodies.move_to_end(sha)
        elif len(body) <= self.max_bytes:
            self._bodies[sha] = body
            self.used += len(body)
            while self.used > self.max_bytes:
                old_sha, old = self._bodies.popitem(last=False)
                self.used -= len(old)
                self._unload(old_sha)
        if preload and sha in self._bodies:
            self._mark(sha, body)
        return sha

    def get(self, sha: bytes) -> bytes | None:
        """The body of ``sha``, if kept (it is then preloaded: clients call it by SHA1)."""
        sha = sha.lower()
        body = self._bodies.get(sha)
        if body is not None and sha not in self._preload:
            self._mark(sha, body)
        return body

    def preload(self) -> list[bytes]:
        """SCRIPT LOAD commands for a new server connection."""
        return [encode_command([b"SCRIPT", b"LOAD", body]) for body in self._preload.values()]

    def _mark(self, sha: bytes, body: bytes) -> None:
        self._preload[sha] = body
        self._preload_bytes += len(body)
        while self._preload_bytes > PRELOAD_MAX_BYTES:
            self._unload(next(iter(self._preload)))

    def _unload(self, sha: bytes) -> None:
        body = self._preload.pop(sha, None)
        if body is not None:
            self._preload_bytes -= len(body)

    def clear(self) -> None:
        self._bodies.clear()
        self._preload.clear()
        self.used = self._preload_bytes = 0

    def __len__(self) -> int:
        return len(self._bodies)


CACHE = ScriptCache()  # one per process: reloads and pools share it


class Pushed(Protocol):
    """The client's reply queue, for how many requests it has taken (``ReplyQueue.pushed``)."""

    @property
    def pushed(self) -> int: ...


class Sender(Protocol):
    """Where the retry goes: the server (target.Target) that answered NOSCRIPT."""

    def send(self, payload: bytes, slot: ReplySlot, *, resp3: bool = False, lane: int = 0) -> None: ...


class NoScriptRetry:
    """The sink of an EVALSHA whose body is known: on ``-NOSCRIPT``, SCRIPT LOAD the body on
    the same server and send the EVALSHA again, once; any other reply goes to the client."""

    __slots__ = ("target", "server", "payload", "body", "resp3", "lane", "queue", "mark")

    def __init__(
        self,
        target: ReplySlot,
        server: Sender,
        payload: bytes,
        body: bytes,
        resp3: bool,
        lane: int,
        queue: Pushed,
    ) -> None:
        self.target = target
        self.server = server
        self.payload = payload
        self.body = body
        self.resp3 = resp3
        self.lane = lane
        self.queue = queue
        self.mark = queue.pushed  # the EVALSHA's own request

    def slot_done(self, slot: ReplySlot) -> None:
        raw = slot.data or b""
        # Sent again only if the client sent nothing since: a retry behind its later requests
        # would run the script after them. Else NOSCRIPT goes back, as a server would say it
        # (redis-py's Script, like most clients, then loads it and calls again itself).
        if raw.startswith(NOSCRIPT) and self.body and self.queue.pushed == self.mark:
            load = encode_command([b"SCRIPT", b"LOAD", self.body])
            self.body = b""  # once
            self.server.send(load, ReplySlot(None), resp3=self.resp3, lane=self.lane)
            self.server.send(self.payload, ReplySlot(self), resp3=self.resp3, lane=self.lane)
            return
        self.target.complete(raw)
