# The lock drivers on their own: caps, the hardware timer that ends an output when the asyncio
# loop stalls, the heat budget, fail-safe hold. Runs under CPython and the MicroPython unix port.
import time

from aedgate import lock as locks
from aedgate.compat import asyncio, sleep_ms, ticks_diff, ticks_ms
from fwtest import Pin, Timer


def _on_for(out, timer, stall_ms, pulse_ms=300):
    """Start a pulse, then stall the loop for stall_ms (Python work and short blocking calls, as
    an outbox scan or flash writes do). Returns ms from switch-on to switch-off seen during the
    stall, or None if the output stayed on throughout."""
    lock = locks.PulseLock(out, pulse_ms, 0, timer=timer)

    async def main():
        task = asyncio.create_task(lock.release(120000))
        while out.level == 0:
            await sleep_ms(5)
        on_at = ticks_ms()
        off_after = None
        while ticks_diff(ticks_ms(), on_at) < stall_ms:
            if out.level == 0 and off_after is None:
                off_after = ticks_diff(ticks_ms(), on_at)
            time.sleep(0.005)
        await task
        return off_after
    return asyncio.run(main())


def test_pulse_ends_within_its_cap_while_the_loop_stalls():
    out, timer = Pin(0), Timer()
    off_after = _on_for(out, timer, 3000)
    assert off_after is not None and off_after <= 300 + 100, off_after
    assert timer.fired == 1 and out.level == 0 and not timer.armed


def test_timer_is_disarmed_when_the_pulse_is_cut_short():
    out, timer = Pin(0), Timer()
    lock = locks.PulseLock(out, 150, 0, timer=timer)

    async def main():
        task = asyncio.create_task(lock.release(60000))
        while out.level == 0:
            await sleep_ms(5)
        task.cancel()  # a crash or power cut mid-pulse
        await sleep_ms(5)
        assert out.level == 0 and not timer.armed
        await sleep_ms(300)
    asyncio.run(main())
    assert timer.fired == 0 and out.history.count(1) == 1


def test_heat_budget_spaces_pulses_however_often_asked():
    # A 200 ms pulse asked for 40 times in a row: the budget (the 10 s cap of on-time, cooling at
    # a third of the time off) lets a pulse start only when its whole length fits.
    out = Pin(0)
    lock = locks.PulseLock(out, 200, 0)
    assert lock.cooldown_ms == locks.MIN_COOLDOWN_MS  # a 0 ms cool-down is not honoured

    async def main():
        t0 = ticks_ms()
        await lock.release(60000)  # the first pulse after a boot waits (the coil may be hot)
        first = ticks_diff(ticks_ms(), t0)
        assert 3 * 200 + 200 - 50 <= first <= 3 * 200 + 200 + 150, first
        assert lock.heat_ms() >= 9900 - 200
        t1 = ticks_ms()
        await lock.release(60000)
        gap = ticks_diff(ticks_ms(), t1)
        assert gap >= 3 * 200 - 50, gap  # the budget, not only the 500 ms cool-down
    asyncio.run(main())


def test_pulse_refused_when_it_cannot_start_inside_the_window():
    out = Pin(0)
    lock = locks.PulseLock(out, 200, 0)  # just booted: the first pulse waits ~600 ms

    async def main():
        assert await lock.release(300) is None
        assert await lock.release(0) is None
    asyncio.run(main())
    assert 1 not in out.history


def test_hold_lock_relocks_by_its_timer_and_ignores_a_late_release():
    out, timer = Pin(0), Timer()
    hold = locks.make({"lock_type": "hold", "lock_pulse_ms": 100, "lock_cooldown_ms": 500}, out,
                      None, timer)
    assert out.level == 1

    async def main():
        await hold.release(300)
        assert out.level == 0
        # nobody calls secure(): the loop is busy elsewhere
        t0 = ticks_ms()
        while ticks_diff(ticks_ms(), t0) < 800:
            time.sleep(0.005)
        assert out.level == 1
        await hold.release(0)  # a button press after the window
        assert out.level == 1
    asyncio.run(main())
    assert timer.fired == 1
