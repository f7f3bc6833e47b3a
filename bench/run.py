#!/usr/bin/env python3
"""`make bench`: redis-benchmark straight to Redis, through nutcracker and through resproxy.

One run starts its own processes on free 127.0.0.1 ports: three redis-servers behind both
proxies (the same nutcracker.yml, read as it is by both), and one redis-server for the direct
baseline. For each case it runs the proxies in A B B A order per round (alternating which comes
first), plus Redis once, and reports medians: throughput, p50/p99 latency, the
resproxy/nutcracker throughput ratio (median and min-max over rounds), and each proxy's CPU
time per request (utime+stime from /proc/PID/stat, over the run, divided by requests).

Then a cluster section: a real 3-master Redis Cluster (built with redis-cli --cluster create), with
GET and SET at -P 1 and -P 16 through a resproxy cluster pool against ``redis-benchmark --cluster``
straight to the cluster (a cluster-aware client, the best a client can do), in the same A B B A
rounds; the ratio is resproxy/direct.

Then a TLS section: GET and SET at -P 16 through a second resproxy whose pool serves TLS to its
clients (the same three servers, plain behind it) against the plain resproxy, A B B A; the ratio
is TLS/plain throughput (and CPU per request), with redis-server's own TLS/plain ratio beside it
for scale (one TLS-only redis-server). Certificates are made for the run with openssl.

Last a large-value section (bench/large.py): SETs and GETs of 1, 16, 128 and 512 MB values
straight to one redis-server and through a fresh nutcracker and resproxy per size in front of it,
with MB/s, each proxy's peak RSS and the worst latency of a concurrent PING client.

Usage: bench/run.py [--rounds N] [--quick] [--markdown] [--only CASE,...] [--no-cluster] [--no-tls]
                    [--no-large | --large-only] [--sizes MB,...] [--large-rounds N]
Every process it starts is stopped by PID at the end, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# Free ports below the ephemeral range and the bounded port wait: the test harness's, shared.
import large  # noqa: E402  (bench/large.py, next to this file)

from tests.integration.harness import RedisCluster, free_port, wait_port  # noqa: E402
from tests.integration.harness.tls import make_certs  # noqa: E402

NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
CLIENTS = 50
KEYSPACE = 100000
TEN_KEYS = " ".join(["k:__rand_int__"] * 10)
TEN_PAIRS = " ".join(["k:__rand_int__ v"] * 10)


@dataclass
class Case:
    name: str
    args: list[str]  # redis-benchmark arguments after the common ones
    pipeline: int
    requests: int


CASES = [
    Case("GET P1", ["-t", "get"], 1, 100_000),
    Case("SET P1", ["-t", "set"], 1, 100_000),
    Case("GET P16", ["-t", "get"], 16, 600_000),
    Case("SET P16", ["-t", "set"], 16, 600_000),
    Case("MGET10 P1", TEN_KEYS.split(), 1, 40_000),
    Case("MSET10 P1", TEN_PAIRS.split(), 1, 40_000),
    Case("MGET10 P16", TEN_KEYS.split(), 16, 80_000),
    Case("MSET10 P16", TEN_PAIRS.split(), 16, 80_000),
]
for _c in CASES[4:]:
    _c.args = [("mget" if "MGET" in _c.name else "mset")] + _c.args


@dataclass
class Result:
    rps: float
    p50: float
    p99: float
    cpu_us: float | None = None


@dataclass
class Series:
    runs: dict[str, list[Result]] = field(
        default_factory=lambda: {"redis": [], "nutcracker": [], "resproxy": []}
    )
    ratios: list[float] = field(default_factory=list)


def _running(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is None


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CLUSTER_CASES = CASES[:4]


def run_benchmark(
    port: int, case: Case, requests: int, cluster: bool = False, tls: list[str] | None = None
) -> Result:
    cmd = [
        "redis-benchmark",
        *(tls or []),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-c",
        str(CLIENTS),
        "-n",
        str(requests),
        "-P",
        str(case.pipeline),
        "-r",
        str(KEYSPACE),
        "--csv",
        *(["--cluster"] if cluster else []),
        *case.args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"bench: redis-benchmark failed: {out.stderr.strip()}")
    rows = [r for r in csv.reader(io.StringIO(out.stdout)) if r and r[0] != "test"]
    if not rows:
        raise SystemExit(f"bench: no result from redis-benchmark: {out.stdout!r} {out.stderr!r}")
    row = rows[-1]
    return Result(rps=float(row[1]), p50=float(row[4]), p99=float(row[6]))


def measure(
    port: int, pid: int | None, case: Case, requests: int, cluster: bool = False, tls: list[str] | None = None
) -> Result:
    before = cpu_seconds(pid) if pid else 0.0
    result = run_benchmark(port, case, requests, cluster, tls)
    if pid:
        result.cpu_us = (cpu_seconds(pid) - before) * 1e6 / requests
    return result


def scrape(port: int) -> None:
    """One /metrics scrape, as Prometheus would make: the bench measures with metrics on."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        if r.status != 200 or b"resproxy_requests_total" not in r.read():
            raise SystemExit("bench: resproxy's /metrics did not answer as expected")


