"""`aedgate monitor`: watch cabinets over MQTT as the registry sees them — a live table from the
retained status and state, and the stream of events and acks."""
from __future__ import annotations

import argparse
import sys
import threading
import time

from host_tools.cli import CliError
from host_tools.fleetview import FleetRecord, describe, screen
from host_tools.commands.unlock import parse_broker

_EPILOG = """\
examples:
  aedgate monitor --broker mqtt://127.0.0.1:1883
  aedgate monitor --broker mqtt://127.0.0.1:1883 --device cab-0001 --device cab-0002
  aedgate monitor --broker mqtt://127.0.0.1:1883 --plain --duration 60 > events.log

Exit status: 0 after --duration or Ctrl-C, 3 when the broker cannot be reached."""


class Monitor(FleetRecord):
    """A paho-mqtt subscriber collecting what the fleet view renders."""

    def __init__(self, host: str, port: int, devices: list[str], username: str | None = None,
                 password: str | None = None, on_event=None):
        import paho.mqtt.client as mqtt
        super().__init__()
        self.lock = threading.Lock()  # paho's thread adds, the screen reads
        if on_event:
            self.listeners.append(on_event)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="aedgate-monitor-%d" % id(self))
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p=None: [
            c.subscribe("aed/v1/%s/%s" % (d, kind), qos=1) for d in devices
            for kind in ("status", "state", "event", "ack")]
        try:
            self.client.connect(host, port, keepalive=30)
        except OSError as e:
            raise CliError("cannot reach broker %s:%d: %s" % (host, port, e.strerror or e), 3)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.add(msg.topic, msg.payload)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "monitor", help="watch cabinets over MQTT (live table and event stream)",
        description="Subscribe to aed/v1/<id>/{status,state,event,ack} and show each cabinet's "
                    "door, lock, battery, mains, temperature, expiry and alarms, with the latest "
                    "events underneath. Retained status and state fill the table at once.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:port")
    p.add_argument("--device", action="append", metavar="ID",
                   help="only this cabinet (repeatable); default: every cabinet (+)")
    p.add_argument("--rows", type=int, default=30, metavar="N", help="table rows (default 30)")
    p.add_argument("--plain", action="store_true", help="print one line per event instead of a live table")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--username", help="broker user name (a registry account)")
    p.add_argument("--password", help="broker password")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    host, port = parse_broker(args.broker)
    devices = args.device or ["+"]
    plain = args.plain or not sys.stdout.isatty()
    printer = None
    if plain:
        def printer(did, kind, ev):
            print("%s %-10s %s" % (time.strftime("%H:%M:%S"), did, describe(kind, ev)), flush=True)
    mon = Monitor(host, port, devices, args.username, args.password, on_event=printer)
    end = time.monotonic() + args.duration if args.duration else None
    try:
        if plain:
            while end is None or time.monotonic() < end:
                time.sleep(0.2)
        else:
            from rich.live import Live
            with Live(screen(mon, limit=args.rows), refresh_per_second=4) as live:
                while end is None or time.monotonic() < end:
                    time.sleep(0.25)
                    with mon.lock:
                        live.update(screen(mon, "%d/%d online · %d events · Ctrl-C to stop" % (
                            mon.online(), len(mon.status), mon.event_count), limit=args.rows))
    except KeyboardInterrupt:
        pass
    finally:
        mon.close()
    return 0
