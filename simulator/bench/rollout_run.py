"""`aedsim rollout`: a staged firmware rollout across a simulated fleet (issue 12, docs/updates.md).

It starts what a real rollout has: Mosquitto shards, the fleet (worker processes, every cabinet
the real firmware, booting its app slot like boot.py: simulator/fleet/slotboot.py), a backend
subscriber that checks every event's seq (gaps), dispatch sending unlocks throughout, and the
rollout controller of `aedgate rollout` (host_tools/rollout, as a library) serving a release
built and signed like an operator's (`aedgate release build --source` + `sign`, a throw-away key
whose public half is in the cabinets' `release_keys`). Releases (simulator/fleet/releases.py):
`good`; `crash` (crashes at every boot: rolled back by the crash-loop count); `offline` (never
comes online: rolled back when `update_trial_s` runs out).

It prints a live line per second and writes JSON: time to 100 %, what limited it, unlock p99
during the rollout, event gaps, the wave a bad release halted at, and how many cabinets are back
on the old version, with the reason each gave.
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from typing import Callable
from pathlib import Path

from simulator.bench.fleet_bench import CpuMeter, Shard, _pct, _proc_rss, _r
from simulator.fleet.workers import RunSpec, Workers, plan_sources, raise_nofile, slices

def _root_version() -> str:
    """What the cabinets run before the rollout: the simulator's own firmware/ (the root)."""
    import simulator  # noqa: F401  (firmware/ on sys.path)
    from aedgate import VERSION
    return VERSION


def spread_over_workers(cabinets: int, workers: int) -> list[str]:
    """The rollout's device order (its waves take cabinets in this order): one from each
    worker process in turn. Each worker holds a contiguous slice of ids (workers.slices), so in
    sorted order the canary and every wave up to 50 % fell on the first worker while the other
    one idled (measured: 79 % vs 5 % CPU at 1,000 cabinets), and that worker's loop carried
    twice the downloads, twice the lag, for every unlock it held."""
    from simulator.fleet.runner import device_id
    ids = [[device_id(first + i) for i in range(count)] for first, count in slices(cabinets, workers)]
    return [ids[w][i] for i in range(max(len(s) for s in ids)) for w in range(workers) if i < len(ids[w])]


def _next_version(v: str) -> str:
    a, b, c = (int(x) for x in v.split("."))
    return "%d.%d.%d" % (a, b + 1, 0)


class Unlocks:
    """Dispatch during the rollout: a mission to a random cabinet every `every_s`, through the
    project's own tool (host_tools/commands/unlock.py), timed from publish to the cabinet's ack."""

    def __init__(self, brokers: list[str], fleet_key: bytes, cabinets: int, every_s: float,
                 window_s: int, seed):
        self.brokers, self.key, self.cabinets, self.every = brokers, fleet_key, cabinets, every_s
        self.window = window_s
        self.rng = random.Random(seed)
        self.lat: list[tuple[float, float, str]] = []   # (send time, ms, the cabinet's rollout phase)
        # The target's phase in the rollout (pending / started / done), read at the send and at
        # the ack: "started->done" means it finished its update (and so reset) meanwhile.
        self.phase_of: Callable[[str], str] | None = None
        self.missed: list[tuple[str, str]] = []    # (device, result) of missions not accepted
        self.results: Counter = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="unlocks")

    def _run(self) -> None:
        from host_tools.backend import BrokerOptions, CommandSender
        from host_tools.commands import unlock as dispatch_tool
        from simulator.fleet.runner import device_id, shard_of
        ds = [CommandSender(BrokerOptions(u), "rollout-dispatch-%d-%d" % (os.getpid(), i)).start()
              for i, u in enumerate(self.brokers)]
        i = 0
        try:
            while not self.stop.wait(self.every):
                n = self.rng.randint(1, self.cabinets)
                t = time.time()
                p0 = self._phase(device_id(n))
                r = dispatch_tool.unlock(ds[shard_of(n, len(ds))], self.key, device_id(n),
                                         "rollout-%d" % i, window_s=self.window, timeout=10)
                p1 = self._phase(device_id(n))
                i += 1
                self.results[r["result"]] += 1
                if r["result"] != "accepted":
                    self.missed.append((device_id(n), r["result"]))
                if r.get("latency_ms") is not None:
                    self.lat.append((t, r["latency_ms"], p0 if p0 == p1 else "%s->%s" % (p0, p1)))
        finally:
            for d in ds:
                d.close()

    def _phase(self, device: str) -> str:
        try:
            return self.phase_of(device) if self.phase_of else "pending"
        except Exception:  # (read from another thread while the controller changes it)
            return "?"

    def report(self, t_from: float, t_to: float) -> dict:
        during = [(ms, ph) for t, ms, ph in self.lat if t_from <= t <= t_to]
        lat = [ms for ms, _ in during]
        by_phase: dict = {}
        for ph in sorted(set(ph for _, ph in during)):
            v = [ms for ms, p in during if p == ph]
            by_phase[ph] = {"n": len(v), "p50_ms": _r(_pct(v, 50)), "p99_ms": _r(_pct(v, 99)),
                            "max_ms": _r(max(v))}
        return {"sent": sum(self.results.values()), "results": dict(self.results),
                "samples_during_rollout": len(lat), "p50_ms": _r(_pct(lat, 50)),
                "p99_ms": _r(_pct(lat, 99)), "max_ms": _r(max(lat) if lat else None),
                "by_phase": by_phase,
                "not_accepted": [{"device": d, "result": res} for d, res in self.missed]}


