"""Simulated cabinets running the real firmware app, and fleets of them on one asyncio loop."""
from __future__ import annotations

import asyncio
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import simulator  # noqa: F401  (puts firmware/ on sys.path)
from aedgate.app import App
from aedgate.mqtt import MQTTClient
from aedgate.storage import Flash

from simulator.world import SimClock, SimHardware, SimNet, World

WORLD_TOPIC = "aedsim/world/"


def parse_broker(url: str) -> tuple[str, int]:
    u = urlparse(url if "://" in url else "mqtt://" + url)
    if u.scheme not in ("mqtt", "tcp") or not u.hostname:
        raise ValueError("broker URL must look like mqtt://host:port, got %r" % url)
    return u.hostname, u.port or 1883


def device_id(n: int) -> str:
    return "cab-%04d" % n


class LoopbackNet:
    """Plain TCP for the simulator's own MQTT clients (world control, observers)."""

    async def open(self, host, port, ssl=None, server_hostname=None):
        return await asyncio.open_connection(host, port)


class SimCabinet:
    """One cabinet: its world, its flash folder, and the firmware App running on them."""

    def __init__(self, device_id: str, flash_dir: Path, clock: SimClock, config: dict,
                 source_ip: str | None = None, log: Callable[[str], None] | None = None):
        self.device_id = device_id
        self.net = SimNet(source_ip)
        self._log = log
        self.world = World(device_id, clock, self.net, log=self.log)
        self.world.on_power = self._power
        self.flash = Flash(str(flash_dir))
        self.flash.write("config.json", json.dumps(config).encode())
        self.app: App | None = None
        self.task: asyncio.Task | None = None
        self.crashes = 0

    def log(self, msg: str) -> None:
        if self._log:
            self._log("%s: %s" % (self.device_id, msg))

    def start(self, reset_cause: str = "power_on") -> None:
        self.app = App(SimHardware(self.world, reset_cause), self.flash)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            await self.app.run()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a firmware crash: a real board resets (watchdog/panic)
            self.crashes += 1
            self.log("firmware crashed: %s %r; resetting" % (type(e).__name__, e))
            self._outputs_off()
            await asyncio.sleep(1)
            self.start("panic")

    def _outputs_off(self) -> None:
        self.world.lock_output(0)
        self.world.siren_output(0)

    def _power(self, on: bool) -> None:
        if on:
            self.log("power on")
            self.start("power_on")
        else:
            self.log("power off")
            if self.task:
                self.task.cancel()
            self.task = None
            self.app = None
            self._outputs_off()
            # The radio dies with the board: connections vanish without a DISCONNECT.
            up = self.net.up
            self.net.set_up(False)
            self.net.up = up

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        self.net.set_up(False)


class Fleet:
    """N simulated cabinets sharing one asyncio loop, plus the world-control subscriber."""

    def __init__(self, count: int, broker_url: str, flash_root: Path | None = None,
                 speed: float = 1.0, fleet_key: bytes | None = None, first: int = 1,
                 heartbeat_s: int = 1800, extra_config: dict | None = None,
                 log: Callable[[str], None] | None = None, seed: int | None = None):
        self.host, self.port = parse_broker(broker_url)
        self.clock = SimClock(speed)
        self._tmp = None
        if flash_root is None:
            self._tmp = tempfile.mkdtemp(prefix="aedsim-")
            flash_root = Path(self._tmp)
        self.flash_root = Path(flash_root)
        self.log = log or (lambda msg: None)
        self.rng = random.Random(seed)
        self.cabinets: dict[str, SimCabinet] = {}
        for n in range(first, first + count):
            did = device_id(n)
            cfg = self.cabinet_config(did, fleet_key, heartbeat_s)
            cfg.update(extra_config or {})
            self.cabinets[did] = SimCabinet(did, self.flash_root / did, self.clock, cfg, log=self.log)
        self._control: MQTTClient | None = None
        self._control_task: asyncio.Task | None = None

    def cabinet_config(self, did: str, fleet_key: bytes | None, heartbeat_s: int) -> dict:
        from aedgate.compat import civil_from_days
        today = self.clock.time() // 86400
        pads = civil_from_days(today + self.rng.randint(20, 700))
        batt = civil_from_days(today + self.rng.randint(100, 1400))
        cfg = {
            "device_id": did, "broker_host": self.host, "broker_port": self.port,
            "heartbeat_s": heartbeat_s, "keepalive_s": 60,
            "pads_expiry": "%04d-%02d-%02d" % pads, "aed_battery_expiry": "%04d-%02d-%02d" % batt,
        }
        if fleet_key is not None:
            from host_tools.fleetkeys import derive_device_key
            cfg["keys"] = [{"kid": "", "key": derive_device_key(fleet_key, did).hex()}]
        return cfg

    def __getitem__(self, device_id: str) -> SimCabinet:
        return self.cabinets[device_id]

    async def start(self, ramp_per_s: float | None = None) -> None:
        await self._start_control()
        for i, cab in enumerate(self.cabinets.values()):
            cab.start()
            if ramp_per_s and i % max(1, int(ramp_per_s / 10)) == 0:
                await asyncio.sleep(0.1)

    async def _start_control(self) -> None:
        client = MQTTClient("aedsim-world-%d" % random.getrandbits(24), LoopbackNet(), self.host,
                            self.port, keepalive=60, on_message=self._world_message)
        await client.connect(clean_session=True)
        self._control_task = asyncio.create_task(client.run())
        await client.subscribe(WORLD_TOPIC + "+", 1)
        self._control = client

    def _world_message(self, topic, payload, retain, dup) -> None:
        did = topic[len(WORLD_TOPIC):]
        cab = self.cabinets.get(did)
        if cab is None:
            return  # another simulator's cabinet, or none: not ours to answer
        if payload is None:
            self.log("world %s: message too large, ignored" % did)
            return
        try:
            change = json.loads(payload)
        except ValueError:
            self.log("world %s: not JSON, ignored: %r" % (did, payload[:60]))
            return
        for err in cab.world.apply(change):
            self.log("world %s: %s" % (did, err))

    def online(self) -> int:
        return sum(1 for c in self.cabinets.values() if c.app and c.app.online)

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.cabinets.values()))
        if self._control:
            self._control.close()
        if self._control_task:
            self._control_task.cancel()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
