"""Every metric, declared once; counted in plain attributes, exported at scrape time (leaf).

The data path only bumps integers on small ``__slots__`` objects (``PoolStats``,
``CommandStats``, ``ServerStats``); nothing here runs per request except
``CommandStats.observe`` (once per client read, see below). At scrape time the
``ProxyCollector`` asks the composition root for a ``Snapshot`` (plain data) and turns it into
Prometheus families; ``serve_http`` answers ``/metrics`` and ``/healthz`` on the event loop
itself, so a scrape never reads state from another thread.

Latency as the client sees it (``resproxy_request_duration_seconds``): from the moment a client
read was parsed to the moment the reply to the *last* command of that read was written, for a
sample of reads (client.py: a client's first read and every 4th after it). A 16-deep pipeline
batch gives one observation carrying the batch's latency. Measuring every command would cost a
clock read and a histogram update per request on the hot path.

twemproxy's stats (port 22222 JSON) are the floor; each of its figures has a family here:
client_eof, client_err, client_connections, server_ejects, forward_error, fragments,
server_eof, server_err, server_timedout, server_connections, server_ejected_at, requests,
request_bytes, responses, response_bytes, in_queue, out_queue, total_connections,
curr_connections, uptime.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LATENCY_BOUNDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class CommandStats:
    """One (pool, command) row: requests, error replies, latency histogram."""

    __slots__ = ("requests", "errors", "buckets", "latency_sum")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.buckets = [0] * (len(LATENCY_BOUNDS) + 1)  # the last one is +Inf
        self.latency_sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect_left(LATENCY_BOUNDS, seconds)] += 1
        self.latency_sum += seconds


# Why a client limit closed a client (the metric's reason label) -> its INFO field.
CLOSE_REASONS = {
    "output_buffer_limit": "client_output_buffer_limit_disconnections",
    "query_buffer_limit": "client_query_buffer_limit_disconnections",
    "idle_timeout": "client_idle_timeout_disconnections",
    "auth_failure_limit": "auth_failure_limit_disconnections",
    "max_buffered_bytes": "max_buffered_bytes_disconnections",  # held the most, proxy over
    "user_removed": "user_removed_disconnections",  # a reload removed the user it AUTHed as
    "rights_revoked": "rights_revoked_disconnections",  # a reload took a channel it is subscribed to
}


class PoolStats:
    """A pool's client-side counters."""

    __slots__ = (
        "commands",
        "connections_total",
        "connections_rejected",
        "client_eof",
        "client_err",
        "fanouts",
        "fragments",
        "bytes_in",
        "bytes_out",
        "mirror_sent",
        "mirror_errors",
        "mirror_dropped",
        "auth_failures",
        "acl_denials",
        "tls_handshake_failures",
        "closed",
        "pubsub_messages",
    )

    def __init__(self) -> None:
        self.commands: dict[str, CommandStats] = {}
        self.connections_total = 0
        self.connections_rejected = 0
        self.client_eof = 0  # clients that closed their connection
        self.client_err = 0  # clients dropped for an error (reset, protocol error)
        self.fanouts = 0  # multi-key commands split over several servers
        self.fragments = 0  # the sub-commands they were split into
        self.bytes_in = 0  # read from clients
        self.bytes_out = 0  # written to clients
        self.mirror_sent = 0  # copies sent to a route's mirror pool (listeners only)
        self.mirror_errors = 0  # error replies to those copies
        self.mirror_dropped = 0  # copies not sent: the mirror lagged or had no server
        self.auth_failures = 0  # AUTH / HELLO AUTH with a wrong password
        self.acl_denials = 0  # commands refused -NOPERM by a user's rights (acl.py)
        self.tls_handshake_failures = 0  # TLS clients whose handshake failed (tls.py)
        self.pubsub_messages = 0  # pub/sub messages delivered to subscribers
        # clients closed by a client limit (config.ClientLimitsConfig), by CLOSE_REASONS
        self.closed = dict.fromkeys(CLOSE_REASONS, 0)

    def command(self, name: str) -> CommandStats:
        """The row for ``name`` (a command table name, so the label set is bounded)."""
        row = self.commands.get(name)
        if row is None:
            row = self.commands[name] = CommandStats()
        return row


