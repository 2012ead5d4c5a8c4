"""Which work makes a fleet worker's loop turns long: a diagnostic, off unless asked for.

With `AEDSIM_TURN_TRACE=<folder>` in its environment each fleet worker (workers._worker_main)
times every loop turn (from the selector's return to its next call) and every callback in it;
a turn longer than LONG_MS is written as one JSON line to `<folder>/turns-<pid>.jsonl`: when,
how long, the worker's CPU in it, how many callbacks ran, the collector's pauses in it, and the
callbacks that took the time, grouped by name (a task's coroutine, or the function). A turn is
a stall for every cabinet of the worker, an unlock too (docs/scale.md). Costs ~0.3 µs a
callback; names are looked up only for long turns.

    AEDSIM_TURN_TRACE=/tmp/turns aedsim rollout --cabinets 30000 --shards 2 --rate 1500
    python -m simulator.fleet.turntrace /tmp/turns
"""
from __future__ import annotations

import collections
import gc
import json
import os
import selectors
import sys
import time
from asyncio import events
from pathlib import Path

LONG_MS = 40.0
ENV = "AEDSIM_TURN_TRACE"


def _name(handle) -> str:
    cb = handle._callback
    owner = getattr(cb, "__self__", None)
    if owner is not None and hasattr(owner, "get_coro"):  # a task's step: name its coroutine
        coro = owner.get_coro()
        return getattr(coro, "__qualname__", repr(coro))
    return getattr(cb, "__qualname__", repr(cb))


def install(folder: str) -> None:
    """Patch this process's asyncio (Handle._run) and epoll selector to trace long turns."""
    ran: list = []        # (handle, seconds) of the turn under way
    pauses: list = []     # collector pauses in it, seconds
    st = {"t": None, "cpu": 0.0, "gc": 0.0, "out": None}
    run = events.Handle._run
    select = selectors.EpollSelector.select

    def timed_run(self):
        t = time.perf_counter()
        run(self)
        ran.append((self, time.perf_counter() - t))

    def collector(phase, info):
        if phase == "start":
            st["gc"] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - st["gc"])

    def timed_select(self, timeout=None):
        if st["t"] is not None:
            ms = (time.perf_counter() - st["t"]) * 1000
            if ms > LONG_MS:
                took, count = collections.Counter(), collections.Counter()
                for h, s in ran:
                    n = _name(h)
                    took[n] += s * 1000
                    count[n] += 1
                if st["out"] is None:
                    st["out"] = open(Path(folder) / ("turns-%d.jsonl" % os.getpid()), "a")
                st["out"].write(json.dumps({
                    "wall": round(time.time(), 2), "ms": round(ms, 1),
                    "cpu_ms": round((time.thread_time() - st["cpu"]) * 1000, 1),
                    "callbacks": len(ran), "gc_ms": round(sum(pauses) * 1000, 1),
                    "top": [(n, round(v, 1), count[n]) for n, v in took.most_common(8)]}) + "\n")
                st["out"].flush()
        ran.clear()
        pauses.clear()
        ready = select(self, timeout)
        st["t"], st["cpu"] = time.perf_counter(), time.thread_time()
        return ready

    Path(folder).mkdir(parents=True, exist_ok=True)
    events.Handle._run = timed_run
    selectors.EpollSelector.select = timed_select
    gc.callbacks.append(collector)


def install_from_env() -> None:
    folder = os.environ.get(ENV)
    if folder:
        install(folder)


def summary(folder: str, top: int = 10) -> dict:
    """Per traced process: long turns counted (> LONG_MS, > 100 ms) and the longest ones."""
    out = {}
    for f in sorted(Path(folder).glob("turns-*.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out[f.stem] = {"long": len(rows), "over_100ms": sum(r["ms"] > 100 for r in rows),
                       "longest": sorted(rows, key=lambda r: -r["ms"])[:top]}
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 2 if len(argv) != 1 else 0
    if not Path(argv[0]).is_dir():
        print("turntrace: no such folder: %s" % argv[0], file=sys.stderr)
        return 1
    for proc, s in summary(argv[0]).items():
        print("%s: %d turns over %.0f ms, %d over 100 ms" % (proc, s["long"], LONG_MS, s["over_100ms"]))
        for r in s["longest"]:
            print("  %s  %7.1f ms (cpu %6.1f, gc %5.1f, %d callbacks)  %s" % (
                time.strftime("%H:%M:%S", time.gmtime(r["wall"])), r["ms"], r["cpu_ms"], r["gc_ms"],
                r["callbacks"], ", ".join("%s %.1f ms ×%d" % tuple(x) for x in r["top"][:4])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
