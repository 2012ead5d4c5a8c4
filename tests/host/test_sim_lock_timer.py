"""SimHardware's lock timer ends a pulse while the asyncio loop stalls, as the ESP32's
machine.Timer does (a scheduled callback), and, like it, not inside one long blocking C call."""
import asyncio
import time

import pytest

from aedgate import lock as locks
from simulator.world.hardware import CabinetWorld, SimClock, SimHardware, SimTimer, blocking_c_call
from simulator.world.net import SimNet


def _world():
    return CabinetWorld("cab-t", SimClock(), SimNet(None, None, "cab-t"))


def _pulse_through_stall(stall):
    world = _world()
    hw = SimHardware(world, "power_on")
    lock = locks.PulseLock(hw.lock, 300, 500, sense=None, timer=hw.lock_timer)

    async def main():
        task = asyncio.create_task(lock.release(60000))
        while not world.lock_on:
            await asyncio.sleep(0.005)
        stall()  # the loop is held up: nothing in asyncio runs
        await task
    asyncio.run(main())
    return world


def test_pulse_ends_within_its_cap_while_the_loop_stalls():
    def python_work():  # flash writes, an outbox scan: many short calls, bytecodes in between
        end = time.monotonic() + 3
        while time.monotonic() < end:
            time.sleep(0.005)
    world = _pulse_through_stall(python_work)
    assert world.lock_pulses == 1 and world.longest_on_s <= 0.3 + 0.1, world.longest_on_s
    assert not world.lock_on


def test_like_the_esp32_the_timer_waits_for_a_blocking_c_call():
    def dns_lookup():  # lwIP's getaddrinfo: the ESP32 runs no callback until it returns
        with blocking_c_call():
            time.sleep(1.5)
    world = _pulse_through_stall(dns_lookup)
    assert world.longest_on_s >= 1.4  # documented gap (docs/security.md), not hidden by the twin


def test_timer_ids_and_modes_as_on_the_esp32():
    for bad in (-1, 4):
        with pytest.raises(ValueError):
            SimTimer(bad)
    t = SimTimer(3)
    assert t.ONE_SHOT == 0 and t.PERIODIC == 1
