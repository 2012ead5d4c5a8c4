"""`aedsim`: run simulated AED cabinets (the real firmware on simulated hardware)."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import simulator  # noqa: F401
from simulator.fleet.workload import PROFILES as _PROFILES

PROFILE_NAMES = tuple(_PROFILES)


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
    from simulator.fleet.workers import RunSpec, ScaleError, Workers, check_fd_budget, plan_sources, \
        raise_nofile, run_slice
    from simulator.fleet import view as scaleview

    broker = None
    url = args.broker
    if url is None:
        from simulator.brokers.embedded import EmbeddedBroker
        broker = await EmbeddedBroker(prefer=args.embedded).start()
        url = broker.url
        print("embedded MQTT broker: %s" % broker.describe(), flush=True)
        if broker.warning:
            print("aedsim: warning: %s" % broker.warning, file=sys.stderr, flush=True)
    brokers = [u.strip() for u in url.split(",") if u.strip()]
    big = args.cabinets > 1000
    flash = args.flash or ("memory" if big else "dir")
    n_src = args.source_ips if args.source_ips is not None else (2 if big else 0)
    try:
        sources = plan_sources(args.cabinets, len(brokers), n_src) if n_src else None
        spec = RunSpec(cabinets=args.cabinets, brokers=brokers, workers=args.workers,
                       ramp=args.ramp, heartbeat=args.heartbeat, speed=args.speed,
                       profile=args.profile, seed=args.seed, flash=flash,
                       flash_dir=str(args.flash_dir) if args.flash_dir else None,
                       source_ips=sources, fleet_key=_fleet_key(args.fleet_key),
                       duration=args.duration)
        raise_nofile()
        check_fd_budget(spec)
    except ScaleError as e:
        raise SimError(str(e))
    workers = Workers(spec)
    small = args.workers == 1 and args.cabinets <= 50  # a person can follow every event
    live = sys.stdout.isatty() and not args.plain
    logs: list[str] = []
    obs = None
    inproc = None
    stop_flag = [False]
    if args.workers == 1:
        inproc = asyncio.create_task(run_slice(
            spec, 0, 1, args.cabinets, workers.take, lambda: stop_flag[0],
            log=logs.append if small else None))
    else:
        workers.start()
    if small:
        from simulator.fleet.observer import Observer
        obs = await Observer(brokers[0]).start()
    print("running %d cabinets (%s … %s) in %d worker(s) on %d broker(s) at speed x%g, "
          "profile %s; world control: aedsim/world/<device_id> on the cabinet's broker"
          % (args.cabinets, "cab-0001", "cab-%04d" % args.cabinets, args.workers, len(brokers),
             args.speed, args.profile), flush=True)
    t0 = time.monotonic()
    end = t0 + args.duration if args.duration else None
    rates = scaleview.Rates()
    next_line = t0 + args.every
    title = "aedsim — %d cabinets, %d worker(s), %d broker(s)" % (args.cabinets, args.workers,
                                                                   len(brokers))
    summary = None
    try:
        if live:
            from rich.console import Group
            from rich.live import Live
            from host_tools.fleetview import screen

            def render():
                parts = [scaleview.table(workers.latest, rates, title, time.monotonic() - t0)]
                if obs is not None:
                    parts.insert(0, screen(obs, ""))
                return Group(*parts)
            with Live(render(), refresh_per_second=2) as view:
                while end is None or time.monotonic() < end:
                    await asyncio.sleep(0.5)
                    workers.poll()
                    rates.update(workers.latest)
                    view.update(render())
                    if _finished(workers, inproc):
                        break
        else:
            if obs is not None:
                from host_tools.fleetview import describe
                obs.listeners.append(lambda did, kind, ev: kind in ("event", "ack") and print(
                    "%s %s" % (did, describe(kind, ev)), flush=True))
            while end is None or time.monotonic() < end:
                await asyncio.sleep(0.25)
                workers.poll()
                rates.update(workers.latest)
                while logs:
                    print("log", logs.pop(0), flush=True)
                if time.monotonic() >= next_line and workers.latest:
                    next_line += args.every
                    print(scaleview.line(workers.latest, rates, time.monotonic() - t0), flush=True)
                if _finished(workers, inproc):
                    break
    finally:
        stop_flag[0] = True
        if inproc is not None:
            try:
                await inproc
            except Exception as e:  # noqa: BLE001  (reported in the summary)
                workers.fatal.append("%s: %s" % (type(e).__name__, e))
        else:
            await workers.stop()
        summary = scaleview.summary(spec, workers.latest, workers.history)
        summary["workers_failed"] = workers.fatal
        if obs is not None:
            summary.update({"backend_online": obs.online(), "backend_events": obs.event_count,
                            "gaps": obs.gaps, "duplicates": obs.duplicates})
            await obs.stop()
        if broker:
            await broker.stop()
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps(summary), flush=True)
    return 1 if workers.fatal else 0


def _finished(workers, inproc) -> bool:
    """A worker gave up (it says why) or died: no point watching on."""
    if workers.fatal:
        for msg in workers.fatal:
            print("aedsim: error: %s" % msg, file=sys.stderr, flush=True)
        return True
    if inproc is not None:
        return inproc.done()
    return workers.procs and workers.alive() < len(workers.procs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aedsim",
        description="Simulated AED cabinets running the real aedgate firmware, for development, "
                    "demos and backend load tests — no hardware needed.",
        epilog="Examples:\n  aedsim demo\n  aedsim run --cabinets 20\n"
               "  aedsim run --cabinets 500 --broker mqtt://127.0.0.1:1883 --speed 60\n"
               "  aedsim run --cabinets 30000 --workers 2 --ramp 2000 --heartbeat 60 \\\n"
               "      --broker mqtt://127.0.0.1:1883,mqtt://127.0.0.1:1884 --plain\n"
               "  mosquitto_pub -p PORT -t aedsim/world/cab-0002 -m '{\"door\": \"open\"}'\n"
               "      (PORT: the one `aedsim run` printed; -h HOST for a --broker elsewhere)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run N simulated cabinets against a broker",
                         description="Run N simulated cabinets (cab-0001, cab-0002, …), each the real "
                                     "firmware app with its own flash folder and MQTT connection. Drive "
                                     "their world by publishing JSON to aedsim/world/<device_id>.")
    run.add_argument("--cabinets", type=int, default=3, metavar="N", help="how many cabinets (default 3)")
    run.add_argument("--broker", metavar="URL[,URL…]",
                     help="mqtt://host:port, or several comma-separated (shards: cabinets are spread "
                          "over them round robin); default: start an embedded broker")
    run.add_argument("--embedded", choices=("auto", "mosquitto", "amqtt"), default="auto",
                     help="which embedded broker without --broker: auto (default) = Mosquitto "
                          "when installed, else amqtt in this process")
    run.add_argument("--fleet-key", metavar="FILE", help="fleet master key file (64 hex chars): "
                     "each cabinet's token key is derived from it (and missions can be signed)")
    run.add_argument("--speed", type=float, default=1.0, metavar="X",
                     help="run the cabinets' clocks X times faster (timers, expiry, battery drain)")
    run.add_argument("--heartbeat", type=int, default=1800, metavar="S",
                     help="state heartbeat interval in simulated seconds (default 1800, least 10)")
    run.add_argument("--duration", type=float, metavar="S", help="stop after S real seconds")
    run.add_argument("--workers", type=int, default=1, metavar="N",
                     help="worker processes, each one asyncio loop running a slice of the ids "
                          "(default 1: in this process). A process holds < its open-files limit "
                          "of connections: 30,000 cabinets need 2 or more here")
    run.add_argument("--ramp", type=float, metavar="PER_S",
                     help="boot at most PER_S cabinets per second over the whole fleet")
    run.add_argument("--profile", default="idle", choices=sorted(PROFILE_NAMES),
                     help="workload: idle (heartbeats only), busy (doors, drifts, outages, "
                          "missions), storm (busy + every cabinet's Wi-Fi drops at once)")
    run.add_argument("--seed", type=int, metavar="N", help="make the workload and jitter reproducible")
    run.add_argument("--flash", choices=("dir", "memory"),
                     help="cabinet flash: a folder each (default up to 1000 cabinets) or in memory")
    run.add_argument("--flash-dir", type=Path, metavar="DIR",
                     help="keep the cabinets' flash folders here (default: a temporary folder)")
    run.add_argument("--source-ips", type=int, metavar="K",
                     help="bind cabinet sockets to K loopback source addresses 127.0.0.2… "
                          "(default 2 above 1000 cabinets, more if the ports need it; 0: no binding)")
    run.add_argument("--plain", action="store_true",
                     help="print a progress line every few seconds instead of a live table")
    run.add_argument("--every", type=float, default=5.0, metavar="S", help="seconds between --plain lines")
    run.add_argument("--json", metavar="FILE", help="also write the end-of-run JSON summary here")
    run.set_defaults(func=_run_on_fleet_loop)

    demo = sub.add_parser("demo", help="a short scripted demo with an embedded broker",
                          description="Start an embedded broker and four cabinets, then play a short "
                                      "story over MQTT: a door opened without a mission, mains lost, a "
                                      "battery running low, a cold cabinet, a Wi-Fi outage.")
    demo.add_argument("--plain", action="store_true", help="print lines instead of a live table")
    demo.add_argument("--scenario", default="demo", metavar="FILE|NAME",
                      help="the story to tell: a scenario file, or a built-in one (demo, faults)")
    demo.set_defaults(func=lambda a: asyncio.run(_demo(a)))

    sc = sub.add_parser("scenario", help="play a scenario file against running cabinets",
                        description="Publish a scenario's timed world changes (aedsim/world/<id>) to "
                                    "the broker(s) of running simulated cabinets: `aedsim run`, a "
                                    "fleet in several workers, or `aedsim vdev`. Built-in: demo, faults.",
                        epilog="example:\n  aedsim run --cabinets 4 --broker mqtt://127.0.0.1:1883 &\n"
                               "  aedsim scenario faults --broker mqtt://127.0.0.1:1883",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sc.add_argument("file", metavar="FILE|NAME", help="scenario JSON file, or demo / faults")
    sc.add_argument("--broker", required=True, metavar="URL[,URL…]",
                    help="the broker(s) the cabinets use, as given to aedsim run")
    sc.set_defaults(func=lambda a: asyncio.run(_scenario(a)))

    vdev = sub.add_parser("vdev", help="a virtual serial device (pty) running the firmware",
                          description="Start a virtual ESP32 cabinet controller on a pty: the real "
                                      "MicroPython unix port with ESP32 REPL semantics, so mpremote, "
                                      "pyserial and `aedgate provision/selftest/console` work on it. "
                                      "Prints the pty path as the first line; runs until Ctrl-C.")
    from simulator.vdev import device as _vdev
    _vdev.add_arguments(vdev)
    vdev.set_defaults(func=lambda a: asyncio.run(_vdev.run(a)))

    from simulator.bench import fleet_bench as bench
    bench.register(sub)
    from simulator.bench import soak
    soak.register(sub)
    from simulator.bench import rollout_run
    rollout_run.register(sub)
    return p


async def _demo(args) -> int:
    from simulator.demo import play
    from simulator.world.scenario import ScenarioError
    try:
        return await play(plain=args.plain or not sys.stdout.isatty(), scenario_name=args.scenario)
    except ScenarioError as e:
        raise SimError(str(e))


async def _scenario(args) -> int:
    from simulator.world import scenario
    try:
        story = scenario.load(args.file)
    except scenario.ScenarioError as e:
        raise SimError(str(e))
    t0 = time.monotonic()

    def show(step):
        print("%6.1f s  %s  %s%s" % (time.monotonic() - t0, step["device"], json.dumps(step["world"]),
                                     ("   # " + step["note"]) if step.get("note") else ""), flush=True)
    try:
        await scenario.play(story, args.broker, show, t0)
    except OSError as e:
        raise SimError("cannot reach broker %s: %s" % (args.broker, e.strerror or e))
    return 0


def _run_on_fleet_loop(args) -> int:
    """`aedsim run`: with --workers 1 the cabinets share this process's loop, so it is the fleet
    workers' loop (loophealth.FleetLoop), not the stdlib's."""
    from simulator.fleet.loophealth import FleetLoop
    with asyncio.Runner(loop_factory=FleetLoop) as runner:
        return runner.run(_run(args))


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
