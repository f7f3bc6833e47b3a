"""redis-cli's keyspace tools through resproxy (ring, cluster, listener): ``--scan --pattern``
prints exactly the matching keys, ``--bigkeys`` and ``--memkeys`` exit 0 having sampled every
key (their summary's "Sampled N keys", and the per-type counts)."""

from __future__ import annotations

import re
import subprocess
from collections import Counter

import pytest

from tests.clients.conftest import Target, sync_client

PER_TYPE = 60  # keys of each type under cli:
OTHERS = 40  # string keys outside the pattern
CLI_TIMEOUT_S = 30


def _fill(target: Target) -> tuple[set[str], Counter[str]]:
    """cli:* keys of five types plus other:* strings, written through the proxy; returns the
    cli:* names and the count of every key by redis-cli's type name."""
    r = sync_client(target)
    try:
        pipe = r.pipeline(transaction=False)
        names: set[str] = set()
        for i in range(PER_TYPE):
            pipe.set(f"cli:str:{i}", "x" * (i + 1))
            pipe.rpush(f"cli:list:{i}", *range(i + 1))
            pipe.hset(f"cli:hash:{i}", mapping={f"f{j}": j for j in range(i + 1)})
            pipe.sadd(f"cli:set:{i}", *range(i + 1))
            pipe.zadd(f"cli:zset:{i}", {f"m{j}": j for j in range(i + 1)})
            names.update(f"cli:{t}:{i}" for t in ("str", "list", "hash", "set", "zset"))
        for i in range(OTHERS):
            pipe.set(f"other:{i}", "y")
        assert all(pipe.execute())
    finally:
        r.close()
    by_type = Counter(
        {"string": PER_TYPE + OTHERS, "list": PER_TYPE, "hash": PER_TYPE, "set": PER_TYPE, "zset": PER_TYPE}
    )
    assert sum(n.call("DBSIZE") for n in target.data_nodes) == sum(by_type.values())
    return names, by_type


def _cli(target: Target, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(target.port), *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def test_redis_cli_scan_pattern(clean: Target) -> None:
    names, _ = _fill(clean)
    done = _cli(clean, "--scan", "--pattern", "cli:*")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    printed = done.stdout.splitlines()
    assert len(printed) == len(names), (len(printed), done.stdout[-500:], done.stderr[-500:])
    assert set(printed) == names


def _summary(out: str) -> tuple[int, dict[str, int]]:
    """``Sampled N keys`` and the ``N <type>s with ...`` lines of a --bigkeys/--memkeys run."""
    sampled = re.search(r"^Sampled (\d+) keys", out, re.M)
    assert sampled, out[-2000:]
    per_type = {t: int(n) for n, t in re.findall(r"^(\d+) (\w+?)s with ", out, re.M)}
    return int(sampled.group(1)), per_type


@pytest.mark.parametrize("tool", ["--bigkeys", "--memkeys"])
def test_redis_cli_bigkeys_memkeys(clean: Target, tool: str) -> None:
    _, by_type = _fill(clean)
    done = _cli(clean, tool)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    sampled, per_type = _summary(done.stdout)
    assert sampled == sum(by_type.values()), done.stdout[-2000:]
    assert {t: per_type.get(t, 0) for t in by_type} == dict(by_type), done.stdout[-2000:]
