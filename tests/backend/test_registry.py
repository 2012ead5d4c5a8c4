"""`aedgate registry`: ingest into SQLite on a real Mosquitto with real paho publishers; resume
after kill -9 with nothing lost or counted twice; the operator's reports as table, CSV, JSON."""
import csv
import datetime as dt
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from tests.backend.conftest import Cabinet, state, wait_until
from tests.fixtures import ROOT, Mosquitto, free_port

QUEUE_CONF = "max_queued_messages 1000000\n"


def ingest(url, db, *extra, client_id="reg-test"):
    return subprocess.Popen([sys.executable, "-m", "host_tools.cli", "registry", "ingest", "--broker", url,
                             "--db", str(db), "--client-id", client_id, *extra],
                            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def report(db, kind, *extra):
    r = subprocess.run([sys.executable, "-m", "host_tools.cli", "registry", "report", kind, "--db", str(db),
                        *extra], cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    return r


def count(db, sql):
    con = sqlite3.connect(str(db))
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def wait_subscribed(proc):
    """The ingest says so once every shard's SUBACK is in."""
    line = proc.stderr.readline()
    assert "registry: ingesting" in line, line + proc.stderr.read()


def test_kill_9_mid_stream_and_restart_loses_nothing_counts_nothing_twice(tmp_path):
    devices, per_device = 40, 150
    db = tmp_path / "registry.db"
    with Mosquitto(tmp_path, extra_conf=QUEUE_CONF) as broker:
        p = ingest(broker.url, db)
        wait_subscribed(p)
        cabs = [Cabinet(broker.url, "cab-%04d" % (i + 1)) for i in range(devices)]
        done = threading.Event()

        def publish():
            for seq in range(1, per_device + 1):
                for c in cabs:
                    body = {"v": 1, "ts": int(time.time()), "seq": seq, "type": "door_opened"}
                    c.c.publish("aed/v1/%s/event" % c.device, json.dumps(body), 1)
                if seq == 1:  # QoS 1 redelivery as the broker or a device may do it
                    for c in cabs[:5]:
                        c.c.publish("aed/v1/%s/event" % c.device, json.dumps(
                            {"v": 1, "ts": int(time.time()), "seq": 1, "type": "door_opened"}), 1)
                time.sleep(0.01)
            done.set()
        t = threading.Thread(target=publish)
        t.start()
        try:
            assert wait_until(lambda: os.path.exists(db) and count(db, "SELECT count(*) FROM events") > 1500, 30)
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            stored_at_kill = count(db, "SELECT count(*) FROM events")
            time.sleep(0.5)  # the fleet goes on publishing while the registry is down
            p = ingest(broker.url, db)
            wait_subscribed(p)
            done.wait(60)
            total = devices * per_device
            assert wait_until(lambda: count(db, "SELECT count(*) FROM events") >= total, 60)
            time.sleep(1.0)  # anything extra would arrive now
            assert stored_at_kill < total  # the kill really was mid-stream
            assert count(db, "SELECT count(*) FROM events") == total
            assert count(db, "SELECT count(*) FROM (SELECT device FROM events GROUP BY device "
                             "HAVING count(*) = %d AND max(seq) = %d)" % (per_device, per_device)) == devices
            r = report(db, "gaps", "--format", "json")
            assert r.returncode == 0 and json.loads(r.stdout)["rows"] == []
        finally:
            p.send_signal(signal.SIGINT)
            p.wait(20)
            t.join()
            for c in cabs:
                c.close()


def test_reports_offline_expiring_alarms_checks_firmware(tmp_path):
    db = tmp_path / "r.db"
    today = dt.datetime.now(dt.timezone.utc).date()
    with Mosquitto(tmp_path, extra_conf=QUEUE_CONF) as broker:
        p = ingest(broker.url, db)
        wait_subscribed(p)
        a, b, c = (Cabinet(broker.url, d) for d in ("cab-a", "cab-b", "cab-c"))
        online = lambda fw: {"online": True, "fw": fw, "reset_cause": "power_on", "boot_ts": int(time.time())}  # noqa: E731
        try:
            a.pub("status", online("0.3.0"), retain=True)
            b.pub("status", online("0.3.0"), retain=True)
            c.pub("status", online("0.2.9"), retain=True)
            a.pub("state", state(pads_expiry=(today + dt.timedelta(days=10)).isoformat(), pads_days_left=10,
                                 alarms=["pads_expiring"]), retain=True)
            b.pub("state", state(aed_battery_expiry=(today - dt.timedelta(days=2)).isoformat(),
                                 aed_battery_days_left=-2, service_needed=True, alarms=["service_needed"]),
                  retain=True)
            c.pub("state", state(), retain=True)
            b.pub("ack", {"cmd": "unlock", "result": "accepted", "cti": "00" * 16, "mission": "M-1"})
            b.event(1, "unlocked", mission="M-1", window_s=60)
            b.event(2, "door_opened", mission="M-1")
            b.event(3, "relocked", mission="M-1", reason="door_closed")
            c.pub("status", {"online": False}, retain=True)  # c goes offline
            assert wait_until(lambda: count(db, "SELECT count(*) FROM events") == 3
                              and count(db, "SELECT count(*) FROM cabinets WHERE online = 0") == 1, 20)
            r = report(db, "expiring", "--days", "30", "--format", "csv")
            rows = list(csv.DictReader(io.StringIO(r.stdout)))
            assert [(x["cabinet"], x["item"], x["status"]) for x in rows] == [
                ("cab-b", "AED battery", "EXPIRED"), ("cab-a", "pads", "expiring")], r.stdout
            assert json.loads(report(db, "alarms", "--format", "json").stdout)["rows"][0]["cabinet"] == "cab-a"
            chk = json.loads(report(db, "checks", "--format", "json").stdout)["rows"]
            assert chk == [dict(chk[0], cabinet="cab-b", last_mission="M-1")] and chk[0]["relocked_utc"]
            fw = {x["fw"]: x["cabinets"] for x in json.loads(report(db, "firmware", "--format", "json").stdout)["rows"]}
            assert fw == {"0.3.0": 2, "0.2.9": 1}
            off = json.loads(report(db, "offline", "--for", "0s", "--format", "json").stdout)["rows"]
            assert [x["cabinet"] for x in off] == ["cab-c"]
            assert json.loads(report(db, "offline", "--for", "1h", "--format", "json").stdout)["rows"] == []
            table = report(db, "summary").stdout
            assert "needing a check" in table and "events" in table
        finally:
            p.send_signal(signal.SIGINT)
            p.wait(20)
            for x in (a, b, c):
                x.close()


def test_registry_cli_errors_are_one_line(tmp_path):
    r = report(tmp_path / "missing.db", "alarms")
    assert r.returncode == 2 and "no registry database" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "x.db").write_text("not sqlite")
    r = report(tmp_path / "x.db", "alarms")
    assert r.returncode == 2 and "not a registry database" in r.stderr
    r = report(tmp_path / "missing.db", "offline", "--for", "soon")
    assert r.returncode == 2
    p = ingest("mqtt://127.0.0.1:%d" % free_port(), tmp_path / "y.db")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 3 and err.strip().startswith("aedgate: error: cannot reach broker")
