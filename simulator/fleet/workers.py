"""Big fleets on one machine: several worker processes, each one asyncio loop running a slice of
the cabinets (cab-0001 … in contiguous blocks), every cabinet the real firmware App with its own
MQTT connection. No thread per cabinet.

Limits that shape this (see docs/scale.md):
- open files: one socket per cabinet, so a worker raises its RLIMIT_NOFILE soft limit to the hard
  limit and refuses, with a clear message, a share it cannot hold;
- ephemeral ports: ~28k per (source address, broker address), so cabinets bind to several
  loopback source addresses (127.0.0.2, …) with IP_BIND_ADDRESS_NO_PORT;
- one broker process has the same open-files cap: spread cabinets over broker shards.
"""
from __future__ import annotations

import asyncio
import ctypes
import math
import multiprocessing as mp
import os
import random
import resource
import signal
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import simulator  # noqa: F401
from simulator.fleet import turntrace
from simulator.fleet.loophealth import FleetCollector, FleetLoop, LagProbe

FD_RESERVE = 64        # files a worker needs besides its cabinets' sockets
PORTS_PER_PAIR = 20000  # planned use of one (source, broker) pair's ~28k ephemeral ports
REPORT_S = 1.0


class ScaleError(Exception):
    """A run that cannot work as asked; the message says what to change."""


@dataclass
class RunSpec:
    cabinets: int
    brokers: list[str]
    workers: int = 1
    ramp: float | None = None          # cabinets booted per second, whole fleet
    heartbeat: int = 1800
    speed: float = 1.0
    profile: str = "idle"
    seed: int | None = None
    flash: str = "dir"                 # "dir" (a folder per cabinet) or "memory"
    flash_dir: str | None = None
    source_ips: list[str] | None = None
    fleet_key: bytes | None = None
    duration: float | None = None
    extra_config: dict = field(default_factory=dict)
    trace_dir: str | None = None       # write (send time, key) of every publish here (bench)
    control: bool = True               # world-control subscriber per shard per worker


# -- planning ----------------------------------------------------------------------------------
def slices(cabinets: int, workers: int, first: int = 1) -> list[tuple[int, int]]:
    """(first id, count) per worker: contiguous, sizes differing by at most one."""
    base, extra = divmod(cabinets, workers)
    out, n = [], first
    for i in range(workers):
        k = base + (1 if i < extra else 0)
        out.append((n, k))
        n += k
    return out


def port_range() -> int:
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return hi - lo + 1
    except (OSError, ValueError):
        return 28232


def plan_sources(cabinets: int, brokers: int, wanted: int | None = None) -> list[str]:
    """Loopback source addresses 127.0.0.2 … enough that no (source, broker) pair needs more
    than PORTS_PER_PAIR ports (and at least two once binding is asked for)."""
    per_broker = math.ceil(cabinets / brokers)
    need = max(1, math.ceil(per_broker / min(PORTS_PER_PAIR, port_range() - 2000)))
    k = max(need, wanted or 2)
    if k > 250:
        raise ScaleError("%d source addresses needed; use more broker shards" % k)
    return ["127.0.0.%d" % (2 + i) for i in range(k)]


