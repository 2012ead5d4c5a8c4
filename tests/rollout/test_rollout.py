"""The rollout controller against real Mosquitto brokers and SCRIPTED cabinets (paho clients that
follow the update brief's device rules, tests/rollout/scripted_cabinet.py — not the firmware):
a good release to every cabinet over two shards, a bad release that halts after its canary, a
release signed with a stranger's key, a stuck cabinet that times out, the rate cap, pause/abort
from another process, a restart that resumes, and a cabinet offline through the rollout."""
from __future__ import annotations

import time

import pytest

from host_tools.backend import BrokerOptions
from host_tools.rollout import Plan, Rollout, RolloutStore
from host_tools.rollout import report as R
from tests.fixtures import Mosquitto
from tests.rollout.scripted_cabinet import ScriptedCabinet


@pytest.fixture
def cabinets():
    made = []

    def make(url, ids, keys, **kw):
        cs = [ScriptedCabinet(url, d, keys, **kw) for d in ids]
        made.extend(cs)
        return cs
    yield make
    for c in made:
        c.close()


def settle(cabs, timeout=5.0):
    """Wait until every scripted cabinet's retained status is on the broker."""
    time.sleep(0.3)


def make_rollout(tmp_path, rel, plan, urls, **kw):
    kw.setdefault("tick", 0.1)
    kw.setdefault("discover_s", 2.0)
    return Rollout(str(tmp_path / "rollout.db"), rel, plan, [BrokerOptions(u) for u in urls], **kw)


def test_good_release_reaches_every_cabinet_on_two_shards_canary_first(mosquitto, tmp_path, release_kit, cabinets):
    b = Mosquitto(tmp_path).start()
    try:
        a_ids, b_ids = ["cab-a%d" % i for i in range(3)], ["cab-b%d" % i for i in range(3)]
        cabs = cabinets(mosquitto.url, a_ids, release_kit["keys"]) + cabinets(b.url, b_ids, release_kit["keys"])
        settle(cabs)
        ro = make_rollout(tmp_path, release_kit["good"], Plan(canary=1, waves=[50, 100], halt_at=("count", 1)),
                          [mosquitto.url, b.url]).start()
        assert sorted(ro.cabs) == sorted(a_ids + b_ids)      # discovered on both shards
        assert ro.run(timeout=90) == "done"
        assert ro.counts()["done"] == 6 and ro.counts()["failed"] == 0
        for c in cabs:
            assert c.fw == "0.2.0" and not c.trial
            assert [e["type"] for e in c.events if e["type"] == "update_confirmed"] == ["update_confirmed"]
            assert c.dropped_blocks == 0
        canary = ro.by_wave[0][0]
        later = [c for w in ro.by_wave[1:] for c in w]
        assert all(c.first_offer >= canary.finished for c in later)   # nothing before the canary was done
        w1_done = max(c.finished for c in ro.by_wave[1])
        assert all(c.first_offer >= w1_done for c in ro.by_wave[2])
        # what the operator's live table shows (aedgate rollout start on a terminal)
        import io
        from rich.console import Console
        from host_tools.commands.rollout import _LiveView
        buf = io.StringIO()
        Console(file=buf, width=120).print(_LiveView(ro)._render())
        text = buf.getvalue()
        assert "DONE" in text and "canary" in text and "6/6" in text, text
        ro.close()
        st = RolloutStore(str(tmp_path / "rollout.db"), readonly=True)
        assert R.versions(st.db).rows == [("0.2.0", 6, 6, 0, 100.0)]
        assert R.rollout_row(st.db)["status"] == "done"
        st.close()
    finally:
        b.stop()


