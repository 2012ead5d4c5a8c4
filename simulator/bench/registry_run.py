"""`aedsim bench --registry`: the reference registry (`aedgate registry ingest`, SQLite) as its
own process on the bench's broker shards, fed by the fleet's ramp; optionally killed with
SIGKILL mid-ramp and restarted (`--registry-kill-at`). Afterwards: did it store every event the
separate backend subscriber saw, exactly once, and how fast did it ingest."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

CLIENT_ID = "bench-registry"


def _cpu(pid: int) -> float:
    try:
        f = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class RegistryRun:
    def __init__(self, urls: list[str], work: Path):
        self.urls = urls
        self.db = work / "registry.db"
        self.logpath = work / "registry.log"
        self.proc: subprocess.Popen | None = None
        self.pids: list[int] = []
        self.kills: list[dict] = []
        self.cpu_s = 0.0  # CPU time of every registry process so far (read before each stop)

    def start(self, timeout: float = 60) -> "RegistryRun":
        log = open(self.logpath, "a")
        mark = self.logpath.stat().st_size
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "host_tools.cli", "registry", "ingest", "--broker", ",".join(self.urls),
             "--db", str(self.db), "--client-id", CLIENT_ID],
            stdout=log, stderr=log, cwd=str(Path(__file__).resolve().parents[2]))
        log.close()
        self.pids.append(self.proc.pid)
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.logpath.read_text()[mark:]
            if "registry: ingesting" in text:
                return self
            if self.proc.poll() is not None:
                raise SystemExit("aedsim bench: the registry exited: %s" % text.strip()[-300:])
            time.sleep(0.1)
        raise SystemExit("aedsim bench: the registry did not subscribe within %g s" % timeout)

    def kill9(self) -> None:
        """SIGKILL, as a crash: no commit, no DISCONNECT."""
        stored = self.count("SELECT count(*) FROM events")
        self.cpu_s += _cpu(self.proc.pid)
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.kills.append({"t": time.time(), "events_stored_at_kill": stored})

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.cpu_s += _cpu(self.proc.pid)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def count(self, sql: str) -> int:
        try:
            con = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=10)
        except sqlite3.OperationalError:
            return 0
        try:
            return con.execute(sql).fetchone()[0] or 0
        except sqlite3.OperationalError:
            return 0
        finally:
            con.close()

    def wait_drained(self, expected_events: int, timeout: float = 300) -> float | None:
        """Seconds until the registry holds `expected_events` events (None: it never did)."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.count("SELECT count(*) FROM events") >= expected_events:
                return time.time() - t0
            time.sleep(0.5)
        return None

    def result(self, expected_events: int, t_ramp: tuple[float, float], drained_s: float | None) -> dict:
        con = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=10)
        try:
            events = con.execute("SELECT count(*) FROM events").fetchone()[0]
            per_dev = con.execute("SELECT count(*), coalesce(sum(hi - n), 0) FROM (SELECT max(seq) hi, "
                                  "count(*) n FROM events GROUP BY device)").fetchone()
            rows = con.execute("SELECT t, seconds, messages, events_new, commit_ms FROM ingest_log "
                               "ORDER BY t").fetchall()
            cabinets = con.execute("SELECT count(*) FROM cabinets").fetchone()[0]
            states = con.execute("SELECT count(*) FROM latest_state").fetchone()[0]
        finally:
            con.close()
        # ingest_log: one row per ~1 s in which something was committed
        secs = sum(r[1] for r in rows)
        total_msgs = sum(r[2] for r in rows)
        ramp_rows = [r for r in rows if t_ramp[0] <= r[0] - r[1] and r[0] <= t_ramp[1] + 1.5]
        return {"events_stored": events, "events_at_backend": expected_events,
                "lost": max(0, expected_events - events), "extra": max(0, events - expected_events),
                "missing_seqs": per_dev[1], "cabinets": cabinets, "latest_states": states,
                "messages_committed": total_msgs,
                "busy_seconds": round(secs, 1),
                "msgs_per_s_while_busy": round(total_msgs / secs) if secs else None,
                "msgs_per_s_peak_1s": max((round(r[2] / r[1]) for r in rows), default=0),
                "events_per_s_peak_1s": max((round(r[3] / r[1]) for r in rows), default=0),
                "msgs_per_s_during_ramp": round(sum(r[2] for r in ramp_rows)
                                                / max(1e-9, sum(r[1] for r in ramp_rows))) if ramp_rows else None,
                "commit_ms_total": round(sum(r[4] for r in rows)),
                "per_second": [(round(r[0] - t_ramp[0], 1), r[2], r[3]) for r in rows],
                "drained_s_after_fleet_stop": None if drained_s is None else round(drained_s, 1),
                "cpu_s": round(self.cpu_s, 1),
                "cpu_us_per_msg": round(1e6 * self.cpu_s / total_msgs, 1) if total_msgs else None,
                "kills": self.kills, "db_mib": round(self.db.stat().st_size / 2**20, 1)}


