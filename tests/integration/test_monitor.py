"""`aedgate monitor` shows what simulated cabinets report over a real Mosquitto."""
import json
import subprocess
import sys

from tests.fixtures import ROOT


def test_monitor_prints_events_and_exits(mosquitto, backend, sim_factory):
    sim_factory(count=2, broker_url=mosquitto.url, extra_config={"debounce_ms": 5})
    backend.wait_for(lambda t, o: t == "aed/v1/cab-0002/status" and o.get("online"))
    proc = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "monitor", "--broker", mosquitto.url,
                             "--device", "cab-0002", "--plain", "--duration", "4"],
                            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import time
    time.sleep(1.5)
    backend.publish("aedsim/world/cab-0002", json.dumps({"door": "open"}))
    backend.publish("aedsim/world/cab-0001", json.dumps({"door": "open"}))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "cab-0002" in out and "door_opened" in out and "door_alarm" in out
    assert "cab-0001" not in out  # filtered to one cabinet


def test_monitor_unreachable_broker_is_one_line_and_exit_3(tmp_path):
    from tests.fixtures import free_port
    proc = subprocess.run([sys.executable, "-m", "host_tools.cli", "monitor", "--broker",
                           "mqtt://127.0.0.1:%d" % free_port(), "--plain", "--duration", "1"],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3
    assert proc.stderr.strip().startswith("aedgate: error: cannot reach broker")
    assert len(proc.stderr.strip().splitlines()) == 1
