"""`aedsim soak`: a bounded reliability soak against a real Mosquitto (not part of `make test`).

N simulated cabinets (the real firmware) live through H simulated hours on an accelerated clock
with random Wi-Fi outages, power cuts (also in the middle of flash writes) and door openings,
and the broker is killed (SIGKILL) and restarted half-way. A registry backend (paho-mqtt, a
persistent session at QoS 1, on a broker with persistence) counts what arrives. Reported:
events generated vs received, seq gaps (goal 0), duplicates, simulator memory at start and end,
and the reconnect storm after the broker restart (time until every cabinet is back, peak
connect rate).

    aedsim soak --cabinets 1000 --hours 24 --speed 720 --seed 1 --json soak.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import tempfile
import threading
import time
from pathlib import Path

import simulator  # noqa: F401
from simulator.fleet.runner import Fleet
from simulator.brokers.mosquitto import Mosquitto, max_nofile
from simulator.fleet.workers import rss_kib


class _Backend:
    """The registry's paho-mqtt client: a persistent session at QoS 1, every event's (device, seq)."""

    def __init__(self, url: str):
        import paho.mqtt.client as mqtt
        host, port = url.split("//")[1].split(":")
        self.lock = threading.Lock()
        self.seen: dict[str, set[int]] = {}
        self.received = 0
        self.duplicates = 0
        self.dropped_reported = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-registry",
                                  clean_session=False)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe("aed/v1/+/event", qos=1)
        self.client.reconnect_delay_set(0.2, 2)
        self.client.max_queued_messages_set(0)
        self.client.connect(host, int(port))
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        did = msg.topic.split("/")[2]
        ev = json.loads(msg.payload)
        with self.lock:
            self.received += 1
            seqs = self.seen.setdefault(did, set())
            if ev["seq"] in seqs:
                self.duplicates += 1
            seqs.add(ev["seq"])
            if ev.get("type") == "events_dropped":
                self.dropped_reported += ev.get("count", 0)

    def tally(self) -> dict:
        with self.lock:
            return {"seen": {d: sorted(s) for d, s in self.seen.items()}, "received": self.received,
                    "duplicates": self.duplicates, "dropped_reported": self.dropped_reported}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _registry_main(url: str, conn) -> None:
    backend = _Backend(url)
    conn.send("ready")
    while True:
        cmd = conn.recv()
        if cmd == "tally":
            conn.send(backend.tally())
        else:
            backend.close()
            return


class Registry:
    """The backend, in a process of its own: paho's loop watches its socket with select(), which
    cannot take a descriptor ≥ 1024, and the soak's process holds one per cabinet (a reconnect
    after the broker restart could land above that and silently stop the registry)."""

    def __init__(self, url: str):
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_registry_main, args=(url, child), name="soak-registry",
                                 daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(30) or self._conn.recv() != "ready":
            self._proc.kill()
            raise RuntimeError("the soak's registry (paho) did not connect to %s" % url)

    def tally(self) -> dict:
        """What arrived so far: seen (device -> set of seqs), received, duplicates,
        dropped_reported."""
        self._conn.send("tally")
        t = self._conn.recv()
        t["seen"] = {d: set(s) for d, s in t["seen"].items()}
        return t

    def close(self) -> None:
        try:
            self._conn.send("stop")
        except OSError:
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


async def soak(args) -> dict:
    rng = random.Random(args.seed)
    tmp = tempfile.mkdtemp(prefix="aedsim-soak-")
    conf = ("persistence true\npersistence_location %s/\nautosave_interval 1\n"
            "max_queued_messages 0\nmax_inflight_messages 0\nset_tcp_nodelay true\n" % tmp)
    if os.geteuid() == 0:
        conf += "user root\n"  # as root mosquitto would switch to a user who cannot write tmp
    broker = Mosquitto(Path(tmp), extra_conf=conf)
    broker.conf.write_text(broker.conf.read_text().replace("persistence false\n", ""))
    broker.start(preexec_fn=max_nofile)
    online_times: list[float] = []

    def log(msg: str) -> None:
        if ": online:" in msg:
            online_times.append(time.monotonic())

    fleet = Fleet(args.cabinets, broker.url, speed=args.speed, heartbeat_s=args.heartbeat,
                  flash="memory", seed=args.seed, log=log,
                  extra_config={"sample_s": 300, "siren_s": 30, "outbox_limit": 200})
    registry = Registry(broker.url)
    t0 = time.monotonic()
    await fleet.start(ramp_per_s=args.ramp)
    await _until(lambda: fleet.online() == args.cabinets, 120)
    start = {"rss_mib": round(rss_kib() / 1024, 1), "ramp_s": round(time.monotonic() - t0, 2)}
    print("soak: %d cabinets online in %.1f s, RSS %.0f MiB" % (args.cabinets, start["ramp_s"], start["rss_mib"]), flush=True)

    sim_seconds = args.hours * 3600
    real_seconds = sim_seconds / args.speed
    ticks = int(real_seconds / args.tick)
    ids = list(fleet.cabinets)
    # Rates per cabinet per simulated hour.
    p = {k: v * args.hours / max(1, ticks) for k, v in
         (("door", 0.5), ("wifi", 0.1), ("power", 0.05), ("flash_cut", 0.05))}
    down: dict[str, tuple[float, dict]] = {}  # cabinet -> (when, the change that ends it)
    counts = {"door": 0, "wifi_outages": 0, "power_cuts": 0, "flash_cuts": 0}
    storm = {}
    restart_at = ticks // 2
    for i in range(ticks):
        now = time.monotonic()
        for did in ids:
            cab = fleet[did]
            w = cab.world
            r = rng.random()
            if did in down:
                if now >= down[did][0]:
                    w.apply(down.pop(did)[1])
                continue
            if r < p["door"]:
                w.apply({"door": "open" if w.door_pin.value() == 0 else "closed"})
                counts["door"] += 1
            elif r < p["door"] + p["wifi"]:
                w.apply({"wifi": "down"})
                down[did] = (now + rng.uniform(0.5, 8) * args.tick, {"wifi": "up"})
                counts["wifi_outages"] += 1
            elif r < p["door"] + p["wifi"] + p["power"]:
                w.apply({"power": "off"})
                down[did] = (now + rng.uniform(0.2, 3) * args.tick, {"power": "on"})
                counts["power_cuts"] += 1
            elif r < p["door"] + p["wifi"] + p["power"] + p["flash_cut"]:
                cab.flash.cut_after(rng.randint(1, 4))
                counts["flash_cuts"] += 1
        if i == restart_at:
            storm = await _broker_restart(broker, fleet, online_times, args)
        await asyncio.sleep(max(0, now + args.tick - time.monotonic()))

    # Calm: everything back up, every outbox drained, then count.
    for did, (_when, change) in down.items():
        fleet[did].world.apply(change)
    for cab in fleet.cabinets.values():
        cab.flash.cut_at = None
    await asyncio.sleep(1.0)
    drained = await _until(lambda: all(c.app and c.app.online and not len(c.app.outbox)
                                       for c in fleet.cabinets.values()), 180)
    stuck = [(did, bool(c.app and c.app.online), len(c.app.outbox) if c.app else None,
              c.world.powered, c.world.net.up) for did, c in fleet.cabinets.items()
             if not (c.app and c.app.online and not len(c.app.outbox))]
    for row in stuck[:10]:
        print("soak: not drained: %s online=%s outbox=%s powered=%s wifi=%s" % row, flush=True)
    await asyncio.sleep(2.0)
    end_rss = rss_kib() / 1024
    generated = {did: c.app.outbox.seq for did, c in fleet.cabinets.items() if c.app}
    waiting = {did: set(c.app.outbox.pending()) for did, c in fleet.cabinets.items() if c.app}
    tally = registry.tally()
    seen = tally["seen"]
    missing = {did: set(range(1, g + 1)) - seen.get(did, set()) for did, g in generated.items()}
    gaps = sum(len(m - waiting.get(did, set())) for did, m in missing.items())
    still_queued = sum(len(m & waiting.get(did, set())) for did, m in missing.items())
    received_unique = sum(len(s) for s in seen.values())
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cabinets": args.cabinets, "simulated_hours": args.hours, "speed": args.speed,
        "real_seconds": round(time.monotonic() - t0, 1), "seed": args.seed,
        "disturbances": counts, "flash_cuts_mid_write": sum(c.flash.cuts for c in fleet.cabinets.values()),
        "events_generated": sum(generated.values()), "events_received_unique": received_unique,
        "messages_received": tally["received"], "duplicates": tally["duplicates"],
        "still_in_outboxes": still_queued, "missing_seqs": gaps,
        "dropped_reported": tally["dropped_reported"],
        "gaps": gaps - tally["dropped_reported"], "drained": drained, "not_drained": len(stuck),
        "rss_mib_start": start["rss_mib"], "rss_mib_end": round(end_rss, 1),
        "ramp_s": start["ramp_s"], "broker_restart": storm,
        "resets": _sum_resets(fleet),
    }
    registry.close()
    await fleet.stop()
    broker.stop()
    await _settle()
    return result


async def _settle() -> None:
    """Cancel what is left (observers, timers) and say which task ignored it, if any."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    if tasks:
        _done, pending = await asyncio.wait(tasks, timeout=10)
        for t in pending:
            print("soak: a task ignored cancellation: %r" % t.get_coro(), flush=True)


