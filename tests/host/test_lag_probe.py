"""The fleet worker's loop-lag probe (simulator/fleet/loophealth.py LagProbe) tells a loop busy
with its own work (CPU during the late tick close to the lag) from a process that was not
running (blocked, or waiting for a core: CPU far below the lag)."""
import asyncio
import time

from simulator.fleet.loophealth import LagProbe


def _worst(stall):
    async def main():
        probe = LagProbe()
        task = asyncio.create_task(probe.run(lambda: "steady"))
        await asyncio.sleep(0.05)
        stall()
        await asyncio.sleep(0.05)
        task.cancel()
        return probe.report()
    return asyncio.run(main())


def test_own_work_and_time_without_running_are_told_apart():
    def spin():
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass
    busy = _worst(spin)
    blocked = _worst(lambda: time.sleep(0.2))
    assert busy["steady"] >= 150 and busy["steady_cpu_ms"] >= 0.3 * busy["steady"], busy
    assert blocked["steady"] >= 150 and blocked["steady_cpu_ms"] < 50, blocked
