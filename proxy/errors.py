"""Every error text the proxy itself emits (leaf module; imports nothing of ours).

Texts follow Redis's conventions: a first word clients can switch on (``ERR``, ``NOAUTH``,
``WRONGPASS``, ``CROSSSLOT``), then a sentence. Where Redis has a text for the same situation we use
Redis's words exactly, so client libraries recognise them. The functions return the line without the
leading ``-`` and the trailing CRLF; ``encode_error`` (in resp.py) frames it.
"""

from __future__ import annotations

NOAUTH = "NOAUTH Authentication required."
NOAUTH_HELLO = (
    "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH "
    "<user> <pass> option can be used to authenticate the client and select the RESP protocol "
    "version at the same time"
)
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
PROTO_NOT_INTEGER = "ERR Protocol version is not an integer or out of range"
SYNTAX = "ERR syntax error"
MERGE_MISMATCH = "ERR proxy could not merge replies from servers"


def unknown_command(name: bytes, args: list[bytes]) -> str:
    """Redis 7's text for an unknown command (first args quoted, as redis-server prints them)."""
    shown = "".join(f"'{_text(a)[:128]}' " for a in args[:32])
    return f"ERR unknown command '{_text(name)[:128]}', with args beginning with: {shown}"


def unknown_subcommand(container: bytes, sub: bytes) -> str:
    """Redis 7's text for an unknown subcommand (CONFIG FOO, CLIENT BAR...)."""
    return f"ERR unknown subcommand '{_text(sub)[:128]}'. Try {_text(container).upper()} HELP."


def wrong_arity(fullname: str) -> str:
    """Redis's text for a wrong number of arguments; ``fullname`` is lower case, ``config|get``."""
    return f"ERR wrong number of arguments for '{fullname}' command"


_ON_A_SERVER = "run it on a server directly (INFO proxy lists their addresses)"
_ADMIN = f"it administers one server, not the proxy's keyspace: {_ON_A_SERVER}"
_ONE_CONNECTION = "it acts on one server connection, and the proxy shares its connections among clients"
# Why each refused command is refused, and what to do instead (README: "Commands").
REFUSALS: dict[str, str] = {
    "wait": "it waits for the replicas of the one server a connection wrote to, and the "
    f"proxy spreads writes over servers: {_ON_A_SERVER}",
    "waitaof": "it waits for the AOF of the one server a connection wrote to, and the "
    f"proxy spreads writes over servers: {_ON_A_SERVER}",
    "move": "only database 0 exists through the proxy",
    "swapdb": "only database 0 exists through the proxy",
    "migrate": f"moving keys between servers is an operator's task: {_ON_A_SERVER}",
    "cluster": "the proxy hides the cluster from its clients: run it on a cluster node directly",
    "acl": "the proxy's own users are set in its config file (users:), and the servers' ACLs are "
    "not changed through it: run ACL on a server directly (ACL WHOAMI and ACL CAT are served)",
    "readonly": "the proxy keeps its cluster connections' state itself (read_from sets replica reads)",
    "readwrite": "the proxy keeps its cluster connections' state itself (read_from sets replica reads)",
    "asking": "the proxy follows -ASK redirections itself",
    "sync": "replication runs between servers, not through the proxy",
    "psync": "replication runs between servers, not through the proxy",
    "replconf": "replication runs between servers, not through the proxy",
    "script|debug": f"the Lua debugger needs a server connection of its own: {_ON_A_SERVER}",
    "failover": _ADMIN,
    "shutdown": _ADMIN,
}


def refused(fullname: str, flags: frozenset[str] = frozenset()) -> str:
    """A command the proxy does not serve: why, and what to do instead (README lists them).
    A subcommand without its own entry takes its container's (``cluster|info``: ``cluster``)."""
    why = REFUSALS.get(fullname) or REFUSALS.get(fullname.partition("|")[0])  # cluster|info: cluster's
    if why is None:
        if "admin" in flags or "dangerous" in flags:
            why = _ADMIN
        elif fullname.startswith("client|"):
            why = _ONE_CONNECTION
        else:
            why = f"it has no key to route by: {_ON_A_SERVER}"
    return f"ERR '{fullname}' is not served by the proxy: {why}"


def denied(fullname: str, pool: str) -> str:
    """A command listed in the pool's (or listener's) ``deny_commands``."""
    return f"ERR command '{fullname}' is denied by this proxy (deny_commands of pool '{pool}')"


def in_multi(fullname: str) -> str:
    """A command that cannot be part of a transaction through the proxy."""
    return (
        f"ERR '{fullname}' cannot be queued in a transaction through the proxy: "
        "send it before MULTI or after EXEC"
    )


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
MONITOR_NOT_ALLOWED = (
    "ERR 'monitor' is not allowed by this proxy's configuration (allow_monitor: false): "
    "run it on a server directly"
)
SUBSCRIPTION_LOST = "ERR subscription lost: its server connection closed; subscribe again"
NO_SUCH_CLIENT = "ERR No such client"
CLIENT_ID = "ERR client-id should be greater than 0"
CLIENT_NAME = "ERR Client names cannot contain spaces, newlines or special characters."


def no_keys(fullname: str) -> str:
    """A keyed command called with no key (EVAL with numkeys 0): nothing to route by."""
    return f"ERR command '{fullname}' without keys cannot be routed by the proxy"


def too_many_redirects(last: str) -> str:
    """A cluster pool's request kept being redirected (a slot map in flux); the last redirect."""
    return f"ERR too many cluster redirections (last: {last})"


