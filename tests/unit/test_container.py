"""The container and compose files, checked without a Docker engine.

Every file they reference exists, and the ports, paths and names agree between the Dockerfile,
docker-compose.yml, config/docker.yml, the Prometheus config and the Grafana dashboard (whose
queries may only name metrics resproxy exports).
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from proxy.config import load
from proxy.metrics import Snapshot, registry_for

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _dockerfile() -> list[str]:
    """Dockerfile instructions, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (relative to the repository) of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        out[container] = host
    return out


def test_compose_services_and_referenced_files_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"resproxy", "redis1", "redis2", "redis3", "prometheus", "grafana"} <= set(services)
    assert services["resproxy"]["build"] == "."
    assert (ROOT / "Dockerfile").is_file()
    for name, service in services.items():
        for host in _mounts(service).values():
            assert (ROOT / host).exists(), f"{name}: {host} does not exist"


def test_dockerfile_is_slim_non_root_with_a_healthcheck() -> None:
    lines = _dockerfile()
    froms = [line for line in lines if line.startswith("FROM ")]
    assert froms and all(re.match(r"FROM python:3\.1[1-9]-slim", f) for f in froms)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert any(line.startswith("HEALTHCHECK ") and "/healthz" in line for line in lines)


def test_ports_and_paths_agree(compose: dict[str, Any]) -> None:
    lines = _dockerfile()
    entry = json.loads(next(line for line in lines if line.startswith("ENTRYPOINT ")).split(" ", 1)[1])
    config_path = entry[entry.index("-c") + 1]
    resproxy = compose["services"]["resproxy"]
    mounts = _mounts(resproxy)
    assert config_path in mounts, "compose mounts the config where the image reads it"
    config = load(str(ROOT / mounts[config_path]))
    assert config.metrics_listen is not None
    metrics_port = config.metrics_listen.port
    pool_ports = {p.listen.port for p in config.pools if p.listen is not None}
    published = {int(str(p).split(":")[-1]) for p in resproxy["ports"]}
    exposed = {int(p) for line in lines if line.startswith("EXPOSE ") for p in line.split()[1:]}
    assert pool_ports | {metrics_port} <= published
    assert pool_ports | {metrics_port} <= exposed
    health = next(line for line in lines if line.startswith("HEALTHCHECK "))
    assert f":{metrics_port}/healthz" in health
    # the pool's servers are the compose redis services
    hosts = {s.address.host for p in config.pools for s in p.servers}
    assert hosts <= set(compose["services"])
    # Prometheus scrapes resproxy's metrics port
    prom_mounts = _mounts(compose["services"]["prometheus"])
    prom = yaml.safe_load((ROOT / prom_mounts["/etc/prometheus/prometheus.yml"]).read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert f"resproxy:{metrics_port}" in targets


def _exported_names() -> set[str]:
    text = generate_latest(registry_for(lambda: Snapshot(version="x", uptime_seconds=0, pools=[])))
    names: set[str] = set()
    for line in text.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter":
                names.add(name + "_total")
            if kind == "histogram":
                names.update(name + s for s in ("_bucket", "_count", "_sum"))
    return names


def test_grafana_dashboard_is_provisioned_and_queries_exported_metrics(
    compose: dict[str, Any],
) -> None:
    mounts = _mounts(compose["services"]["grafana"])
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "resproxy.yml").read_text())
    dashboards_path = providers["providers"][0]["options"]["path"]
    assert dashboards_path in mounts
    dashboard_files = list((ROOT / mounts[dashboards_path]).glob("*.json"))
    assert dashboard_files
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert sources["datasources"][0]["url"].startswith("http://prometheus:")
    exported = _exported_names()
    for path in dashboard_files:
        dashboard = json.loads(path.read_text())
        titles = [p["title"] for p in dashboard["panels"]]
        for needed in ("Requests/s", "p99", "Error", "Server up"):
            assert any(needed in t for t in titles), needed
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                for name in re.findall(r"resproxy_[a-z_]+", target["expr"]):
                    assert name in exported, f"{panel['title']}: {name} is not exported"
