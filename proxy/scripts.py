"""Lua script bodies the proxy has seen, so EVALSHA survives servers that lost them (pure).

Libraries load a script once (``SCRIPT LOAD``, or redis-py's ``register_script`` on its first
``NOSCRIPT``) and then call ``EVALSHA sha``. A server that restarted, or joined the pool in a
reload, has never seen the script. The proxy keeps every body it passes on (SCRIPT LOAD and
EVAL), keyed by its SHA1 as Redis computes it, and when a server answers an EVALSHA with
``-NOSCRIPT`` it loads the body there and sends the EVALSHA once more (``NoScriptRetry``).
Bodies are kept newest-first up to ``max_bytes`` (the oldest are forgotten first); ``SCRIPT
FLUSH`` through the proxy forgets them all, as it empties the servers' caches.

Imports: inflight, resp.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Protocol

from proxy.inflight import ReplySlot
from proxy.resp import encode_command

MAX_SCRIPT_BYTES = 64 * 1024 * 1024
NOSCRIPT = b"-NOSCRIPT"


class ScriptCache:
    """Script bodies by SHA1 (lower-case hex bytes), bounded by their total size."""

    def __init__(self, max_bytes: int = MAX_SCRIPT_BYTES) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._bodies: OrderedDict[bytes, bytes] = OrderedDict()

    def remember(self, body: bytes) -> bytes:
        """Keep ``body``; its SHA1 as Redis names it."""
        sha = hashlib.sha1(body).hexdigest().encode()
        if sha in self._bodies:
            self._bodies.move_to_end(sha)
            return sha
        if len(body) > self.max_bytes:
            return sha
        self._bodies[sha] = body
        self.used += len(body)
        while self.used > self.max_bytes:
            _, old = self._bodies.popitem(last=False)
            self.used -= len(old)
        return sha

    def get(self, sha: bytes) -> bytes | None:
        return self._bodies.get(sha.lower())

    def clear(self) -> None:
        self._bodies.clear()
        self.used = 0

    def __len__(self) -> int:
        return len(self._bodies)


CACHE = ScriptCache()  # one per process: reloads and pools share it


class Sender(Protocol):
    """Where the retry goes: the server (pool.Target) that answered NOSCRIPT."""

    def send(self, payload: bytes, slot: ReplySlot, resp3: bool = False, client: int = 0) -> None: ...


class NoScriptRetry:
    """The sink of an EVALSHA whose body is known: on ``-NOSCRIPT``, SCRIPT LOAD the body on
    the same server and send the EVALSHA again, once; any other reply goes to the client."""

    __slots__ = ("target", "server", "payload", "body", "resp3", "client")

    def __init__(self, target: ReplySlot, server: Sender, payload: bytes, body: bytes,
                 resp3: bool, client: int) -> None:  # fmt: skip
        self.target = target
        self.server = server
        self.payload = payload
        self.body = body
        self.resp3 = resp3
        self.client = client

    def slot_done(self, slot: ReplySlot) -> None:
        raw = slot.data or b""
        if raw.startswith(NOSCRIPT) and self.body:
            load = encode_command([b"SCRIPT", b"LOAD", self.body])
            self.body = b""  # once
            self.server.send(load, ReplySlot(None), self.resp3, self.client)
            self.server.send(self.payload, ReplySlot(self), self.resp3, self.client)
            return
        self.target.complete(raw)