def nutcracker_yml(listen: int, ports: list[int]) -> str:
    servers = "".join(f"   - 127.0.0.1:{p}:1\n" for p in ports)
    return (
        "bench:\n"
        f"  listen: 127.0.0.1:{listen}\n"
        '  hash: fnv1a_64\n  distribution: ketama\n  hash_tag: "{}"\n  redis: true\n'
        "  timeout: 400\n  server_connections: 1\n  preconnect: true\n"
        "  auto_eject_hosts: false\n  servers:\n" + servers
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a tenth of the requests, one round")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    ap.add_argument("--only", default="", help="comma-separated case names, e.g. 'GET P1,SET P16'")
    ap.add_argument("--no-cluster", action="store_true", help="skip the cluster section")
    ap.add_argument("--no-tls", action="store_true", help="skip the TLS section")
    ap.add_argument("--no-large", action="store_true", help="skip the large-value section")
    ap.add_argument("--large-only", action="store_true", help="run only the large-value section")
    ap.add_argument(
        "--sizes",
        default=",".join(map(str, large.DEFAULT_SIZES)),
        help="large-value section: value sizes in MB, e.g. 1,16",
    )
    ap.add_argument(
        "--large-rounds",
        type=int,
        default=None,
        help="large-value section: rounds per size (default 3, 1 with --quick)",
    )
    args = ap.parse_args()
    sizes = large.parse_sizes(args.sizes)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    if not args.large_only:
        ring_and_cluster(args)
    if not args.no_large:
        large_rounds = args.large_rounds or (1 if args.quick else 3)
        bench_large(sizes, max(1, large_rounds), args.markdown)
    return 0


def bench_large(sizes: list[int], rounds: int, markdown: bool) -> None:
    rows, per_transfer = large.run(sizes, rounds, lambda line: print(line, file=sys.stderr, flush=True))
    print(
        f"\nLarge values: {rounds} round(s) of one SET and one GET per size, raw socket client; "
        f"redis-server straight, and a fresh nutcracker / resproxy per size in front of it; "
        f"MB = 2**20 bytes; MB/s medians; peak RSS = max VmHWM "
        f"{'per transfer (clear_refs)' if per_transfer else 'since start'}; PING every "
        f"{large.PING_INTERVAL_S * 1000:g} ms on a second connection, worst over rounds"
        "\n"
    )
    for title, header, body in large.tables(rows):
        if title == "ratios":
            print("\nresproxy/nutcracker (p/n) and resproxy/redis; RSS ratios > 1: resproxy holds more\n")
        table(header, body, markdown)
    problems = large.failures(rows)
    if problems:
        print("\nFailed or disturbed transfers (* after MB/s: the median of the rounds left):")
        for line in problems:
            print(f"  {line}")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "large.json"), "w") as f:
        json.dump(large.to_json(rows), f, indent=1)