def failover_in_progress(master_name: str, timeout_ms: int) -> str:
    """A sentinel pool held the request for a failover that did not finish within timeout."""
    return f"ERR failover in progress for '{master_name}': no new master within {timeout_ms} ms"


def dedicated_limit(server: str, limit: int) -> str:
    """A transaction (or a blocking command) found every dedicated connection to its server held."""
    return (
        f"ERR server {server}: all {limit} dedicated connections are in use (transactions, "
        "WATCH, big values); raise the pool's dedicated_connections or retry later"
    )


def cross_place(key: str, where: str, other_key: str, other_where: str, unit: str) -> str:
    """A transaction's key on another server (slot, route) than its first key."""
    hint = (
        "keep a transaction within one route (or route its keys to one pool)"
        if unit == "route"
        else "give the keys a common hash tag, such as {user1}:a and {user1}:b, so they hash together"
    )
    return (
        f"CROSSSLOT Keys in a transaction must be on one {unit}: '{other_key}' is on "
        f"{other_where}, but '{key}' is on {where}; {hint}"
    )


def keyspace_strip_prefix(listener: str, prefix: str) -> str:
    """SCAN/KEYS/... through a listener whose route hides its prefix from its pool."""
    return (
        f"ERR keyspace-wide commands are not served by listener '{listener}': its route "
        f"'{prefix}' uses strip_prefix, so its pool's keys are not the keys clients know; "
        "run it on that pool's own listen address"
    )


def transaction_too_large(queued: int) -> str:
    """A transaction queued more than the client's query buffer limit."""
    return f"ERR transaction too large: {queued} bytes queued, past client_query_buffer_limit; split it"


def transaction_moved(detail: str) -> str:
    """A queued command met a moved slot or master: the server discarded the transaction."""
    return (
        f"EXECABORT Transaction discarded: its keys moved while it was sent ({detail}); nothing ran, retry it"
    )


def watch_lost(server: str, closed: bool) -> str:
    """EXEC after the WATCH connection broke, or after a reload or failover moved the keys."""
    why = (
        f"the connection holding its WATCH to server {server} was lost"
        if closed
        else "its keys moved to another server (a reload or a failover) while watched"
    )
    return f"EXECABORT Transaction discarded: {why}; nothing ran, retry it"


SCAN_SERVERS_CHANGED = (
    "ERR invalid cursor: the pool's servers changed since this SCAN started (a reload); "
    "start the scan again from 0"
)
SCAN_CURSOR_OVERFLOW = "ERR a server's SCAN cursor is too large for the proxy's cursor"


def scan_too_many_servers(count: int, limit: int) -> str:
    return f"ERR SCAN through the proxy covers at most {limit} servers; this pool has {count}"


def watched_moved(detail: str) -> str:
    """A command on a WATCH connection met a moved slot or master."""
    return f"ERR the key moved while watched ({detail}): DISCARD or UNWATCH, then retry"


def pubsub_strip_prefix(listener: str) -> str:
    """SUBSCRIBE through a listener whose routes strip prefixes."""
    return (
        f"ERR pub/sub is not served by listener '{listener}': a route uses strip_prefix, so "
        "a channel's name would differ between publishers and subscribers; use a listener "
        "without strip_prefix"
    )


def blocking_while_pushed(fullname: str) -> str:
    """A blocking command from a client with subscriptions or MONITOR running."""
    return (
        f"ERR '{fullname}' is not served while this connection has subscriptions or MONITOR "
        "running (its reply would hold back their messages): use another connection"
    )


def unknown_client_type(kind: str) -> str:
    return f"ERR Unknown client type '{kind}'"


# transactions (Redis's own texts)
MULTI_NESTED = "ERR MULTI calls can not be nested"
WATCH_IN_MULTI = "ERR WATCH inside MULTI is not allowed"
DISCARD_WITHOUT_MULTI = "ERR DISCARD without MULTI"
EXEC_WITHOUT_MULTI = "ERR EXEC without MULTI"
EXECABORT = "EXECABORT Transaction discarded because of previous errors."


RIGHTS_CHANGED_IN_MULTI = (
    "the user's rights changed (a reload) while the transaction was queued; nothing ran, retry it"
)


def execabort_because(text: str) -> str:
    """EXEC itself refused inside MULTI (e.g. its arity): Redis discards the transaction."""
    return "EXECABORT Transaction discarded because of: " + text.removeprefix("ERR ")


# key specs a command's arguments break (Redis's own texts)
NUMKEYS_NOT_INTEGER = "ERR numkeys should be an integer"
NUMKEYS_NEGATIVE = "ERR numkeys can't be negative"
NUMKEYS_TOO_MANY = "ERR Number of keys can't be greater than number of args"

INVALID_CURSOR = "ERR invalid cursor"
CROSS_ROUTE = "CROSSSLOT Keys in request don't hash to the same route"


def subscribed_only(fullname: str) -> str:
    """Redis's text for another command while a RESP2 client is subscribed."""
    return (
        f"ERR Can't execute '{fullname}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT "
        "/ RESET are allowed in this context"
    )


def no_route(listener: str) -> str:
    """A key no prefix of a listener matches, and no default_pool."""
    return f"ERR no route for this key: no prefix of listener '{listener}' matches and it has no default_pool"


def no_master(master_name: str, pool: str) -> str:
    """A sentinel pool that knows no master (yet)."""
    return f"ERR no master known for '{master_name}' (sentinel pool {pool})"
