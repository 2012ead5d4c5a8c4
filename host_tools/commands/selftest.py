"""`aedgate selftest`: the cabinet's hardware checklist, run on the board itself.

The checks live in the firmware (firmware/aedgate/selftest.py) and use the board's own drivers
and config, so they test what the cabinet app will use: door input, lock pulse (confirmed by
lock_sense when fitted), siren, backup battery, mains, temperature, Wi-Fi, the broker over TCP,
the time floor and the outbox. This command interrupts the cabinet app, runs the checks, prints
a table and resets the board so the app starts again.
"""
from __future__ import annotations

import argparse
import json
import sys

from host_tools.cli import CliError
from host_tools.device import Device, DeviceError

_EPILOG = """\
example:
  aedgate selftest --port /dev/ttyUSB0

  CHECK         RESULT  DETAIL
  config        pass    device_id cab-0001, 1 key slot(s)
  door          pass    closed (pin level 0)
  lock          pass    pulsed, lock_sense confirmed the bolt moved
  ...
  12 checks: 10 pass, 2 warn, 0 fail

Exit status: 0 when no check failed, 1 when any failed, 2 when the board could not be reached.
The lock check pulses the lock: stand at the cabinet."""

_MARK = {"pass": "pass", "fail": "FAIL", "warn": "warn", "skip": "skip"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "selftest", help="run the hardware checklist on a board and print a pass/fail table",
        description="Run the cabinet's hardware checklist on the board over USB: door, lock pulse, "
                    "siren, battery, mains, temperature, Wi-Fi, broker reachability, time floor, "
                    "outbox. The lock is pulsed.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wait this long for the board")
    p.add_argument("--json", action="store_true", help="print the results as one JSON list instead")
    p.add_argument("--no-reset", action="store_true", help="leave the board at the REPL afterwards")
    p.set_defaults(func=_cmd)


def run(port: str, timeout: float = 10.0, on_result=None, reset: bool = True) -> list[dict]:
    results: list[dict] = []
    other: list[str] = []

    def line(text: str) -> None:
        try:
            r = json.loads(text)
        except ValueError:
            if text.strip():
                other.append(text.strip())
            return
        if isinstance(r, dict) and "check" in r:
            results.append(r)
            if on_result:
                on_result(r)

    with Device(port, timeout=timeout) as dev:
        try:
            dev.exec_lines("import aedgate.selftest as _t\n_t.main()", line, timeout=30)
        except DeviceError as e:
            if "ImportError" in str(e) and "selftest" in str(e):
                raise DeviceError("the board's firmware has no selftest module: run aedgate provision") from None
            raise
        if reset:
            dev.reset()
    if not results:
        raise DeviceError("the selftest printed no results%s" % (": " + other[-1] if other else ""))
    return results


def _cmd(args: argparse.Namespace) -> int:
    shown = []

    def show(r: dict) -> None:
        if args.json:
            return
        if not shown:  # the header once the board answers, not before a connection error
            print("%-13s %-7s %s" % ("CHECK", "RESULT", "DETAIL"), flush=True)
        shown.append(r)
        print("%-13s %-7s %s" % (r["check"], _MARK.get(r["status"], r["status"]), r["detail"]), flush=True)

    results = run(args.port, args.timeout, show, reset=not args.no_reset)
    counts = {s: sum(1 for r in results if r["status"] == s) for s in ("pass", "warn", "skip", "fail")}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("%d checks: %d pass, %d warn, %d skip, %d fail" % (
            len(results), counts["pass"], counts["warn"], counts["skip"], counts["fail"]))
    return 1 if counts["fail"] else 0
