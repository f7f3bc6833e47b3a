"""follow.Refresher: the one-at-a-time background look-up of cluster and sentinel pools."""

from __future__ import annotations

import asyncio

from proxy.follow import Refresher


def test_requests_during_a_run_queue_one_more_and_the_next_run_is_scheduled() -> None:
    async def scenario() -> list[str]:
        log: list[str] = []
        gate = asyncio.Event()
        ran = asyncio.Queue[int]()
        runs = 0

        async def run() -> None:
            nonlocal runs
            runs += 1
            log.append(f"run {runs}")
            if runs == 1:
                await gate.wait()  # the first run blocks until the requests below are in
            ran.put_nowait(runs)

        periodic_s = [3600.0]
        refresher = Refresher(asyncio.get_running_loop(), run, lambda: periodic_s[0])
        refresher.request()
        await asyncio.sleep(0)  # the task starts and blocks on the gate
        refresher.request(again=False)  # answered by the running one
        refresher.request()
        refresher.request()  # still only one more
        gate.set()
        assert await asyncio.wait_for(ran.get(), 5) == 1
        assert await asyncio.wait_for(ran.get(), 5) == 2
        periodic_s[0] = 0.0  # the series after this one schedules the next run at once
        refresher.request()
        assert await asyncio.wait_for(ran.get(), 5) == 3
        periodic_s[0] = 3600.0  # (read when run 4's series ends)
        assert await asyncio.wait_for(ran.get(), 5) == 4  # the periodic one
        refresher.close()
        refresher.request()
        await asyncio.sleep(0)
        assert ran.empty()
        return log

    assert asyncio.run(scenario()) == ["run 1", "run 2", "run 3", "run 4"]
