"""Which twin runs: the C accelerators or their pure-Python twins (leaf module: the one switch).

Two C modules speed up the hot path: ``proxy/_speedups.c`` (key hashes, ketama route, request
and reply framing, fan-out kernels) and ``proxy/_inflight.c`` (reply slots and queues). Each has
a pure-Python twin with the same results; the tests compare every pair. The proxy modules that
have a twin ask here for the C module and fall back to Python when it is not there:

* ``RESPROXY_PURE=1`` in the environment selects every Python twin (read once, at import);
* otherwise a C module is used when the build compiled it. One that is missing (no compiler at
  install, a failed compile) is recorded, and ``summary()`` says so: the proxy logs it as a
  warning at start (server.py), INFO shows ``resproxy_implementation:``, and ``make`` warns
  after installing (``python -m proxy.accel``).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

C_MODULES = ("_speedups", "_inflight")

PURE = os.environ.get("RESPROXY_PURE", "").strip() not in ("", "0")
"""True: every Python twin runs (``RESPROXY_PURE=1``)."""

_missing: dict[str, str] = {}  # C module -> why it could not be imported


def c_module(name: str) -> ModuleType | None:
    """The C accelerator ``proxy.<name>``, or None: Python twins selected, or not built."""
    if PURE:
        return None
    try:
        return importlib.import_module(f"proxy.{name}")
    except ImportError as exc:
        _missing[name] = str(exc)
        return None


def implementation() -> str:
    """``c``, ``python`` (RESPROXY_PURE=1) or ``mixed`` (a C module did not build)."""
    if PURE:
        return "python"
    for name in C_MODULES:
        c_module(name)
    return "mixed" if _missing else "c"


def summary() -> str:
    """One line for the startup log: which twins run and, when C is missing, why."""
    kind = implementation()
    if kind == "c":
        return "C accelerators in use (proxy/_speedups.c, proxy/_inflight.c)"
    if kind == "python":
        return "pure-Python twins in use (RESPROXY_PURE=1): same behaviour, slower"
    why = "; ".join(f"proxy/{name}.c: {text}" for name, text in sorted(_missing.items()))
    return (
        f"C accelerators missing, their pure-Python twins run instead (same behaviour, slower): "
        f"{why}; reinstall with a C compiler and the Python headers (make clean setup)"
    )


def main() -> int:
    """``python -m proxy.accel``: print the summary; exit 1 when a C module is missing."""
    print(("resproxy: " if implementation() != "mixed" else "resproxy: WARNING: ") + summary())
    return 1 if implementation() == "mixed" else 0


if __name__ == "__main__":
    raise SystemExit(main())
