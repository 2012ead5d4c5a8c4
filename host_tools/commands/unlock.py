"""`aedgate unlock`: what dispatch does for a volunteer — mint a mission token for one cabinet,
publish it, and report what the cabinet did (ack, unlocked, door opened, relocked)."""
from __future__ import annotations

import argparse
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from host_tools import brokerurl, tokens
from host_tools.cli import CliError
from host_tools.commands.keys import check_device, load_fleet_key

_EPILOG = """\
examples:
  aedgate unlock --broker mqtt://127.0.0.1:1883 --fleet-key fleet.key --device cab-0001 --mission M-2291
  aedgate unlock ... --window 180 --follow 300     (also wait for door opened/closed and relock)

Exit status: 0 accepted, 1 rejected by the cabinet, 3 no answer within --timeout, 2 usage errors."""


def parse_broker(url: str) -> tuple[str, int]:
    """mqtt://host:port -> (host, port); a one-line CliError otherwise."""
    try:
        host, port, _tls = brokerurl.parse(url)
    except ValueError as e:
        raise CliError(str(e)) from None
    return host, port


def nodelay(client) -> None:
    """paho leaves Nagle's algorithm on: a lone small PUBLISH (a token) can then wait for the
    broker's delayed ACK, ~40 ms on Linux. Latency-minded clients switch it off."""
    import socket
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def answers_unlock(ack: dict, mission: str) -> bool:
    """Is this ack the cabinet's answer to our unlock for `mission`? An authenticated answer
    names the mission; a rejection before the MAC check names none (it must not echo
    unauthenticated bytes), so that one counts too."""
    return ack.get("cmd") == "unlock" and ack.get("mission") in (mission, None)


@dataclass
class Dispatch:
    """A paho-mqtt connection that sends commands to cabinets and collects their answers."""

    host: str
    port: int
    # Unique per process: a fixed id would let two dispatch tools (or anyone who learns the id)
    # take over each other's session. The production broker replaces it with the account name
    # anyway (use_username_as_clientid, docs/deploy/mosquitto/README.md).
    client_id: str = field(default_factory=lambda: "aedgate-dispatch-" + secrets.token_hex(6))
    username: str | None = None
    password: str | None = None
    messages: list[tuple[float, str, dict]] = field(default_factory=list)

    def __post_init__(self) -> None:
        import paho.mqtt.client as mqtt
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        if self.username:
            self.client.username_pw_set(self.username, self.password)
        self.client.on_message = self._on_message
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as e:
            raise CliError("cannot reach broker %s:%d: %s" % (self.host, self.port, e.strerror or e), 3)
        nodelay(self.client)
        self.client.loop_start()
        self._subscribed: set[str] = set()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            obj = json.loads(msg.payload)
        except ValueError:
            return
        with self._cond:
            self.messages.append((time.monotonic(), msg.topic, obj))
            self._cond.notify_all()

    def watch(self, device_id: str) -> None:
        for kind in ("ack", "event"):
            topic = "aed/v1/%s/%s" % (device_id, kind)
            if topic not in self._subscribed:
                self.client.subscribe(topic, qos=1)
                self._subscribed.add(topic)
        time.sleep(0.05)  # let SUBACK land before publishing (answers may come within ms)

    def send(self, device_id: str, command: str, raw: bytes) -> float:
        t0 = time.monotonic()
        self.client.publish("aed/v1/%s/cmd/%s" % (device_id, command), raw, qos=1, retain=False)
        return t0

    def wait(self, pred, since: float, timeout: float) -> tuple[float, str, dict] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if m[0] >= since and pred(m[1], m[2]):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def unlock(d: Dispatch, master_key: bytes, device_id: str, mission: str, window_s: int = 120,
           ttl_s: int = 120, timeout: float = 10.0) -> dict[str, Any]:
    """Send one unlock and wait for the cabinet's ack. Returns a result dict with the ack and
    latency_ms (publish -> ack received)."""
    raw = tokens.mint(master_key, device_id, mission, window_s, ttl_s=ttl_s)
    d.watch(device_id)
    t0 = d.send(device_id, "unlock", raw)
    ack = d.wait(lambda t, o: t == "aed/v1/%s/ack" % device_id and answers_unlock(o, mission),
                 t0, timeout)
    if ack is None:
        return {"device": device_id, "mission": mission, "result": "timeout", "t0": t0}
    return {"device": device_id, "mission": mission, "result": ack[2].get("result"),
            "reason": ack[2].get("reason"), "ack": ack[2], "latency_ms": (ack[0] - t0) * 1000, "t0": t0}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "unlock", help="open one cabinet for a volunteer (as dispatch does)",
        description="Mint a mission token for one cabinet, publish it on aed/v1/<id>/cmd/unlock, "
                    "and print what the cabinet answers, with the latency.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:port")
    p.add_argument("--fleet-key", required=True, metavar="FILE", help="fleet master key file (64 hex chars)")
    p.add_argument("--device", required=True, metavar="ID", help="cabinet id, e.g. cab-0001")
    p.add_argument("--mission", required=True, metavar="M", help="mission id (1-64 chars)")
    p.add_argument("--window", type=int, default=120, metavar="S", help="seconds to keep it open (default 120)")
    p.add_argument("--ttl", type=int, default=120, metavar="S", help="token validity in seconds (default 120)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wait this long for the ack (default 10)")
    p.add_argument("--follow", type=float, default=0.0, metavar="S",
                   help="after the ack, keep printing this cabinet's events for up to S seconds, "
                        "until it relocks")
    p.add_argument("--username", help="broker user name (dispatch account)")
    p.add_argument("--password", help="broker password")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    host, port = parse_broker(args.broker)
    key = load_fleet_key(args.fleet_key)
    device = check_device(args.device)
    d = Dispatch(host, port, username=args.username, password=args.password)
    try:
        try:
            r = unlock(d, key, device, args.mission, args.window, args.ttl, args.timeout)
        except tokens.TokenMintError as e:
            raise CliError(str(e))
        if r["result"] == "timeout":
            print("no answer from %s within %.0f s (offline? wrong broker?)" % (device, args.timeout))
            return 3
        print("%s %s mission %s in %.1f ms%s" % (device, r["result"], args.mission, r["latency_ms"],
                                                 (": " + r["reason"]) if r.get("reason") else ""))
        if r["result"] != "accepted":
            return 1
        if args.follow:
            _follow(d, device, r["t0"], args.follow)
        return 0
    finally:
        d.close()


def _follow(d: Dispatch, device: str, since: float, seconds: float) -> None:
    shown = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
        events = [x for x in d.messages if x[0] >= since and x[1].endswith(device + "/event")]
        for t, _topic, ev in events[shown:]:
            extra = {k: v for k, v in ev.items() if k not in ("v", "ts", "type", "seq")}
            print("  +%6.2f s  #%s %-12s %s" % (t - since, ev.get("seq"), ev.get("type"),
                                                 " ".join("%s=%s" % kv for kv in extra.items())))
        shown = len(events)
        if any(ev.get("type") == "relocked" for _t, _x, ev in events):
            return
