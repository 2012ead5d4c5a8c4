"""One fleet worker's share, in this process, measured from inside: CPU per cabinet boot, then
the steady phase's late loop ticks, each with the CPU the loop used meanwhile (its own work) —
and the garbage collector's pauses, wall and CPU. docs/benchmarks.md ("Connect ramp: fewer round
trips per boot", "Steady stalls") quotes it.

    python -m simulator.bench.loop_stalls --cabinets 3000 --ramp 6000 --steady 75 --json out.json

A ramp faster than the process can boot (here ~1,100/s) saturates the loop, as the 30,000-cabinet
bench's ramp does: that is when cabinets leave the boot in step. Starts its own Mosquitto.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import tempfile
import time
from pathlib import Path

from simulator.bench.fleet_bench import Shard
from simulator.fleet.loophealth import FleetCollector, FleetLoop
from simulator.fleet.runner import Fleet
from simulator.fleet.workers import raise_nofile

LATE_MS = 30.0   # a tick later than this is reported
TICK_S = 0.01


async def measure(args, url: str) -> dict:
    fleet = Fleet(args.cabinets, url, flash="memory", heartbeat_s=args.heartbeat,
                  source_ips=["127.0.0.2", "127.0.0.3"], seed=1)
    collector = FleetCollector(lambda: fleet.counters.online)
    gc_task = asyncio.create_task(collector.run())
    cpu0, t0 = time.process_time(), time.monotonic()
    starter = asyncio.create_task(fleet.start(args.ramp))
    while fleet.online() < args.cabinets and time.monotonic() - t0 < args.boot_timeout:
        await asyncio.sleep(0.2)
        collector.tick(starter.done(), fleet.online() == args.cabinets)
    boot_s, boot_cpu = time.monotonic() - t0, time.process_time() - cpu0
    online = fleet.online()
    collector.tick(True, True)

    pauses: list[tuple[float, float]] = []
    mark = [0.0, 0.0]

    def timed(phase, info):
        if phase == "start":
            mark[0], mark[1] = time.perf_counter(), time.thread_time()
        else:
            pauses.append(((time.perf_counter() - mark[0]) * 1000, (time.thread_time() - mark[1]) * 1000))
    gc.callbacks.append(timed)
    loop = asyncio.get_running_loop()
    late: list[dict] = []
    t_steady = time.monotonic()
    cpu_s0 = time.process_time()
    while time.monotonic() - t_steady < args.steady:
        due, c0 = loop.time() + TICK_S, time.thread_time()
        await asyncio.sleep(TICK_S)
        lag = (loop.time() - due) * 1000
        if lag > LATE_MS:
            late.append({"t_s": round(time.monotonic() - t_steady, 2), "lag_ms": round(lag, 1),
                         "cpu_ms": round((time.thread_time() - c0) * 1000, 1)})
    gc.callbacks.remove(timed)
    steady_cpu = time.process_time() - cpu_s0
    gc_task.cancel()
    await fleet.stop()
    worst = max(late, key=lambda x: x["lag_ms"]) if late else None
    busiest = max(late, key=lambda x: x["cpu_ms"]) if late else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg(),
        "args": vars(args),
        "boot": {"online": online, "seconds": round(boot_s, 2), "per_s": round(online / boot_s, 1),
                 "cpu_ms_per_cabinet": round(boot_cpu / max(online, 1) * 1000, 3)},
        "steady": {"seconds": args.steady, "cpu_pct": round(100 * steady_cpu / args.steady, 1),
                   "late_ticks": len(late), "worst": worst, "busiest": busiest,
                   "late": sorted(late, key=lambda x: -x["lag_ms"])[:20],
                   "gc_pauses": len(pauses),
                   "gc_max_ms": round(max((p[0] for p in pauses), default=0.0), 1),
                   "gc_max_cpu_ms": round(max((p[1] for p in pauses), default=0.0), 1)},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulator.bench.loop_stalls", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cabinets", type=int, default=3000)
    ap.add_argument("--ramp", type=float, default=6000.0, help="cabinets booted per second")
    ap.add_argument("--heartbeat", type=int, default=60)
    ap.add_argument("--steady", type=float, default=75.0, help="seconds probed after all are online")
    ap.add_argument("--boot-timeout", type=float, default=120.0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="aedsim-stalls-") as work:
        shard = Shard(Path(work)).start()
        try:
            with asyncio.Runner(loop_factory=FleetLoop) as runner:
                r = runner.run(measure(args, shard.url))
        finally:
            shard.stop()
    b, s = r["boot"], r["steady"]
    print("boot: %d online in %.2f s (%.0f/s), %.3f ms CPU per cabinet" % (
        b["online"], b["seconds"], b["per_s"], b["cpu_ms_per_cabinet"]))
    print("steady %.0f s: CPU %.1f %%, %d ticks late > %.0f ms; worst %s; busiest %s; GC %d pauses, "
          "longest %.1f ms (%.1f ms CPU)" % (s["seconds"], s["cpu_pct"], s["late_ticks"], LATE_MS,
                                             s["worst"], s["busiest"], s["gc_pauses"], s["gc_max_ms"],
                                             s["gc_max_cpu_ms"]))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
