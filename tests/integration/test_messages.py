"""Messages a user can act on: what could not be opened, and whose fault it is."""

from __future__ import annotations

import socket

from tests.integration.harness.configs import native_config, pool_yaml
from tests.integration.harness.ports import free_port
from tests.integration.harness.proxyproc import ResProxy, run_proxy, run_proxy_on
from tests.integration.harness.servers import RedisServer
from tests.integration.harness.waiting import poll_until


def _app(port: int) -> str:
    """A pool ``app`` listening on ``port`` (over a server nobody needs to run)."""
    return native_config(pool_yaml("app", port, ["127.0.0.1:6379:1"]))


def test_an_address_in_use_names_the_pool_or_the_metrics_endpoint() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = run_proxy_on(_app(port))
        assert taken.returncode == 2
        assert f"pool app: cannot listen on 127.0.0.1:{port}" in taken.stderr, taken.stderr
        metrics = run_proxy_on(_app(free_port()), "--metrics", f"127.0.0.1:{port}")
        assert metrics.returncode == 2
        assert f"metrics endpoint: cannot listen on 127.0.0.1:{port}" in metrics.stderr


def test_a_bad_metrics_option_is_not_blamed_on_the_file() -> None:
    bad = run_proxy_on(_app(free_port()), "--metrics", "nonsense")
    assert bad.returncode == 1
    assert bad.stderr.startswith("resproxy: --metrics:"), bad.stderr
    assert "configuration file" not in bad.stderr


def test_a_cluster_pool_on_a_plain_server_logs_the_server_s_answer() -> None:
    with RedisServer().start() as server:
        port = free_port()
        config = native_config(
            pool_yaml("c", port, [f"127.0.0.1:{server.port}"], distribution="cluster", timeout=300)
        )
        with ResProxy(config).start() as proxy:
            poll_until(lambda: "cluster support disabled" in proxy.log(), "the node's own answer logged", 10)


def test_a_missing_file_says_it_cannot_be_read() -> None:
    missing = run_proxy("-t", "-c", "/nonexistent/r.yml")
    assert missing.returncode == 1
    assert "cannot be read" in missing.stderr and "syntax" not in missing.stderr, missing.stderr
