"""RQ (a job queue from PyPI) through resproxy.

RQ's transactions span its own ``rq:`` keys (the job's hash, the queue's list...), so they must
live on one server: through a listener whose ``rq:`` route goes to a one-server pool a worker
*process* runs 200 jobs and every result is stored; on a plain 3-server ring or a cluster pool
the enqueue is refused whole (CROSSSLOT), leaving no half-written job on any server.

A worker run without ``--burst`` waits for jobs with blocking pops (BLMOVE) on the proxy's
dedicated connections and SUBSCRIBEs to ``rq:pubsub:<worker>`` (its remote commands) from a
thread: the channel meets the ``rq:`` pool, and RQ's own ``send_shutdown_command`` (a PUBLISH)
reaches it, so the worker stops by itself with code 0. A worker SIGKILLed mid-job leaves the job
as RQ expects: STARTED in the StartedJobRegistry, moved to the FailedJobRegistry by its cleanup,
requeued, and finished by the next worker.

RQ's work horse (the forked process running a job) calls ``os.setpgrp()``: killing the worker's
process group leaves it running, so workers are stopped by their whole session (every process
whose session id is the worker's PID, ``start_new_session``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, Worker
from rq.command import PUBSUB_CHANNEL_TEMPLATE, send_shutdown_command
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from tests.clients.conftest import Target, sync_client
from tests.clients.rq_jobs import double, started_marker, wait_for_file
from tests.integration.harness.proxyproc import ROOT
from tests.integration.harness.waiting import poll_until

JOBS = 200
WORKER_TIMEOUT_S = 60.0
SHUTDOWN_TIMEOUT_S = 30.0


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state, ppid, pgrp, session...)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a worker started with ``start_new_session``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and fields[0] not in ("Z", "X") and int(fields[3]) == sid:
                pids.append(int(entry))
    return pids


def kill_session(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the worker's process group, then whatever is left of its session (its work
    horses, each in a process group of its own), and reap the worker."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in session_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def worker_name() -> str:
    return f"resproxy-{uuid.uuid4().hex[:12]}"


def start_worker(target: Target, name: str, log_path: Path) -> subprocess.Popen[bytes]:
    """``rq worker`` *without* ``--burst`` (it waits for jobs, BLMOVE) as its own process and
    session through the proxy, its output in ``log_path`` (a pipe nobody reads would fill)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "rq.cli", "worker", "--url", target.url, "--name", name, "default"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": ROOT},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def log_tail(log_path: Path, chars: int = 4000) -> str:
    return log_path.read_text(errors="replace")[-chars:]


