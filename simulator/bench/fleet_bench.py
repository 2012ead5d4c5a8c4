"""`aedsim bench`: how many real-firmware cabinets one machine sustains, against real Mosquitto
shards it starts itself, measured from outside (a separate backend subscriber), side by side
with the common one-paho-client-and-thread-per-device approach.

Phases: start the shards and the backend; boot the fleet (ramp) and keep it running (steady);
stop it and merge the send/receive traces into latencies; then the paho-per-device runs, one
process per step count, up to where they stop working. Every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from simulator.brokers.mosquitto import Mosquitto, MosquittoMissing, find_mosquitto, max_nofile
from simulator.fleet.workers import RunSpec, Workers, plan_sources, raise_nofile, read_trace

_TCK = os.sysconf("SC_CLK_TCK")


# -- brokers -------------------------------------------------------------------------------------
class Shard(Mosquitto):
    """One Mosquitto with the settings used for load (docs/scale.md)."""

    # The backend is one paho client per shard; during a 2,500/s connect ramp it receives
    # ~13,000 messages/s and falls behind for a few seconds. Mosquitto queues (not drops) its
    # QoS 1 messages only up to max_queued_messages: 1000 lost ~5% of the ramp's events.
    LOAD_CONF = ("max_connections -1\nset_tcp_nodelay true\nmax_queued_messages 1000000\n"
                 "log_type error\nlog_type warning\n")

    def __init__(self, workdir: Path):
        super().__init__(workdir, extra_conf=self.LOAD_CONF)

    def start(self) -> "Shard":
        try:
            return super().start(preexec_fn=max_nofile)
        except MosquittoMissing as e:
            raise SystemExit("aedsim bench: %s" % e)
        except RuntimeError as e:
            raise SystemExit("aedsim bench: %s" % e)


# -- CPU and memory from /proc -------------------------------------------------------------------
def _proc_cpu(pid: int) -> float:
    try:
        f = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / _TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def _proc_rss(pid: int) -> int:
    try:
        for line in Path("/proc/%d/status" % pid).read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _machine() -> dict:
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq = v[:7]
    return {"user": user + nice, "system": system, "irq": irq + softirq, "idle": idle + iowait,
            "total": sum(v[:8])}


class CpuMeter:
    """CPU% per named process group and of the machine (user / kernel / softirq / idle) over a
    phase: `mark(name)` starts one, `end()` closes it."""

    def __init__(self) -> None:
        self.groups: dict[str, list[int]] = {}
        self.phases: dict[str, dict] = {}
        self._open = None

    def _take(self):
        return (time.time(), {g: sum(_proc_cpu(p) for p in pids) for g, pids in self.groups.items()},
                _machine())

    def mark(self, name: str) -> None:
        self.end()
        self._open = (name, self._take())

    def end(self) -> None:
        if self._open is None:
            return
        name, (t0, c0, m0) = self._open
        t1, c1, m1 = self._take()
        dt = max(1e-9, t1 - t0)
        tot = max(1, m1["total"] - m0["total"])
        self.phases[name] = {
            "seconds": round(dt, 1),
            "cpu_pct": {g: round(100 * (c1[g] - c0.get(g, 0)) / dt, 1) for g in c1},
            "machine_pct": {k: round(100 * os.cpu_count() * (m1[k] - m0[k]) / tot, 1)
                            for k in ("user", "system", "irq", "idle")},
        }
        self._open = None


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(math.ceil(q / 100 * len(values))) - 1)]


def _latency(sent: dict, recv_t, recv_k, t_from: float, t_to: float) -> dict:
    lat = []
    for t, k in zip(recv_t, recv_k):
        s = sent.get(k)
        if s is not None and t_from <= s < t_to:
            lat.append((t - s) * 1000)
    return {"samples": len(lat), **{"p%g_ms" % q: _r(_pct(lat, q)) for q in (50, 90, 99, 99.9)},
            "max_ms": _r(max(lat) if lat else None)}


def _r(x):
    return round(x, 2) if x is not None else None


# -- the run -------------------------------------------------------------------------------------
async def _fleet_phase(args, shards, work: Path, meter: CpuMeter, sub_pid: int, say) -> dict:
    fleet_key = os.urandom(32)
    spec = RunSpec(cabinets=args.cabinets, brokers=[s.url for s in shards], workers=args.workers,
                   ramp=args.ramp, heartbeat=args.heartbeat, profile=args.profile, seed=args.seed,
                   flash="memory", source_ips=plan_sources(args.cabinets, len(shards), 2),
                   trace_dir=str(work), fleet_key=fleet_key)
    workers = Workers(spec).start()
    meter.groups = {"simulator": [p.pid for p in workers.procs],
                    "brokers": [s.proc.pid for s in shards], "backend": [sub_pid]}
    meter.mark("ramp")
    t0 = time.time()
    deadline = t0 + args.ramp_timeout
    while time.time() < deadline:
        await asyncio.sleep(0.5)
        workers.poll()
        snaps = workers.latest.values()
        if workers.fatal:
            raise SystemExit("aedsim bench: " + "; ".join(workers.fatal))
        if len(workers.latest) == spec.workers and all(s["all_online_t"] for s in snaps):
            break
        if snaps and int(time.time() - t0) % 5 == 0:
            say("  ramp: %d/%d online" % (sum(s["online"] for s in snaps), spec.cabinets))
    t_online = time.time()
    meter.mark("steady")
    say("  all online after %.1f s; steady for %d s" % (t_online - t0, args.steady))
    rss_peak = {}
    end = t_online + args.steady
    unlocks = asyncio.create_task(asyncio.to_thread(
        _unlocks, spec, fleet_key, args.unlocks, min(args.steady * 0.8, args.unlocks * 1.0),
        args.seed)) if args.unlocks else None
    while time.time() < end:
        await asyncio.sleep(1)
        workers.poll()
        for g, pids in meter.groups.items():
            rss_peak[g] = max(rss_peak.get(g, 0), sum(_proc_rss(p) for p in pids))
    meter.end()
    t_steady_end = time.time()
    from simulator.fleet.view import summary
    await workers.stop()
    result = summary(spec, workers.latest, workers.history)
    result["t"] = {"start": t0, "online": t_online, "steady_end": t_steady_end}
    result["rss_peak_mib"] = {g: round(v / 1024, 1) for g, v in rss_peak.items()}
    result["unlock"] = await unlocks if unlocks else {"measured": False}
    return result


def _unlocks(spec: RunSpec, fleet_key: bytes, count: int, over_s: float, seed) -> dict:
    """`count` missions to random cabinets, spread over `over_s` seconds while the fleet runs:
    dispatch's own tool (host_tools/commands/unlock.py) publishes each token and times it to the ack."""
    import random
    try:
        from host_tools.commands import unlock as dispatch_tool
    except ImportError:
        return {"measured": False, "why": "host_tools/commands/unlock.py is not there"}
    from simulator.fleet.runner import device_id, parse_broker, shard_of
    rng = random.Random(seed)
    brokers = [parse_broker(u) for u in spec.brokers]
    ds = [dispatch_tool.Dispatch(h, p, client_id="bench-dispatch-%d" % i)
          for i, (h, p) in enumerate(brokers)]
    lat, results = [], {}
    try:
        for i in range(count):
            n = rng.randint(1, spec.cabinets)
            r = dispatch_tool.unlock(ds[shard_of(n, len(ds))], fleet_key, device_id(n),
                                     "bench-%d" % i, window_s=60, timeout=10)
            results[r["result"]] = results.get(r["result"], 0) + 1
            if r.get("latency_ms") is not None:
                lat.append(r["latency_ms"])
            time.sleep(over_s / max(1, count))
    finally:
        for d in ds:
            d.close()
    return {"measured": True, "sent": count, "results": results, "samples": len(lat),
            "p50_ms": _r(_pct(lat, 50)), "p99_ms": _r(_pct(lat, 99)),
            "max_ms": _r(max(lat) if lat else None), "each_ms": [_r(x) for x in lat]}


