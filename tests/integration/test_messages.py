"""Messages a user can act on: what could not be opened, and whose fault it is."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

from tests.integration.harness import (
    ROOT,
    ResProxy,
    free_port,
    native_config,
    poll_until,
    pool_yaml,
    running_redis_servers,
)


def _run(config: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "resproxy.yml")
        with open(path, "w") as f:
            f.write(config)
        return subprocess.run(
            [sys.executable, "-m", "proxy", "-c", path, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )


def test_an_address_in_use_names_the_pool_or_the_metrics_endpoint() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = _run(native_config(pool_yaml("app", port, ["127.0.0.1:6379:1"])))
        assert taken.returncode == 2
        assert f"pool app: cannot listen on 127.0.0.1:{port}" in taken.stderr, taken.stderr
        metrics = _run(
            native_config(pool_yaml("app", free_port(), ["127.0.0.1:6379:1"])),
            "--metrics",
            f"127.0.0.1:{port}",
        )
        assert metrics.returncode == 2
        assert f"metrics endpoint: cannot listen on 127.0.0.1:{port}" in metrics.stderr


def test_a_bad_metrics_option_is_not_blamed_on_the_file() -> None:
    bad = _run(native_config(pool_yaml("app", free_port(), ["127.0.0.1:6379:1"])), "--metrics", "nonsense")
    assert bad.returncode == 1
    assert bad.stderr.startswith("resproxy: --metrics:"), bad.stderr
    assert "configuration file" not in bad.stderr


def test_a_cluster_pool_on_a_plain_server_logs_the_server_s_answer() -> None:
    with running_redis_servers(1) as servers:
        port = free_port()
        config = native_config(
            pool_yaml("c", port, [f"127.0.0.1:{servers[0].port}"], distribution="cluster", timeout=300)
        )
        proxy = ResProxy(config).start()
        try:
            poll_until(lambda: "cluster support disabled" in proxy.log(), "the node's own answer logged", 10)
        finally:
            proxy.cleanup()


def test_a_missing_file_says_it_cannot_be_read() -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "proxy", "-t", "-c", "/nonexistent/r.yml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 1
    assert "cannot be read" in missing.stderr and "syntax" not in missing.stderr, missing.stderr
