"""Scenario files drive simulated cabinets over the world-control topic; bad files get one
clear error naming the step."""
import json
import subprocess
import sys

import pytest

from simulator.world import scenario
from tests.fixtures import ROOT


def test_built_in_scenarios_load():
    for name in ("demo", "faults"):
        s = scenario.load(name)
        assert s["steps"] and s["duration"] >= s["steps"][-1]["at"]


@pytest.mark.parametrize("content,message", [
    ("{", "is not JSON"),
    ('{"steps": 3}', 'list of "steps"'),
    ('{"steps": [{"at": 5, "device": "cab-0001", "world": {"door": "open"}}, {"at": 2, "device": "cab-0001", "world": {"door": "closed"}}]}', "step 2"),
    ('{"steps": [{"at": 1, "device": "cab+1", "world": {"door": "open"}}]}', '"device"'),
    ('{"steps": [{"at": 1, "device": "cab-0001", "world": {}}]}', '"world"'),
])
def test_bad_scenario_files(tmp_path, content, message):
    f = tmp_path / "s.json"
    f.write_text(content)
    with pytest.raises(scenario.ScenarioError, match=message):
        scenario.load(str(f))
    proc = subprocess.run([sys.executable, "-m", "simulator.cli", "scenario", str(f), "--broker",
                           "mqtt://127.0.0.1:1"], cwd=str(ROOT), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stderr.startswith("aedsim: error:")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_scenario_plays_against_running_cabinets(mosquitto, backend, sim_factory, tmp_path):
    sim = sim_factory(count=2, broker_url=mosquitto.url, extra_config={"debounce_ms": 5})
    backend.wait_for(lambda t, o: t == "aed/v1/cab-0002/status" and o.get("online"))
    f = tmp_path / "story.json"
    f.write_text(json.dumps({"steps": [
        {"at": 0.2, "device": "cab-0002", "world": {"door": "open"}, "note": "open"},
        {"at": 0.5, "device": "cab-0001", "world": {"flash_cut": 1, "mains": False}}]}))
    proc = subprocess.run([sys.executable, "-m", "simulator.cli", "scenario", str(f), "--broker", mosquitto.url],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "cab-0002" in proc.stdout and "# open" in proc.stdout
    backend.wait_for(lambda t, o: t == "aed/v1/cab-0002/event" and o.get("type") == "door_opened")
    # the mains_lost event (after its debounce) is written later; the armed cut takes that write
    backend.wait_for(lambda t, o: t == "aed/v1/cab-0001/event" and o.get("type") == "boot" and o["seq"] > 1, timeout=15)
    assert sim.fleet["cab-0001"].flash.cuts == 1