class ServerStats:
    """One backend server's counters, kept across its connections."""

    __slots__ = (
        "requests",
        "request_bytes",
        "responses",
        "response_bytes",
        "timeouts",
        "eof",
        "errors",
        "connects",
        "connect_failures",
        "forward_errors",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.request_bytes = 0
        self.responses = 0
        self.response_bytes = 0
        self.timeouts = 0  # connections closed for a late reply
        self.eof = 0  # connections closed by the server
        self.errors = 0  # connections lost to an error (reset, refused, unparsable reply)
        self.connects = 0
        self.connect_failures = 0
        self.forward_errors = 0  # requests answered with an error because the server was down


# --- the snapshot the collector reads (built by server.py at scrape time) ---------------------


@dataclass
class ServerView:
    name: str
    address: str
    state: str  # unknown | up | down
    ejected: bool
    ejected_at: float  # unix time of the last ejection, 0: never
    ejections: int
    connections: int  # open backend connections
    in_flight: int  # requests sent, reply not yet in
    out_queue: int  # requests queued, not yet written
    stats: ServerStats
    dedicated: int = 0  # connections held for one client each (transactions, streams), open
    dedicated_idle: int = 0  # of those, kept idle for the next holder


@dataclass
class ClusterView:
    moved: int
    asks: int
    tryagain: int
    clusterdown: int
    refreshes: int
    refresh_failures: int
    refresh_seconds_total: float
    map_age_seconds: float  # -1: no map yet
    slots_served: int


@dataclass
class SentinelView:
    switches: int
    holds: int
    hold_timeouts: int
    readonly_retries: int
    discovery_failures: int
    master_known: bool


@dataclass
class PoolView:
    name: str
    listen: str
    distribution: str
    clients: int
    stats: PoolStats
    servers: list[ServerView]
    can_serve: bool
    why_not: str = ""
    cluster: ClusterView | None = None
    sentinel: SentinelView | None = None
    blocked: int = 0  # clients waiting on a blocking command (BLPOP...)
    subscribers: int = 0  # clients with subscriptions
    subscriptions: int = 0  # their channels, patterns and shard channels


@dataclass
class Snapshot:
    version: str
    uptime_seconds: float
    pools: list[PoolView]
    reloads: int = 0
    reload_failures: int = 0
    last_reload_ok: bool = True
    config_loaded_at: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    buffered_bytes: int = 0  # what clients make the proxy hold (budget.Budget.used)
    max_buffered_bytes: int = 0
    buffer_pauses: int = 0


def _families(snap: Snapshot) -> Iterator[Metric]:
    info = GaugeMetricFamily("resproxy_info", "resproxy version", labels=["version"])
    info.add_metric([snap.version], 1)
    yield info
    yield GaugeMetricFamily("resproxy_uptime_seconds", "Seconds since start", value=snap.uptime_seconds)
    yield CounterMetricFamily(
        "resproxy_config_reloads", "Accepted config reloads (SIGHUP)", value=snap.reloads
    )
    yield CounterMetricFamily(
        "resproxy_config_reload_failures",
        "Rejected config reloads (the old config kept serving)",
        value=snap.reload_failures,
    )
    yield GaugeMetricFamily(
        "resproxy_config_last_reload_successful",
        "1 if the last reload was accepted (or none was tried)",
        value=1 if snap.last_reload_ok else 0,
    )
    yield GaugeMetricFamily(
        "resproxy_config_loaded_timestamp_seconds",
        "Unix time the running config was loaded",
        value=snap.config_loaded_at,
    )
    yield GaugeMetricFamily(
        "resproxy_buffered_bytes",
        "Bytes held for clients (unframed requests, owed replies past the "
        "pause point), against max_buffered_bytes",
        value=snap.buffered_bytes,
    )
    yield GaugeMetricFamily(
        "resproxy_max_buffered_bytes", "The max_buffered_bytes budget", value=snap.max_buffered_bytes
    )
    yield CounterMetricFamily(
        "resproxy_buffer_pauses",
        "Times max_buffered_bytes was reached (reading from clients stopped)",
        value=snap.buffer_pauses,
    )

    P = ["pool"]
    pool_g = {
        "clients": GaugeMetricFamily("resproxy_client_connections", "Open client connections", labels=P),
        "blocked": GaugeMetricFamily(
            "resproxy_blocked_clients", "Clients waiting on a blocking command (BLPOP...)", labels=P
        ),
        "subscribers": GaugeMetricFamily(
            "resproxy_pubsub_subscribers", "Clients with pub/sub subscriptions", labels=P
        ),
        "subscriptions": GaugeMetricFamily(
            "resproxy_pubsub_subscriptions",
            "Channels, patterns and shard channels subscribed, over the clients",
            labels=P,
        ),
        "serve": GaugeMetricFamily(
            "resproxy_pool_can_serve", "1 if every key of the pool has a live server", labels=P
        ),
    }
    pool_c = {
        "connections_total": CounterMetricFamily(
            "resproxy_client_connections_accepted", "Client connections accepted", labels=P
        ),
        "connections_rejected": CounterMetricFamily(
            "resproxy_client_connections_rejected",
            "Client connections refused (client_connections limit, shutdown)",
            labels=P,
        ),
        "client_eof": CounterMetricFamily(
            "resproxy_client_eof", "Client connections closed by the client", labels=P
        ),
        "client_err": CounterMetricFamily(
            "resproxy_client_errors", "Client connections lost to an error", labels=P
        ),
        "fanouts": CounterMetricFamily(
            "resproxy_fanout_requests", "Multi-key commands split over several servers", labels=P
        ),
        "pubsub_messages": CounterMetricFamily(
            "resproxy_pubsub_messages", "Pub/sub messages delivered to subscribers", labels=P
        ),
        "fragments": CounterMetricFamily(
            "resproxy_fanout_fragments", "Sub-commands those were split into", labels=P
        ),
        "bytes_in": CounterMetricFamily("resproxy_client_read_bytes", "Bytes read from clients", labels=P),
        "bytes_out": CounterMetricFamily(
            "resproxy_client_written_bytes", "Bytes written to clients", labels=P
        ),
        "mirror_sent": CounterMetricFamily(
            "resproxy_mirror_sent", "Copies sent to mirror pools (listeners)", labels=P
        ),
        "mirror_errors": CounterMetricFamily(
            "resproxy_mirror_errors", "Error replies to mirrored copies", labels=P
        ),
        "mirror_dropped": CounterMetricFamily(
            "resproxy_mirror_dropped", "Copies dropped: mirror lagging or without a server", labels=P
        ),
        "auth_failures": CounterMetricFamily(
            "resproxy_auth_failures", "AUTH (or HELLO AUTH) with a wrong password", labels=P
        ),
        "acl_denials": CounterMetricFamily(
            "resproxy_acl_denials",
            "Commands refused NOPERM by the user's command, key or channel rights",
            labels=P,
        ),
        "tls_handshake_failures": CounterMetricFamily(
            "resproxy_tls_handshake_failures",
            "TLS client connections whose handshake failed (plaintext, bad or missing certificate, timeout)",
            labels=P,
        ),
    }
    closed = CounterMetricFamily(
        "resproxy_client_closed", "Clients closed by a client limit", labels=["pool", "reason"]
    )
    PC = ["pool", "command"]
    requests = CounterMetricFamily("resproxy_requests", "Requests answered, by command", labels=PC)
    errors = CounterMetricFamily("resproxy_request_errors", "Error replies, by command", labels=PC)
    latency = HistogramMetricFamily(
        "resproxy_request_duration_seconds",
        "Client-seen latency: client read parsed to reply written (sampled: 1 read in 4 per client)",
        labels=PC,
    )
    PS = ["pool", "server"]
    srv_c = {
        "requests": CounterMetricFamily(
            "resproxy_server_requests", "Requests written to the server", labels=PS
        ),
        "request_bytes": CounterMetricFamily(
            "resproxy_server_request_bytes", "Bytes written to the server", labels=PS
        ),
        "responses": CounterMetricFamily(
            "resproxy_server_responses", "Replies read from the server", labels=PS
        ),
        "response_bytes": CounterMetricFamily(
            "resproxy_server_response_bytes", "Bytes read from the server", labels=PS
        ),
        "timeouts": CounterMetricFamily(
            "resproxy_server_timeouts", "Connections closed for a reply later than timeout", labels=PS
        ),
        "eof": CounterMetricFamily("resproxy_server_eof", "Connections closed by the server", labels=PS),
        "errors": CounterMetricFamily(
            "resproxy_server_errors", "Connections lost to an error (reset, refused, bad reply)", labels=PS
        ),
        "connects": CounterMetricFamily(
            "resproxy_server_connects", "Connections opened (reconnects included)", labels=PS
        ),
        "connect_failures": CounterMetricFamily(
            "resproxy_server_connect_failures", "Connection attempts that failed", labels=PS
        ),
        "forward_errors": CounterMetricFamily(
            "resproxy_server_forward_errors", "Requests failed at once because the server was down", labels=PS
        ),
    }
    srv_g = {
        "connections": GaugeMetricFamily(
            "resproxy_server_connections", "Open connections to the server", labels=PS
        ),
        "in_flight": GaugeMetricFamily(
            "resproxy_server_in_flight", "Requests awaiting the server's reply (in_queue)", labels=PS
        ),
        "out_queue": GaugeMetricFamily(
            "resproxy_server_out_queue", "Requests queued, not yet written (out_queue)", labels=PS
        ),
        "dedicated": GaugeMetricFamily(
            "resproxy_server_dedicated_connections",
            "Open connections held for one client each (transactions, streamed values)",
            labels=PS,
        ),
        "dedicated_idle": GaugeMetricFamily(
            "resproxy_server_dedicated_idle_connections",
            "Dedicated connections kept idle for the next holder",
            labels=PS,
        ),
        "up": GaugeMetricFamily("resproxy_server_up", "1 if the server is not marked down", labels=PS),
        "ejected": GaugeMetricFamily(
            "resproxy_server_ejected", "1 if the server is ejected from the ring", labels=PS
        ),
        "ejected_at": GaugeMetricFamily(
            "resproxy_server_ejected_at_timestamp_seconds",
            "Unix time of the last ejection (0: never)",
            labels=PS,
        ),
    }
    state = GaugeMetricFamily(
        "resproxy_server_state",
        "Connection state (1 for the current one)",
        labels=["pool", "server", "state"],
    )
    ejections = CounterMetricFamily("resproxy_server_ejections", "Times the server was ejected", labels=PS)
    cl_c = {
        "moved": CounterMetricFamily("resproxy_cluster_moved", "MOVED redirections followed", labels=P),
        "asks": CounterMetricFamily("resproxy_cluster_ask", "ASK redirections followed", labels=P),
        "tryagain": CounterMetricFamily("resproxy_cluster_tryagain", "TRYAGAIN replies retried", labels=P),
        "clusterdown": CounterMetricFamily(
            "resproxy_cluster_clusterdown", "CLUSTERDOWN replies retried", labels=P
        ),
        "refreshes": CounterMetricFamily(
            "resproxy_cluster_slot_map_refreshes", "Slot map refreshes", labels=P
        ),
        "refresh_failures": CounterMetricFamily(
            "resproxy_cluster_slot_map_refresh_failures", "Slot map refreshes no node answered", labels=P
        ),
        "refresh_seconds_total": CounterMetricFamily(
            "resproxy_cluster_slot_map_refresh_seconds", "Time spent refreshing the slot map", labels=P
        ),
    }
    cl_g = {
        "map_age_seconds": GaugeMetricFamily(
            "resproxy_cluster_slot_map_age_seconds",
            "Seconds since the slot map was last learned (-1: never)",
            labels=P,
        ),
        "slots_served": GaugeMetricFamily(
            "resproxy_cluster_slots_served", "Slots with a known master", labels=P
        ),
    }

    for pool in snap.pools:
        labels = [pool.name]
        pool_g["clients"].add_metric(labels, pool.clients)
        pool_g["blocked"].add_metric(labels, pool.blocked)
        pool_g["subscribers"].add_metric(labels, pool.subscribers)
        pool_g["subscriptions"].add_metric(labels, pool.subscriptions)
        pool_g["serve"].add_metric(labels, 1 if pool.can_serve else 0)
        for key, fam in pool_c.items():
            fam.add_metric(labels, getattr(pool.stats, key))
        for reason, count in pool.stats.closed.items():
            closed.add_metric([pool.name, reason], count)
        for command, row in sorted(pool.stats.commands.items()):
            pc = [pool.name, command]
            requests.add_metric(pc, row.requests)
            errors.add_metric(pc, row.errors)
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BOUNDS, float("inf")), row.buckets):
                cumulative += count
                buckets.append((_bound(bound), cumulative))
            if cumulative:
                latency.add_metric(pc, buckets, row.latency_sum)
        for s in pool.servers:
            ps = [pool.name, s.name]
            for key, fam in srv_c.items():
                fam.add_metric(ps, getattr(s.stats, key))
            srv_g["connections"].add_metric(ps, s.connections)
            srv_g["in_flight"].add_metric(ps, s.in_flight)
            srv_g["out_queue"].add_metric(ps, s.out_queue)
            srv_g["dedicated"].add_metric(ps, s.dedicated)
            srv_g["dedicated_idle"].add_metric(ps, s.dedicated_idle)
            srv_g["up"].add_metric(ps, 0 if s.state == "down" else 1)
            srv_g["ejected"].add_metric(ps, 1 if s.ejected else 0)
            srv_g["ejected_at"].add_metric(ps, s.ejected_at)
            ejections.add_metric(ps, s.ejections)
            for st in ("unknown", "up", "down"):
                state.add_metric([*ps, st], 1 if s.state == st else 0)
        if pool.cluster is not None:
            for key, fam in cl_c.items():
                fam.add_metric(labels, getattr(pool.cluster, key))
            for key, gauge in cl_g.items():
                gauge.add_metric(labels, getattr(pool.cluster, key))
    yield from _sentinel_families(snap)
    yield from pool_g.values()
    yield from pool_c.values()
    yield closed
    yield from (requests, errors, latency)
    yield from srv_c.values()
    yield from srv_g.values()
    yield from (state, ejections)
    yield from cl_c.values()
    yield from cl_g.values()


