"""Child processes: started with a directory of their own, ready on a line they print, stopped
by PID (SIGKILL if they do not exit in time), and what /proc says of them.

Readiness is an event, not a sleep: a thread drains the child's output (so the pipe never
fills) and wakes the waiter on every line, until the marker line has come often enough, the
child has exited (its pipe closed), or the bounded wait is over.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import IO, Self

from tests.integration.harness.waiting import READY_TIMEOUT_S


class OutputWatcher:
    """Keeps every line a pipe brings and counts those holding ``marker``."""

    def __init__(self, pipe: IO[bytes], marker: bytes) -> None:
        self.lines: list[bytes] = []
        self._marker = marker
        self._seen = 0
        self._closed = False
        self._changed = threading.Condition()
        threading.Thread(target=self._run, args=(pipe,), daemon=True).start()

    def _run(self, pipe: IO[bytes]) -> None:
        for line in iter(pipe.readline, b""):
            with self._changed:
                self.lines.append(line)
                self._seen += self._marker in line
                self._changed.notify_all()
        pipe.close()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def wait_until(self, check: Callable[[], bool], timeout_s: float) -> bool:
        """Wait (bounded) until ``check`` holds, asked again on every line; its last answer."""
        with self._changed:
            return self._changed.wait_for(check, timeout_s)

    def wait(self, count: int, timeout_s: float) -> bool:
        """Wait (bounded) until ``count`` marker lines came or the pipe closed; True for the first."""
        self.wait_until(lambda: self._seen >= count or self._closed, timeout_s)
        return self._seen >= count

    def wait_closed(self, timeout_s: float) -> bool:
        """Wait (bounded) until the pipe closed (every line it brought is here)."""
        return self.wait_until(lambda: self._closed, timeout_s)

    def text(self) -> str:
        return b"".join(self.lines).decode("utf-8", "replace")


class Stoppable:
    """Something a test starts and must stop whatever happens: ``cleanup``, also on leaving a
    ``with`` block."""

    def cleanup(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


class Process(Stoppable):
    """A child process with a temporary directory of its own, stopped by PID."""

    name = "process"
    marker = b""  # the line it prints when it is ready

    def __init__(self, prefix: str) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = tempfile.mkdtemp(prefix=f"resproxy-test-{prefix}-")
        self._watch: OutputWatcher | None = None

    def _spawn(self, args: Sequence[str], cwd: str | None = None, stderr_only: bool = False) -> None:
        """Start ``args``, watching stdout and stderr (or stderr alone) for ``marker``."""
        out = subprocess.DEVNULL if stderr_only else subprocess.PIPE
        err = subprocess.PIPE if stderr_only else subprocess.STDOUT
        self.proc = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=err)
        pipe = self.proc.stderr if stderr_only else self.proc.stdout
        assert pipe is not None
        self._watch = OutputWatcher(pipe, self.marker)

    def _wait_ready(self, what: str, count: int = 1) -> None:
        """Bounded wait for ``count`` marker lines; stopped (its directory removed), and its
        output shown, if they do not come."""
        assert self._watch is not None
        if not self._watch.wait(count, READY_TIMEOUT_S):
            self.cleanup()
            raise RuntimeError(f"{what} not ready:\n{self.log()}")

    def log(self) -> str:
        """All it has printed so far."""
        return self._watch.text() if self._watch else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        """Stop by PID (SIGKILL if it does not exit in time); returns the exit code. What it
        printed is all in ``log`` afterwards."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it stopped
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout_s)
        if self._watch is not None:  # its last lines read: ``log`` is whole after a stop
            self._watch.wait_closed(timeout_s)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL by PID and reap."""
        if self.proc is not None and self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def proc_status(pid: int, field: str) -> int:
    """A ``kB`` line of /proc/PID/status (VmRSS, VmHWM, VmSize...), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM (the peak resident size) to the current resident size."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