def check_running(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    if proc.poll() is not None:
        raise AssertionError(f"rq worker exited ({proc.returncode}):\n{log_tail(log_path)}")


def run_worker(target: Target, timeout_s: float = WORKER_TIMEOUT_S) -> tuple[int, str]:
    """``rq worker --burst`` as its own process (and session) through the proxy; killed with its
    session (its work horses with it) if it outlives ``timeout_s``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", target.url, "default"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        out, _ = proc.communicate(timeout=10)
        raise AssertionError(f"rq worker still running after {timeout_s} s:\n{out[-4000:]}") from None
    finally:
        if proc.poll() is None or session_pids(proc.pid):
            kill_session(proc)
    return proc.returncode, out


@pytest.mark.parametrize("target", ["listener"], indirect=True)
def test_worker_process_runs_200_jobs_through_the_rq_route(clean: Target) -> None:
    assert clean.rq_server is not None
    r = sync_client(clean)
    try:
        queue = Queue("default", connection=r)
        jobs = [queue.enqueue(double, i) for i in range(JOBS)]
        assert queue.count == JOBS
        # every rq: key is on the route's one server, none on the default pool's ring
        assert clean.rq_server.call("LLEN", "rq:queue:default") == JOBS
        assert all(s.call("KEYS", "rq:*") == [] for s in clean.ring)

        code, out = run_worker(clean)
        assert code == 0, out[-4000:]

        fetched = Job.fetch_many([j.id for j in jobs], connection=r)
        for i, job in enumerate(fetched):
            assert job is not None, jobs[i].id
            assert job.get_status() == JobStatus.FINISHED, (i, job.get_status(), out[-2000:])
            assert job.return_value() == 2 * i
        assert queue.count == 0
        assert all(s.call("KEYS", "rq:*") == [] for s in clean.ring)
    finally:
        r.close()


def _job_id_apart_from_queue(target: Target) -> str:
    """A job id whose hash ``rq:job:ID`` the proxy places away from ``rq:queue:default``."""
    queue_home = target.locate("rq:queue:default").port
    for i in range(1000):  # bounded
        job_id = f"refused-{i}"
        if target.locate(f"rq:job:{job_id}").port != queue_home:
            return job_id
    raise AssertionError("every job id lands with the queue")


@pytest.mark.parametrize("target", ["ring", "cluster"], indirect=True)
def test_enqueue_refused_whole_where_rq_keys_span_servers(clean: Target) -> None:
    job_id = _job_id_apart_from_queue(clean)
    r = sync_client(clean)
    try:
        queue = Queue("default", connection=r)
        with pytest.raises(redis.ResponseError) as err:
            queue.enqueue(double, 21, job_id=job_id)
        # never half a job: no job hash, no queue entry, on any server
        job_hashes = {n.port: n.call("KEYS", "rq:job:*") for n in clean.data_nodes}
        queue_homes = clean.holders("rq:queue:default")
        queued = [n.call("LRANGE", "rq:queue:default", 0, -1) for n in queue_homes]
        assert all(v == [] for v in job_hashes.values()), (job_hashes, str(err.value))
        assert all(v == [] for v in queued), (queued, str(err.value))
        # (redis-py maps the CROSSSLOT prefix to ClusterCrossSlotError and drops the word)
        assert isinstance(err.value, redis.exceptions.ClusterCrossSlotError), repr(err.value)
        assert "hash tag" in str(err.value) or "route" in str(err.value), str(err.value)
        assert r.ping() is True
    finally:
        r.close()


@pytest.mark.parametrize("target", ["listener"], indirect=True)
def test_waiting_worker_runs_200_jobs_then_obeys_shutdown_over_pubsub(clean: Target, tmp_path: Path) -> None:
    rq_server = clean.rq_server
    assert rq_server is not None
    name = worker_name()
    channel = PUBSUB_CHANNEL_TEMPLATE % name
    log_path = tmp_path / "worker.log"
    r = sync_client(clean)
    proc: subprocess.Popen[bytes] | None = None
    try:
        queue = Queue("default", connection=r)
        jobs = [queue.enqueue(double, i) for i in range(JOBS)]
        proc = start_worker(clean, name, log_path)
        worker = proc

        def finished(ids: list[str]) -> bool:
            check_running(worker, log_path)
            fetched = Job.fetch_many(ids, connection=r)
            return all(j is not None and j.get_status() == JobStatus.FINISHED for j in fetched)

        ids = [j.id for j in jobs]
        poll_until(lambda: finished(ids), f"{JOBS} jobs finished by the waiting worker", 25, 0.1)
        for i, job in enumerate(Job.fetch_many(ids, connection=r)):
            assert job is not None, ids[i]
            assert job.return_value() == 2 * i
        assert queue.count == 0

        # idle, it waits in a BLMOVE on the queue: a job enqueued now wakes it
        def idle() -> bool:
            check_running(worker, log_path)
            return bool(r.hget(f"rq:worker:{name}", "state") == b"idle")

        poll_until(idle, "worker idle", 10, 0.05)
        late = queue.enqueue(double, JOBS)
        poll_until(lambda: finished([late.id]), "late job finished by the blocked worker", 10)
        assert Job.fetch(late.id, connection=r).return_value() == 2 * JOBS

        # its command channel is subscribed on the rq: pool's server, through the proxy
        def subscribed() -> bool:
            check_running(worker, log_path)
            return bool(r.pubsub_numsub(channel) == [(channel.encode(), 1)])

        poll_until(subscribed, f"{channel} subscribed", 10, 0.05)
        assert rq_server.call("PUBSUB", "NUMSUB", channel) == [channel.encode(), 1]
        assert all(s.call("PUBSUB", "NUMSUB", channel)[1] == 0 for s in clean.ring)

        send_shutdown_command(r, name)
        try:
            code = proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker still running {SHUTDOWN_TIMEOUT_S} s after the shutdown command:\n"
                f"{log_tail(log_path)}"
            ) from None
        log = log_tail(log_path, 20000)
        assert code == 0, log
        assert "Received shutdown command" in log, log
        assert name not in [w.name for w in Worker.all(connection=r)]
        # the proxy let go of the subscription's server connection
        poll_until(
            lambda: rq_server.call("PUBSUB", "NUMSUB", channel) == [channel.encode(), 0],
            f"{channel} unsubscribed on the server",
            10,
            0.05,
        )
        assert all(s.call("KEYS", "rq:*") == [] for s in clean.ring)
    finally:
        r.close()
        if proc is not None and (proc.poll() is None or session_pids(proc.pid)):
            kill_session(proc)


@pytest.mark.parametrize("target", ["listener"], indirect=True)
def test_job_of_a_worker_killed_mid_job_is_recovered(clean: Target, tmp_path: Path) -> None:
    assert clean.rq_server is not None
    release = tmp_path / "release"
    marker = Path(started_marker(str(release)))
    log_path = tmp_path / "worker.log"
    r = sync_client(clean)
    proc: subprocess.Popen[bytes] | None = None
    try:
        queue = Queue("default", connection=r)
        job = queue.enqueue(wait_for_file, str(release), 60.0)
        started = StartedJobRegistry(queue=queue)
        failed = FailedJobRegistry(queue=queue)
        proc = start_worker(clean, worker_name(), log_path)
        worker = proc

        def running() -> bool:
            check_running(worker, log_path)
            return job.id in started.get_job_ids(cleanup=False) and marker.exists()

        poll_until(running, "job started by the worker's horse", 15, 0.05)
        horse = int(marker.read_text())
        assert horse != proc.pid and alive(horse)
        assert job.get_status() == JobStatus.STARTED

        # SIGKILL the worker's process group, then the horse's (its own: os.setpgrp)
        os.killpg(proc.pid, signal.SIGKILL)
        os.killpg(horse, signal.SIGKILL)
        proc.wait(timeout=10)
        poll_until(lambda: not alive(horse), f"horse {horse} dead", 10, 0.05)
        assert session_pids(proc.pid) == []

        # nothing finished it: still STARTED, still in the StartedJobRegistry, not queued
        assert job.get_status() == JobStatus.STARTED
        assert job.id in started.get_job_ids(cleanup=False)
        assert job.id not in failed
        assert queue.count == 0

        # RQ's cleanup, once the execution's heartbeat is past (here: an hour from now)
        started.cleanup(time.time() + 3600)
        assert job.id not in started.get_job_ids(cleanup=False)
        assert job.id in failed
        assert job.get_status() == JobStatus.FAILED

        failed.requeue(job.id)
        assert job.id not in failed
        assert job.get_status() == JobStatus.QUEUED
        assert queue.job_ids == [job.id]

        (tmp_path / "release.tmp").write_text("released")
        os.replace(tmp_path / "release.tmp", release)  # whole or absent for the job
        code, out = run_worker(clean)
        assert code == 0, out[-4000:]
        assert job.get_status() == JobStatus.FINISHED, out[-4000:]
        assert Job.fetch(job.id, connection=r).return_value() == "done:released"
        assert queue.count == 0
        assert all(s.call("KEYS", "rq:*") == [] for s in clean.ring)
    finally:
        r.close()
        if proc is not None and (proc.poll() is None or session_pids(proc.pid)):
            kill_session(proc)
