"""`aedsim`: run simulated AED cabinets (the real firmware on simulated hardware)."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import simulator  # noqa: F401


class SimError(Exception):
    pass


def _fleet_key(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text().strip()
    except OSError as e:
        raise SimError("cannot read fleet key %s: %s" % (path, e.strerror))
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise SimError("fleet key %s must hold 64 hex characters (32 bytes)" % path)
    return key


async def _run(args) -> int:
    from simulator.broker import EmbeddedBroker
    from simulator.fleet import Fleet
    from simulator.observer import Observer
    from simulator.view import describe, screen

    broker = None
    url = args.broker
    if url is None:
        broker = await EmbeddedBroker().start()
        url = broker.url
        print("embedded MQTT broker: %s" % url, flush=True)
    logs: list[str] = []
    fleet = Fleet(args.cabinets, url, flash_root=args.flash_dir, speed=args.speed,
                  fleet_key=_fleet_key(args.fleet_key), heartbeat_s=args.heartbeat, log=logs.append)
    obs = await Observer(url).start()
    await fleet.start()
    print("running %d cabinets (%s … %s) at speed x%g; world control: aedsim/world/<device_id>"
          % (args.cabinets, "cab-0001", "cab-%04d" % args.cabinets, args.speed), flush=True)
    end = time.monotonic() + args.duration if args.duration else None
    try:
        if sys.stdout.isatty() and not args.plain:
            from rich.live import Live
            with Live(screen(obs), refresh_per_second=4) as live:
                while end is None or time.monotonic() < end:
                    await asyncio.sleep(0.25)
                    live.update(screen(obs, "%d/%d online · %d events · Ctrl-C to stop"
                                       % (obs.online(), args.cabinets, obs.event_count)))
        else:
            obs.listeners.append(lambda did, kind, ev: kind in ("event", "ack") and print(
                "%s %s" % (did, describe(kind, ev)), flush=True))
            while end is None or time.monotonic() < end:
                await asyncio.sleep(0.5)
                while logs:
                    print("log", logs.pop(0), flush=True)
    finally:
        summary = {"cabinets": args.cabinets, "online": obs.online(), "events": obs.event_count,
                   "gaps": obs.gaps, "duplicates": obs.duplicates}
        await fleet.stop()
        await obs.stop()
        if broker:
            await broker.stop()
        print(json.dumps(summary), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aedsim",
        description="Simulated AED cabinets running the real aedgate firmware, for development, "
                    "demos and backend load tests — no hardware needed.",
        epilog="Examples:\n  aedsim demo\n  aedsim run --cabinets 20\n"
               "  aedsim run --cabinets 500 --broker mqtt://127.0.0.1:1883 --speed 60\n"
               "  mosquitto_pub -t aedsim/world/cab-0002 -m '{\"door\": \"open\"}'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run N simulated cabinets against a broker",
                         description="Run N simulated cabinets (cab-0001, cab-0002, …), each the real "
                                     "firmware app with its own flash folder and MQTT connection. Drive "
                                     "their world by publishing JSON to aedsim/world/<device_id>.")
    run.add_argument("--cabinets", type=int, default=3, metavar="N", help="how many cabinets (default 3)")
    run.add_argument("--broker", metavar="URL", help="mqtt://host:port; default: start an embedded broker")
    run.add_argument("--fleet-key", metavar="FILE", help="fleet master key file (64 hex chars): "
                     "each cabinet's token key is derived from it")
    run.add_argument("--speed", type=float, default=1.0, metavar="X",
                     help="run the cabinets' clocks X times faster (timers, expiry, battery drain)")
    run.add_argument("--heartbeat", type=int, default=1800, metavar="S",
                     help="state heartbeat interval in simulated seconds (default 1800)")
    run.add_argument("--duration", type=float, metavar="S", help="stop after S real seconds")
    run.add_argument("--flash-dir", type=Path, metavar="DIR",
                     help="keep the cabinets' flash here (default: a temporary folder)")
    run.add_argument("--plain", action="store_true", help="print events as lines instead of a live table")
    run.set_defaults(func=lambda a: asyncio.run(_run(a)))

    demo = sub.add_parser("demo", help="a short scripted demo with an embedded broker",
                          description="Start an embedded broker and four cabinets, then play a short "
                                      "story over MQTT: a door opened without a mission, mains lost, a "
                                      "battery running low, a cold cabinet, a Wi-Fi outage.")
    demo.add_argument("--plain", action="store_true", help="print lines instead of a live table")
    demo.set_defaults(func=lambda a: asyncio.run(_demo(a)))
    return p


async def _demo(args) -> int:
    from simulator.demo import play
    return await play(plain=args.plain or not sys.stdout.isatty())


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "cabinets", 1) < 1:
        print("aedsim: error: --cabinets must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except SimError as e:
        print("aedsim: error: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