def _paho_phase(args, shard_url: str, say) -> dict:
    from simulator.bench.backend import paho_devices
    ctx = mp.get_context("spawn")
    steps = []
    best = None
    for n in [int(x) for x in args.paho_steps.split(",")]:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=paho_devices, args=(shard_url, n, args.paho_interval,
                                                   args.paho_seconds, 15, child), daemon=True)
        t0 = time.time()
        p.start()
        res = None
        if parent.poll(args.paho_seconds + 60):
            res = parent.recv()
        p.join(10)
        if p.is_alive():
            p.kill()
        if res is None:
            res = {"clients": n, "connected": 0, "errors": ["no answer within time"]}
        res["ok"] = res.get("connected") == n and not res.get("errors")
        res["cpu_pct"] = round(100 * res.get("cpu_s", 0) / max(1e-9, res.get("wall_s", 1)), 1)
        res["kib_per_client"] = round(res.get("rss_kib", 0) / max(1, res.get("created", 1)), 1)
        res["elapsed_s"] = round(time.time() - t0, 1)
        steps.append(res)
        say("  paho x%d: %d connected, %d thread errors, max fd %s, %.0f%% CPU, %.0f KiB/client"
            % (n, res.get("connected", 0), res.get("thread_errors", 0), res.get("max_fd"),
               res["cpu_pct"], res["kib_per_client"]))
        if not res["ok"]:
            break
        best = res
    return {"steps": steps, "sustained": best["clients"] if best else 0, "best": best}


