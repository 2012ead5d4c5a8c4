"""A backend's view of the fleet, built only from what arrives over MQTT (status, state, events):
what the live table shows. The bookkeeping is host_tools.backend's FleetState; the transport is
the firmware's own asyncio MQTT client, because it runs on the simulator's event loop next to
thousands of cabinet sockets, where paho's select() loop cannot (descriptors >= 1024)."""
from __future__ import annotations

import asyncio
import random

from aedgate.mqtt import MQTTClient
from host_tools.backend import FleetState
from simulator.fleet.runner import LoopbackNet, parse_broker


class Observer(FleetState):
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
        await self._client.subscribe_each(
            tuple("aed/v1/+/" + sub for sub in ("status", "state", "event", "ack")), 1)
        return self

    async def stop(self) -> None:
        if self._client:
            await self._client.disconnect()
        if self._task:
            self._task.cancel()
