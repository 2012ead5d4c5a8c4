"""What happens to a fleet's cabinets while it runs: a named workload profile played as a Poisson
process over one simulator process's cabinets, reproducible with a seed.

Heartbeats are the firmware's own (`--heartbeat`); a profile adds what people and the weather do:
door openings, temperature and battery drifts, mains and Wi-Fi outages, power cuts, missions
(unlock tokens, then the responder opens and closes the door), and for `storm` a Wi-Fi outage of
every cabinet at once (the reconnect stampede that jittered backoff is there to soften).

Rates are per cabinet per simulated hour; with `--speed X` they happen X times as often in real
time, like every other simulated timer.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

# kind -> events per cabinet per simulated hour
PROFILES: dict[str, dict] = {
    "idle": {"rates": {}},
    "busy": {"rates": {"door": 2.0, "temp": 1.0, "battery": 0.5, "mains": 0.1, "wifi": 0.2,
                       "power": 0.02, "mission": 0.05}},
    # busy, plus every cabinet of the fleet losing its Wi-Fi together for `storm_s` real seconds,
    # `storm_at_s` real seconds after the last cabinet booted.
    "storm": {"rates": {"door": 2.0, "temp": 1.0, "battery": 0.5, "wifi": 0.2, "mission": 0.05},
              "storm_at_s": 20, "storm_s": 15},
}

UnlockSender = Callable[[str, str], Awaitable[None]]  # (device_id, mission id)


@dataclass
class WorkloadCounts:
    actions: dict = field(default_factory=dict)
    storms: int = 0
    missions: int = 0
    unlock_errors: int = 0


def find_unlock_sender(fleet, fleet_key: bytes | None) -> UnlockSender | None:
    """How missions send their unlock token, as dispatch does: mint it (host_tools.tokens, in the
    fleet's simulated time, so it is valid at any --speed), publish it on the cabinet's command
    topic through the simulator's own control client on the cabinet's shard, and wait for the
    cabinet's ack; the publish → ack time goes to `.latencies` (ms). None without a fleet key:
    nobody could sign a token.

    Not through host_tools/commands/unlock.py: its paho client watches its socket with select(), which
    cannot take a descriptor ≥ 1024, and a worker holds thousands of sockets (the paho loop
    thread died and every mission timed out). `aedsim bench` times unlocks with that tool from
    its own process."""
    if fleet_key is None:
        return None
    from host_tools.tokens import mint
    from host_tools.commands.unlock import answers_unlock
    latencies: list = []
    subscribed: set = set()

    async def via_control(did: str, mission: str) -> None:
        client = fleet.control_for(did)
        topic = "aed/v1/%s/ack" % did
        answer = asyncio.get_running_loop().create_future()

        def on_ack(payload) -> None:
            try:
                ack = json.loads(payload)
            except (TypeError, ValueError):
                return
            if isinstance(ack, dict) and answers_unlock(ack, mission) and not answer.done():
                answer.set_result(ack)
        fleet.answers[topic] = on_ack
        try:
            if topic not in subscribed:
                await client.subscribe(topic, 1)
                subscribed.add(topic)
            token = mint(fleet_key, did, mission, window_s=120, now=fleet.clock.time())
            t0 = time.monotonic()
            await client.publish("aed/v1/%s/cmd/unlock" % did, token, 1)
            try:
                ack = await asyncio.wait_for(answer, 10)
            except asyncio.TimeoutError:
                raise RuntimeError("unlock %s: no ack within 10 s" % did) from None
            if ack.get("result") != "accepted":
                raise RuntimeError("unlock %s: %s %s" % (did, ack.get("result"), ack.get("reason")))
            latencies.append((time.monotonic() - t0) * 1000)
        finally:
            fleet.answers.pop(topic, None)
    via_control.latencies = latencies  # type: ignore[attr-defined]
    return via_control


class Workload:
    def __init__(self, fleet, profile: str = "idle", seed: int | None = None,
                 unlock: UnlockSender | None = None, storm_at_s: float | None = None,
                 storm_s: float | None = None):
        if profile not in PROFILES:
            raise ValueError("unknown profile %r (known: %s)" % (profile, ", ".join(PROFILES)))
        spec = PROFILES[profile]
        self.fleet = fleet
        self.profile = profile
        self.rates = dict(spec["rates"])
        if unlock is None:
            self.rates.pop("mission", None)
        self.unlock = unlock
        self.storm_at_s = storm_at_s if storm_at_s is not None else spec.get("storm_at_s")
        self.storm_s = storm_s if storm_s is not None else spec.get("storm_s", 15)
        # One stream per slice of the fleet: the same seed and the same slice give the same run.
        self.rng = random.Random("%s:%s:%d" % (seed, profile, fleet.first))
        self.counts = WorkloadCounts()
        self._cabs = list(fleet.cabinets.values())
        self._tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        jobs = []
        if self.rates:
            jobs.append(self._poisson())
        if self.storm_at_s is not None:
            jobs.append(self._storm())
        if jobs:
            await asyncio.gather(*jobs)

    def _spawn(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _poisson(self) -> None:
        kinds = list(self.rates)
        weights = [self.rates[k] for k in kinds]
        per_cab_s = sum(weights) / 3600.0 * self.fleet.clock.speed  # per cabinet per real second
        rng = self.rng
        loop = asyncio.get_running_loop()
        next_t = None
        while True:
            started = self.fleet.started
            if not started:
                await asyncio.sleep(0.5)
                continue
            if next_t is None:
                next_t = loop.time() + rng.expovariate(per_cab_s * started)
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            # A busy loop wakes late: play every arrival that is due, not one per wake-up.
            while next_t <= loop.time():
                next_t += rng.expovariate(per_cab_s * self.fleet.started)
                kind = rng.choices(kinds, weights)[0]
                cab = self._cabs[rng.randrange(self.fleet.started)]
                u = rng.random()
                if cab.app is None and kind != "power":
                    continue  # powered off: nothing to see
                self.counts.actions[kind] = self.counts.actions.get(kind, 0) + 1
                self._spawn(getattr(self, "_" + kind)(cab, u))

    async def _later(self, seconds: float) -> None:
        await self.fleet.clock.sleep_ms(int(seconds * 1000))

    # -- what happens to one cabinet (u: a uniform draw, so the rng order stays fixed) --------
    async def _door(self, cab, u: float) -> None:
        cab.world.apply({"door": "open"})
        await self._later(5 + 55 * u)
        cab.world.apply({"door": "closed"})

    async def _temp(self, cab, u: float) -> None:
        t = cab.world.temp_c + (u - 0.5) * 6
        cab.world.apply({"temp_c": round(max(-20.0, min(45.0, t)), 1)})

    async def _battery(self, cab, u: float) -> None:
        cab.world.apply({"battery_mv": int(cab.world.battery_mv() + (u - 0.6) * 300)})

    async def _mains(self, cab, u: float) -> None:
        cab.world.apply({"mains": False})
        await self._later(60 + 1740 * u)
        cab.world.apply({"mains": True})

    async def _wifi(self, cab, u: float) -> None:
        cab.world.apply({"wifi": "down"})
        await self._later(10 + 110 * u)
        cab.world.apply({"wifi": "up"})

    async def _power(self, cab, u: float) -> None:
        cab.world.apply({"power": "off"})
        await self._later(5 + 55 * u)
        cab.world.apply({"power": "on"})

    async def _mission(self, cab, u: float) -> None:
        self.counts.missions += 1
        mission = "m-%s-%d" % (cab.device_id, self.counts.missions)
        try:
            await self.unlock(cab.device_id, mission)
        except Exception as e:  # a dispatch failure is counted, the cabinet carries on
            self.counts.unlock_errors += 1
            cab.log("workload: unlock %s failed: %s" % (mission, e))
            return
        await self._later(20 + 40 * u)   # the responder walks up
        cab.world.apply({"door": "open"})
        await self._later(10 + 20 * u)   # takes the AED
        cab.world.apply({"door": "closed"})

    async def _storm(self) -> None:
        while self.fleet.started < len(self._cabs):
            await asyncio.sleep(0.5)
        await asyncio.sleep(self.storm_at_s)
        self.counts.storms += 1
        for cab in self._cabs:
            cab.world.apply({"wifi": "down"})
        await asyncio.sleep(self.storm_s)
        for cab in self._cabs:
            cab.world.apply({"wifi": "up"})

    def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()

    def summary(self) -> dict:
        lat = sorted(getattr(self.unlock, "latencies", None) or [])
        return {"profile": self.profile, "actions": dict(sorted(self.counts.actions.items())),
                "storms": self.counts.storms, "missions": self.counts.missions,
                "unlock_errors": self.counts.unlock_errors,
                "unlock_latency_ms": lat}


def describe_profiles() -> str:
    return "; ".join("%s: %s" % (name, json.dumps(spec["rates"]) if spec["rates"] else
                                 "heartbeats only") for name, spec in PROFILES.items())
