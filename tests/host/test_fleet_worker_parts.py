"""Parts of a big-fleet worker that the 500-cabinet test cannot see by itself: the garbage
collector policy and the simulated watchdog's single timer."""
import asyncio
import gc
import time

from simulator.fleet.runner import FleetCounters
from simulator.fleet.loophealth import FleetCollector
from simulator.world.hardware import SimWDT


def test_collector_boot_without_collections_then_young_only(monkeypatch):
    threshold = gc.get_threshold()
    c = FleetCollector()
    try:
        assert c.booting and not gc.isenabled()
        c.tick(all_started=False, all_online=False)
        c.tick(all_started=True, all_online=False)
        assert c.booting, "still waiting for the last cabinets"
        c.tick(all_started=True, all_online=True)
        assert not c.booting and gc.isenabled()
        assert gc.get_threshold()[2] == FleetCollector.NEVER  # no automatic full collections
        gc.collect(1)
        steady = c.report()["steady"]
        assert steady["count"] >= 1 and steady["total_ms"] >= steady["max_ms"] >= 0
        cycle: list = []
        cycle.append(cycle)
        del cycle
    finally:
        c.close()
    assert c.report()["old_garbage"] >= 1  # the cycle above, found at the end
    assert gc.get_threshold() == threshold and gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_collector_runs_a_full_collection_only_after_enough_churn(monkeypatch):
    monkeypatch.setattr(FleetCollector, "YOUNG_S", 0.01)
    monkeypatch.setattr(FleetCollector, "FULL_S", 0.0)
    monkeypatch.setattr(FleetCollector, "CHURN", 100)
    sessions = [0]

    async def main(c):
        task = asyncio.create_task(c.run())
        c.tick(all_started=True, all_online=True)
        await asyncio.sleep(0.1)
        assert c.report()["full"]["count"] == 0, "a steady fleet: young collections only"
        assert c.report()["steady"]["count"] >= 3
        sessions[0] = 150  # 150 reconnects since: old garbage may have piled up
        await asyncio.sleep(0.1)
        assert c.report()["full"]["count"] == 1
        task.cancel()

    c = FleetCollector(lambda: sessions[0])
    try:
        asyncio.run(main(c))
    finally:
        c.close()


def test_collector_stops_waiting_for_cabinets_that_never_come_online(monkeypatch):
    monkeypatch.setattr(FleetCollector, "GIVE_UP_S", 0.0)
    c = FleetCollector()
    try:
        c.tick(all_started=True, all_online=False)  # boot finished now; give up after 0 s
        time.sleep(0.01)
        c.tick(all_started=True, all_online=False)
        assert not c.booting and gc.isenabled()
    finally:
        c.close()


def test_sim_watchdog_fires_only_after_timeout_without_food():
    async def main():
        fired = []
        wdt = SimWDT(lambda: fired.append(time.monotonic()), timeout_ms=150)
        for _ in range(6):  # fed every 50 ms for 300 ms: twice the timeout, never hungry
            await asyncio.sleep(0.05)
            wdt.feed()
        assert not fired
        last = time.monotonic()
        await asyncio.sleep(0.4)
        assert len(fired) == 1 and 0.14 <= fired[0] - last <= 0.3, fired
        wdt.feed()  # re-armed after firing, as machine.WDT stays armed
        wdt.stop()  # the board lost power: no reset from a watchdog that is gone
        await asyncio.sleep(0.3)
        assert len(fired) == 1

    asyncio.run(main())


def test_counters_tell_an_injected_wifi_outage_from_an_error():
    c = FleetCounters()
    c.note("cab-0001", "mqtt: OSError [Errno 113] wifi down")  # the workload took the Wi-Fi
    c.note("cab-0002", "mqtt: MQTTError timeout")
    c.note("cab-0003", "mqtt: OSError [Errno 111] Connection refused")
    assert (c.wifi_down, c.mqtt_errors) == (1, 2)
    assert list(c.recent) == ["cab-0002: mqtt: MQTTError timeout",
                              "cab-0003: mqtt: OSError [Errno 111] Connection refused"]
