"""The fleet worker's event loop (simulator/fleet/loophealth.py FleetLoop): cancelled timers leave
the heap at their deadline instead of in one O(n) rebuild, a stall for every cabinet of the
worker; everything else is the stdlib loop's."""
import asyncio

from simulator.fleet.loophealth import FleetLoop


def _heap_after_cancelling(loop_factory):
    """20,000 live timers 60 s ahead, one in 2 s, and 30,000 more due in 3 s, cancelled (what
    PUBACKs do to the publish timeouts): the heap's size one turn later, and after the cancelled
    ones' deadline; plus what fired. (The one in 2 s was in 0.5 s: a suite run on a loaded
    machine took longer than that to make the timers, and it fired in the first turn.)"""
    fired = []

    async def main():
        loop = asyncio.get_running_loop()
        live = [loop.call_later(60, fired.append, "live") for _ in range(20000)]
        loop.call_later(2.0, fired.append, "early")  # the heap's top is live until then
        doomed = [loop.call_later(3.0, fired.append, "cancelled") for _ in range(30000)]
        for h in doomed:
            h.cancel()
        await asyncio.sleep(0)
        one_turn = len(loop._scheduled)
        await asyncio.sleep(3.1)
        later = len(loop._scheduled)
        loop.call_later(0.01, fired.append, "due")
        await asyncio.sleep(0.05)
        for h in live:
            h.cancel()
        return one_turn, later

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main()) + (fired,)


def test_the_stdlib_loop_rebuilds_its_heap_in_one_turn():
    # what FleetLoop exists for: the 30,000 cancelled timers are gone in the very next turn
    one_turn, later, fired = _heap_after_cancelling(asyncio.SelectorEventLoop)
    assert one_turn == 20001, one_turn


def test_fleet_loop_lets_cancelled_timers_leave_at_their_deadline():
    one_turn, later, fired = _heap_after_cancelling(FleetLoop)
    assert one_turn == 50001, one_turn        # no rebuild
    assert later == 20000, later               # popped from the top once due: bounded
    assert fired == ["early", "due"]           # cancelled ones never ran; live ones wait


def test_the_fleet_workers_run_on_the_fleet_loop():
    import inspect
    from simulator.fleet import workers
    assert "loop_factory=FleetLoop" in inspect.getsource(workers._worker_main)


def test_net_stats_count_sockets_open_for_the_worker_report():
    # the worker reports open files as its start-up count plus opened - closed (listing
    # /proc/self/fd with 15,000 sockets stalled the loop 40 ms)
    import socket
    from simulator.world.net import NetStats, SimNet

    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        stats = NetStats()
        net = SimNet(None, stats, "cab-0001")
        links = [(await net.connect((socket.AF_INET, ("127.0.0.1", port))))[0] for _ in range(3)]
        during = stats.opened - stats.closed
        links[0].transport.close()
        links[1].transport.abort()
        await asyncio.sleep(0.05)
        after = stats.opened - stats.closed
        links[2].transport.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        return during, after, stats.opened - stats.closed

    assert asyncio.run(main()) == (3, 1, 0)


def test_fleet_census_counts_like_one_pass_but_lets_the_loop_run_between_chunks():
    from types import SimpleNamespace as NS
    from simulator.fleet import runner

    fleet = runner.Fleet.__new__(runner.Fleet)
    fleet.cabinets = {}
    for i in range(3 * runner.CENSUS_CHUNK + 7):
        app = None if i % 7 == 0 else NS(online=i % 3 != 0, outbox=[0] * (i % 11))
        fleet.cabinets["cab-%d" % i] = NS(app=app)
    ticks = []

    async def main():
        async def ticker():
            while True:
                ticks.append(1)
                await asyncio.sleep(0)
        t = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        n0 = len(ticks)
        got = await fleet.census()
        t.cancel()
        return got, len(ticks) - n0

    (online, total, top), turns = asyncio.run(main())
    assert (online, (total, top)) == (fleet.online(), fleet.outbox_depths())
    assert online > 0 and total > 0 and top == 10
    assert turns >= 3  # the ticker ran between the chunks


def test_a_reset_apps_parts_are_dropped_once_its_task_has_ended(monkeypatch):
    # simulator/fleet/runner.py: a reset app's cycles (its parts hold its bound methods) are
    # broken at once instead of waiting for a full collection, which never comes for an app
    # from before the worker froze its heap
    from simulator.fleet import runner
    monkeypatch.setattr(runner, "DISPOSE_S", 0.05)

    class App:
        pass

    async def main():
        app = App()
        app.cabinet = {"on_change": app}  # a part that refers back to the app
        cleaned = []

        async def run():
            try:
                await asyncio.sleep(10)
            finally:
                await asyncio.sleep(0.02)       # its own cleanup still uses the app
                cleaned.append(app.cabinet["on_change"] is app)
        task = asyncio.create_task(run())
        await asyncio.sleep(0)
        task.cancel()
        runner._dispose_later(task, app)
        await asyncio.sleep(0.04)               # task ended at ~0.02 s: parts still there
        during = sorted(vars(app))
        await asyncio.sleep(0.08)
        return cleaned, during, sorted(vars(app))

    assert asyncio.run(main()) == ([True], ["cabinet"], [])


def test_turn_trace_names_the_work_of_a_long_turn(tmp_path):
    # simulator/fleet/turntrace.py, what AEDSIM_TURN_TRACE turns on in fleet workers (it patches
    # asyncio process-wide, so it runs in a child process here)
    import json
    import subprocess
    import sys
    script = """
import asyncio, time
from simulator.fleet import turntrace
turntrace.install_from_env()

async def busy_cabinet():
    await asyncio.sleep(0.01)
    end = time.perf_counter() + 0.08
    while time.perf_counter() < end:
        pass

async def main():
    for _ in range(20):
        await asyncio.sleep(0.001)   # short turns: not written
    await asyncio.gather(busy_cabinet(), asyncio.sleep(0.05))

asyncio.run(main())
"""
    env = dict(__import__("os").environ, AEDSIM_TURN_TRACE=str(tmp_path))
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    files = list(tmp_path.glob("turns-*.jsonl"))
    assert len(files) == 1
    rows = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert len(rows) == 1, rows
    turn = rows[0]
    assert turn["ms"] >= 75 and 0 < turn["cpu_ms"] <= turn["ms"] + 5, turn  # (a shared core)
    name, ms, n = turn["top"][0]
    assert name == "test_turn_trace_names_the_work_of_a_long_turn.<locals>.busy_cabinet" or \
        name.endswith("busy_cabinet"), turn
    assert ms >= 75 and n == 1
