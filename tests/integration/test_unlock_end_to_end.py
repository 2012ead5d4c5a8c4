"""`aedgate unlock` opens a simulated cabinet over a real Mosquitto; the door opened in the
mission is not an alarm; the cabinet relocks; nothing else opens it."""
import json
import subprocess
import sys
import time

from tests.fixtures import ROOT, schema_validator

MASTER = bytes(range(32))


def _ev(did, kind):
    return lambda t, o: t == "aed/v1/%s/event" % did and o.get("type") == kind


def test_aedgate_unlock_opens_exactly_one_cabinet(mosquitto, backend, sim_factory, tmp_path):
    keyfile = tmp_path / "fleet.key"
    keyfile.write_text(MASTER.hex() + "\n")
    sim = sim_factory(count=2, broker_url=mosquitto.url, fleet_key=MASTER,
                      extra_config={"debounce_ms": 20, "lock_pulse_ms": 300})
    backend.wait_for(_ev("cab-0001", "boot"))
    backend.wait_for(lambda t, o: t == "aed/v1/cab-0001/status" and o.get("online"))
    proc = subprocess.run([sys.executable, "-m", "host_tools.cli", "unlock", "--broker", mosquitto.url,
                           "--fleet-key", str(keyfile), "--device", "cab-0001", "--mission", "M-77",
                           "--window", "30"], capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cab-0001 accepted mission M-77" in proc.stdout
    ack = backend.wait_for(lambda t, o: t == "aed/v1/cab-0001/ack")[1]
    assert schema_validator("ack").is_valid(ack) and ack["result"] == "accepted"
    unlocked = backend.wait_for(_ev("cab-0001", "unlocked"))[1]
    assert unlocked["mission"] == "M-77" and unlocked["window_s"] == 30
    world = sim.fleet["cab-0001"].world
    deadline = time.time() + 5
    while world.lock_pulses == 0 and time.time() < deadline:
        time.sleep(0.02)
    assert world.lock_pulses == 1 and world.latch_released
    # the volunteer opens the cabinet, takes the AED, closes it
    backend.publish("aedsim/world/cab-0001", json.dumps({"door": "open"}))
    opened = backend.wait_for(_ev("cab-0001", "door_opened"))[1]
    assert opened["mission"] == "M-77" and not world.forced
    backend.publish("aedsim/world/cab-0001", json.dumps({"door": "closed"}))
    relocked = backend.wait_for(_ev("cab-0001", "relocked"))[1]
    assert relocked == dict(relocked, mission="M-77", reason="door_closed")
    st = backend.wait_for(lambda t, o: t == "aed/v1/cab-0001/state" and o.get("service_needed")
                          and o["lock"] == "locked")[1]
    assert st["lock"] == "locked" and "service_needed" in st["alarms"]
    types = [json.loads(m[1])["type"] for m in backend.messages if m[0] == "aed/v1/cab-0001/event"]
    assert "door_alarm" not in types
    # the solenoid was pulsed, never held: no overheating
    assert world.longest_on_s < 1.0 and not world.lock_burnt
    # the other cabinet never moved
    assert sim.fleet["cab-0002"].world.lock_pulses == 0


def test_replayed_and_misaddressed_tokens_open_nothing(mosquitto, backend, sim_factory):
    from host_tools import tokens
    sim = sim_factory(count=2, broker_url=mosquitto.url, fleet_key=MASTER)
    for did in ("cab-0001", "cab-0002"):
        backend.wait_for(lambda t, o, d=did: t == "aed/v1/%s/status" % d and o.get("online"))
    raw = tokens.mint(MASTER, "cab-0001", "M-1", 20)
    backend.publish("aed/v1/cab-0002/cmd/unlock", raw)           # another cabinet's token
    assert backend.wait_for(lambda t, o: t == "aed/v1/cab-0002/ack")[1]["reason"] == "unknown_kid"
    from host_tools.fleetkeys import derive_device_key
    stray = tokens.mint_with_device_key(derive_device_key(MASTER, "cab-0002"), "cab-0001", "M-0", 20)
    backend.publish("aed/v1/cab-0002/cmd/unlock", stray)         # right key, addressed elsewhere
    assert backend.wait_for(lambda t, o: t == "aed/v1/cab-0002/ack" and "reason" in o and
                            o["reason"] != "unknown_kid")[1]["reason"] == "wrong_aud"
    backend.publish("aed/v1/cab-0001/cmd/unlock", raw)
    backend.wait_for(lambda t, o: t == "aed/v1/cab-0001/ack" and o["result"] == "accepted")
    backend.publish("aed/v1/cab-0001/cmd/unlock", raw)           # captured and replayed
    backend.wait_for(lambda t, o: t == "aed/v1/cab-0001/ack" and o.get("reason") == "replay")
    # a retained copy on the broker is never acted upon, also not at a reconnect
    backend.publish("aed/v1/cab-0001/cmd/unlock", tokens.mint(MASTER, "cab-0001", "M-2", 20), retain=True)
    backend.wait_for(lambda t, o: t == "aed/v1/cab-0001/ack" and o.get("mission") == "M-2")
    world = sim.fleet["cab-0001"].world
    sim.do(world.apply, {"wifi": "down"})
    time.sleep(0.3)
    births = lambda: [m for m in backend.messages if m[0] == "aed/v1/cab-0001/status" and b'"online": true' in m[1]]
    before = len(births())
    sim.do(world.apply, {"wifi": "up"})
    deadline = time.time() + 15
    while len(births()) == before and time.time() < deadline:
        time.sleep(0.05)
    assert len(births()) > before, "cab-0001 did not come back online"
    time.sleep(1.0)
    # Delivery is at least once: a message whose PUBACK the Wi-Fi cut short comes again, with
    # the same cti (acks) or seq (events), and a backend keeps the first. Count distinct ones.
    acks = [json.loads(m[1]) for m in backend.messages if m[0] == "aed/v1/cab-0001/ack"]
    accepted = {a["cti"]: a.get("mission") for a in acks if a["result"] == "accepted"}
    assert list(accepted.values()) == ["M-1", "M-2"]
    events = [json.loads(m[1]) for m in backend.messages if m[0] == "aed/v1/cab-0001/event"]
    unlocked = {e["seq"]: e["mission"] for e in events if e["type"] == "unlocked"}
    assert list(unlocked.values()) == ["M-1", "M-2"]  # M-2 joined M-1's open window; the retained copy did nothing
    assert sim.fleet["cab-0002"].world.lock_pulses == 0