def _phase(ro, device: str) -> str:
    """A cabinet's place in the rollout as the controller sees it: pending, done, failed, or
    while started: `started:updating` (online on the old version: offered, downloading,
    checking, installing), `started:offline` (resetting into the new slot, or lost) and
    `started:trial` (the new version online, not yet confirmed)."""
    c = ro.cabs.get(device)
    if c is None or c.phase != "started":
        return c.phase if c is not None else "pending"
    f = ro.fleet.get(device)
    if not (f and f[3]):
        return "started:offline"
    return "started:trial" if f[2] else "started:updating"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _line(ro, t0: float, workers: Workers) -> str:
    c = ro.counts()
    n = max(1, c["cabinets"])
    pct = 100.0 * c["done"] / n
    bar = "#" * int(pct / 4) + "." * (25 - int(pct / 4))
    online = sum(s["online"] for s in workers.latest.values())
    return ("[%s] %5.1f%%  +%5.0fs  %-8s wave %d/%d  done %d  started %d  failed %d  pending %d"
            "  online %d/%d  blocks %d" % (bar, pct, time.time() - t0, ro.status, ro.wave,
                                           len(ro.by_wave) - 1, c["done"], c["started"],
                                           c["failed"], c["pending"], online, n, ro.server.served))


def _to_fetch(rel: Path, manifest: dict, block: int | None) -> dict:
    """What each cabinet must download of release `rel`: release.cose and the files that differ
    from the package on its flash (the factory install, simulator/world/flash.py); the others
    are copied on the cabinet's flash (firmware/aedgate/update.py)."""
    import hashlib
    from aedgate.config import SCHEMA
    from host_tools.releases import RELEASE_FILE
    from simulator.world.flash import factory_files
    top, pkg = factory_files()
    have = dict(top, **{"aedgate/" + k: v for k, v in pkg.items()})
    block = block or SCHEMA["update_block"][1]
    changed = [f for f in manifest["files"]
               if f[0] not in have or hashlib.sha256(have[f[0]]).digest() != bytes(f[2])]
    cose = (rel / RELEASE_FILE).stat().st_size
    blocks = -(-cose // block) + sum(-(-f[1] // block) for f in changed)
    return {"changed_files": [f[0] for f in changed], "fetch_bytes": cose + sum(f[1] for f in changed),
            "blocks_per_cabinet": blocks}


async def rollout(args) -> dict:
    from host_tools.backend import BrokerOptions
    from host_tools.rollout import Plan, Rollout
    from host_tools.rollout.plan import parse_halt, parse_waves
    from simulator.bench.backend import subscriber
    from simulator.fleet import releases
    from simulator.fleet.runner import device_id
    import multiprocessing as mp

    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="aedsim-rollout-"))
    old = _root_version()
    new = args.version or _next_version(old)
    out: dict = {"machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                             "python": platform.python_version()},
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "args": {k: v for k, v in vars(args).items() if k != "func"},
                 "release": {"kind": args.release, "version": new, "from": old}}
    shards = []
    sub = workers = ro = unl = None
    try:
        key, entry = releases.make_key(work)
        rel = work / ("release-%s-%s" % (args.release, new))
        m = releases.build(rel, new, args.release, key, work)
        out["release"].update({"id": releases.release_id(rel), "files": len(m["files"]),
                               "bytes": sum(f[1] for f in m["files"])})
        out["release"].update(_to_fetch(rel, m, args.update_block))
        _say("each cabinet fetches %d blocks (%d bytes): release.cose + %d changed files"
             % (out["release"]["blocks_per_cabinet"], out["release"]["fetch_bytes"],
                len(out["release"]["changed_files"])))
        _say("release %s %s (%s): %d files, %d bytes, signed by kid %s" % (
            new, args.release, out["release"]["id"], len(m["files"]), out["release"]["bytes"],
            entry["kid"]))
        shards = [Shard(work).start() for _ in range(args.shards)]
        urls = [s.url for s in shards]
        _say("brokers: %s" % ", ".join(urls))
        ctx = mp.get_context("spawn")
        sub_conn, child = ctx.Pipe()
        sub = ctx.Process(target=subscriber, args=(urls, str(work / "recv"), child), daemon=True)
        sub.start()
        if not sub_conn.poll(30):
            raise SystemExit("aedsim rollout: the backend subscriber did not start")
        sub_conn.recv()
        fleet_key = os.urandom(32)
        cfg = {"release_keys": [entry], "update_trial_s": args.trial_s}
        if args.update_block:
            cfg["update_block"] = args.update_block
        spec = RunSpec(cabinets=args.cabinets, brokers=urls, workers=args.workers or args.shards,
                       ramp=args.ramp, heartbeat=args.heartbeat, seed=args.seed, flash="memory",
                       source_ips=plan_sources(args.cabinets, len(urls), 2), fleet_key=fleet_key,
                       extra_config=cfg)
        workers = Workers(spec).start()
        meter = CpuMeter()
        meter.groups = {"simulator": [p.pid for p in workers.procs],
                        "brokers": [s.proc.pid for s in shards], "backend": [sub.pid],
                        "update_server": [os.getpid()]}
        t_boot = time.time()
        while True:  # every cabinet online first: the rollout starts on a fleet at rest
            await asyncio.sleep(0.5)
            workers.poll()
            if workers.fatal:
                raise SystemExit("aedsim rollout: " + "; ".join(workers.fatal))
            snaps = list(workers.latest.values())
            if len(snaps) == spec.workers and all(s["all_online_t"] for s in snaps):
                break
            if time.time() - t_boot > args.boot_timeout:
                raise SystemExit("aedsim rollout: only %d of %d cabinets online after %d s" % (
                    sum(s["online"] for s in snaps), args.cabinets, args.boot_timeout))
        out["boot_s"] = round(time.time() - t_boot, 1)
        _say("fleet: %d cabinets online in %.1f s (%d workers)" % (args.cabinets, out["boot_s"],
                                                                    spec.workers))
        unl = Unlocks(urls, fleet_key, args.cabinets, args.unlock_every, args.unlock_window, args.seed)
        unl.thread.start()
        plan = Plan(canary=args.canary, waves=parse_waves(args.waves), rate=args.rate,
                    halt_at=parse_halt(args.halt_at), wave_timeout=args.wave_timeout,
                    offer_every=args.offer_every)
        devices = spread_over_workers(args.cabinets, spec.workers)
        ro = Rollout(str(work / "rollout.db"), str(rel), plan, [BrokerOptions(u) for u in urls],
                     devices=devices, tick=0.2, log=_say)
        await asyncio.to_thread(ro.start)
        unl.phase_of = lambda d, ro=ro: _phase(ro, d)
        # The controller counts a cabinet it has not yet seen online as offline (not offered, and
        # not holding its wave up): let every retained status arrive before the first step.
        t_seen = time.time()
        while time.time() - t_seen < 30 and sum(1 for d in devices if ro._online(d)) < len(devices):
            await asyncio.sleep(0.2)
            ro._drain()
        _say("rollout: %s" % plan.describe())
        meter.mark("rollout")
        t0 = time.time()
        runner = asyncio.create_task(asyncio.to_thread(ro.run, None, args.timeout))
        rss_peak: dict = {}
        last = 0.0
        while not runner.done():
            await asyncio.sleep(0.5)
            workers.poll()
            for g, pids in meter.groups.items():
                rss_peak[g] = max(rss_peak.get(g, 0), sum(_proc_rss(p) for p in pids))
            if time.time() - last >= args.every:
                last = time.time()
                _say(_line(ro, t0, workers))
        status = await runner
        t_end = time.time()
        meter.end()
        _say(_line(ro, t0, workers))
        halted_wave = ro.wave if status == "halted" else None
        # A halted rollout stops offering and serving; cabinets already on trial still decide
        # for themselves (crash loop, trial timeout). Wait for them, reading what they say.
        settle_end = time.time() + (args.settle if status != "done" else 0)
        while time.time() < settle_end and _unsettled(ro, new):
            await asyncio.to_thread(ro.step)
            workers.poll()
            await asyncio.sleep(0.5)
        await asyncio.to_thread(ro.step)
        unl.stop.set()
        await asyncio.to_thread(unl.thread.join, 15)
        out["rollout"] = _outcome(ro, status, t0, t_end, halted_wave, new, old, plan)
        out["rollout"]["cpu"] = meter.phases.get("rollout")
        out["rollout"]["processes"] = {g: len(p) for g, p in meter.groups.items()}
        out["rollout"]["rss_peak_mib"] = {g: round(v / 1024, 1) for g, v in rss_peak.items()}
        out["rollout"]["limit"] = _limit(out["rollout"], plan)
        out["unlock"] = unl.report(t0, t_end)
        ro.close()
        ro = None
        await workers.stop()
        from simulator.fleet.view import summary
        f = summary(spec, workers.latest, workers.history)
        out["fleet"] = {k: f.get(k) for k in ("cabinets", "online", "errors", "events",
                                              "outbox_total", "kib_per_cabinet")}
        out["fleet"]["crashes"] = sum(s.get("crashes", 0) for s in workers.latest.values())
        out["fleet"]["loop_lag_max_ms"] = [w.get("loop_lag_max_ms") for w in f.get("per_worker", [])]
        out["fleet"]["gc_pauses"] = [w.get("gc_pauses") for w in f.get("per_worker", [])]
        sub_conn.send("stop")
        sub_conn.poll(60)
        be = json.loads((work / "recv.json").read_text())
        be.pop("paho_latency_s", None)
        out["events"] = {"gaps": be["gaps"], "duplicates": be["duplicates"],
                         "received_unique": be["events_unique"], "created": f.get("events"),
                         "left_in_outboxes": f.get("outbox_total")}
    finally:
        if unl is not None:
            unl.stop.set()
        if ro is not None:
            ro.close()
        if workers is not None and workers.alive():
            await workers.stop()
        if sub is not None and sub.is_alive():
            sub.kill()
        for s in shards:
            s.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return out


