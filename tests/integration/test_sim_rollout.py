"""`aedsim rollout` on a small fleet over real Mosquitto (simulator/bench/rollout_run.py): the
cabinets download, install and boot the release's own code (slot boot), the controller of
`aedgate rollout` drives the waves, dispatch unlocks throughout (issue 12, point 5)."""
import argparse
import asyncio

from simulator.bench import rollout_run


def _run(release, *more):
    p = argparse.ArgumentParser()
    rollout_run.register(p.add_subparsers())
    a = p.parse_args(["rollout", "--cabinets", "20", "--shards", "1", "--canary", "3",
                      "--release", release, "--every", "30", "--timeout", "50", "--settle", "30",
                      *more])
    r = asyncio.run(rollout_run.rollout(a))
    r["failed"] = rollout_run.verdict(r)
    return r


def test_good_release_reaches_every_cabinet_with_unlocks_and_events_flowing():
    r = _run("good")
    ro = r["rollout"]
    assert ro["status"] == "done" and ro["time_to_100pct_s"] is not None
    assert ro["on_new"] == 20 and ro["versions"] == {r["release"]["version"]: 20}
    assert ro["counts"]["done"] == 20 and ro["counts"]["failed"] == 0
    assert [w["done"] for w in ro["waves"]] == [w["cabinets"] for w in ro["waves"]]
    assert r["events"]["gaps"] == 0 and r["events"]["duplicates"] == 0
    assert r["unlock"]["sent"] > 0 and r["unlock"]["results"] == {"accepted": r["unlock"]["sent"]}
    assert r["failed"] == []
    # Only the changed file travels (VERSION is in aedgate/__init__.py); the rest is copied on
    # each cabinet's flash from the package it runs: one request per block, none lost here.
    rel = r["release"]
    assert rel["changed_files"] == ["aedgate/__init__.py"] and rel["files"] > 20
    assert ro["blocks_served"] == 20 * rel["blocks_per_cabinet"]
    assert rel["blocks_per_cabinet"] <= 5


def test_crashing_release_halts_after_its_canary_and_every_canary_is_back_and_says_why():
    # halt at 3 failures: the whole canary has installed it (with 5 % the first rollback halts
    # the rollout, and a canary cabinet still downloading would simply never get it)
    r = _run("crash", "--halt-at", "3")
    ro = r["rollout"]
    assert ro["status"] == "halted" and ro["halted_at_wave"] == 0
    assert ro["offered_outside_canary"] == 0
    assert ro["on_new"] == 0 and ro["on_old"] == 20  # 0 cabinets left on the bad release
    # every canary cabinet rolled back by itself and reported why
    assert ro["back_on_old_by_reason"] == {"rolled_back:crash_loop": 3}
    assert ro["failed_devices"] == ["cab-0001", "cab-0002", "cab-0003"]
    assert r["fleet"]["crashes"] == 3 * 3  # MAX_TRIAL_BOOTS crashed boots each, then the old one
    assert r["events"]["gaps"] == 0
    assert r["failed"] == []
