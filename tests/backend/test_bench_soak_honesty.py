"""Issue 11 point 9: the soak's gap count must not be cancelled by a redelivered events_dropped,
and `aedsim bench` must fail when its ramp times out, and compare memory like with like."""
import json
import subprocess
import sys
import time

from tests.backend.conftest import Cabinet, wait_until
from tests.fixtures import ROOT


def test_soak_registry_counts_a_redelivered_events_dropped_once(mosquitto):
    from simulator.bench.soak import Registry
    reg = Registry(mosquitto.url)
    cab = Cabinet(mosquitto.url, "cab-0001")
    try:
        cab.event(1)
        cab.event(2)
        cab.event(4, "events_dropped", count=1, reason="overflow")  # explains seq 3
        cab.event(4, "events_dropped", count=1, reason="overflow")  # QoS 1 redelivery
        cab.event(5)
        cab.event(7)  # seq 6 is genuinely lost
        assert wait_until(lambda: reg.tally()["received"] == 6)
        t = reg.tally()
        assert t["dropped_reported"] == 1 and t["duplicates"] == 1
        full = reg.tally({"cab-0001": 8, "cab-0002": 2}, {"cab-0001": [8]})
        # seq 6 of cab-0001 and both of cab-0002 (never heard from) are lost; seq 8 still queued
        assert (full["missing_seqs"], full["still_in_outboxes"], full["gaps"]) == (4, 1, 3)
    finally:
        cab.close()
        reg.close()


def _bench(tmp_path, *argv):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "simulator.cli", "bench", "--workers", "1", "--shards", "1",
                        "--json", str(out), *argv], cwd=str(ROOT), capture_output=True, text=True, timeout=240)
    return r, (json.loads(out.read_text()) if out.exists() else None)


def test_bench_exits_nonzero_when_its_ramp_times_out(tmp_path):
    r, res = _bench(tmp_path, "--cabinets", "20", "--ramp", "2", "--ramp-timeout", "3", "--steady", "1",
                    "--unlocks", "0", "--paho-steps", "")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "FAILED: ramp timed out" in r.stderr
    assert res["fleet"]["ramp_timed_out"] is True


def test_bench_passes_and_measures_paho_memory_like_aedsim(tmp_path):
    r, res = _bench(tmp_path, "--cabinets", "20", "--ramp", "100", "--ramp-timeout", "60", "--steady", "3",
                    "--unlocks", "3", "--paho-steps", "20", "--paho-seconds", "3", "--target-ramp", "0",
                    "--target-unlock-p99-ms", "1000", "--target-kib", "0")  # 20 cabinets: fixed costs dominate
    assert r.returncode == 0, r.stderr[-2000:]
    assert res["failed"] == [] and res["unlock"]["results"] == {"accepted": 3}
    best = res["paho_per_device"]["best"]
    # per device above the process's own baseline (as aedsim's kib_per_cabinet), not RSS / n
    assert best["rss_base_kib"] > 10000
    assert best["kib_per_client"] == round((best["rss_kib"] - best["rss_base_kib"]) / best["created"], 1)
    assert "select()" in res["ratios"]["note"]
    assert res["fleet"]["backend"]["events_unique"] == res["fleet"]["events"] - res["fleet"]["outbox_total"]

    # a missed target is a failure too (the exit code follows verdict())
    from simulator.bench.fleet_bench import verdict
    assert verdict(dict(res, targets={"kib_per_cabinet": 0.5}))[0].endswith("above the target 0.5 KiB")
    assert "below the target" in verdict(dict(res, targets={"connect_per_s": 1e9}))[0]
