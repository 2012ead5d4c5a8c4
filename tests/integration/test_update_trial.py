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