def test_bad_release_halts_after_its_canary_with_the_canary_back_on_the_old_version(mosquitto, tmp_path, release_kit, cabinets):
    cabs = cabinets(mosquitto.url, ["cab-%d" % i for i in range(6)], release_kit["keys"], behaviour="rollback")
    settle(cabs)
    ro = make_rollout(tmp_path, release_kit["good"], Plan(canary=2, waves=[50, 100], halt_at=("count", 2)),
                      [mosquitto.url]).start()
    assert ro.run(timeout=60) == "halted"
    assert "2 of 2 started cabinets failed" in ro.reason
    for c in ro.by_wave[0]:
        assert c.phase == "failed" and c.reason == "rolled_back:trial_timeout" and c.detail == "0.1.0"
    assert all(c.phase == "pending" and c.offers == 0 for w in ro.by_wave[1:] for c in w)
    by_id = {c.device: c for c in cabs}
    for d in ("cab-0", "cab-1"):
        assert by_id[d].fw == "0.1.0" and any(e["type"] == "update_rolled_back" for e in by_id[d].events)
    for d in ("cab-2", "cab-3", "cab-4", "cab-5"):
        assert by_id[d].gets == 0 and by_id[d].events == []
    ro.close()


def test_release_signed_with_an_unknown_key_is_refused_and_halts(mosquitto, tmp_path, release_kit, cabinets):
    cabs = cabinets(mosquitto.url, ["cab-%d" % i for i in range(4)], release_kit["keys"])
    settle(cabs)
    ro = make_rollout(tmp_path, release_kit["stranger"], Plan(canary=1, waves=[100], halt_at=("pct", 50)),
                      [mosquitto.url]).start()
    assert ro.run(timeout=60) == "halted"
    (canary,) = ro.by_wave[0]
    assert canary.phase == "failed" and canary.reason == "refused:unknown_kid"
    assert [c.fw for c in cabs] == ["0.1.0"] * 4
    ro.close()


def test_a_stuck_cabinet_times_out_and_counts_as_a_failure(mosquitto, tmp_path, release_kit, cabinets):
    cabinets(mosquitto.url, ["cab-0"], release_kit["keys"], behaviour="silent")
    cabinets(mosquitto.url, ["cab-1"], release_kit["keys"])
    settle(None)
    ro = make_rollout(tmp_path, release_kit["good"],
                      Plan(canary=0, waves=[100], halt_at=("count", 5), wave_timeout=2.0, offer_every=0.5),
                      [mosquitto.url]).start()
    assert ro.run(timeout=60) == "done"
    assert ro.cabs["cab-0"].phase == "failed" and ro.cabs["cab-0"].reason == "timeout"
    assert ro.cabs["cab-0"].offers >= 3          # offered again every offer_every until a result
    assert ro.cabs["cab-1"].phase == "done"
    ro.close()


def test_rate_cap_spaces_the_starts(mosquitto, tmp_path, release_kit, cabinets):
    cabinets(mosquitto.url, ["cab-%d" % i for i in range(5)], release_kit["keys"], behaviour="silent")
    settle(None)
    ro = make_rollout(tmp_path, release_kit["good"], Plan(canary=0, waves=[100], rate=120, halt_at=("count", 99)),
                      [mosquitto.url]).start()
    ro.run(until=lambda r: r.counts()["pending"] == 0, timeout=20)
    starts = sorted(c.first_offer for c in ro.cabs.values())
    assert starts[-1] - starts[0] >= 1.4   # 120/min = 2 a second, a burst of 2: starts at 0, 0, .5, 1, 1.5 s
    assert all(b - a >= 0 for a, b in zip(starts, starts[1:]))
    assert sum(1 for s in starts if s - starts[0] < 0.45) <= 2
    ro.close()


