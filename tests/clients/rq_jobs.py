"""Jobs for the RQ worker process (imported by it as ``tests.clients.rq_jobs``)."""

from __future__ import annotations

import os
import time


def double(x: int) -> int:
    return x * 2


def started_marker(path: str) -> str:
    """The file :func:`wait_for_file` writes (its work horse's PID) once it runs."""
    return path + ".started"


def wait_for_file(path: str, timeout_s: float = 60.0) -> str:
    """Announce the run (``started_marker(path)`` holds this process's PID), then wait until
    ``path`` exists (bounded) and return ``done:`` + its content."""
    marker = started_marker(path)
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)  # whole or absent for the test reading it
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not created within {timeout_s} s")
        time.sleep(0.05)
    with open(path) as f:
        return "done:" + f.read()
