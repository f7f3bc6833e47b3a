"""Every error text the proxy itself emits (leaf module; imports nothing of ours).

Texts follow Redis's conventions: a first word clients can switch on (``ERR``, ``NOAUTH``,
``WRONGPASS``, ``CROSSSLOT``), then a sentence. Where Redis has a text for the same situation we use
Redis's words exactly, so client libraries recognise them. The functions return the line without the
leading ``-`` and the trailing CRLF; ``encode_error`` (in resp.py) frames it.
"""

from __future__ import annotations

NOAUTH = "NOAUTH Authentication required."
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
AUTH_NOT_CONFIGURED = (
    "ERR AUTH <password> called without any password configured for the default user. "
    "Are you sure your configuration is correct?"
)
CROSS_SERVER = "CROSSSLOT Keys in request don't hash to the same server"
CROSS_SLOT = "CROSSSLOT Keys in request don't hash to the same slot"  # Redis Cluster's words
SLOT_UNSERVED = "CLUSTERDOWN Hash slot not served"  # Redis Cluster's words
SELECT_ONLY_ZERO = "ERR SELECT is not allowed through the proxy: only database 0 exists"
SELECT_INVALID = "ERR value is not an integer or out of range"
INTERNAL = "ERR internal error in proxy"
SHUTTING_DOWN = "ERR proxy is shutting down"
NOPROTO = "NOPROTO unsupported protocol version"
SYNTAX = "ERR syntax error"
MERGE_MISMATCH = "ERR proxy could not merge replies from servers"


def unknown_command(name: bytes, args: list[bytes]) -> str:
    """Redis 7's text for an unknown command (first args quoted, as redis-server prints them)."""
    shown = "".join(f"'{_text(a)[:128]}' " for a in args[:32])
    return f"ERR unknown command '{_text(name)[:128]}', with args beginning with: {shown}"


def unknown_subcommand(container: bytes, sub: bytes) -> str:
    """Redis 7's text for an unknown subcommand (CONFIG FOO, CLIENT BAR...)."""
    return (
        f"ERR unknown subcommand '{_text(sub)[:128]}'. "
        f"Try {_text(container).upper()} HELP."
    )


def wrong_arity(fullname: str) -> str:
    """Redis's text for a wrong number of arguments; ``fullname`` is lower case, ``config|get``."""
    return f"ERR wrong number of arguments for '{fullname}' command"


def unsupported(fullname: str) -> str:
    """A command a sharding proxy cannot serve (KEYS, MULTI, SUBSCRIBE, CONFIG, ...)."""
    return f"ERR command '{fullname}' is not supported by the proxy"


def server_unavailable(server: str, reason: str) -> str:
    """The key's server has no usable connection (down, ejected, refused)."""
    return f"ERR server {server} unavailable: {reason}"


def server_timeout(server: str, timeout_ms: int) -> str:
    """No reply within the pool's ``timeout``; the connection was closed."""
    return f"ERR server {server} timed out after {timeout_ms} ms"


def server_connection_lost(server: str, reason: str) -> str:
    """The connection broke while this request waited for its reply."""
    return f"ERR server {server} connection lost: {reason}"


def no_server_for_key() -> str:
    """Every server of the pool is ejected."""
    return "ERR no server available in the pool"


def protocol(detail: str) -> str:
    """A corrupt client stream; the connection is closed after this reply."""
    return f"ERR Protocol error: {detail}"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


MAX_CLIENTS = "ERR max number of clients reached"


def no_keys(fullname: str) -> str:
    """A keyed command called with no key (EVAL with numkeys 0): nothing to route by."""
    return f"ERR command '{fullname}' without keys cannot be routed by the proxy"


def too_many_redirects(last: str) -> str:
    """A cluster pool's request kept being redirected (a slot map in flux); the last redirect."""
    return f"ERR too many cluster redirections (last: {last})"


def failover_in_progress(master_name: str, timeout_ms: int) -> str:
    """A sentinel pool held the request for a failover that did not finish within timeout."""
    return f"ERR failover in progress for '{master_name}': no new master within {timeout_ms} ms"
