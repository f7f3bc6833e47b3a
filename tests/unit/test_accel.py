"""RESPROXY_PURE=1 selects every Python twin; without it every C accelerator runs (one switch)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
from proxy import accel, hashing, inflight, resp, ring
print(accel.implementation())
print(resp.split_replies is resp._py_split_replies, resp._Framer is resp.PyRequestParser)
print(hashing.hash_function("fnv1a_64") is hashing.PY_FUNCTIONS["fnv1a_64"])
print(inflight.ReplyQueue is inflight.PyReplyQueue, ring._speedups is None)
"""


def _probe(pure: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "RESPROXY_PURE"}
    if pure is not None:
        env["RESPROXY_PURE"] = pure
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split("\n")[:4]


@pytest.mark.parametrize("pure", ["1", "yes"])
def test_pure_selects_every_python_twin(pure: str) -> None:
    assert _probe(pure) == ["python", "True True", "True", "True True"]


@pytest.mark.parametrize("pure", [None, "", "0"])
def test_otherwise_every_c_accelerator_runs(pure: str | None) -> None:
    assert _probe(pure) == ["c", "False False", "False", "False False"]


def test_the_summary_names_what_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "proxy.accel"],
        env={**os.environ, "RESPROXY_PURE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "pure-Python twins in use (RESPROXY_PURE=1)" in out.stdout, out
