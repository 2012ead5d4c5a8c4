"""`aedgate rollout`: bad input is one line and a documented exit status; a whole rollout from
the command line against SCRIPTED cabinets (tests/rollout/scripted_cabinet.py) on a real
Mosquitto; status and versions read the database."""
from __future__ import annotations

import json
import time

import pytest

from host_tools.cli import main
from tests.fixtures import free_port
from tests.rollout.scripted_cabinet import ScriptedCabinet


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code, err, want_code):
    assert code == want_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aedgate: error: "), err
    return lines[0]


def test_help_teaches(capsys):
    with pytest.raises(SystemExit):
        main(["rollout", "start", "--help"])
    out = capsys.readouterr().out
    for words in ("--canary", "--waves", "--rate", "--halt-at", "examples:", "Exit status",
                  "rollout status --db", "Ctrl-C leaves the rollout resumable"):
        assert words in out, words


def test_bad_input_is_one_line(capsys, tmp_path, release_kit):
    db = tmp_path / "r.db"
    broker = ["--broker", "mqtt://127.0.0.1:%d" % free_port()]
    cases = [
        (["rollout", "start", tmp_path / "nope", "--db", db] + broker, 2, "does not exist"),
        (["rollout", "start", release_kit["unsigned"], "--db", db] + broker, 2, "not signed"),
        (["rollout", "start", release_kit["stranger"], "--db", db, "--key", release_kit["pub"]] + broker,
         2, "unknown_kid"),
        (["rollout", "start", release_kit["good"], "--db", db, "--waves", "50,10"] + broker, 2, "waves"),
        (["rollout", "start", release_kit["good"], "--db", db, "--halt-at", "0"] + broker, 2, "--halt-at"),
        (["rollout", "start", release_kit["good"], "--db", db, "--rate", "fast"] + broker, 2, "--rate"),
        (["rollout", "start", release_kit["good"], "--db", db, "--wave-timeout", "soon"] + broker, 2, "duration"),
        (["rollout", "start", release_kit["good"], "--db", db, "--devices", tmp_path / "none.txt"] + broker,
         2, "cannot read device list"),
        (["rollout", "start", release_kit["good"], "--db", db] + broker, 3, "cannot reach broker"),
        (["rollout", "start", release_kit["good"], "--db", tmp_path / "no" / "r.db"] + broker, 2,
         "folder does not exist"),
        (["rollout", "status", "--db", tmp_path / "missing.db"], 2, "does not exist"),
        (["rollout", "pause", "--db", tmp_path / "missing.db"], 2, "does not exist"),
        (["rollout", "resume", "--db", tmp_path / "missing.db"] + broker, 2, "does not exist"),
    ]
    (tmp_path / "bad-devices.txt").write_text("cab-1\ncab/2\n")
    cases.append((["rollout", "start", release_kit["good"], "--db", db, "--devices",
                   tmp_path / "bad-devices.txt"] + broker, 2, "line 2"))
    notdb = tmp_path / "notes.txt"
    notdb.write_text("this is not SQLite " * 100)
    cases.append((["rollout", "start", release_kit["good"], "--db", notdb] + broker, 2,
                  "not a rollout database"))
    cases.append((["rollout", "status", "--db", notdb], 2, "not a rollout database"))
    for argv, code, words in cases:
        got, out, err = run(capsys, *argv)
        assert words in one_line(got, err, code), (argv, err)


def test_start_status_versions_and_halt_from_the_command_line(capsys, tmp_path, mosquitto, release_kit):
    good = [ScriptedCabinet(mosquitto.url, "cab-%d" % i, release_kit["keys"]) for i in range(3)]
    try:
        time.sleep(0.3)
        db = tmp_path / "r.db"
        code, out, err = run(capsys, "rollout", "start", release_kit["good"], "--db", db,
                             "--broker", mosquitto.url, "--key", release_kit["pub"], "--canary", "1",
                             "--waves", "50,100", "--halt-at", "1", "--discover", "2", "--plain")
        assert code == 0, err
        assert "done; 3 cabinets: 3 done, 0 failed" in out
        code, out, err = run(capsys, "rollout", "status", "--db", db, "--format", "json")
        st = json.loads(out)
        assert st["rollout"]["status"] == "done" and st["rollout"]["version"] == "0.2.0"
        assert sum(w["done"] for w in st["waves (wave 0 = canary)"]) == 3
        code, out, err = run(capsys, "rollout", "status", "--db", db)
        assert code == 0 and "rollout 1: release 0.2.0" in out and "canary" not in err
        code, out, err = run(capsys, "rollout", "versions", "--db", db, "--format", "csv")
        assert out.splitlines() == ["fw,cabinets,online,on_trial,share_pct", "0.2.0,3,3,0,100.0"]
        # a second start of the same release in the same database is a resume, and it is done
        code, out, err = run(capsys, "rollout", "start", release_kit["good"], "--db", db,
                             "--broker", mosquitto.url, "--discover", "2", "--plain")
        assert code == 0 and "resumed" in err and "with the plan it was started with (canary 1," in err, err
    finally:
        for c in good:
            c.close()
    bad = [ScriptedCabinet(mosquitto.url, "bad-%d" % i, release_kit["keys"], behaviour="rollback")
           for i in range(3)]
    try:
        time.sleep(0.3)
        db = tmp_path / "bad.db"
        (tmp_path / "devices.txt").write_text("# canary first\nbad-2\nbad-0\nbad-1\n")
        code, out, err = run(capsys, "rollout", "start", release_kit["good"], "--db", db,
                             "--broker", mosquitto.url, "--devices", tmp_path / "devices.txt",
                             "--canary", "1", "--halt-at", "1", "--plain")
        assert code == 1, err
        assert "halted" in out and "1 of 1 started cabinets failed" in out
        code, out, err = run(capsys, "rollout", "status", "--db", db, "--format", "json")
        st = json.loads(out)
        assert [f["cabinet"] for f in st["failed cabinets"]] == ["bad-2"]
        assert st["failed cabinets"][0]["reason"] == "rolled_back:trial_timeout"
        assert "update_trial_s" in st["failed cabinets"][0]["meaning"]
        code, out, err = run(capsys, "rollout", "resume", "--db", db, "--broker", mosquitto.url)
        assert "halted" in one_line(code, err, 2)
    finally:
        for c in bad:
            c.close()
