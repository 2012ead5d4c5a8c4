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
import gc
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
from typing import Callable

import simulator  # noqa: F401

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


class FleetCollector:
    """The garbage collector's part in a big fleet (one per worker).

    Tens of thousands of long-lived cabinets are millions of tracked objects (≈ 200 each), and
    what a cabinet waits on (timers, futures, coroutines) is renewed every heartbeat. CPython's
    own schedule does badly with that:
    - full collections walk everything: measured at 15,000 cabinets, 22 of them during the boot
      found nothing and took 10.6 s (two thirds of the boot CPU), and in the steady state each
      stalls the loop 0.2–0.7 s (every cabinet of the worker waits, an unlock too);
    - young collections are triggered by allocations minus deallocations, and a heartbeat frees
      about as much as it allocates, so during a heartbeat wave the young generation grows to
      300,000 objects before anyone looks: 90–180 ms pauses.
    So: no collections while booting (a normal boot makes no cyclic garbage: measured); then
    freeze what exists (O(1): collections skip frozen objects), run no automatic full
    collection, and collect the young generations every YOUNG_S (`run()`), so each collection
    walks only that long's survivors (~25,000 objects at the peak of a heartbeat wave of 15,000
    cabinets: ~10 ms). Cycles that die young (exceptions, tracebacks) are found within moments;
    a cycle that dies old (a session or an app after a reset: ~10 objects per outage measured)
    waits for a full collection, which walks what is not frozen (~0.5 s at 15,000 cabinets) and
    so runs only once CHURN new sessions have started since the last one, at most every FULL_S
    (`pauses["full"]`): a steady fleet never pays for it, a churning one leaks at most ~20 MB
    between two. At the end `close()` counts what is left (`report()["old_garbage"]`, objects),
    so a leak would show.

    Every collection is timed (`pauses`: phase -> count, total and longest in ms), since a pause
    is a pause for every cabinet of the worker."""

    YOUNG_S = 0.2
    FULL_S = 600.0
    CHURN = 20000
    GIVE_UP_S = 30.0   # after the last boot, stop waiting for stragglers
    NEVER = 1 << 30    # gen-2 threshold that is never reached

    def __init__(self, sessions: Callable[[], int] = lambda: 0) -> None:
        self.sessions = sessions  # how many MQTT sessions the fleet has started so far
        self.booting = True
        self._booted_at: float | None = None
        self._t = 0.0
        self.old_garbage: int | None = None
        self.pauses = {"boot": [0, 0.0, 0.0], "steady": [0, 0.0, 0.0], "full": [0, 0.0, 0.0]}
        self._threshold = gc.get_threshold()
        gc.callbacks.append(self._timed)
        gc.collect()
        gc.freeze()
        gc.disable()

    def _timed(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
            return
        ms = (time.perf_counter() - self._t) * 1000
        p = self.pauses["boot" if self.booting else
                        "full" if info["generation"] == 2 else "steady"]
        p[0] += 1
        p[1] += ms
        p[2] = max(p[2], ms)

    def report(self) -> dict:
        out: dict = {k: {"count": c, "total_ms": round(t, 1), "max_ms": round(m, 1)}
                     for k, (c, t, m) in self.pauses.items()}
        out["old_garbage"] = self.old_garbage
        return out

    async def run(self) -> None:
        last_full, churn0 = time.monotonic(), self.sessions()
        while True:
            await asyncio.sleep(self.YOUNG_S)
            if self.booting:
                last_full, churn0 = time.monotonic(), self.sessions()
            elif self.sessions() - churn0 >= self.CHURN and \
                    time.monotonic() - last_full >= self.FULL_S:
                gc.collect()
                last_full, churn0 = time.monotonic(), self.sessions()
            else:
                gc.collect(1)

    def tick(self, all_started: bool, all_online: bool) -> None:
        """Once a second: ends the boot phase once all are online (or given up on)."""
        if not self.booting:
            return
        now = time.monotonic()
        if all_started and self._booted_at is None:
            self._booted_at = now
        if all_online or (self._booted_at is not None and now - self._booted_at > self.GIVE_UP_S):
            gc.freeze()
            gc.set_threshold(self._threshold[0], self._threshold[1], self.NEVER)
            self.booting = False
            gc.enable()

    def close(self) -> None:
        """At the end of the run: how much cyclic garbage died old (objects)."""
        gc.callbacks.remove(self._timed)
        gc.unfreeze()
        self.old_garbage = gc.collect()
        gc.set_threshold(*self._threshold)
        gc.enable()


class LagProbe:
    """How late the worker's loop runs: a timer every 10 ms, and how far past due it fires.
    Every cabinet of the worker (an unlock too) waits at least that long when the loop is busy."""

    PERIOD_S = 0.01

    def __init__(self) -> None:
        self.worst = {"boot": 0.0, "steady": 0.0}

    async def run(self, phase) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.PERIOD_S
            await asyncio.sleep(self.PERIOD_S)
            late = (loop.time() - due) * 1000
            p = phase()
            if late > self.worst[p]:
                self.worst[p] = late

    def report(self) -> dict:
        return {k: round(v, 1) for k, v in self.worst.items()}


async def run_slice(spec: RunSpec, index: int, first: int, count: int, report, stopping,
                    log=None, ready=None) -> dict:
    """Run cabinets first … first+count-1 until `stopping()` is true; `report(dict)` receives a
    snapshot every second and the final one. Used in-process (one worker) and in workers."""
    from simulator.fleet import Fleet
    from simulator.net import NetStats
    from simulator.workload import Workload, find_unlock_sender

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
    fds = _fds()
    n = 0

    def snapshot(final: bool = False) -> dict:
        total, top = fleet.outbox_depths()
        c = fleet.counters
        return {"w": index, "t": time.time(), "t_start": t_start, "cabinets": count,
                "first": first, "started": fleet.started, "online": online,
                "published": stats.published, "opened": stats.opened,
                "open_errors": stats.open_errors, "events": c.events, "sessions": c.online,
                "mqtt_errors": c.mqtt_errors, "wifi_down": c.wifi_down, "link_lost": c.link_lost,
                "crashes": sum(cab.crashes for cab in fleet.cabinets.values()) if final else 0,
                "outbox_total": total, "outbox_max": top, "rss_kib": rss_kib(),
                "rss0_kib": rss0, "rss_built_kib": built, "rss_online_kib": rss_online,
                "cpu_s": _cpu_s() - cpu0, "fds": fds, "all_online_t": all_online_t,
                "recent": list(c.recent)[-5:], "pid": os.getpid(),
                "workload": workload.summary(), "gc": collector.report(), "lag_max_ms": lag.report(),
                "final": final}

    try:
        while not stopping():
            await asyncio.sleep(REPORT_S)
            n += 1
            online = fleet.online()
            if all_online_t is None and online == count:
                all_online_t = fleet.counters.last_online_t or time.time()
                rss_online = rss_kib()
            collector.tick(starter.done(), all_online_t is not None)
            if wl_task is None and starter.done():
                wl_task = asyncio.create_task(workload.run())
            if n % 5 == 0:
                fds = _fds()
            report(snapshot())
    finally:
        online = fleet.online()
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
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us, after its summary
    soft, hard = raise_nofile()
    if count + FD_RESERVE > soft:
        conn.send({"w": index, "fatal": "worker %d needs %d open files for its %d cabinets but "
                   "may open %d (hard limit %d): use more --workers or raise the hard nofile limit"
                   % (index, count + FD_RESERVE, count, soft, hard)})
        return
    if spec.seed is not None:
        random.seed("%s:%d" % (spec.seed, first))  # ADC noise, backoff jitter: reproducible
    asyncio.run(run_slice(spec, index, first, count, conn.send, conn.poll))


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