def test_pause_and_abort_from_another_process_and_a_restart_resumes(mosquitto, tmp_path, release_kit, cabinets):
    from host_tools.cli import main
    db = str(tmp_path / "rollout.db")
    cabs = cabinets(mosquitto.url, ["cab-%d" % i for i in range(4)], release_kit["keys"])
    settle(cabs)
    ro = make_rollout(tmp_path, release_kit["good"], Plan(canary=1, waves=[100], rate=60, halt_at=("count", 1)),
                      [mosquitto.url]).start()
    ro.run(until=lambda r: r.counts()["done"] >= 1, timeout=30)      # the canary is done
    assert main(["rollout", "pause", "--db", db]) == 0
    assert ro.step() == "paused"
    started = ro.counts()["started"] + ro.counts()["done"]
    ro.run(timeout=2.5)                                               # paused: no new starts
    assert ro.counts()["started"] + ro.counts()["done"] == started
    ro.close()                                                        # like Ctrl-C
    assert main(["rollout", "resume", "--db", db, "--broker", mosquitto.url, "--plain",
                 "--duration", "0.5"]) == 130    # resume sets running; stopped early: resumable
    ro2 = Rollout.resume(db, [BrokerOptions(mosquitto.url)], tick=0.1)
    ro2.start()
    assert ro2.id == ro.id and ro2.status == "running"
    assert ro2.run(timeout=60) == "done"
    assert all(c.fw == "0.2.0" for c in cabs)
    for c in cabs:   # each cabinet downloaded once: no restart from scratch
        assert [e["type"] for e in c.events].count("update_installed") == 1
    ro2.close()
    assert main(["rollout", "abort", "--db", db]) == 0   # a done rollout can be closed for latecomers
    assert main(["rollout", "pause", "--db", db]) == 2   # ... and then there is nothing to pause


def test_a_cabinet_offline_through_the_rollout_gets_it_on_resume(mosquitto, tmp_path, release_kit, cabinets):
    """docs/updates.md, technician: a cabinet offline through the whole rollout does not hold it
    up; the rollout ends `done` with it pending, and `resume` updates it once it is back."""
    cabs = cabinets(mosquitto.url, ["cab-0", "cab-1"], release_kit["keys"])
    late = cabinets(mosquitto.url, ["cab-2"], release_kit["keys"], online=False)[0]
    settle(cabs)
    ro = make_rollout(tmp_path, release_kit["good"], Plan(canary=1, waves=[100], halt_at=("count", 1)),
                      [mosquitto.url], devices=["cab-0", "cab-1", "cab-2"]).start()
    assert ro.run(timeout=60) == "done"
    assert ro.reason == "1 cabinets offline, not offered" and ro.cabs["cab-2"].phase == "pending"
    ro.close()
    late.connect()
    ro = Rollout.resume(str(tmp_path / "rollout.db"), [BrokerOptions(mosquitto.url)], tick=0.1).start()
    assert ro.status == "running"
    assert ro.run(timeout=60) == "done" and ro.reason is None
    assert ro.cabs["cab-2"].phase == "done" and late.fw == "0.2.0"
    ro.close()


def test_time_the_controller_was_down_is_not_held_against_the_cabinets(mosquitto, tmp_path, release_kit, cabinets):
    """Without an update server no cabinet can make progress: after a restart the wave timeout
    counts from the restart, not from the last progress written before it."""
    (cab,) = cabinets(mosquitto.url, ["cab-0"], release_kit["keys"], behaviour="silent")
    settle(None)
    db = str(tmp_path / "rollout.db")
    ro = make_rollout(tmp_path, release_kit["good"], Plan(canary=0, waves=[100], wave_timeout=5),
                      [mosquitto.url]).start()
    ro.run(until=lambda r: r.cabs["cab-0"].phase == "started", timeout=10)
    ro.close()
    # the cabinet is offline too when the controller comes back (so its birth message, which
    # counts as progress, does not hide the question)
    cab.c.publish("aed/v1/cab-0/status", '{"v": 1, "ts": 1800000000, "online": false}', 1, True).wait_for_publish(5)
    st = RolloutStore(db)
    with st.db:
        st.db.execute("UPDATE cabinets SET last_progress = last_progress - 3600")   # down for an hour
    st.close()
    ro = Rollout.resume(db, [BrokerOptions(mosquitto.url)], tick=0.1).start()
    ro.run(timeout=1.0)
    assert ro.cabs["cab-0"].phase == "started"
    assert ro.run(timeout=10) == "halted" and ro.cabs["cab-0"].reason == "timeout"   # ... but it still counts
    ro.close()