async def bench(args) -> dict:
    say = (lambda m: print(m, file=sys.stderr, flush=True))
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="aedsim-bench-"))
    shards = [Shard(work).start() for _ in range(args.shards)]
    say("brokers: %s (nofile %s)" % (", ".join(s.url for s in shards),
                                     ", ".join(str(s.nofile()) for s in shards)))
    from simulator.bench.backend import subscriber
    ctx = mp.get_context("spawn")
    sub_conn, child = ctx.Pipe()
    sub = ctx.Process(target=subscriber, args=([s.url for s in shards], str(work / "recv"), child),
                      daemon=True)
    sub.start()
    if not sub_conn.poll(20):
        raise SystemExit("aedsim bench: the backend subscriber did not start")
    sub_conn.recv()
    meter = CpuMeter()
    out: dict = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                             "python": platform.python_version(),
                             "mosquitto": subprocess.run([find_mosquitto(), "-h"], capture_output=True,
                                                         text=True).stdout.splitlines()[0],
                             "nofile_hard": resource.getrlimit(resource.RLIMIT_NOFILE)[1]},
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "args": {k: v for k, v in vars(args).items() if k != "func"}}
    try:
        say("fleet: %d cabinets, %d workers, %d shards, ramp %s/s, heartbeat %d s"
            % (args.cabinets, args.workers, args.shards, args.ramp, args.heartbeat))
        fleet = await _fleet_phase(args, shards, work, meter, sub.pid, say)
        sub_conn.send("stop")
        sub_conn.poll(60)
        backend = json.loads((work / "recv.json").read_text())
        backend.pop("paho_latency_s", None)
        sent: dict[int, float] = {}
        for w in range(args.workers):
            ts, ks = read_trace(work / ("sent-%d" % w))
            for t, k in zip(ts, ks):
                sent.setdefault(k, t)
        rt, rk = read_trace(work / "recv")
        t = fleet.pop("t")
        fleet["latency"] = {"ramp": _latency(sent, rt, rk, t["start"], t["online"]),
                            "steady": _latency(sent, rt, rk, t["online"], t["steady_end"])}
        fleet["backend"] = backend
        fleet["backend"]["received"] = len(rt)
        fleet["cpu"] = meter.phases
        out["fleet"] = fleet
        if args.paho_steps:
            # A fresh subscriber for the paho phase: it measures t_send carried in the payload.
            sub2_conn, child2 = ctx.Pipe()
            sub2 = ctx.Process(target=subscriber, args=([shards[0].url], str(work / "recv-paho"),
                                                        child2), daemon=True)
            sub2.start()
            sub2_conn.poll(20) and sub2_conn.recv()
            say("paho-mqtt, one client + thread per device, on %s:" % shards[0].url)
            paho = _paho_phase(args, shards[0].url, say)
            sub2_conn.send("stop")
            sub2_conn.poll(60)
            lat = [x * 1000 for x in json.loads((work / "recv-paho.json").read_text())["paho_latency_s"]]
            paho["latency_all_steps"] = {"samples": len(lat), "p50_ms": _r(_pct(lat, 50)),
                                         "p99_ms": _r(_pct(lat, 99)), "max_ms": _r(max(lat) if lat else None)}
            out["paho_per_device"] = paho
            out["ratios"] = _ratios(fleet, paho, args)
        out["unlock"] = fleet.pop("unlock")
        out["bottleneck"] = _bottleneck(fleet)
    finally:
        for s in shards:
            s.stop()
        if sub.is_alive():
            sub.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return out


def _ratios(fleet: dict, paho: dict, args) -> dict:
    best = paho.get("best") or {}
    per_proc = max(w["cabinets"] for w in fleet["per_worker"])
    out = {"devices_per_process": "%d vs %d" % (per_proc, best.get("clients", 0)),
           "devices_per_process_ratio": round(per_proc / best["clients"], 1) if best else None}
    if best:
        out["kib_per_device"] = "%.1f vs %.1f" % (fleet["kib_per_cabinet"], best["kib_per_client"])
    return out


def _bottleneck(fleet: dict) -> dict:
    notes = {}
    for phase, p in fleet["cpu"].items():
        c, m = p["cpu_pct"], p["machine_pct"]
        busiest = max(c, key=c.get)
        notes[phase] = ("%s busiest (%s%%); machine: user %s%%, kernel %s%%, softirq %s%%, idle %s%% "
                        "of %d00%%" % (busiest, c[busiest], m["user"], m["system"], m["irq"],
                                       m["idle"], os.cpu_count()))
    return notes


