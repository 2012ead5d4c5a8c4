"""FleetSubscriber: one paho client per broker shard, all feeding one FleetState.

- `durable=True` keeps an MQTT persistent session (clean_session=False) under a stable client id
  per shard: what the fleet publishes while the subscriber is away waits at the broker (QoS 1).
- `manual_ack=True` sends each PUBACK only when the application calls `msg.ack()` — after it has
  committed the message (the registry commits to SQLite first). A crash before the commit means
  the broker redelivers; the ledger then drops what was already committed (dedup by seq).
  Ack in the order messages were handed over (MQTT 3.1.1 §4.6.0-2; Mosquitto itself matches
  PUBACKs by packet id).
  The broker sends at most `max_inflight_messages` (Mosquitto: 20) unacknowledged messages per
  client, so ack promptly (the registry commits in small batches, as soon as it can).
- Listeners run on paho's network thread of the shard, under the subscriber's lock: keep them
  short (hand work to a queue). With manual_ack, a listener that does not ack stalls that shard.

One socket and one thread per shard (paho's loop uses select(): descriptors must stay < 1024;
see connection.py). Reconnects are paho's (0.2–5 s back-off); subscriptions are renewed on
every accepted connect.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterable

from host_tools.backend.connection import BrokerOptions, _stop, connect
from host_tools.backend.fleet import FleetState
from host_tools.backend.messages import KINDS, FleetMessage


class FleetSubscriber:
    def __init__(self, shards: Iterable[BrokerOptions], client_id: str, *, durable: bool = False,
                 devices: Iterable[str] = ("+",), kinds: Iterable[str] = KINDS,
                 validate: bool = True, manual_ack: bool = False, keep_events: int = 200,
                 base: int | None = None, state: FleetState | None = None,
                 nodelay: bool = False, topics: Iterable[str] | None = None,
                 max_inflight: int | None = None):
        self.shards = list(shards)
        self.client_id = client_id
        self.durable = durable
        self.topics = (list(topics) if topics is not None
                       else ["aed/v1/%s/%s" % (d, k) for d in devices for k in kinds])
        self.manual_ack = manual_ack
        self.nodelay = nodelay
        self.max_inflight = max_inflight  # outgoing QoS 1 window per shard client (connect())
        self.fleet = state or FleetState(keep_events, validate, base)
        self.lock = threading.RLock()
        self._listeners: list[Callable[[FleetMessage], None]] = []
        self._raw: list[Callable] = []
        self.clients: list = []
        self.refused: dict[str, int] = {}   # topic -> SUBACK failures (ACL says no)
        self.connects = 0
        self._suback = threading.Condition(self.lock)
        self._pending_subs = 0
        self._subscribed: set = set()  # clients that subscribed in this process

    def listen(self, fn: Callable[[FleetMessage], None]) -> None:
        """fn(msg) for every valid message. Redelivered events are counted (fleet.ledger) and
        not passed on — except with manual_ack, where the listener gets them too (marked
        msg.duplicate) and acks them after its own commit: the first copy may not be committed
        yet, and acking the second before it would lose the event in a crash. Invalid bodies
        are counted (fleet.counters["invalid"]) and acknowledged, never passed on."""
        self._listeners.append(fn)

    def listen_raw(self, fn: Callable) -> None:
        """fn(topic, payload, retain, shard, t_arrival) for every message as it arrives, before
        any parsing (for latency probes and tests that look at the bytes)."""
        self._raw.append(fn)

    def start(self, timeout: float = 10.0) -> "FleetSubscriber":
        """Connect every shard (BrokerError/BrokerAuthError on the first that fails) and wait
        for the SUBACKs."""
        try:
            for i, opts in enumerate(self.shards):
                cid = self.client_id if len(self.shards) == 1 else "%s-s%d" % (self.client_id, i)
                self.clients.append(connect(
                    opts, cid, clean_session=not self.durable, manual_ack=self.manual_ack,
                    on_message=lambda c, u, m, i=i: self._on_message(c, m, i),
                    on_connect=self._subscribe, timeout=timeout, keepalive=60,
                    nodelay=self.nodelay, max_inflight=self.max_inflight))
        except Exception:
            self.close()
            raise
        with self._suback:
            self._suback.wait_for(lambda: self._pending_subs == 0, timeout)
        return self

    def _subscribe(self, client, session_present: bool) -> None:
        with self.lock:
            self.connects += 1
            if session_present and client in self._subscribed:
                # The broker kept our session and the subscriptions this process made in it:
                # subscribing again would only make it resend every retained status and state
                # (two per cabinet) on each reconnect.
                return
            self._pending_subs += 1
        self._subscribed.add(client)
        client.on_subscribe = self._on_subscribe
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client, userdata, mid, reasons, properties=None) -> None:
        with self._suback:
            for topic, rc in zip(self.topics, reasons):
                if getattr(rc, "is_failure", False) or getattr(rc, "value", rc) >= 0x80:
                    self.refused[topic] = self.refused.get(topic, 0) + 1
            self._pending_subs -= 1
            self._suback.notify_all()

    def _on_message(self, client, m, shard: int) -> None:
        if self._raw:
            now = time.time()
            with self.lock:
                for fn in self._raw:
                    fn(m.topic, m.payload, m.retain, shard, now)
        ack = (lambda c=client, mid=m.mid, q=m.qos: c.ack(mid, q)) if self.manual_ack and m.qos else None
        with self.lock:
            msg = self.fleet.add(m.topic, m.payload, m.retain, bool(m.dup), shard)
            if msg is None or (msg.duplicate and not self.manual_ack):
                if ack:
                    ack()  # nothing to store: a foreign topic or an invalid body
                return
            msg._ack = ack
            for fn in self._listeners:
                fn(msg)
            if not self._listeners and ack:
                ack()

    def close(self) -> None:
        for c in self.clients:
            _stop(c)
        self.clients = []
