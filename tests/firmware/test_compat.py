from aedgate import compat
from aedgate.compat import TICKS_PERIOD, civil_from_days, parse_date, ticks_add, ticks_diff


def test_ticks_wrap_at_2_pow_30():
    near = TICKS_PERIOD - 100
    later = ticks_add(near, 250)
    assert later == 150  # wrapped
    assert ticks_diff(later, near) == 250
    assert ticks_diff(near, later) == -250


def test_ticks_start_near_wrap_crosses_it():
    compat.set_ticks_start(TICKS_PERIOD - 5)
    t0 = compat.ticks_ms()
    assert t0 >= TICKS_PERIOD - 10 or t0 < 100
    deadline = ticks_add(t0, 1000)
    assert ticks_diff(deadline, t0) == 1000
    assert deadline < t0  # the deadline sits past the wrap, maths still right
    compat.set_ticks_start(0)


def test_dates_round_trip():
    assert parse_date("1970-01-01") == 0
    assert parse_date("2000-01-01") == 10957
    assert parse_date("2028-02-29") == parse_date("2028-02-28") + 1
    assert civil_from_days(parse_date("2026-11-24")) == (2026, 11, 24)


def test_bad_dates_rejected():
    for bad in ("2026-02-30", "2026-13-01", "2026-1-01", "20261101", "", None, 20261101, "2026-00-10", "abcd-ef-gh"):
        assert parse_date(bad) is None, bad


def test_unix_time_is_1970_based():
    assert compat.unix_time() > 1700000000


# -- waking a task: TaskSignal (task to task), IrqSignal (from an interrupt handler) ----------

def test_task_signal_wakes_its_waiter_and_clears():
    async def main():
        sig = compat.TaskSignal()
        woke = []

        async def waiter():
            await sig.wait()
            woke.append(compat.ticks_ms())
        t = compat.asyncio.create_task(waiter())
        await compat.sleep_ms(10)
        assert not woke
        t0 = compat.ticks_ms()
        sig.set()
        await compat.sleep_ms(0)
        await compat.sleep_ms(0)
        assert woke and compat.ticks_diff(woke[0], t0) <= 1, woke
        await t
        # cleared by the wake-up: the next wait times out; a set() before the wait is kept
        assert await sig.wait_ms(30) is False
        sig.set()
        assert await sig.wait_ms(30) is True
        sig.set()
        sig.set()  # two sets before a wait: one wake-up
        await sig.wait()
        assert await sig.wait_ms(10) is False

    compat.asyncio.run(main())


def test_task_signal_round_trips_take_microseconds():
    # Two tasks ping-ponging 500 times: with a ThreadSafeFlag this took ~1 ms a hop on the unix
    # port (500 round trips ~1 s); a task signal must do them in well under 0.25 s.
    async def main():
        a, b = compat.TaskSignal(), compat.TaskSignal()

        async def echo():
            for _ in range(500):
                await a.wait()
                b.set()
        t = compat.asyncio.create_task(echo())
        t0 = compat.ticks_ms()
        for _ in range(500):
            a.set()
            await b.wait()
        took = compat.ticks_diff(compat.ticks_ms(), t0)
        await t
        assert took < 250, took

    compat.asyncio.run(main())


def test_irq_signal_wakes_from_a_scheduled_callback():
    # On the ESP32 a pin's handler runs as a scheduled callback (micropython.schedule), outside
    # any task; the IrqSignal must wake the waiting task from there. CPython has no such
    # context: the simulator's pins call handlers on the loop, as call_soon does here.
    async def main():
        sig = compat.IrqSignal()
        woke = []

        async def waiter():
            await sig.wait()
            woke.append(1)
        t = compat.asyncio.create_task(waiter())
        await compat.sleep_ms(5)
        if compat.MICROPYTHON:
            import micropython
            micropython.schedule(lambda _: sig.set(), None)
        else:
            compat.asyncio.get_running_loop().call_soon(sig.set)
        for _ in range(200):
            if woke:
                break
            await compat.sleep_ms(5)
        assert woke
        await t

    compat.asyncio.run(main())