def _sentinel_families(snap: Snapshot) -> Iterator[Metric]:
    P = ["pool"]
    counters = {
        "switches": CounterMetricFamily("resproxy_sentinel_switches", "Master changes followed", labels=P),
        "holds": CounterMetricFamily(
            "resproxy_sentinel_holds", "Failovers during which requests were held", labels=P
        ),
        "hold_timeouts": CounterMetricFamily(
            "resproxy_sentinel_hold_timeouts",
            "Holds that ended without a new master (requests failed)",
            labels=P,
        ),
        "readonly_retries": CounterMetricFamily(
            "resproxy_sentinel_readonly_retries", "Writes refused by a demoted master, sent again", labels=P
        ),
        "discovery_failures": CounterMetricFamily(
            "resproxy_sentinel_discovery_failures", "Times no sentinel named a live master", labels=P
        ),
    }
    known = GaugeMetricFamily("resproxy_sentinel_master_known", "1 if the pool knows its master", labels=P)
    for pool in snap.pools:
        if pool.sentinel is not None:
            for key, fam in counters.items():
                fam.add_metric([pool.name], getattr(pool.sentinel, key))
            known.add_metric([pool.name], 1 if pool.sentinel.master_known else 0)
    yield from counters.values()
    yield known


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


class ProxyCollector(Collector):
    """Builds every family from a fresh ``Snapshot`` at each scrape."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        return _families(self._source())


def registry_for(source: Callable[[], Snapshot]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(source))
    return registry


def health(snap: Snapshot) -> tuple[bool, bytes]:
    """(every pool can serve, a JSON body saying which cannot and why)."""
    ok = all(p.can_serve for p in snap.pools)
    body = {
        "status": "ok" if ok else "unavailable",
        "pools": {p.name: ("ok" if p.can_serve else p.why_not or "cannot serve") for p in snap.pools},
    }
    return ok, json.dumps(body).encode() + b"\n"


async def serve_http(
    host: str,
    port: int,
    source: Callable[[], Snapshot],
    *,
    context: ssl.SSLContext | None = None,
    token: str | None = None,
) -> asyncio.AbstractServer:
    """``GET /metrics`` (Prometheus text) and ``GET /healthz`` (200 or 503), on the event loop.

    With ``context``: HTTPS. With ``token``: /metrics answers only ``Authorization: Bearer
    <token>`` (compared in constant time), 401 otherwise; /healthz stays open for probes.
    """
    registry = registry_for(source)
    expected = b"bearer " + token.encode() if token else None

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.partition(b" ")
            path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                status, ctype, body = b"405 Method Not Allowed", b"text/plain", b"GET only\n"
            elif path == b"/metrics" and expected is not None and not _bearer_ok(head, expected):
                status, ctype, body = b"401 Unauthorized", b"text/plain", b"a bearer token is needed\n"
            elif path == b"/metrics":
                status, ctype, body = b"200 OK", CONTENT_TYPE_LATEST.encode(), generate_latest(registry)
            elif path == b"/healthz":
                ok, body = health(source())
                status, ctype = (b"200 OK" if ok else b"503 Service Unavailable"), b"application/json"
            else:
                status, ctype, body = b"404 Not Found", b"text/plain", b"try /metrics or /healthz\n"
            writer.write(
                b"HTTP/1.1 %b\r\nContent-Type: %b\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (status, ctype, len(body))
            )
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        except Exception:  # a scrape must never take the proxy down
            log.exception("metrics endpoint: internal error")
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, reuse_address=True, ssl=context)


def _bearer_ok(head: bytes, expected: bytes) -> bool:
    """Whether the request's Authorization header is ``Bearer <token>`` (constant time)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            given = value.strip()
            scheme, _, rest = given.partition(b" ")
            return hmac.compare_digest(scheme.lower() + b" " + rest.strip(), expected)
    return False


