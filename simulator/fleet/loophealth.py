"""Keeping a big-fleet worker's event loop responsive, and showing how responsive it was: the
garbage collector's schedule (`FleetCollector`) and a loop-lag probe (`LagProbe`). One loop
carries thousands of cabinets, so a pause here is a pause for all of them, an unlock too."""
from __future__ import annotations

import asyncio
import gc
import time
from typing import Callable


class FleetLoop(asyncio.SelectorEventLoop):
    """The worker's event loop: the stdlib's, except for what it does with cancelled timers.

    Every QoS 1 publish arms a timeout that its PUBACK cancels, about two a minute per cabinet.
    The stdlib loop counts cancelled timers still in its heap and, once they are half of it,
    rebuilds the whole heap in one turn (CPython 3.11-3.13 `BaseEventLoop._run_once`): with
    15,000 cabinets that is ~160,000 timers compared in Python, measured 87 ms (no callback,
    no collection in that turn) every two minutes, a stall for every cabinet of the worker.
    Here nothing is counted, so no rebuild happens: a cancelled timer leaves the heap when it
    reaches the top (as the stdlib also does), at its deadline. The firmware's timeouts are
    seconds long, so the heap holds at most a few thousand extra entries (`Handle.cancel`
    has already dropped their callbacks); `tests/host/test_fleet_loop.py` checks both."""

    def _timer_handle_cancelled(self, handle) -> None:
        pass


class FleetCollector:
    """The garbage collector's part in a big fleet (one per worker).

    Tens of thousands of long-lived cabinets are millions of tracked objects (≈ 200 each), and
    what a cabinet waits on (timers, futures, coroutines) is renewed every heartbeat. CPython's
    own schedule does badly with that:
    - full collections walk everything: measured at 15,000 cabinets, 22 of them during the boot
      found nothing and took 10.6 s (two thirds of the boot CPU), and in the steady state each
      stalls the loop 0.2–0.7 s (every cabinet of the worker waits, an unlock too);
    - young collections are triggered by allocations minus deallocations, and a heartbeat frees
      about as much as it allocates, so during a heartbeat wave the young generation grows to
      300,000 objects before anyone looks: 90–180 ms pauses.
    So: no collections while booting (a normal boot makes no cyclic garbage: measured); then
    freeze what exists (O(1): collections skip frozen objects), run no automatic full
    collection, and collect the young generations every YOUNG_S (`run()`), so each collection
    walks only that long's survivors (~25,000 objects at the peak of a heartbeat wave of 15,000
    cabinets: ~10 ms). Cycles that die young (exceptions, tracebacks) are found within moments;
    a cycle that dies old (a session or an app after a reset: ~10 objects per outage measured)
    waits for a full collection, which walks what is not frozen (~0.5 s at 15,000 cabinets) and
    so runs only once CHURN new sessions have started since the last one, at most every FULL_S
    (`pauses["full"]`): a steady fleet never pays for it, a churning one leaks at most ~20 MB
    between two. At the end `close()` counts what is left (`report()["old_garbage"]`, objects),
    so a leak would show.

    Every collection is timed (`pauses`: phase -> count, total and longest in ms), since a pause
    is a pause for every cabinet of the worker."""

    YOUNG_S = 0.2
    FULL_S = 600.0
    CHURN = 20000
    GIVE_UP_S = 30.0   # after the last boot, stop waiting for stragglers
    NEVER = 1 << 30    # gen-2 threshold that is never reached

    def __init__(self, sessions: Callable[[], int] = lambda: 0) -> None:
        self.sessions = sessions  # how many MQTT sessions the fleet has started so far
        self.booting = True
        self._booted_at: float | None = None
        self._t = 0.0
        self.old_garbage: int | None = None
        self.pauses = {"boot": [0, 0.0, 0.0], "steady": [0, 0.0, 0.0], "full": [0, 0.0, 0.0]}
        self._threshold = gc.get_threshold()
        gc.callbacks.append(self._timed)
        gc.collect()
        gc.freeze()
        gc.disable()

    def _timed(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
            return
        ms = (time.perf_counter() - self._t) * 1000
        p = self.pauses["boot" if self.booting else
                        "full" if info["generation"] == 2 else "steady"]
        p[0] += 1
        p[1] += ms
        p[2] = max(p[2], ms)

    def report(self) -> dict:
        out: dict = {k: {"count": c, "total_ms": round(t, 1), "max_ms": round(m, 1)}
                     for k, (c, t, m) in self.pauses.items()}
        out["old_garbage"] = self.old_garbage
        return out

    async def run(self) -> None:
        last_full, churn0 = time.monotonic(), self.sessions()
        while True:
            await asyncio.sleep(self.YOUNG_S)
            if self.booting:
                last_full, churn0 = time.monotonic(), self.sessions()
            elif self.sessions() - churn0 >= self.CHURN and \
                    time.monotonic() - last_full >= self.FULL_S:
                gc.collect()
                last_full, churn0 = time.monotonic(), self.sessions()
            else:
                gc.collect(1)

    def tick(self, all_started: bool, all_online: bool) -> None:
        """Once a second: ends the boot phase once all are online (or given up on)."""
        if not self.booting:
            return
        now = time.monotonic()
        if all_started and self._booted_at is None:
            self._booted_at = now
        if all_online or (self._booted_at is not None and now - self._booted_at > self.GIVE_UP_S):
            gc.freeze()
            gc.set_threshold(self._threshold[0], self._threshold[1], self.NEVER)
            self.booting = False
            gc.enable()

    def close(self) -> None:
        """At the end of the run: how much cyclic garbage died old (objects)."""
        gc.callbacks.remove(self._timed)
        gc.unfreeze()
        self.old_garbage = gc.collect()
        gc.set_threshold(*self._threshold)
        gc.enable()


class LagProbe:
    """How late the worker's loop runs: a timer every 10 ms, and how far past due it fires.
    Every cabinet of the worker (an unlock too) waits at least that long when the loop is busy.
    With the worst lag of each phase goes the CPU the worker's thread used meanwhile
    (`<phase>_cpu_ms`): close to the lag, the loop was busy with its own work; far below it, the
    process waited for a core (a shared machine) or was blocked."""

    PERIOD_S = 0.01

    def __init__(self) -> None:
        self.worst = {"boot": 0.0, "steady": 0.0}
        self.cpu = {"boot": 0.0, "steady": 0.0}

    async def run(self, phase) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.PERIOD_S
            cpu0 = time.thread_time()
            await asyncio.sleep(self.PERIOD_S)
            late = (loop.time() - due) * 1000
            p = phase()
            if late > self.worst[p]:
                self.worst[p] = late
                self.cpu[p] = (time.thread_time() - cpu0) * 1000

    def report(self) -> dict:
        out = {k: round(v, 1) for k, v in self.worst.items()}
        for k, v in self.cpu.items():
            out[k + "_cpu_ms"] = round(v, 1)
        return out
