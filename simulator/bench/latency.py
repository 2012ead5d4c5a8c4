"""Latency benchmarks for one cabinet's pipeline, against a real Mosquitto on loopback:

  world  - a door contact changes (the simulated pin is driven) -> the event arrives at a
           separate backend subscriber (paho-mqtt). Includes the firmware's debounce.
  unlock - dispatch publishes a mission token (paho-mqtt) -> the cabinet's lock output is driven
           (the simulated solenoid sees the edge). Includes MQTT delivery, strict parsing,
           HMAC verification, persisting the cti and time floor, and starting the lock pulse.

Both run many cabinets (the real firmware app) in this process's asyncio loop while the
backend's paho client runs its own thread; timestamps come from one monotonic clock.

    python -m simulator.bench.latency [--world 200] [--unlocks 1000] [--json results.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import simulator  # noqa: F401
from host_tools.commands.unlock import nodelay
from simulator.fleet.runner import Fleet
from simulator.brokers.mosquitto import Mosquitto

MASTER = bytes(range(32))


def percentiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    if not xs:
        return {"n": 0}
    pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return {"n": len(xs), "median_ms": round(statistics.median(xs), 2), "p90_ms": round(pick(0.90), 2),
            "p99_ms": round(pick(0.99), 2), "max_ms": round(xs[-1], 2), "min_ms": round(xs[0], 2)}


class Backend:
    """paho-mqtt in its own thread, recording the arrival time of every message."""

    def __init__(self, url: str, topics: list[str]):
        import paho.mqtt.client as mqtt
        host, port = url.split("//")[1].split(":")
        self.arrivals: dict[str, list[tuple[float, dict]]] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="latency-backend")
        self.client.on_message = self._on_message
        self.client.connect(host, int(port))
        nodelay(self.client)
        for t in topics:
            self.client.subscribe(t, qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        t = time.monotonic()
        try:
            obj = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            self.arrivals.setdefault(msg.topic, []).append((t, obj))

    def find(self, topic: str, pred, since: float) -> float | None:
        with self.lock:
            for t, obj in self.arrivals.get(topic, []):
                if t >= since and pred(obj):
                    return t
        return None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def _wait_online(fleet: Fleet, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(c.app and c.app.online and not len(c.app.outbox) for c in fleet.cabinets.values()):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("cabinets did not come online")


async def world_to_event(url: str, n: int, cabinets: int = 10) -> dict:
    fleet = Fleet(cabinets, url, extra_config={"sample_s": 3600, "siren_s": 1})
    backend = Backend(url, ["aed/v1/+/event"])
    await fleet.start()
    await _wait_online(fleet)
    lat = []
    ids = list(fleet.cabinets)
    try:
        for i in range(n):
            did = ids[i % len(ids)]
            world = fleet[did].world
            want = "door_opened" if world.door_pin.value() == 0 else "door_closed"
            t0 = time.monotonic()
            world.apply({"door": "open" if want == "door_opened" else "closed"})
            topic = "aed/v1/%s/event" % did
            while True:
                t = backend.find(topic, lambda o: o.get("type") == want, t0)
                if t is not None:
                    lat.append((t - t0) * 1000)
                    break
                if time.monotonic() - t0 > 5:
                    break
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.01)
    finally:
        debounce = fleet[ids[0]].app.cfg["debounce_ms"] if fleet[ids[0]].app else None
        backend.close()
        await fleet.stop()
    return dict(percentiles(lat), lost=n - len(lat), debounce_ms=debounce, cabinets=cabinets)


async def unlock_latency(url: str, n: int, cabinets: int = 50, in_flight: int = 1) -> dict:
    """`in_flight` unlocks outstanding at a time (1: one after the other, the latency of an
    unlock; more: a burst of simultaneous missions sharing the simulator's CPU)."""
    from host_tools import tokens
    fleet = Fleet(cabinets, url, fleet_key=MASTER,
                  extra_config={"sample_s": 3600, "lock_pulse_ms": 100, "lock_cooldown_ms": 500})
    backend = Backend(url, ["aed/v1/+/ack", "aed/v1/+/event"])
    await fleet.start()
    await _wait_online(fleet)
    edges: dict[str, list[float]] = {did: [] for did in fleet.cabinets}
    for did, cab in fleet.cabinets.items():
        orig = cab.world.lock_output

        def hook(level, did=did, orig=orig):
            if level:
                edges[did].append(time.monotonic())
            orig(level)
        cab.app.hw.lock._on_output = hook
    lat, ack_lat, rejected, lost = [], [], 0, 0
    pending: dict[str, float] = {}
    sent = 0
    ids = list(fleet.cabinets)
    deadline = time.monotonic() + max(60, n * 0.2)
    try:
        while (sent < n or pending) and time.monotonic() < deadline:
            for did in ids:
                cab = fleet[did]
                if did in pending:
                    t0 = pending[did]
                    got = [t for t in edges[did] if t >= t0]
                    ack = backend.find("aed/v1/%s/ack" % did, lambda o: True, t0)
                    if got and ack:
                        lat.append((got[0] - t0) * 1000)
                        ack_lat.append((ack - t0) * 1000)
                        del pending[did]
                    elif ack and not got and backend.find("aed/v1/%s/ack" % did, lambda o: o.get("result") != "accepted", t0):
                        rejected += 1
                        del pending[did]
                    elif time.monotonic() - t0 > 5:
                        lost += 1
                        del pending[did]
                    continue
                if (sent >= n or len(pending) >= in_flight or cab.app.window.task is not None
                        or cab.app.lock.busy):
                    continue
                raw = tokens.mint(MASTER, did, "B-%d" % sent, 1)
                t0 = time.monotonic()
                backend.client.publish("aed/v1/%s/cmd/unlock" % did, raw, qos=1)
                pending[did] = t0
                sent += 1
            await asyncio.sleep(0.002)
    finally:
        backend.close()
        overheated = sum(1 for c in fleet.cabinets.values() if c.world.lock_burnt)
        await fleet.stop()
    return dict(percentiles(lat), ack=percentiles(ack_lat), rejected=rejected, lost=lost,
                sent=sent, cabinets=cabinets, in_flight=in_flight, solenoids_overheated=overheated)


async def main_async(args) -> dict:
    results: dict = {"machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                                 "kernel": platform.release()},
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp), extra_conf="set_tcp_nodelay true\n").start()
        try:
            if args.world:
                results["world_to_event"] = await world_to_event(broker.url, args.world)
                print("world change -> event at backend: %s" % json.dumps(results["world_to_event"]), flush=True)
            if args.unlocks:
                results["unlock"] = await unlock_latency(broker.url, args.unlocks)
                print("unlock publish -> lock driven: %s" % json.dumps(results["unlock"]), flush=True)
                results["unlock_burst"] = await unlock_latency(broker.url, args.unlocks, in_flight=50)
                print("unlock, 50 at once: %s" % json.dumps(results["unlock_burst"]), flush=True)
        finally:
            broker.stop()
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m simulator.bench.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=int, default=200, metavar="N", help="door changes to time (default 200)")
    p.add_argument("--unlocks", type=int, default=1000, metavar="N", help="unlocks to time (default 1000)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    args = p.parse_args(argv)
    results = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