def ring_and_cluster(args: argparse.Namespace) -> None:
    """The redis-benchmark sections (ring, then cluster); results to bench/results/latest.json."""
    rounds = 1 if args.quick else args.rounds
    scale = 0.1 if args.quick else 1.0
    cases = [c for c in CASES if not args.only or c.name in args.only.split(",")]

    workdir = tempfile.mkdtemp(prefix="resproxy-bench-")
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], cwd: str | None = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
        procs.append(p)
        return p

    def stop_all(*_: object) -> None:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    try:
        redis_ports = [free_port() for _ in range(4)]
        for port in redis_ports:
            start(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    workdir,
                ]
            )
        for port, proc in zip(redis_ports, procs):
            wait_port(port, functools.partial(_running, proc), f"redis-server {port}")
        direct_port, backend_ports = redis_ports[3], redis_ports[:3]

        nut_port, res_port = free_port(), free_port()
        nut_conf = os.path.join(workdir, "nutcracker.yml")
        res_conf = os.path.join(workdir, "resproxy.yml")
        with open(nut_conf, "w") as f:
            f.write(nutcracker_yml(nut_port, backend_ports))
        with open(res_conf, "w") as f:
            f.write(nutcracker_yml(res_port, backend_ports))
        nut = start(
            [
                NUTCRACKER,
                "-c",
                nut_conf,
                "-s",
                str(free_port()),
                "-o",
                os.path.join(workdir, "nutcracker.log"),
            ]
        )
        metrics_port = free_port()  # resproxy runs with its metrics endpoint on, scraped per case
        res = start(
            [
                sys.executable,
                "-m",
                "proxy",
                "-c",
                res_conf,
                "--log-level",
                "warning",
                "--metrics",
                f"127.0.0.1:{metrics_port}",
            ],
            cwd=ROOT,
        )
        wait_port(nut_port, lambda: nut.poll() is None, "nutcracker")
        wait_port(res_port, lambda: res.poll() is None, "resproxy")

        results: dict[str, Series] = {}
        for case in cases:
            series = results[case.name] = Series()
            requests = max(1000, int(case.requests * scale))
            for r in range(rounds):
                abba_round(
                    series,
                    r,
                    "nutcracker",
                    lambda: measure(nut_port, nut.pid, case, requests),
                    lambda: measure(res_port, res.pid, case, requests),
                    f"{case.name} round {r + 1}/{rounds}: resproxy/nutcracker",
                )
                series.runs["redis"].append(measure(direct_port, None, case, requests))
            for name, proc in (("nutcracker", nut), ("resproxy", res)):
                if proc.poll() is not None:
                    raise SystemExit(f"bench: {name} died during the run")
            scrape(metrics_port)
        report(results, rounds, args.markdown)
        tls_results: dict[str, Series] = {}
        tls_cases = [c for c in TLS_CASES if not args.only or c.name in args.only.split(",")]
        if not args.no_tls and tls_cases:
            os.kill(nut.pid, signal.SIGTERM)  # the TLS section compares resproxy with itself
            nut.wait(timeout=10)
            tls_results = bench_tls(
                tls_cases, rounds, scale, workdir, backend_ports, res_port, res.pid, start
            )
            report_tls(tls_results, rounds, args.markdown)
        stop_all()  # the ring section's processes: the cluster section gets the machine
        cluster_results: dict[str, Series] = {}
        cluster_cases = [c for c in CLUSTER_CASES if not args.only or c.name in args.only.split(",")]
        if not args.no_cluster and cluster_cases:
            cluster_results = bench_cluster(cluster_cases, rounds, scale, workdir)
            report_cluster(cluster_results, rounds, args.markdown)
        os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
        with open(os.path.join(ROOT, "bench", "results", "latest.json"), "w") as f:
            json.dump(
                {
                    k: {"runs": {n: [vars(x) for x in v] for n, v in s.runs.items()}, "ratios": s.ratios}
                    for k, s in [
                        *results.items(),
                        *(("cluster " + k, v) for k, v in cluster_results.items()),
                        *(("tls " + k, v) for k, v in tls_results.items()),
                    ]
                },
                f,
                indent=1,
            )
    finally:
        stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


TLS_CASES = [CASES[2], CASES[3]]  # GET P16, SET P16