def _unsettled(ro, new: str) -> bool:
    """A started cabinet without a result, or one still on trial of the new release."""
    for c in ro.cabs.values():
        f = ro.fleet.get(c.device)
        if c.phase == "started" or (f and f[0] == new and (f[2] or c.phase == "failed")):
            return True
    return False


def _outcome(ro, status, t0, t_end, halted_wave, new, old, plan) -> dict:
    c = ro.counts()
    on = Counter((ro.fleet.get(d) or [None])[0] for d in ro.cabs)
    reasons = Counter(cab.reason for cab in ro.cabs.values() if cab.phase == "failed")
    back = Counter()
    for cab in ro.cabs.values():
        f = ro.fleet.get(cab.device)
        if cab.phase == "failed" and f and f[0] == old:
            back[cab.reason] += 1
    offered_outside_canary = sum(1 for cab in ro.cabs.values()
                                 if cab.wave > 0 and cab.phase != "pending")
    took = [cab.finished - cab.first_offer for cab in ro.cabs.values()
            if cab.phase == "done" and cab.first_offer is not None and cab.finished is not None]
    return {"status": status, "reason": ro.reason,
            "cabinet_s": {"p50": _r(_pct(took, 50)), "p99": _r(_pct(took, 99)),
                          "max": _r(max(took) if took else None)},
            "time_to_100pct_s": round(t_end - t0, 1) if status == "done" else None,
            "elapsed_s": round(t_end - t0, 1), "counts": c, "waves": ro.waves(),
            "halted_at_wave": halted_wave, "offered_outside_canary": offered_outside_canary,
            "versions": dict(on), "on_new": on.get(new, 0), "on_old": on.get(old, 0),
            "failed_reasons": dict(reasons), "back_on_old_by_reason": dict(back),
            "failed_devices": sorted(cab.device for cab in ro.cabs.values() if cab.phase == "failed"),
            "offers": ro.offers_sent, "blocks_served": ro.server.served,
            "bytes_served": ro.server.bytes, "rate_cap_per_min": plan.rate,
            "rate_cap_floor_s": round(60.0 * len(ro.cabs) / plan.rate, 1)}


