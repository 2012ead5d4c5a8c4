"""Missions in a big-fleet worker: the workload's unlock sender must work where a paho client
cannot (a process holding over 1,024 descriptors, beyond select()), and at --speed > 1."""
import asyncio
import os
import resource
import socket

import pytest

from simulator.fleet.runner import Fleet, device_id
from simulator.fleet.workers import raise_nofile
from simulator.fleet.workload import find_unlock_sender


def test_missions_unlock_from_a_worker_with_over_1024_descriptors(mosquitto):
    soft, hard = raise_nofile()
    if soft < 1400:  # a missing limit fails: a green run must mean this ran
        pytest.fail("needs an open-files limit of 1,400 to hold 1,100 descriptors, but the hard "
                    "limit is %d: raise it (`ulimit -Hn 4096` as root, or LimitNOFILE= for the "
                    "CI runner's service)" % hard)
    held = [socket.socket() for _ in range(1100)]  # as a worker with 1,100 cabinets has
    key = os.urandom(32)

    async def main():
        fleet = Fleet(4, mosquitto.url, flash="memory", fleet_key=key, speed=5)
        await fleet.start()
        try:
            for _ in range(100):
                if fleet.online() == 4:
                    break
                await asyncio.sleep(0.05)
            assert fleet.online() == 4
            send = find_unlock_sender(fleet, key)
            for n in (1, 2, 3):
                await send(device_id(n), "m-%d" % n)
            assert len(send.latencies) == 3 and all(0 < ms < 2000 for ms in send.latencies)
            for n in (1, 2, 3):  # the mission window is open, and the lock is driven: the first
                cab = fleet[device_id(n)]  # pulse after a boot waits out the heat budget (lock.py)
                assert cab.app.window.missions == ["m-%d" % n]
            for _ in range(150):
                if all(fleet[device_id(n)].world.lock_pulses for n in (1, 2, 3)):
                    break
                await asyncio.sleep(0.1)
            assert all(fleet[device_id(n)].world.lock_pulses >= 1 for n in (1, 2, 3))
            assert fleet[device_id(4)].world.lock_pulses == 0
            forged = find_unlock_sender(fleet, os.urandom(32))  # the wrong fleet key
            with pytest.raises(RuntimeError, match="rejected"):
                await forged(device_id(4), "m-forged")
            assert forged.latencies == []
        finally:
            await fleet.stop()

    try:
        asyncio.run(main())
    finally:
        for s in held:
            s.close()