def bench_tls(
    cases: list[Case],
    rounds: int,
    scale: float,
    workdir: str,
    backend_ports: list[int],
    plain_port: int,
    plain_pid: int,
    start: Callable[..., subprocess.Popen[bytes]],
) -> dict[str, Series]:
    """resproxy with a TLS listener vs the plain one over the same servers; redis-server's own
    TLS vs plain beside it (the ``redis`` and ``redis-tls`` runs)."""
    certs = make_certs(os.path.join(workdir, "certs"))
    tls_port, redis_tls_port, redis_plain = free_port(), free_port(), backend_ports[0]
    servers = "".join(f"      - 127.0.0.1:{p}:1\n" for p in backend_ports)
    conf = os.path.join(workdir, "resproxy-tls.yml")
    with open(conf, "w") as f:
        f.write(
            f"pools:\n  bench:\n    listen: 127.0.0.1:{tls_port}\n"
            '    hash: fnv1a_64\n    distribution: ketama\n    hash_tag: "{}"\n'
            "    timeout: 400\n    server_connections: 1\n    preconnect: true\n"
            f"    tls: {{cert_file: {certs.server_cert}, key_file: {certs.server_key}}}\n"
            f"    servers:\n{servers}"
        )
    proxy = start([sys.executable, "-m", "proxy", "-c", conf, "--log-level", "warning"], cwd=ROOT)
    redis_tls = start(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            str(redis_tls_port),
            "--tls-cert-file",
            certs.server_cert,
            "--tls-key-file",
            certs.server_key,
            "--tls-ca-cert-file",
            certs.ca,
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--dir",
            workdir,
        ]
    )
    wait_port(tls_port, lambda: proxy.poll() is None, "resproxy (TLS)")
    wait_port(redis_tls_port, lambda: redis_tls.poll() is None, "redis-server (TLS)")
    tls = ["--tls", "--cacert", certs.ca]
    results: dict[str, Series] = {}
    for case in cases:
        series = results[case.name] = Series(runs={"plain": [], "resproxy": [], "redis": [], "redis-tls": []})
        requests = max(1000, int(case.requests * scale))
        for r in range(rounds):
            abba_round(
                series,
                r,
                "plain",
                lambda: measure(plain_port, plain_pid, case, requests),
                lambda: measure(tls_port, proxy.pid, case, requests, tls=tls),
                f"TLS {case.name} round {r + 1}/{rounds}: resproxy TLS/plain",
            )
            series.runs["redis"].append(measure(redis_plain, None, case, requests))
            series.runs["redis-tls"].append(measure(redis_tls_port, None, case, requests, tls=tls))
        if proxy.poll() is not None:
            raise SystemExit("bench: resproxy (TLS) died during the run")
    return results


def report_tls(results: dict[str, Series], rounds: int, markdown: bool) -> None:
    med = statistics.median
    header = [
        "case",
        "resproxy plain rps",
        "resproxy TLS rps",
        "TLS/plain (min-max)",
        "CPU us/req plain/TLS",
        "redis plain rps",
        "redis TLS rps",
        "redis TLS/plain",
    ]
    rows = []
    for name, s in results.items():
        pl, t, r, rt = s.runs["plain"], s.runs["resproxy"], s.runs["redis"], s.runs["redis-tls"]
        cpu_plain = med([x.cpu_us for x in pl if x.cpu_us is not None])
        cpu_tls = med([x.cpu_us for x in t if x.cpu_us is not None])
        rows.append(
            [
                name,
                f"{med([x.rps for x in pl]):,.0f}",
                f"{med([x.rps for x in t]):,.0f}",
                f"{med(s.ratios):.2f} ({min(s.ratios):.2f}-{max(s.ratios):.2f})",
                f"{cpu_plain:.1f}/{cpu_tls:.1f}",
                f"{med([x.rps for x in r]):,.0f}",
                f"{med([x.rps for x in rt]):,.0f}",
                f"{med([x.rps for x in rt]) / med([x.rps for x in r]):.2f}",
            ]
        )
    print(
        f"\nTLS: resproxy with a TLS listener vs plain (same servers, plain behind both), "
        f"redis-benchmark -c {CLIENTS} -P 16; {rounds} round(s) of A B B A; redis-server's own "
        "TLS/plain beside it; medians\n"
    )
    table(header, rows, markdown)


def abba_round(
    series: Series,
    r: int,
    base: str,
    measure_base: Callable[[], Result],
    measure_proxy: Callable[[], Result],
    label: str,
) -> None:
    """One A B B A round: ``base`` and resproxy twice each, which goes first alternating
    between rounds; records the runs and mean(resproxy rps) / mean(base rps)."""
    order = [base, "resproxy", "resproxy", base]
    if r % 2:
        order.reverse()
    got: dict[str, list[Result]] = {base: [], "resproxy": []}
    for name in order:
        got[name].append(measure_proxy() if name == "resproxy" else measure_base())
    for name, runs in got.items():
        series.runs[name].extend(runs)
    series.ratios.append(
        statistics.mean(x.rps for x in got["resproxy"]) / statistics.mean(x.rps for x in got[base])
    )
    print(f"  {label} {series.ratios[-1]:.2f}", file=sys.stderr, flush=True)


