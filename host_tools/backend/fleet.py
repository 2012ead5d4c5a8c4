"""What a backend knows of the fleet from MQTT alone: the latest status and state per cabinet,
the recent events and acks, the event ledger (exact dedup, gaps, events_dropped) and counters.
Not thread-safe by itself: FleetSubscriber feeds it under its lock."""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

from host_tools.backend.ledger import EventLedger
from host_tools.backend.messages import FleetMessage, SchemaError, decode, parse_topic


class FleetState:
    def __init__(self, keep_events: int = 200, validate: bool = True, base: int | None = None):
        self.status: dict[str, dict] = {}
        self.state: dict[str, dict] = {}
        self.events: deque = deque(maxlen=keep_events)  # (time, device, kind, body), new only
        self.ledger = EventLedger(base)
        self.validate = validate
        self.counters = {"messages": 0, "status": 0, "state": 0, "event": 0, "ack": 0,
                         "invalid": 0, "other_topics": 0, "duplicates": 0}
        self.invalid: deque = deque(maxlen=20)  # (device, kind, reason) for a person
        self.listeners: list[Callable[[str, str, dict], None]] = []  # (device, kind, body)

    # -- feeding -------------------------------------------------------------------------
    def add(self, topic: str, payload: bytes | None, retain: bool = False, dup: bool = False,
            shard: int = 0) -> FleetMessage | None:
        """Take one MQTT message. Returns the FleetMessage when it is valid (with
        `duplicate=True` for a redelivered event); None for a foreign topic or an invalid body
        (each counted)."""
        self.counters["messages"] += 1
        where = parse_topic(topic)
        if where is None or payload is None:
            self.counters["other_topics"] += 1
            return None
        did, kind = where
        try:
            body = decode(kind, payload, self.validate)
        except SchemaError as e:
            self.counters["invalid"] += 1
            self.invalid.append((did, kind, str(e)))
            return None
        msg = FleetMessage(did, kind, body, retain, dup, shard, time.time(), topic)
        msg.duplicate = not self.take(msg)
        return msg

    def take(self, msg: FleetMessage) -> bool:
        """Record a decoded message; False for a redelivered event."""
        did, kind, body = msg.device, msg.kind, msg.body
        self.counters[kind] += 1
        if kind == "status":
            self.status[did] = body
        elif kind == "state":
            self.state[did] = body
        else:
            if kind == "event" and not self.ledger.add(did, body):
                self.counters["duplicates"] += 1
                return False
            self.events.append((msg.received or time.time(), did, kind, body))
            for fn in self.listeners:
                fn(did, kind, body)
        return True

    # -- reading -------------------------------------------------------------------------
    def online(self) -> int:
        return sum(1 for s in self.status.values() if s.get("online"))

    @property
    def event_count(self) -> int:
        """Distinct events received."""
        return self.ledger.unique()

    @property
    def duplicates(self) -> int:
        return self.ledger.duplicates

    @property
    def gaps(self) -> int:
        """Seqs missing that no events_dropped report explains (exact; see ledger.py)."""
        return self.ledger.unexplained()

    def summary(self) -> dict:
        return {**self.counters, "cabinets": len(set(self.status) | set(self.state)),
                "online": self.online(), **{"events_" + k: v for k, v in self.ledger.summary().items()}}
