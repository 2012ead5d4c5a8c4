"""A backend's view of the fleet, built only from what arrives over MQTT (status, state, events):
what the live table shows, and what tests and benchmarks measure against."""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections import deque

from simulator.fleet import LoopbackNet, parse_broker
from aedgate.mqtt import MQTTClient


class Observer:
    def __init__(self, broker_url: str, keep_events: int = 200):
        self.host, self.port = parse_broker(broker_url)
        self.status: dict[str, dict] = {}
        self.state: dict[str, dict] = {}
        self.events: deque = deque(maxlen=keep_events)
        self.event_count = 0
        self.last_seq: dict[str, int] = {}
        self.gaps = 0
        self.duplicates = 0
        self.listeners: list = []
        self._client: MQTTClient | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> "Observer":
        self._client = MQTTClient("aedsim-observer-%d" % random.getrandbits(24), LoopbackNet(),
                                  self.host, self.port, keepalive=60, on_message=self._on_message,
                                  max_payload=4096)
        await self._client.connect(clean_session=True)
        self._task = asyncio.create_task(self._client.run())
        for sub in ("status", "state", "event", "ack"):
            await self._client.subscribe("aed/v1/+/" + sub, 1)
        return self

    def _on_message(self, topic, payload, retain, dup) -> None:
        parts = topic.split("/")
        if len(parts) != 4 or payload is None:
            return
        did, kind = parts[2], parts[3]
        try:
            obj = json.loads(payload)
        except ValueError:
            return
        if kind == "status":
            self.status[did] = obj
        elif kind == "state":
            self.state[did] = obj
        elif kind in ("event", "ack"):
            if kind == "event":
                self.event_count += 1
                seq = obj.get("seq", 0)
                last = self.last_seq.get(did)
                if last is not None and seq <= last:
                    self.duplicates += 1
                elif last is not None and seq > last + 1:
                    self.gaps += seq - last - 1
                self.last_seq[did] = max(seq, last or 0)
            self.events.append((time.time(), did, kind, obj))
        for fn in self.listeners:
            fn(did, kind, obj)

    def online(self) -> int:
        return sum(1 for s in self.status.values() if s.get("online"))

    async def stop(self) -> None:
        if self._client:
            await self._client.disconnect()
        if self._task:
            self._task.cancel()
