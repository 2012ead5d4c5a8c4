"""simulator/bench/loop_stalls.py on a small fleet (real Mosquitto over loopback, the real
firmware): every cabinet boots, its figures are printed and written, and a late tick reports the
loop's own CPU beside its lag."""
import json

from simulator.bench import loop_stalls


def test_small_fleet_boots_and_reports(tmp_path, capsys):
    out = tmp_path / "stalls.json"
    assert loop_stalls.main(["--cabinets", "40", "--ramp", "400", "--steady", "1.5",
                             "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["boot"]["online"] == 40 and r["boot"]["cpu_ms_per_cabinet"] > 0
    s = r["steady"]
    assert s["gc_pauses"] > 0 and s["late_ticks"] == len(s["late"]) or s["late_ticks"] > 20
    for tick in s["late"]:
        assert tick["lag_ms"] > loop_stalls.LATE_MS and tick["cpu_ms"] >= 0
    assert "ms CPU per cabinet" in capsys.readouterr().out
