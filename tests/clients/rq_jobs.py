"""Jobs for the RQ worker process (imported by it as ``tests.clients.rq_jobs``)."""

from __future__ import annotations


def double(x: int) -> int:
    return x * 2