def _limit(r: dict, plan) -> str:
    """What set the time to 100 %: the rate cap when the rollout took little more than the cap
    allows; else the busiest process group against what it can use (one core per process)."""
    if r["status"] != "done":
        return "not done (%s)" % r["status"]
    if r["rate_cap_floor_s"] >= 0.7 * r["time_to_100pct_s"]:
        return "the rate cap (%g/min: %s s at least)" % (plan.rate, r["rate_cap_floor_s"])
    cpu = (r.get("cpu") or {}).get("cpu_pct") or {}
    procs = r.get("processes") or {}
    if cpu:
        # per process: a Python process uses one core at most
        load = {g: v / max(1, procs.get(g, 1)) for g, v in cpu.items()}
        busiest = max(load, key=load.get)
        idle = r["cpu"]["machine_pct"]["idle"]
        if idle < 10:
            return ("the machine's CPU (%d cores, idle %s%% over the rollout): %s" % (
                os.cpu_count(), idle, ", ".join("%s %s%%" % (g, v) for g, v in
                                                sorted(cpu.items(), key=lambda kv: -kv[1]))))
        if load[busiest] >= 85:
            return "%s CPU (%.0f%% of a core per process over the rollout; machine idle %s%%)" % (
                busiest, load[busiest], idle)
    return ("each cabinet's own pace: download (one get at a time), install, reset and trial "
            "take %s s (median) per cabinet, and the %d waves run one after another" % (
                r["cabinet_s"]["p50"], len(r["waves"])))