# -- ingest capacity: drain a backlog ----------------------------------------------------------
def _publish_backlog(url: str, cabinets: int, events_each: int) -> int:
    """What a ramp of `cabinets` leaves for the registry: per cabinet a retained status and
    state, `events_each` events (seq 1..), and a second state; published at QoS 1 by paho
    clients standing in for cabinets (4 of them, one per quarter of the fleet)."""
    import json
    import threading

    import paho.mqtt.client as mqtt
    host, port = url.split("//")[1].split(":")
    now = int(time.time())
    state = {"v": 1, "ts": now, "door": "closed", "lock": "locked", "battery_mv": 12700, "battery_pct": 95,
             "mains": True, "temp_c": 21.5, "pads_expiry": "2027-01-31", "pads_days_left": 400,
             "aed_battery_expiry": "2027-06-30", "aed_battery_days_left": 550, "alarms": [], "fw": "0.3.0",
             "uptime_s": 5, "service_needed": False, "outbox": 0}
    status = {"v": 1, "ts": now, "online": True, "fw": "0.3.0", "reset_cause": "power_on", "boot_ts": now}
    sent = [0]
    lock = threading.Lock()

    def part(k: int, n_parts: int) -> None:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="backlog-%d-%d" % (os.getpid(), k))
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.connect(host, int(port))
        c.loop_start()
        last = None
        n = 0
        for i in range(k, cabinets, n_parts):
            did = "cab-%05d" % (i + 1)
            t = "aed/v1/%s/" % did
            c.publish(t + "status", json.dumps(status), 1, True)
            c.publish(t + "state", json.dumps(state), 1, True)
            for seq in range(1, events_each + 1):
                c.publish(t + "event", json.dumps({"v": 1, "ts": now, "seq": seq, "type": "boot",
                                                   "cause": "power_on", "fw": "0.3.0"}), 1)
            last = c.publish(t + "state", json.dumps(dict(state, uptime_s=65)), 1, True)
            n += 3 + events_each
        last.wait_for_publish(120)
        c.loop_stop()
        c.disconnect()
        with lock:
            sent[0] += n
    threads = [threading.Thread(target=part, args=(k, 4)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sent[0]


def drain(args) -> dict:
    """Ingest capacity on this machine: the registry is down while a fleet's ramp is published
    (its durable session queues it at the broker); then it starts and drains the backlog.
    With --kill-at, it is SIGKILLed that many seconds into the drain and restarted."""
    import platform
    import tempfile

    from simulator.brokers.mosquitto import Mosquitto, max_nofile
    work = Path(tempfile.mkdtemp(prefix="aedsim-registry-"))
    broker = Mosquitto(work, extra_conf="max_queued_messages 10000000\nset_tcp_nodelay true\n" + args.broker_conf.replace("\\n", "\n")).start(
        preexec_fn=max_nofile)
    reg = RegistryRun([broker.url], work)
    try:
        reg.start()   # creates the durable session (subscriptions)
        reg.stop()
        t = time.time()
        sent = _publish_backlog(broker.url, args.cabinets, args.events)
        publish_s = time.time() - t
        expected = args.cabinets * args.events
        t0 = time.time()
        reg.start()
        if args.kill_at:
            time.sleep(max(0.0, t0 + args.kill_at - time.time()))
            reg.kill9()
            time.sleep(1.0)
            reg.start()
        drained = reg.wait_drained(expected, timeout=args.timeout)
        # the last state of each cabinet comes after its events: wait for those too
        deadline = time.time() + 60
        while time.time() < deadline and reg.count("SELECT count(*) FROM latest_state WHERE json_extract("
                                                   "body, '$.uptime_s') = 65") < args.cabinets:
            time.sleep(0.2)
        total_s = time.time() - t0
        time.sleep(2)
        reg.stop()
        res = reg.result(expected, (t0, t0 + total_s), drained and total_s)
        res.pop("per_second", None)
        res.update({"cabinets": args.cabinets, "events_each": args.events, "messages_published": sent,
                    "publish_s": round(publish_s, 1), "drain_s": round(total_s, 1),
                    "msgs_per_s_drain": round(sent / total_s), "events_per_s_drain": round(expected / total_s),
                    "latest_states_final": reg.count("SELECT count(*) FROM latest_state WHERE "
                                                     "json_extract(body, '$.uptime_s') = 65"),
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "kernel": platform.release()},
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        return res
    finally:
        reg.stop()
        broker.stop()


def main(argv=None) -> int:
    import argparse
    import json
    p = argparse.ArgumentParser(prog="python -m simulator.bench.registry_run",
                                description="Ingest capacity of `aedgate registry` on this machine: "
                                            "drain a fleet ramp's backlog from Mosquitto into SQLite.")
    p.add_argument("--cabinets", type=int, default=30000)
    p.add_argument("--events", type=int, default=1, metavar="N", help="events per cabinet (default 1)")
    p.add_argument("--kill-at", type=float, metavar="S", help="SIGKILL the registry S s into the drain, restart")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--broker-conf", default="", metavar="LINES", help="extra mosquitto.conf lines (\\n-separated)")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    r = drain(a)
    print(json.dumps(r, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2) + "\n")
    ok = not (r["lost"] or r["extra"] or r["missing_seqs"]) and r["latest_states_final"] == a.cabinets
    if not ok:
        print("registry drain: FAILED (lost %d, extra %d, missing seqs %d, final states %d/%d)" % (
            r["lost"], r["extra"], r["missing_seqs"], r["latest_states_final"], a.cabinets), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
