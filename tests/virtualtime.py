"""Virtual time for simulator tests of physics over minutes (coil heat, windows, cool-downs).

While every task sleeps the clock jumps to the next timer instead of waiting. time.monotonic,
which asyncio's loop, aedgate.compat's ticks on CPython and the simulator's physics all read,
returns the virtual clock. Sockets still work (ready ones are served first, time does not jump
while anything is ready), but nothing here waits for a peer: use it for cabinets without a broker.
"""
import asyncio
import selectors
import time


class VirtualClock:
    def __init__(self, start: float = 1000.0):
        self.t = start

    def monotonic(self) -> float:
        return self.t


class _JumpSelector(selectors.SelectSelector):
    def __init__(self, clock: VirtualClock, grace: float = 0.0):
        super().__init__()
        self._clock = clock
        self._grace = grace

    def select(self, timeout=None):
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if self._grace:
            # A peer on loopback (a real Mosquitto) answers within this much real time; only
            # when nothing came does the clock jump. The real wait is not added to the clock.
            ready = super().select(self._grace if timeout is None else min(timeout, self._grace))
            if ready:
                return ready
        if timeout is None:
            raise RuntimeError("virtual time: nothing scheduled, the program would wait forever")
        self._clock.t += timeout
        return []


async def _drain(tasks):
    await asyncio.gather(*tasks, return_exceptions=True)


def run(coro_fn, monkeypatch, start: float = 1000.0, grace: float = 0.0):
    """Run `coro_fn()` on a loop in virtual time; returns its result. `grace` (seconds of real
    time): before each jump, wait that long for a socket to become ready, so a cabinet can talk
    to a real broker on loopback while its long timers (trial, backoff) pass virtually."""
    clock = VirtualClock(start)
    real = time.monotonic
    monkeypatch.setattr(time, "monotonic", clock.monotonic)
    loop = asyncio.SelectorEventLoop(_JumpSelector(clock, grace))
    try:
        return loop.run_until_complete(coro_fn())
    finally:
        rest = asyncio.all_tasks(loop)
        for t in rest:
            t.cancel()
        if rest:
            loop.run_until_complete(_drain(rest))
        loop.close()
        # Real time again for the rest of the test: its waits on real peers (a paho backend's
        # wait_for) would never reach a deadline on a clock that no longer moves.
        monkeypatch.setattr(time, "monotonic", real)