def verdict(r: dict) -> list[str]:
    ro, kind = r["rollout"], r["release"]["kind"]
    out = []
    if kind == "good":
        if ro["status"] != "done" or ro["on_new"] != ro["counts"]["cabinets"]:
            out.append("good release: %s, %d of %d on it" % (ro["status"], ro["on_new"],
                                                              ro["counts"]["cabinets"]))
    else:
        if ro["status"] != "halted":
            out.append("bad release not halted (%s)" % ro["status"])
        if ro["on_new"]:
            out.append("%d cabinets left on the bad release" % ro["on_new"])
        if ro["offered_outside_canary"]:
            out.append("%d cabinets outside the canary were offered it" % ro["offered_outside_canary"])
    if r["events"]["gaps"]:
        out.append("%d event gaps" % r["events"]["gaps"])
    # A cabinet on a release that never comes online cannot unlock until its trial runs out:
    # the cost of a bad release, limited to the canary; anywhere else a missed unlock fails.
    u = r["unlock"]
    on_bad = set(ro.get("failed_devices") or ())
    missed = [m for m in u["not_accepted"] if m["device"] not in on_bad]
    if missed:
        out.append("unlocks not accepted: %s" % missed[:5])
    return out


def register(sub) -> None:
    p = sub.add_parser("rollout", help="a staged firmware rollout across a simulated fleet",
                       description="Start Mosquitto shards and a fleet of real-firmware cabinets, "
                                   "build and sign a release (good, or one that crashes at boot, or "
                                   "one that never comes online), roll it out with the controller of "
                                   "`aedgate rollout` while dispatch keeps unlocking, and report.")
    p.add_argument("--cabinets", type=int, default=30000)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--workers", type=int, help="simulator processes (default: one per shard)")
    p.add_argument("--release", choices=("good", "crash", "offline"), default="good")
    p.add_argument("--version", help="the release's version (default: the next minor)")
    p.add_argument("--rate", type=float, default=6000, metavar="PER_MIN",
                   help="cabinets started per minute (default 6000)")
    p.add_argument("--canary", type=int, default=10)
    p.add_argument("--waves", default="1,10,50,100", metavar="PCTS")
    p.add_argument("--halt-at", default="5%", metavar="N|PCT%")
    p.add_argument("--wave-timeout", type=float, default=300, metavar="S")
    p.add_argument("--offer-every", type=float, default=30, metavar="S")
    p.add_argument("--trial-s", type=int, default=60, metavar="S",
                   help="the cabinets' update_trial_s (config minimum 60)")
    p.add_argument("--update-block", type=int, metavar="BYTES", help="the cabinets' update_block")
    p.add_argument("--ramp", type=float, default=1000, metavar="PER_S")
    p.add_argument("--heartbeat", type=int, default=300, metavar="S")
    p.add_argument("--unlock-every", type=float, default=1.0, metavar="S",
                   help="a mission to a random cabinet this often during the rollout (default 1)")
    p.add_argument("--unlock-window", type=int, default=5, metavar="S",
                   help="each mission's unlock window (default 5): a cabinet asks no block while "
                        "one is open, so long windows on a small fleet stall its downloads")
    p.add_argument("--boot-timeout", type=int, default=300, metavar="S")
    p.add_argument("--timeout", type=float, default=3600, metavar="S", help="give the rollout up after")
    p.add_argument("--settle", type=float, default=120, metavar="S",
                   help="after a halt, wait this long at most for started cabinets to settle")
    p.add_argument("--every", type=float, default=2.0, metavar="S", help="progress line interval")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--json", metavar="FILE", help="write the results here too")
    p.set_defaults(func=run)


