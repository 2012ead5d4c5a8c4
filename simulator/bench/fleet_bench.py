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
async def _kill_registry(reg, args, say) -> None:
    await asyncio.sleep(args.registry_kill_at)
    reg.kill9()
    say("  registry: SIGKILL at +%g s (%d events stored); restarting in %g s"
        % (args.registry_kill_at, reg.kills[-1]["events_stored_at_kill"], args.registry_down))
    await asyncio.sleep(args.registry_down)
    await asyncio.to_thread(reg.start)


async def _fleet_phase(args, shards, work: Path, meter: CpuMeter, sub_pid: int, say, reg=None) -> dict:
    fleet_key = os.urandom(32)
    spec = RunSpec(cabinets=args.cabinets, brokers=[s.url for s in shards], workers=args.workers,
                   ramp=args.ramp, heartbeat=args.heartbeat, profile=args.profile, seed=args.seed,
                   flash="memory", source_ips=plan_sources(args.cabinets, len(shards), 2),
                   trace_dir=str(work), fleet_key=fleet_key)
    workers = Workers(spec).start()
    meter.groups = {"simulator": [p.pid for p in workers.procs],
                    "brokers": [s.proc.pid for s in shards], "backend": [sub_pid]}
    if reg is not None:
        meter.groups["registry"] = reg.pids  # the same list: a restarted registry is counted too
    meter.mark("ramp")
    t0 = time.time()
    killer = (asyncio.create_task(_kill_registry(reg, args, say))
              if reg is not None and args.registry_kill_at is not None else None)
    deadline = t0 + args.ramp_timeout
    ramp_done = False
    while time.time() < deadline:
        await asyncio.sleep(0.5)
        workers.poll()
        snaps = workers.latest.values()
        if workers.fatal:
            raise SystemExit("aedsim bench: " + "; ".join(workers.fatal))
        if len(workers.latest) == spec.workers and all(s["all_online_t"] for s in snaps):
            ramp_done = True
            break
        if snaps and int(time.time() - t0) % 5 == 0:
            say("  ramp: %d/%d online" % (sum(s["online"] for s in snaps), spec.cabinets))
    t_online = time.time()
    meter.mark("steady")
    if ramp_done:
        say("  all online after %.1f s; steady for %d s" % (t_online - t0, args.steady))
    else:
        say("  RAMP TIMED OUT after %d s: %d/%d online; steady for %d s anyway" % (
            args.ramp_timeout, sum(s["online"] for s in workers.latest.values()), spec.cabinets,
            args.steady))
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
    if killer is not None:
        await killer
    from simulator.fleet.view import summary
    await workers.stop()
    result = summary(spec, workers.latest, workers.history)
    result["t"] = {"start": t0, "online": t_online, "steady_end": t_steady_end}
    result["ramp_timed_out"] = not ramp_done
    result["rss_peak_mib"] = {g: round(v / 1024, 1) for g, v in rss_peak.items()}
    result["unlock"] = await unlocks if unlocks else {"measured": False}
    return result


