"""Simulated cabinets (the real firmware app) against a real Mosquitto, seen by a paho backend."""
import json
import os
import signal
import subprocess
import sys
import time

from tests.fixtures import ROOT, schema_validator


def _ev(did, kind=None):
    def pred(topic, obj):
        return topic == "aed/v1/%s/event" % did and isinstance(obj, dict) and (kind is None or obj.get("type") == kind)
    return pred


def test_status_state_and_events_are_schema_valid(mosquitto, backend, sim_factory):
    sim_factory(count=3, broker_url=mosquitto.url, extra_config={"sample_s": 1})
    validators = {k: schema_validator(k) for k in ("status", "state", "event")}
    for n in (1, 2, 3):
        did = "cab-%04d" % n
        for kind in ("status", "state", "event"):
            topic, obj = backend.wait_for(lambda t, o, k=kind, d=did: t == "aed/v1/%s/%s" % (d, k))
            errors = [e.message for e in validators[kind].iter_errors(obj)]
            assert errors == [], (kind, obj, errors)
        assert backend.wait_for(lambda t, o, d=did: t.endswith(d + "/status"))[1]["online"] is True
    # status and state are retained: a backend that connects later still gets them
    from tests.fixtures import Backend
    late = Backend(mosquitto.url, topics=("aed/v1/cab-0002/state",))
    try:
        assert late.wait_for(lambda t, o: True)[1]["door"] == "closed"
        assert late.messages[0][2] is True  # retain flag
    finally:
        late.close()


def test_world_changes_arrive_as_events(mosquitto, backend, sim_factory):
    sim = sim_factory(count=2, broker_url=mosquitto.url, extra_config={"sample_s": 1, "debounce_ms": 20})
    backend.wait_for(_ev("cab-0002", "boot"))
    backend.publish("aedsim/world/cab-0002", json.dumps({"door": "open"}))
    opened = backend.wait_for(_ev("cab-0002", "door_opened"))[1]
    alarm = backend.wait_for(_ev("cab-0002", "door_alarm"))[1]
    assert alarm["seq"] == opened["seq"] + 1
    assert sim.fleet["cab-0002"].world.siren is True
    backend.publish("aedsim/world/cab-0002", json.dumps({"door": "closed", "mains": False, "battery_mv": 11400}))
    assert backend.wait_for(_ev("cab-0002", "door_closed"))[1]["open_s"] >= 0
    backend.wait_for(_ev("cab-0002", "mains_lost"))
    crit = backend.wait_for(_ev("cab-0002", "battery_critical"))[1]
    assert 11300 < crit["battery_mv"] < 11500
    st = backend.wait_for(lambda t, o: t == "aed/v1/cab-0002/state" and "battery_critical" in o.get("alarms", [])
                          and "mains_lost" in o["alarms"])[1]
    assert st["mains"] is False and st["door"] == "closed"
    assert sim.fleet["cab-0002"].world.siren is False
    # cab-0001 saw none of it
    assert not [m for m in backend.messages if m[0] == "aed/v1/cab-0001/event" and b"door" in m[1]]


def test_unknown_world_key_is_logged_and_the_rest_applied(mosquitto, backend, sim_factory):
    sim = sim_factory(count=1, broker_url=mosquitto.url, extra_config={"debounce_ms": 20})
    backend.wait_for(_ev("cab-0001", "boot"))
    backend.publish("aedsim/world/cab-0001", json.dumps({"colour": "red", "door": "open"}))
    backend.publish("aedsim/world/cab-0001", b"not json{")
    backend.wait_for(_ev("cab-0001", "door_opened"))
    deadline = time.time() + 5
    while time.time() < deadline and not any("not JSON" in l for l in sim.logs):
        time.sleep(0.05)
    assert any("unknown key 'colour'" in l for l in sim.logs), sim.logs
    assert any("not JSON" in l for l in sim.logs), sim.logs