def info_text(snap: Snapshot, section: str | None, pid: int) -> bytes:
    """INFO in Redis's format (``# Section`` then ``key:value`` lines, CRLF) about the proxy.

    Sections: proxy, clients, stats, cluster (cluster pools only); none, ``all``, ``default``
    or ``everything`` give all of them; an unknown one gives nothing, as Redis does.
    """
    want = (section or "all").lower()
    every = want in ("all", "default", "everything")
    out: list[str] = []

    def block(name: str, lines: list[str]) -> None:
        if every or want == name.lower():
            out.append(f"# {name}")
            out.extend(lines)
            out.append("")

    proxy = [
        f"resproxy_version:{snap.version}",
        f"process_id:{pid}",
        f"uptime_in_seconds:{int(snap.uptime_seconds)}",
        f"pools:{len(snap.pools)}",
    ]
    for p in snap.pools:
        proxy.append(
            f"pool_{p.name}:listen={p.listen},distribution={p.distribution},"
            f"servers={len(p.servers)},clients={p.clients},can_serve={int(p.can_serve)}"
        )
        for s in p.servers:
            proxy.append(
                f"server_{p.name}_{s.name}:address={s.address},state={s.state},"
                f"ejected={int(s.ejected)},connections={s.connections},in_flight={s.in_flight}"
            )
    block("Proxy", proxy)
    block(
        "Clients",
        [
            f"connected_clients:{sum(p.clients for p in snap.pools)}",
            f"blocked_clients:{sum(p.blocked for p in snap.pools)}",
            f"pubsub_clients:{sum(p.subscribers for p in snap.pools)}",
        ],
    )
    rows = [r for p in snap.pools for r in p.stats.commands.values()]
    servers = [s.stats for p in snap.pools for s in p.servers]
    block(
        "Stats",
        [
            f"total_connections_received:{sum(p.stats.connections_total for p in snap.pools)}",
            f"rejected_connections:{sum(p.stats.connections_rejected for p in snap.pools)}",
            f"total_commands_processed:{sum(r.requests for r in rows)}",
            f"total_error_replies:{sum(r.errors for r in rows)}",
            f"client_eof:{sum(p.stats.client_eof for p in snap.pools)}",
            f"client_err:{sum(p.stats.client_err for p in snap.pools)}",
            f"fanout_requests:{sum(p.stats.fanouts for p in snap.pools)}",
            f"pubsub_messages:{sum(p.stats.pubsub_messages for p in snap.pools)}",
            f"pubsub_channels:{sum(p.subscriptions for p in snap.pools)}",
            f"fanout_fragments:{sum(p.stats.fragments for p in snap.pools)}",
            f"server_requests:{sum(s.requests for s in servers)}",
            f"server_timeouts:{sum(s.timeouts for s in servers)}",
            f"server_errors:{sum(s.errors + s.eof for s in servers)}",
            f"server_ejections:{sum(s.ejections for p in snap.pools for s in p.servers)}",
            *(
                f"{field}:{sum(p.stats.closed[reason] for p in snap.pools)}"
                for reason, field in CLOSE_REASONS.items()
            ),
            f"auth_failures:{sum(p.stats.auth_failures for p in snap.pools)}",
            f"acl_denials:{sum(p.stats.acl_denials for p in snap.pools)}",
            f"tls_handshake_failures:{sum(p.stats.tls_handshake_failures for p in snap.pools)}",
            f"buffered_bytes:{snap.buffered_bytes}",
            f"buffer_pauses:{snap.buffer_pauses}",
            f"config_reloads:{snap.reloads}",
            f"config_reload_failures:{snap.reload_failures}",
        ],
    )
    clusters = [p for p in snap.pools if p.cluster is not None]
    if clusters:
        block(
            "Cluster",
            [
                f"cluster_{p.name}:slots_served={c.slots_served},moved={c.moved},ask={c.asks},"
                f"tryagain={c.tryagain},clusterdown={c.clusterdown},refreshes={c.refreshes},"
                f"refresh_failures={c.refresh_failures},slot_map_age_seconds={c.map_age_seconds:.1f}"
                for p in clusters
                if (c := p.cluster) is not None
            ],
        )
    return "\r\n".join(out).encode()
