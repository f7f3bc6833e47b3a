"""Keys land where twemproxy puts them: written through resproxy, found through real nutcracker.

One nutcracker.yml with a pool per (hash, distribution), read as it is by both a real nutcracker and
resproxy, over the same three redis-servers. Half the pools name their servers and weigh them
1, 2, 1 (ketama points are then named after the names and counted by weight); the other half use
twemproxy's default "host:port" names and equal weights. A key written through one proxy must be
readable through the other, for every key, or placement differs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from proxy.config import HASHES  # every hash a config may name: twemproxy's
from tests.integration.harness.clients import RawClient
from tests.integration.harness.configs import nutcracker_pool_yaml, server_lines
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import Nutcracker, ResProxy
from tests.integration.harness.servers import RedisServer

DISTRIBUTIONS = ["ketama", "modula"]
CASES = [(h, d) for h in HASHES for d in DISTRIBUTIONS]


def _pool(name: str, port: int, backends: list[RedisServer], named: bool, hash_: str, dist: str) -> str:
    if named:
        weighted = zip(backends, (1, 2, 1), ("alpha", "beta", "gamma"))
        servers = [f"127.0.0.1:{b.port}:{w} {n}" for b, w, n in weighted]
    else:
        servers = server_lines(backends, None)
    keys = {"hash": hash_, "distribution": dist, "hash_tag": "{}", "redis": True, "timeout": 5000}
    return nutcracker_pool_yaml(name, port, servers, **keys)


@pytest.fixture(scope="module")
def pair(backends: list[RedisServer]) -> Iterator[dict[tuple[str, str], tuple[int, int]]]:
    """One nutcracker and one resproxy, each with a pool per case, on the same yml text."""
    nut_ports = {case: free_port() for case in CASES}
    res_ports = {case: free_port() for case in CASES}
    # named and weighted servers for every other hash, so each distribution gets both forms
    named = {case: HASHES.index(case[0]) % 2 == 0 for case in CASES}
    nut_text = "".join(_pool(f"{h}_{d}", nut_ports[(h, d)], backends, named[(h, d)], h, d) for h, d in CASES)
    res_text = "".join(_pool(f"{h}_{d}", res_ports[(h, d)], backends, named[(h, d)], h, d) for h, d in CASES)
    with ResProxy(res_text) as res, Nutcracker(nut_text, nut_ports.values()) as nut:
        res.launch()
        nut.start()
        res.wait_ready(pools=len(CASES))
        yield {case: (res_ports[case], nut_ports[case]) for case in CASES}


def _keys(prefix: bytes) -> list[bytes]:
    keys = [hashlib.sha1(prefix + b"%d" % i).hexdigest().encode() for i in range(200)]
    keys += [prefix + b":{tag%d}:member:%d" % (i % 7, i) for i in range(50)]  # hash tags
    keys += [prefix + b":\xff\xfe\x80" + bytes([0x80 + i]) + b"k%d" % i for i in range(40)]
    keys += [prefix + b":" + b"long" * 30 + b"%d" % i for i in range(10)]  # > 100 bytes
    return keys


@pytest.mark.parametrize("hash_, dist", CASES)
def test_every_key_written_through_resproxy_is_found_through_nutcracker(
    pair: dict[tuple[str, str], tuple[int, int]],
    backends: list[RedisServer],
    hash_: str,
    dist: str,
) -> None:
    res_port, nut_port = pair[(hash_, dist)]
    prefix = f"{hash_}.{dist}".encode()
    keys = _keys(prefix)
    with RawClient(res_port) as res, RawClient(nut_port) as nut:
        assert res.pipeline([("SET", k, b"v-" + k) for k in keys]) == [b"OK"] * len(keys)
        assert nut.pipeline([("GET", k) for k in keys]) == [b"v-" + k for k in keys]
        # the fan-out routes like single keys (C kernel for ketama, Python for md5 and modula)
        assert res.call("MGET", *keys) == [b"v-" + k for k in keys]
        assert nut.call("MGET", *keys[:40]) == [b"v-" + k for k in keys[:40]]
        # and the other way round, for keys nutcracker writes
        back = [prefix + b":from-nutcracker:%d" % i for i in range(60)]
        assert nut.pipeline([("SET", k, b"n") for k in back]) == [b"OK"] * len(back)
        assert res.pipeline([("GET", k) for k in back]) == [b"n"] * len(back)
    # The test can only fail if keys are spread: they are, over more than one server. (Except
    # twemproxy's crc32, which is 15 bits: under ketama every hash falls before the first point
    # of the 32-bit continuum, so twemproxy - and resproxy with it - puts every key on one server.)
    holders = sum(1 for b in backends if b.call("EXISTS", *keys[:200]) > 0)
    assert holders == 1 if (hash_, dist) == ("crc32", "ketama") else holders >= 2
