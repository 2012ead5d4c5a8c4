"""A backend's view of the fleet, built only from what arrives over MQTT (status, state, events):
what the live table shows, and what tests and benchmarks measure against."""
from __future__ import annotations

import asyncio
import random

from aedgate.mqtt import MQTTClient
from host_tools.fleetview import FleetRecord
from simulator.fleet.runner import LoopbackNet, parse_broker


class Observer(FleetRecord):
    def __init__(self, broker_url: str, keep_events: int = 200):
        super().__init__(keep_events)
        self.host, self.port = parse_broker(broker_url)
        self._client: MQTTClient | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> "Observer":
        self._client = MQTTClient("aedsim-observer-%d" % random.getrandbits(24), LoopbackNet(),
                                  self.host, self.port, keepalive=60,
                                  on_message=lambda topic, payload, retain, dup: self.add(topic, payload),
                                  max_payload=4096)
        await self._client.connect(clean_session=True)
        self._task = asyncio.create_task(self._client.run())
        for sub in ("status", "state", "event", "ack"):
            await self._client.subscribe("aed/v1/+/" + sub, 1)
        return self

    async def stop(self) -> None:
        if self._client:
            await self._client.disconnect()
        if self._task:
            self._task.cancel()
