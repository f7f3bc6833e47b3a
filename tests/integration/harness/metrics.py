"""resproxy's HTTP endpoint: GET a path, and /metrics scraped with prometheus-client's parser."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of GET http://127.0.0.1:port/path, error statuses included."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Metrics:
    """One scrape of resproxy's /metrics, parsed with prometheus-client's own parser."""

    def __init__(self, port: int) -> None:
        status, body = http_get(port, "/metrics")
        assert status == 200, status
        self.samples = [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels (KeyError if there is none)."""
        for sample, have, value in self.samples:
            if sample == name and have == labels:
                return float(value)
        raise KeyError((name, labels))

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples whose labels include these (0 if there are none)."""
        return float(
            sum(
                value
                for sample, have, value in self.samples
                if sample == name and labels.items() <= have.items()
            )
        )
