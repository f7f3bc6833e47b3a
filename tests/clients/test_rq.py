"""RQ (a job queue from PyPI) through resproxy.

RQ's transactions span its own ``rq:`` keys (the job's hash, the queue's list...), so they must
live on one server: through a listener whose ``rq:`` route goes to a one-server pool a worker
*process* runs 200 jobs and every result is stored; on a plain 3-server ring or a cluster pool
the enqueue is refused whole (CROSSSLOT), leaving no half-written job on any server.

The worker also SUBSCRIBEs to ``rq:pubsub:<worker>`` (for shutdown/kill commands) from a thread;
pub/sub is not served by the proxy yet (issue 12). Refused with an error reply, that thread logs
the ResponseError and ends, and the worker goes on running jobs and exits 0 (seen with a
redis-server whose SUBSCRIBE is renamed away); only its remote commands are lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from tests.clients.conftest import Target, sync_client
from tests.clients.rq_jobs import double
from tests.integration.harness import ROOT

JOBS = 200
WORKER_TIMEOUT_S = 60.0


def run_worker(target: Target, timeout_s: float = WORKER_TIMEOUT_S) -> tuple[int, str]:
    """``rq worker --burst`` as its own process (and session) through the proxy; killed by its
    process group id (its work horses with it) if it outlives ``timeout_s``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rq.cli", "worker", "--burst", "--url", target.url, "default"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=10)
        raise AssertionError(f"rq worker still running after {timeout_s} s:\n{out[-4000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
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