def bench_cluster(cases: list[Case], rounds: int, scale: float, workdir: str) -> dict[str, Series]:
    """resproxy (cluster pool) vs redis-benchmark --cluster, on a real 3-master cluster."""
    cluster = RedisCluster(masters=3, replicas=0).start()
    proxy: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        conf = os.path.join(workdir, "resproxy-cluster.yml")
        seeds = "".join(f"      - {s}\n" for s in cluster.seeds())
        with open(conf, "w") as f:
            f.write(
                f"pools:\n  c:\n    listen: 127.0.0.1:{port}\n    distribution: cluster\n"
                f"    timeout: 400\n    preconnect: true\n    servers:\n{seeds}"
            )
        proxy = subprocess.Popen(
            [sys.executable, "-m", "proxy", "-c", conf, "--log-level", "warning"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(port, lambda: proxy is not None and proxy.poll() is None, "resproxy (cluster)")
        node = cluster.nodes[0].port
        results: dict[str, Series] = {}
        for case in cases:
            series = results[case.name] = Series(runs={"cluster": [], "resproxy": []})
            requests = max(1000, int(case.requests * scale))
            pid = proxy.pid
            for r in range(rounds):
                abba_round(
                    series,
                    r,
                    "cluster",
                    lambda: measure(node, None, case, requests, cluster=True),
                    lambda: measure(port, pid, case, requests),
                    f"cluster {case.name} round {r + 1}/{rounds}: resproxy/direct",
                )
            if proxy.poll() is not None:
                raise SystemExit("bench: resproxy (cluster) died during the run")
        return results
    finally:
        if proxy is not None and proxy.poll() is None:
            proxy.terminate()
            proxy.wait(timeout=10)
        cluster.cleanup()


def report_cluster(results: dict[str, Series], rounds: int, markdown: bool) -> None:
    med = statistics.median
    header = [
        "case",
        "cluster direct rps",
        "resproxy rps",
        "ratio (min-max)",
        "p50 ms d/p",
        "p99 ms d/p",
        "CPU us/req p",
    ]
    rows = []
    for name, s in results.items():
        d, p = s.runs["cluster"], s.runs["resproxy"]
        rows.append(
            [
                name,
                f"{med([x.rps for x in d]):,.0f}",
                f"{med([x.rps for x in p]):,.0f}",
                f"{med(s.ratios):.2f} ({min(s.ratios):.2f}-{max(s.ratios):.2f})",
                f"{med([x.p50 for x in d]):.2f}/{med([x.p50 for x in p]):.2f}",
                f"{med([x.p99 for x in d]):.2f}/{med([x.p99 for x in p]):.2f}",
                f"{med([x.cpu_us for x in p if x.cpu_us is not None]):.1f}",
            ]
        )
    print(
        f"\nCluster (3 masters): redis-benchmark --cluster straight to the nodes (d) vs through "
        f"resproxy (p); {rounds} round(s) of A B B A; medians\n"
    )
    table(header, rows, markdown)


def report(results: dict[str, Series], rounds: int, markdown: bool) -> None:
    med = statistics.median
    header = [
        "case",
        "redis rps",
        "nutcracker rps",
        "resproxy rps",
        "ratio (min-max)",
        "p50 ms r/n/p",
        "p99 ms r/n/p",
        "CPU us/req n",
        "CPU us/req p",
        "CPU ratio",
    ]
    rows = []
    for name, s in results.items():
        r, n, p = s.runs["redis"], s.runs["nutcracker"], s.runs["resproxy"]
        cpu_n = med([x.cpu_us for x in n if x.cpu_us is not None])
        cpu_p = med([x.cpu_us for x in p if x.cpu_us is not None])
        rows.append(
            [
                name,
                f"{med([x.rps for x in r]):,.0f}",
                f"{med([x.rps for x in n]):,.0f}",
                f"{med([x.rps for x in p]):,.0f}",
                f"{med(s.ratios):.2f} ({min(s.ratios):.2f}-{max(s.ratios):.2f})",
                f"{med([x.p50 for x in r]):.2f}/{med([x.p50 for x in n]):.2f}/{med([x.p50 for x in p]):.2f}",
                f"{med([x.p99 for x in r]):.2f}/{med([x.p99 for x in n]):.2f}/{med([x.p99 for x in p]):.2f}",
                f"{cpu_n:.1f}",
                f"{cpu_p:.1f}",
                f"{cpu_p / cpu_n:.2f}",
            ]
        )
    print(
        f"\nredis-benchmark -c {CLIENTS} -r {KEYSPACE}, {rounds} round(s) of A B B A; "
        "medians; r/n/p = redis/nutcracker/resproxy\n"
    )
    table(header, rows, markdown)


def table(header: list[str], rows: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    sys.exit(main())