def raise_nofile() -> tuple[int, int]:
    """Raise this process's open-files soft limit to the hard limit; returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def check_fd_budget(spec: RunSpec) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = (1 << 20) if hard == resource.RLIM_INFINITY else hard
    share = max(k for _, k in slices(spec.cabinets, spec.workers))
    need = share + len(spec.brokers) + FD_RESERVE
    if need > hard:
        least = math.ceil(spec.cabinets / (hard - FD_RESERVE - len(spec.brokers)))
        raise ScaleError(
            "each worker would hold %d connections, but a process may open at most %d files "
            "(hard RLIMIT_NOFILE). Use --workers %d or more, or raise the hard limit "
            "(`ulimit -Hn`, /etc/security/limits.conf nofile, systemd LimitNOFILE=)."
            % (share, hard, least))


# -- one worker's view of itself ----------------------------------------------------------------
def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


async def run_slice(spec: RunSpec, index: int, first: int, count: int, report, stopping,
                    log=None, ready=None) -> dict:
    """Run cabinets first … first+count-1 until `stopping()` is true; `report(dict)` receives a
    snapshot every second and the final one. Used in-process (one worker) and in workers."""
    from simulator.fleet.runner import Fleet
    from simulator.world.net import NetStats
    from simulator.fleet.workload import Workload, find_unlock_sender

    rss0 = rss_kib()
    stats = NetStats()
    if spec.trace_dir:
        stats.trace = []
    fleet = Fleet(count, ",".join(spec.brokers), flash_root=spec.flash_dir, speed=spec.speed,
                  fleet_key=spec.fleet_key, first=first, heartbeat_s=spec.heartbeat,
                  extra_config=spec.extra_config, log=log, seed=spec.seed, flash=spec.flash,
                  source_ips=spec.source_ips, control=spec.control, stats=stats)
    if ready is not None:
        ready(fleet)
    collector = FleetCollector(lambda: fleet.counters.online)
    lag = LagProbe()
    lag_task = asyncio.create_task(lag.run(lambda: "boot" if collector.booting else "steady"))
    gc_task = asyncio.create_task(collector.run())
    built = rss_kib()
    workload = Workload(fleet, spec.profile, spec.seed,
                        unlock=find_unlock_sender(fleet, spec.fleet_key) if spec.control else None)
    t_start = time.time()
    starter = asyncio.create_task(fleet.start(spec.ramp / spec.workers if spec.ramp else None))
    wl_task = None
    all_online_t = None
    rss_online = None
    cpu0 = _cpu_s()
    # Open files: counted once here, then the cabinets' sockets added from the counters. Listing
    # /proc/self/fd with 15,000 entries took 40 ms, a stall for every cabinet, every 5 s.
    fds0 = _fds()
    online = total = top = 0

    def snapshot(final: bool = False) -> dict:
        c = fleet.counters
        return {"w": index, "t": time.time(), "t_start": t_start, "cabinets": count,
                "first": first, "started": fleet.started, "online": online,
                "published": stats.published, "opened": stats.opened,
                "open_errors": stats.open_errors, "events": c.events, "sessions": c.online,
                "mqtt_errors": c.mqtt_errors, "wifi_down": c.wifi_down, "link_lost": c.link_lost,
                "crashes": sum(cab.crashes for cab in fleet.cabinets.values()) if final else 0,
                "outbox_total": total, "outbox_max": top, "rss_kib": rss_kib(),
                "rss0_kib": rss0, "rss_built_kib": built, "rss_online_kib": rss_online,
                "cpu_s": _cpu_s() - cpu0, "all_online_t": all_online_t,
                "fds": _fds() if final else fds0 + stats.opened - stats.closed,
                "recent": list(c.recent)[-5:], "pid": os.getpid(),
                "workload": workload.summary(), "gc": collector.report(), "lag_max_ms": lag.report(),
                "final": final}

    try:
        while not stopping():
            await asyncio.sleep(REPORT_S)
            online, total, top = await fleet.census()
            if all_online_t is None and online == count:
                all_online_t = fleet.counters.last_online_t or time.time()
                rss_online = rss_kib()
            collector.tick(starter.done(), all_online_t is not None)
            if wl_task is None and starter.done():
                wl_task = asyncio.create_task(workload.run())
            report(snapshot())
    finally:
        online = fleet.online()
        total, top = fleet.outbox_depths()
        lag_task.cancel()
        gc_task.cancel()
        collector.close()  # before the fleet stops: what it finds died while the fleet ran
        final = snapshot(final=True)
        starter.cancel()
        if wl_task:
            wl_task.cancel()
        workload.stop()
        await fleet.stop()
        if spec.trace_dir and stats.trace is not None:
            _write_trace(Path(spec.trace_dir) / ("sent-%d" % index), stats.trace)
        report(final)
    return final


def _write_trace(path: Path, trace: list) -> None:
    ts = array("d", (t for t, _ in trace))
    keys = array("Q", (k for _, k in trace))
    with open(str(path) + ".t", "wb") as f:
        ts.tofile(f)
    with open(str(path) + ".k", "wb") as f:
        keys.tofile(f)


def read_trace(path: Path) -> tuple[array, array]:
    ts, keys = array("d"), array("Q")
    with open(str(path) + ".t", "rb") as f:
        ts.frombytes(f.read())
    with open(str(path) + ".k", "rb") as f:
        keys.frombytes(f.read())
    return ts, keys


def _die_with_parent() -> None:
    try:  # Linux: SIGKILL this worker when the parent dies, so its cabinets drop (LWT) with it
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(spec: RunSpec, index: int, first: int, count: int, conn) -> None:
    _die_with_parent()
    turntrace.install_from_env()  # a diagnostic: AEDSIM_TURN_TRACE=<folder>, docs/scale.md
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, after its summary
    soft, hard = raise_nofile()
    if count + FD_RESERVE > soft:
        conn.send({"w": index, "fatal": "worker %d needs %d open files for its %d cabinets but "
                   "may open %d (hard limit %d): use more --workers or raise the hard nofile limit"
                   % (index, count + FD_RESERVE, count, soft, hard)})
        return
    if spec.seed is not None:
        random.seed("%s:%d" % (spec.seed, first))  # ADC noise, backoff jitter: reproducible
    with asyncio.Runner(loop_factory=FleetLoop) as runner:
        runner.run(run_slice(spec, index, first, count, conn.send, conn.poll))


class Workers:
    """The worker processes of one run, seen from the parent."""

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.procs: list = []
        self.conns: list = []
        self.latest: dict[int, dict] = {}
        self.history: list[tuple[float, int, int, int]] = []  # (t, started, online, published)
        self.fatal: list[str] = []

    def start(self) -> "Workers":
        ctx = mp.get_context("spawn")  # not fork: the parent may already run an event loop
        for i, (first, count) in enumerate(slices(self.spec.cabinets, self.spec.workers)):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(self.spec, i, first, count, child),
                            name="aedsim-worker-%d" % i, daemon=True)
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        return self

    def poll(self) -> None:
        for conn in self.conns:
            try:
                while conn.poll():
                    self.take(conn.recv())
            except (EOFError, OSError):
                continue

    def take(self, msg: dict) -> None:
        if "fatal" in msg:
            self.fatal.append(msg["fatal"])
            return
        self.latest[msg["w"]] = msg
        if len(self.latest) == self.spec.workers:
            snaps = self.latest.values()
            self.history.append((max(s["t"] for s in snaps), sum(s["started"] for s in snaps),
                                 sum(s["online"] for s in snaps),
                                 sum(s["published"] for s in snaps)))

    def alive(self) -> int:
        return sum(1 for p in self.procs if p.is_alive())

    async def stop(self, timeout: float = 120) -> None:
        for conn in self.conns:
            try:
                conn.send("stop")
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            if all(s.get("final") for s in self.latest.values()) and \
                    len(self.latest) == len(self.procs) or not self.alive():
                break
            await asyncio.sleep(0.2)
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
        self.poll()