def _sum_resets(fleet) -> dict:
    out: dict[str, int] = {}
    for c in fleet.cabinets.values():
        for k, v in c.resets.items():
            out[k] = out.get(k, 0) + v
    return out


async def _broker_restart(broker, fleet, online_times, args) -> dict:
    print("soak: killing the broker (SIGKILL) …", flush=True)
    os.kill(broker.proc.pid, signal.SIGUSR1)  # Mosquitto: write the persistence file now
    await asyncio.sleep(0.5)
    broker.stop(kill=True)
    await asyncio.sleep(args.broker_down)
    mark = len(online_times)
    broker.start(preexec_fn=max_nofile)
    t_up = time.monotonic()
    back = await _until(lambda: fleet.online() >= sum(1 for c in fleet.cabinets.values()
                                                      if c.world.powered and c.world.net.up), 180)
    took = time.monotonic() - t_up
    times = online_times[mark:]
    peak = 0
    if times:
        buckets: dict[int, int] = {}
        for t in times:
            b = int((t - t_up) * 10)
            buckets[b] = buckets.get(b, 0) + 1
        peak = max(buckets.values()) * 10
    print("soak: broker back; %d reconnects in %.1f s, peak %d connects/s" % (len(times), took, peak), flush=True)
    return {"down_s": args.broker_down, "all_back_s": round(took, 2), "reconnects": len(times),
            "peak_connects_per_s": peak, "all_back": back}


async def _until(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.1)
    return False


def register(sub) -> None:
    p = sub.add_parser("soak", help="bounded reliability soak: outages, power cuts, broker restart",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cabinets", type=int, default=1000, metavar="N")
    p.add_argument("--hours", type=float, default=24, metavar="H", help="simulated hours (default 24)")
    p.add_argument("--speed", type=float, default=720, metavar="X",
                   help="clock acceleration (default 720: 24 h in 2 minutes)")
    p.add_argument("--heartbeat", type=int, default=900, metavar="S", help="state heartbeat, simulated seconds")
    p.add_argument("--ramp", type=float, default=500, metavar="PER_S", help="connection ramp (default 500/s)")
    p.add_argument("--tick", type=float, default=1.0, metavar="S", help="real seconds between disturbance rounds")
    p.add_argument("--broker-down", type=float, default=3.0, metavar="S", help="how long the broker stays dead")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    p.set_defaults(func=run)


def run(args) -> int:
    result = asyncio.run(soak(args))
    text = json.dumps(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    ok = result["gaps"] == 0 and result["drained"]
    return 0 if ok else 1