def test_events_during_wifi_outage_arrive_in_order_after(mosquitto, backend, sim_factory):
    sim = sim_factory(count=1, broker_url=mosquitto.url, extra_config={"debounce_ms": 20})
    boot = backend.wait_for(_ev("cab-0001", "boot"))[1]
    world = sim.fleet["cab-0001"].world
    sim.do(world.apply, {"wifi": "down"})
    for state in ("open", "closed", "open", "closed"):
        sim.do(world.apply, {"door": state})
        time.sleep(0.1)
    backend.wait_for(lambda t, o: t.endswith("cab-0001/status") and o.get("online") is False)  # LWT
    sim.do(world.apply, {"wifi": "up"})
    backend.wait_for(lambda t, o: t.endswith("cab-0001/event") and o.get("seq") == boot["seq"] + 6, timeout=20)
    seqs = [json.loads(m[1])["seq"] for m in backend.messages if m[0] == "aed/v1/cab-0001/event"]
    # At least once: the boot event may come again if the Wi-Fi went before its PUBACK.
    firsts = list(dict.fromkeys(seqs))
    assert firsts == list(range(boot["seq"], boot["seq"] + 7)), seqs


def test_power_cut_fires_lwt_and_reboot_continues_seq(mosquitto, backend, sim_factory):
    sim = sim_factory(count=1, broker_url=mosquitto.url)
    boot1 = backend.wait_for(_ev("cab-0001", "boot"))[1]
    world = sim.fleet["cab-0001"].world
    sim.do(world.apply, {"power": "off"})
    backend.wait_for(lambda t, o: t.endswith("cab-0001/status") and o.get("online") is False)
    sim.do(world.apply, {"power": "on"})
    boot2 = backend.wait_for(lambda t, o: _ev("cab-0001", "boot")(t, o) and o["seq"] > boot1["seq"])[1]
    assert boot2["seq"] == boot1["seq"] + 1


def test_killed_simulator_process_goes_offline_by_lwt(mosquitto, backend):
    proc = subprocess.Popen([sys.executable, "-m", "simulator.cli", "run", "--cabinets", "2",
                             "--broker", mosquitto.url, "--plain"], cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for did in ("cab-0001", "cab-0002"):
            backend.wait_for(lambda t, o, d=did: t.endswith(d + "/status") and o.get("online") is True, timeout=20)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    for did in ("cab-0001", "cab-0002"):
        backend.wait_for(lambda t, o, d=did: t.endswith(d + "/status") and o.get("online") is False, timeout=10)


def test_simulated_boards_start_in_2000_and_sync_by_sntp(mosquitto, backend, sim_factory):
    """The fleet's cabinets model the ESP32's clock (docs/twin.md): 2000-01-01 at power-on, the
    time floor at boot, the world's time after SNTP once online; a power cut restarts it at 2000,
    and without an SNTP answer the firmware stays at the floor, never below it."""
    import time as _time
    from aedgate.timefloor import BUILD_TIME
    sim = sim_factory(count=2, broker_url=mosquitto.url)
    _, st = backend.wait_for(lambda t, o: t == "aed/v1/cab-0002/status" and o.get("online") is True, 20)
    assert abs(st["ts"] - _time.time()) < 5 and st["boot_ts"] >= BUILD_TIME, st
    cab = sim.fleet["cab-0002"]
    assert abs(sim.do(cab.world.board_clock.time) - _time.time()) < 5
    sim.do(cab.world.apply, {"sntp": "down", "power": "off"})
    assert sim.do(cab.world.board_clock.time) > 946684800 + 86400  # off: the RTC keeps nothing yet...
    with backend.cond:
        backend.messages.clear()
    sim.do(cab.world.apply, {"power": "on"})
    _, boot = backend.wait_for(lambda t, o: t == "aed/v1/cab-0002/event" and o.get("type") == "boot"
                               and o.get("cause") == "power_on", 20)
    assert boot["ts"] == BUILD_TIME, boot  # ...and it restarts at 2000: the floor, never below
    _, st = backend.wait_for(lambda t, o: t == "aed/v1/cab-0002/status" and o.get("online") is True, 20)
    assert st["ts"] < _time.time() - 3600
    sim.do(cab.world.apply, {"sntp": "up"})
    assert sim.do(cab.world.board_clock.sntp, "pool.ntp.org") > BUILD_TIME