def print_table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    ro = r["rollout"]
    t = Table(title="aedsim rollout — %s release %s to %d cabinets" % (
        r["release"]["kind"], r["release"]["version"], ro["counts"]["cabinets"]))
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_row("status", "%s%s" % (ro["status"], (" (%s)" % ro["reason"]) if ro["reason"] else ""))
    t.add_row("time to 100 %", "%s s" % ro["time_to_100pct_s"] if ro["time_to_100pct_s"] else "-")
    t.add_row("limited by", ro["limit"])
    t.add_row("per cabinet p50 / p99", "%s / %s s" % (ro["cabinet_s"]["p50"], ro["cabinet_s"]["p99"]))
    t.add_row("halted at wave", str(ro["halted_at_wave"]) if ro["halted_at_wave"] is not None else "-")
    t.add_row("on new / old version", "%d / %d" % (ro["on_new"], ro["on_old"]))
    t.add_row("back on old, by reason", json.dumps(ro["back_on_old_by_reason"]))
    t.add_row("offered outside the canary", str(ro["offered_outside_canary"]))
    t.add_row("blocks served", "%d (%d bytes)" % (ro["blocks_served"], ro["bytes_served"]))
    rel = r["release"]
    t.add_row("to fetch per cabinet", "%d blocks, %d bytes: release.cose + %s (the other %d files "
              "are copied from its flash)" % (rel["blocks_per_cabinet"], rel["fetch_bytes"],
                                              ", ".join(rel["changed_files"]) or "nothing",
                                              rel["files"] - len(rel["changed_files"])))
    u = r["unlock"]
    t.add_row("unlock p50 / p99 (during rollout)", "%s / %s ms (%s)" % (u["p50_ms"], u["p99_ms"],
                                                                     u["results"]))
    for ph, v in u.get("by_phase", {}).items():
        t.add_row("  to cabinets %s" % ph, "%d: p50 %s / p99 %s / max %s ms" % (
            v["n"], v["p50_ms"], v["p99_ms"], v["max_ms"]))
    e = r["events"]
    t.add_row("event gaps / duplicates", "%d / %d" % (e["gaps"], e["duplicates"]))
    Console(stderr=True).print(t)


def run(args) -> int:
    r = asyncio.run(rollout(args))
    r["failed"] = verdict(r)
    print_table(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    print(json.dumps(r))
    for why in r["failed"]:
        print("aedsim rollout: FAILED: %s" % why, file=sys.stderr)
    return 1 if r["failed"] else 0