def print_table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    f = r["fleet"]
    t = Table(title="aedsim bench — %d cabinets (real firmware), %d workers, %d Mosquitto shards"
              % (f["cabinets"], f["workers"], len(f["brokers"])))
    t.add_column("measure")
    t.add_column("aedsim (asyncio, real firmware)", justify="right")
    t.add_column("paho client+thread per device", justify="right")
    best = (r.get("paho_per_device") or {}).get("best") or {}
    lat = f["latency"]["steady"]
    t.add_row("devices sustained per process", str(max(w["cabinets"] for w in f["per_worker"])),
              str(best.get("clients", "-")))
    t.add_row("online at end", "%d / %d" % (f["online"], f["cabinets"]), str(best.get("connected", "-")))
    t.add_row("connect rate (all online)", "%s /s in %s s" % (f["connect_rate_per_s"], f["all_online_s"]),
              "%s clients in %s s" % (best.get("created", "-"), best.get("connect_s", "-")))
    t.add_row("publish rate, steady", "%s msgs/s" % f["publish_rate_steady_per_s"], "")
    t.add_row("latency p50 / p99 (steady)", "%s / %s ms" % (lat["p50_ms"], lat["p99_ms"]),
              "%s / %s ms" % ((r.get("paho_per_device") or {}).get("latency_all_steps", {}).get("p50_ms", "-"),
                              (r.get("paho_per_device") or {}).get("latency_all_steps", {}).get("p99_ms", "-")))
    lr = f["latency"]["ramp"]
    t.add_row("latency p50 / p99 (ramp)", "%s / %s ms" % (lr["p50_ms"], lr["p99_ms"]), "")
    t.add_row("memory per device", "%s KiB" % f["kib_per_cabinet"], "%s KiB" % best.get("kib_per_client", "-"))
    be = f["backend"]
    missing = f["events"] - f["outbox_total"] - be["events"]
    t.add_row("events at backend / created; gaps, dups",
              "%d / %d%s; %d, %d" % (be["events"], f["events"],
                                     " [red](%d missing)[/red]" % missing if missing > 0 else "",
                                     be["gaps"], be["duplicates"]), "")
    ws = f["per_worker"]
    if ws and ws[0].get("loop_lag_max_ms"):
        t.add_row("worker loop lag max; GC pause max (steady)", "%s ms; %s ms" % (
            max(w["loop_lag_max_ms"]["steady"] for w in ws),
            max(w["gc_pauses"]["steady"]["max_ms"] for w in ws)), "")
    u = r.get("unlock") or {}
    if u.get("measured"):
        t.add_row("unlock → ack p50 / p99 (under load)", "%s / %s ms (%s)" % (
            u["p50_ms"], u["p99_ms"], u["results"]), "")
    t.add_row("errors", str(f["errors"]), str(best.get("thread_errors", "-")))
    Console().print(t)
    for phase, note in r["bottleneck"].items():
        Console().print("[bold]%s[/bold]: %s" % (phase, note))


def register(sub) -> None:
    b = sub.add_parser("bench", help="benchmark a big fleet against Mosquitto shards it starts",
                       description="Start Mosquitto shards and a backend subscriber, run a fleet of "
                                   "real-firmware cabinets (ramp, then steady), measure connect rate, "
                                   "message rate, end-to-end latency, CPU and memory, then the "
                                   "paho-client-and-thread-per-device approach up to where it stops.")
    b.add_argument("--cabinets", type=int, default=30000)
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--shards", type=int, default=2)
    b.add_argument("--ramp", type=float, default=2000, metavar="PER_S")
    b.add_argument("--heartbeat", type=int, default=60, metavar="S")
    b.add_argument("--steady", type=int, default=120, metavar="S", help="seconds to run once all are online")
    b.add_argument("--ramp-timeout", type=int, default=180, metavar="S")
    b.add_argument("--profile", default="idle")
    b.add_argument("--unlocks", type=int, default=20, metavar="N",
                   help="missions sent with host_tools/commands/unlock.py during the steady phase, timed "
                        "from publish to the cabinet's ack")
    b.add_argument("--seed", type=int, default=1)
    b.add_argument("--paho-steps", default="100,200,300,330,340,350,400,500",
                   help="client counts to try, ascending; stops at the first that fails ('' to skip)")
    b.add_argument("--paho-interval", type=float, default=10, metavar="S",
                   help="each paho device publishes every S seconds")
    b.add_argument("--paho-seconds", type=float, default=20, metavar="S")
    b.add_argument("--keep", action="store_true", help="keep the work folder (traces, broker logs)")
    b.add_argument("--json", metavar="FILE", help="write the results here too")
    b.set_defaults(func=run)


def run(args) -> int:
    r = asyncio.run(bench(args))
    print_table(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="aedsim")
    register(p.add_subparsers())
    a = p.parse_args(["bench"] + sys.argv[1:])
    sys.exit(a.func(a))
