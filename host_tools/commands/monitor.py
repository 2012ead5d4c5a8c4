"""`aedgate monitor`: watch cabinets over MQTT as the registry sees them — a live table from the
retained status and state, and the stream of events and acks (host_tools.backend underneath)."""
from __future__ import annotations

import argparse
import sys
import time

from host_tools.backend import (BrokerError, BrokerOptions, FleetSubscriber, add_broker_arguments,
                                unique_client_id)
from host_tools.cli import CliError
from host_tools.fleetview import describe, screen

_EPILOG = """\
examples:
  aedgate monitor --broker mqtt://127.0.0.1:1883
  aedgate monitor --broker mqtt://127.0.0.1:1883 --device cab-0001 --device cab-0002
  aedgate monitor --broker mqtt://127.0.0.1:1883 --plain --duration 60 > events.log
  AEDGATE_BROKER_PASSWORD=... aedgate monitor --broker mqtts://broker.example:8883 --ca ca.pem --user registry

Messages that break docs/schemas are counted, not shown; the footer says how many.
Exit status: 0 after --duration or Ctrl-C, 3 when the broker cannot be reached, 4 when it
refuses the credentials."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "monitor", help="watch cabinets over MQTT (live table and event stream)",
        description="Subscribe to aed/v1/<id>/{status,state,event,ack} and show each cabinet's "
                    "door, lock, battery, mains, temperature, expiry and alarms, with the latest "
                    "events underneath. Retained status and state fill the table at once.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_arguments(p, "registry", shards=True)
    p.add_argument("--device", action="append", metavar="ID",
                   help="only this cabinet (repeatable); default: every cabinet (+)")
    p.add_argument("--rows", type=int, default=30, metavar="N", help="table rows (default 30)")
    p.add_argument("--plain", action="store_true", help="print one line per event instead of a live table")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    try:
        shards = BrokerOptions.from_args(args)
    except ValueError as e:
        raise CliError(str(e)) from None
    plain = args.plain or not sys.stdout.isatty()
    feed = FleetSubscriber(shards, unique_client_id("monitor", shards[0].user),
                           devices=args.device or ["+"])
    if plain:
        feed.fleet.listeners.append(lambda did, kind, ev: print(
            "%s %-10s %s" % (time.strftime("%H:%M:%S"), did, describe(kind, ev)), flush=True))
    try:
        feed.start()
    except BrokerError as e:
        raise CliError(str(e), e.code) from None
    end = time.monotonic() + args.duration if args.duration else None
    fleet = feed.fleet
    try:
        if plain:
            while end is None or time.monotonic() < end:
                time.sleep(0.2)
        else:
            from rich.live import Live
            with Live(screen(fleet, limit=args.rows), refresh_per_second=4) as live:
                while end is None or time.monotonic() < end:
                    time.sleep(0.25)
                    with feed.lock:
                        live.update(screen(fleet, "%d/%d online · %d events · %d invalid · Ctrl-C to stop" % (
                            fleet.online(), len(fleet.status), fleet.event_count,
                            fleet.counters["invalid"]), limit=args.rows))
    except KeyboardInterrupt:
        pass
    finally:
        feed.close()
    return 0
