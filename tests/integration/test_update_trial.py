"""A release on trial (firmware/slots.py) is confirmed by the real app once it is online over a
real Mosquitto, and the update events reach a paho backend, schema-valid (docs/updates-install.md)."""
from aedgate.storage import Flash
from slots import Slots

from simulator.fleet import releases
from tests.fixtures import schema_validator


def _ev(did, kind):
    return lambda t, o: t == "aed/v1/%s/event" % did and isinstance(o, dict) and o.get("type") == kind


def test_release_on_trial_is_confirmed_once_online(mosquitto, backend, sim_factory, tmp_path):
    f = Flash(str(tmp_path / "cab-0001"))
    key, _ = releases.make_key(tmp_path)
    releases.build(tmp_path / "rel", "0.2.0", "good", key, tmp_path)
    assert Slots(f, "0.1.0").install(*releases.install_files(tmp_path / "rel")) is None
    # the simulated cabinet boots as boot.py does: slot "a", on trial, its own package
    sim = sim_factory(count=1, broker_url=mosquitto.url, flash_root=tmp_path)
    check = schema_validator("event")
    events = [backend.wait_for(_ev("cab-0001", k))[1]
              for k in ("update_installed", "update_trial", "update_confirmed")]
    for ev in events:
        assert list(check.iter_errors(ev)) == []
        assert ev["version"] == "0.2.0" and ev["slot"] == "a"
    assert events[0]["seq"] < events[1]["seq"] < events[2]["seq"]
    st = backend.wait_for(lambda t, o: t == "aed/v1/cab-0001/state" and o.get("fw_trial") is False)[1]
    assert st["fw_slot"] == "a" and list(schema_validator("state").iter_errors(st)) == []
    assert st["fw"] == "0.2.0"  # the slot's code runs, not the simulator's firmware/ (0.1.0)
    assert sim.fleet["cab-0001"].slot == "a"
    rec = Slots(f).rec
    assert rec["trial"] == 0 and rec["floor"] == "0.2.0" and rec["notes"] == []


def test_a_release_that_never_comes_online_rolls_back_with_trial_timeout(mosquitto, backend, monkeypatch,
                                                                         tmp_path):
    """The `offline` bad release (simulator/fleet/releases.py: its session fails right after
    every CONNACK) on trial never confirms: after update_trial_s (60 s, the config minimum) the
    app gives it up, main.py resets, the previous version runs and reports update_rolled_back
    with reason trial_timeout. The 60 s pass in virtual time (tests/virtualtime.py) while the
    cabinet talks to a real Mosquitto; the good release, the same way, is confirmed and stays."""
    import asyncio
    import time

    from simulator.fleet.runner import SimCabinet
    from simulator.world.hardware import SimClock
    from tests import virtualtime

    key, entry = releases.make_key(tmp_path)
    host, port = "127.0.0.1", mosquitto.port
    results = {}
    lines = []
    for version, kind in (("0.2.0", "good"), ("0.3.0", "offline")):
        releases.build(tmp_path / kind, version, kind, key, tmp_path)
        did = "cab-%s" % kind
        cfg = {"device_id": did, "broker_host": host, "broker_port": port, "release_keys": [entry],
               "update_trial_s": 60, "ntp_host": ""}

        async def main(did=did, cfg=cfg, kind=kind):
            cab = SimCabinet(did, None, SimClock(), cfg, log=lines.append)
            assert Slots(cab.flash, "0.1.0").install(*releases.install_files(tmp_path / kind)) is None
            t0 = time.monotonic()
            cab.start("hard")                  # the reset after the install
            end = t0 + 75                      # virtual seconds: past the 60 s trial
            while time.monotonic() < end:
                await asyncio.sleep(5)
            cab._halt()
            return cab, time.monotonic() - t0
        real = time.perf_counter()
        cab, virtual = virtualtime.run(main, monkeypatch, grace=0.05)
        results[kind] = (cab, virtual, time.perf_counter() - real)
    print({k: (round(v, 1), round(r, 1)) for k, (_, v, r) in results.items()})

    cab, virtual, real = results["offline"]
    ev = backend.wait_for(_ev("cab-offline", "update_rolled_back"), 10)[1]
    assert (ev["version"], ev["to"], ev["reason"]) == ("0.3.0", "0.1.0", "trial_timeout"), ev
    # One reset, _trial's, and a deliberate one (update.Restart, as after an install: main.py
    # resets at once), not a crash: through main.py's crash path it was a traceback and a 10 s
    # pause before the reset (crashes == 1 here: this test failed).
    assert cab.slot == "" and cab.crashes == 0, [l for l in lines if l.startswith("cab-offline")]
    assert [l for l in lines if l.startswith("cab-offline: reset: update trial: 0.3.0 not online in")], lines
    rec = Slots(cab.flash).rec
    assert (rec["slot"], rec["trial"], rec["floor"]) == ("", 0, "0.1.0")
    st = backend.wait_for(lambda t, o: t == "aed/v1/cab-offline/state" and o.get("fw") == "0.1.0", 10)[1]
    assert st["fw_slot"] == "root" and st["fw_trial"] is False
    assert real < virtual / 3, (virtual, real)           # the trial did not take its 60 s

    cab, virtual, real = results["good"]
    backend.wait_for(_ev("cab-good", "update_confirmed"), 10)
    assert not [m for m in backend.messages if m[0] == "aed/v1/cab-good/event" and b"rolled_back" in m[1]]
    assert cab.slot == "a" and cab.crashes == 0 and Slots(cab.flash).rec["trial"] == 0
