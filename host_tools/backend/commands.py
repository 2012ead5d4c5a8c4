"""CommandSender: publish signed commands to cabinets and match each cabinet's ack to the command
it answers. An ack names the command's `cti` (the token's unique id) once the cabinet has
verified the token's MAC; a rejection before that names nothing (the cabinet never echoes
unauthenticated bytes), so it is matched to the oldest unanswered command of that cabinet and
kind. Dispatch's broker account may read acks only (docs/deploy/mosquitto/acl): `follow()`
subscribes to a cabinet's events and says when the broker refuses that."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from host_tools.backend.connection import BrokerOptions, unique_client_id
from host_tools.backend.messages import FleetMessage
from host_tools.backend.subscriber import FleetSubscriber


def token_cti(raw: bytes) -> str | None:
    """The cti claim (hex) of a COSE_Mac0 token from host_tools.tokens / signed_commands."""
    import cbor2
    try:
        msg = cbor2.loads(raw)
        while isinstance(msg, cbor2.CBORTag):
            msg = msg.value
        return cbor2.loads(msg[2])[7].hex()
    except Exception:  # noqa: BLE001  (not one of our tokens: match by order instead)
        return None


@dataclass
class Sent:
    device: str
    command: str
    cti: str | None
    mission: str | None
    t0: float                       # time.monotonic() just before PUBLISH
    ack: dict | None = None
    t_ack: float | None = None

    @property
    def latency_ms(self) -> float | None:
        return None if self.t_ack is None else (self.t_ack - self.t0) * 1000


@dataclass
class _Followed:
    since: float
    events: list = field(default_factory=list)  # (monotonic time, body)
    status: dict | None = None


class CommandSender:
    def __init__(self, opts: BrokerOptions, client_id: str | None = None, validate: bool = True):
        self.opts = opts
        self.sub = FleetSubscriber([opts], client_id or unique_client_id("dispatch", opts.user),
                                   kinds=("ack",), validate=validate, nodelay=True, keep_events=0)
        self.sub.listen(self._on_message)
        self._cond = self.sub._suback  # one condition on the subscriber's lock
        self.sent: list[Sent] = []
        self._by_cti: dict[str, Sent] = {}
        self._followed: dict[str, _Followed] = {}
        self.counters = {"sent": 0, "answered": 0, "unmatched_acks": 0, "timeouts": 0}

    def start(self, timeout: float = 10.0) -> "CommandSender":
        self.sub.start(timeout)
        return self

    @property
    def client(self):
        return self.sub.clients[0]

    def send(self, device: str, command: str, raw: bytes, mission: str | None = None) -> Sent:
        s = Sent(device, command, token_cti(raw), mission, time.monotonic())
        with self._cond:
            self.sent.append(s)
            if s.cti:
                self._by_cti[s.cti] = s
            self.counters["sent"] += 1
        self.client.publish("aed/v1/%s/cmd/%s" % (device, command), raw, qos=1, retain=False)
        return s

    def _on_message(self, msg: FleetMessage) -> None:
        now = time.monotonic()
        if msg.kind == "event":
            f = self._followed.get(msg.device)
            if f is not None:
                f.events.append((now, msg.body))
            self._cond.notify_all()
            return
        if msg.kind == "status":
            f = self._followed.get(msg.device)
            if f is not None:
                f.status = msg.body
            self._cond.notify_all()
            return
        body = msg.body
        s = self._by_cti.get(body.get("cti")) if body.get("cti") else None
        if s is None and not body.get("cti"):
            s = next((x for x in self.sent if x.ack is None and x.device == msg.device
                      and x.command == body.get("cmd")), None)
        if s is None or s.ack is not None:
            self.counters["unmatched_acks"] += 1
        else:
            s.ack, s.t_ack = body, now
            self.counters["answered"] += 1
        self._cond.notify_all()

    def wait(self, sent: Sent, timeout: float) -> dict | None:
        """The cabinet's ack to `sent`, or None after `timeout` seconds."""
        with self._cond:
            ok = self._cond.wait_for(lambda: sent.ack is not None,
                                     max(0.0, sent.t0 + timeout - time.monotonic()))
            if not ok:
                self.counters["timeouts"] += 1
            return sent.ack

    def follow(self, device: str, timeout: float = 3.0) -> str | None:
        """Also receive `device`'s events. Returns None when they will arrive, or a one-line
        reason when this account may not read them. Mosquitto grants a SUBACK even where its
        ACL denies reading (it filters at delivery), so the test is the cabinet's retained
        status: a cabinet that has just answered us is connected and has one; if the broker
        gives us none, it gives us none of that cabinet's telemetry either."""
        with self._cond:
            self._followed[device] = _Followed(time.monotonic())
        topics = ["aed/v1/%s/event" % device, "aed/v1/%s/status" % device]
        self.sub.topics.extend(topics)  # renewed after a reconnect too
        self.client.subscribe([(t, 1) for t in topics])
        with self._cond:
            if self._cond.wait_for(lambda: self._followed[device].status, timeout):
                return None
        return ("the broker gives %s none of %s's telemetry (no retained status within %g s): "
                "this account may not read cabinet events — the production ACL "
                "(docs/deploy/mosquitto/acl) lets dispatch read acks only; follow with the "
                "registry account or `aedgate monitor`" % (self.opts.describe(), device, timeout))

    def events(self, device: str) -> list:
        with self._cond:
            f = self._followed.get(device)
            return list(f.events) if f else []

    def close(self) -> None:
        self.sub.close()
