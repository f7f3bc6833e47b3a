"""Where keys go: computed from a config as twemproxy places them, or learned by writing through
a proxy and looking on the servers themselves."""

from __future__ import annotations

from proxy.config import Config, RingPoolConfig
from proxy.hashing import hash_function, hash_tag_key
from proxy.ring import RingServer, build
from tests.integration.harness.clients import RawClient
from tests.integration.harness.servers import RedisServer


def ring_port(config: Config, pool: str, key: bytes) -> int:
    """The port of the server that ring pool ``pool`` of ``config`` puts ``key`` on
    (twemproxy's rule, computed with the pure ``ring`` and ``hashing`` modules)."""
    pc = next(p for p in config.pools if p.name == pool)
    assert isinstance(pc, RingPoolConfig), pc
    # twemproxy orders a pool's servers by name: shorter first, then bytewise
    servers = sorted(pc.servers, key=lambda s: (len(s.name.encode()), s.name.encode()))
    if len(servers) == 1:
        return servers[0].address.port
    continuum = build(pc.distribution, [RingServer(i, s.name, s.weight) for i, s in enumerate(servers)])
    hashed = hash_tag_key(key, pc.hash_tag)
    return servers[continuum.dispatch(hash_function(pc.hash)(hashed) if hashed else 0)].address.port


def key_on(port: int, server: RedisServer, prefix: str) -> bytes:
    """A key ``prefix:i`` that the proxy on ``port`` places on ``server`` (SET through the
    proxy, found on the server)."""
    with RawClient(port) as c:
        for i in range(500):  # bounded
            key = b"%s:%d" % (prefix.encode(), i)
            if c.call("SET", key, "1") == b"OK" and server.call("EXISTS", key) == 1:
                return key
    raise AssertionError(f"no key landed on {server.port}")
