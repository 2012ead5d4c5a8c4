"""Scenario files: a timed list of world-control messages (docs/protocol.md, `aedsim/world/<id>`),
played over MQTT, so one file drives any simulator — one process, several workers on several
broker shards, or a virtual serial device.

    {"name": "...", "duration": 30, "steps": [
        {"at": 3, "device": "cab-0002", "world": {"door": "open"}, "note": "shown to a person"},
        {"at": 5, "device": "cab-0001", "world": {"flash_cut": 1}},
        ...]}

Besides the fixed keys (door, mains, battery_mv, temp_c, power, wifi, button) the simulator
takes fault-injection keys: `flash_cut` (cut the power at the n-th flash write from now: a torn
write), `clock_jump_s` (move this cabinet's clock, as a bad RTC or SNTP answer would), `sntp`
("down" | "up": the SNTP server stops answering), `sensor` ("hang" | "ok": a temperature sensor
that stops answering).
"""
from __future__ import annotations

import asyncio
import json
import random
import re
import time
from pathlib import Path
from typing import Callable

from aedgate.mqtt import MQTTClient

from simulator.fleet.runner import LoopbackNet, parse_brokers, shard_of

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
BUILT_IN = Path(__file__).resolve().parent / "scenarios"


class ScenarioError(ValueError):
    pass


def load(path_or_name: str) -> dict:
    """A scenario from a file, or a built-in one by name (demo, faults). Raises ScenarioError
    with the step that is wrong."""
    path = Path(path_or_name)
    if not path.exists() and (BUILT_IN / (path_or_name + ".json")).exists():
        path = BUILT_IN / (path_or_name + ".json")
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ScenarioError("cannot read scenario %s: %s" % (path, e.strerror))
    except ValueError as e:
        raise ScenarioError("scenario %s is not JSON: %s" % (path, e))
    if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
        raise ScenarioError("scenario %s: expected an object with a list of \"steps\"" % path)
    last = 0.0
    for i, step in enumerate(data["steps"], 1):
        where = "scenario %s, step %d" % (path.name, i)
        if not isinstance(step, dict):
            raise ScenarioError("%s: expected an object" % where)
        at = step.get("at")
        if not isinstance(at, (int, float)) or isinstance(at, bool) or at < last:
            raise ScenarioError("%s: \"at\" must be seconds, not before the previous step" % where)
        last = at
        if not isinstance(step.get("device"), str) or not _ID.fullmatch(step["device"]):
            raise ScenarioError("%s: \"device\" must be a device id like cab-0001" % where)
        if not isinstance(step.get("world"), dict) or not step["world"]:
            raise ScenarioError("%s: \"world\" must be a non-empty object of world changes" % where)
    data.setdefault("duration", last + 5)
    return data


async def play(scenario: dict, broker_urls: str, on_step: Callable[[dict], None] | None = None,
               t0: float | None = None) -> None:
    """Publish each step at its time (seconds after t0) to the broker shard of its cabinet."""
    brokers = parse_brokers(broker_urls)
    clients = []
    for host, port in brokers:
        c = MQTTClient("aedsim-scenario-%d" % random.getrandbits(24), LoopbackNet(), host, port, keepalive=60)
        await c.connect()
        clients.append((c, asyncio.create_task(c.run())))
    t0 = time.monotonic() if t0 is None else t0
    try:
        for step in scenario["steps"]:
            await asyncio.sleep(max(0.0, t0 + step["at"] - time.monotonic()))
            n = int(step["device"].rsplit("-", 1)[1]) if step["device"].rsplit("-", 1)[-1].isdigit() else 1
            client = clients[shard_of(n, len(clients))][0]
            if on_step:
                on_step(step)
            await client.publish("aedsim/world/" + step["device"], json.dumps(step["world"]), 1)
    finally:
        for c, task in clients:
            await c.disconnect()
            task.cancel()