def _unlocks(spec: RunSpec, fleet_key: bytes, count: int, over_s: float, seed) -> dict:
    """`count` missions to random cabinets, spread over `over_s` seconds while the fleet runs:
    dispatch's own code (host_tools/commands/unlock.py on host_tools.backend's CommandSender)
    publishes each token and times it to the ack."""
    import random
    from host_tools.backend import BrokerOptions, CommandSender
    from host_tools.commands import unlock as dispatch_tool
    from simulator.fleet.runner import device_id, shard_of
    rng = random.Random(seed)
    ds = [CommandSender(BrokerOptions(u), "bench-dispatch-%d-%d" % (os.getpid(), i)).start()
          for i, u in enumerate(spec.brokers)]
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
        # Like aedsim's kib_per_cabinet: the process's RSS growth above its own baseline (taken
        # after imports, before the first client), per device — not the whole process / n.
        res["kib_per_client"] = round((res.get("rss_kib", 0) - res.get("rss_base_kib", 0))
                                      / max(1, res.get("created", 1)), 1)
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
    reg = None
    if args.registry:
        from simulator.bench.registry_run import RegistryRun
        reg = RegistryRun([s.url for s in shards], work).start()
        say("registry: aedgate registry ingest -> %s" % reg.db)
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
        fleet = await _fleet_phase(args, shards, work, meter, sub.pid, say, reg)
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
        if reg is not None:
            say("registry: waiting until it holds the %d events the backend saw" % backend["events_unique"])
            drained = reg.wait_drained(backend["events_unique"])
            time.sleep(3)  # anything counted twice would show now
            reg.stop()
            out["registry"] = reg.result(backend["events_unique"], (t["start"], t["online"]), drained)
            ramp_s = max(1e-9, t["online"] - t["start"])
            out["registry"]["offered_msgs_per_s_during_ramp"] = round(
                sum(1 for x in rt if t["start"] <= x <= t["online"]) / ramp_s)
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
        if reg is not None:
            reg.stop()
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
        out["kib_per_device_measure"] = ("both: process RSS growth above the process's own "
                                         "baseline, divided by its devices")
    last = (paho.get("steps") or [{}])[-1]
    if last and not last.get("ok"):
        out["paho_limit"] = ("paho stopped at %d clients: %s" % (
            last.get("clients", 0), "; ".join((last.get("thread_error_sample") or [])[:1]
                                               + (last.get("errors") or [])[:1]) or "not all connected"))
    out["note"] = ("the real difference is paho's threaded loop: select() cannot watch a "
                   "descriptor >= 1024, and each client holds 3 (its socket and a wake-up "
                   "socketpair), so one process holds at most ~338 paho clients")
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
    missing = f["events"] - f["outbox_total"] - be["events_unique"]
    t.add_row("events at backend / created; gaps, dups",
              "%d / %d%s; %d, %d" % (be["events_unique"], f["events"],
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
    b.add_argument("--target-ramp", type=float, metavar="PER_S",
                   help="connect rate to reach (default 90%% of --ramp; 0: no target)")
    b.add_argument("--target-unlock-p99-ms", type=float, default=100, metavar="MS",
                   help="unlock p99 under load (default 100; 0: no target)")
    b.add_argument("--target-kib", type=float, default=64, metavar="KIB",
                   help="simulator memory per cabinet (default 64; 0: no target)")
    b.add_argument("--registry", action="store_true",
                   help="also run `aedgate registry ingest` (SQLite) on the shards and check it "
                        "stored every event the backend saw, once; report its ingest rate")
    b.add_argument("--registry-kill-at", type=float, metavar="S",
                   help="SIGKILL the registry S seconds into the ramp, restart it (--registry)")
    b.add_argument("--registry-down", type=float, default=2.0, metavar="S",
                   help="seconds the killed registry stays down (default 2)")
    b.add_argument("--keep", action="store_true", help="keep the work folder (traces, broker logs)")
    b.add_argument("--json", metavar="FILE", help="write the results here too")
    b.set_defaults(func=run)


def verdict(r: dict) -> list[str]:
    """What the run failed to show; empty when the fleet ramped in time, every event and
    unlock arrived and the targets (r["targets"]: connect rate, unlock p99, memory per
    cabinet) were met. `aedsim bench` exits 1 when this is not empty."""
    f = r["fleet"]
    be = f["backend"]
    out = []
    if f.get("ramp_timed_out"):
        out.append("ramp timed out: not every cabinet online within --ramp-timeout")
    if f["online"] < f["cabinets"]:
        out.append("%d of %d cabinets online at the end" % (f["online"], f["cabinets"]))
    if f["errors"]:
        out.append("%s errors in the fleet" % f["errors"])
    missing = f["events"] - f["outbox_total"] - be["events_unique"]
    if missing > 0:
        out.append("%d events created never reached the backend" % missing)
    if be["gaps"]:
        out.append("%d seq gaps at the backend not explained by events_dropped" % be["gaps"])
    u = r.get("unlock") or {}
    if u.get("measured") and u["results"].get("accepted", 0) != u["sent"]:
        out.append("unlocks: %s of %d accepted" % (u["results"], u["sent"]))
    tg = r.get("targets") or {}
    if tg.get("connect_per_s") and (f.get("connect_rate_per_s") or 0) < tg["connect_per_s"]:
        out.append("connect ramp %s/s below the target %g/s" % (f.get("connect_rate_per_s"), tg["connect_per_s"]))
    if tg.get("unlock_p99_ms") and u.get("measured") and (u.get("p99_ms") or 0) > tg["unlock_p99_ms"]:
        out.append("unlock p99 %s ms above the target %g ms" % (u.get("p99_ms"), tg["unlock_p99_ms"]))
    if tg.get("kib_per_cabinet") and (f.get("kib_per_cabinet") or 0) > tg["kib_per_cabinet"]:
        out.append("%s KiB per cabinet above the target %g KiB" % (f.get("kib_per_cabinet"), tg["kib_per_cabinet"]))
    g = r.get("registry")
    if g is not None:
        if g["lost"] or g["extra"] or g["missing_seqs"]:
            out.append("registry: %d events lost, %d extra, %d seqs missing" % (
                g["lost"], g["extra"], g["missing_seqs"]))
        if g["drained_s_after_fleet_stop"] is None:
            out.append("registry: never caught up with the backend")
    return out


def run(args) -> int:
    r = asyncio.run(bench(args))
    r["targets"] = {"connect_per_s": args.ramp * 0.9 if args.target_ramp is None else args.target_ramp,
                    "unlock_p99_ms": args.target_unlock_p99_ms, "kib_per_cabinet": args.target_kib}
    r["failed"] = verdict(r)
    print_table(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    print(json.dumps(r))
    for why in r["failed"]:
        print("aedsim bench: FAILED: %s" % why, file=sys.stderr)
    return 1 if r["failed"] else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="aedsim")
    register(p.add_subparsers())
    a = p.parse_args(["bench"] + sys.argv[1:])
    sys.exit(a.func(a))
