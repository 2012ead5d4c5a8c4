"""`aedgate console`: the board's log over USB serial, each line stamped with the host's time.

Read-only: it never types into the board, so the cabinet app keeps running. The port is opened
exclusively, so a provisioning run started by mistake meanwhile says the port is busy instead
of fighting over it. Ctrl-C closes it.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import sys
import time

import serial

from host_tools.device import BAUD, DeviceError, _diagnose_open

_EPILOG = """\
example:
  aedgate console --port /dev/ttyUSB0 --reset
  2026-11-24 09:12:03.418  MPY: soft reboot
  2026-11-24 09:12:03.622  event boot seq=41
  2026-11-24 09:12:03.910  online: 10.0.0.5:1883

Exit status: 0 (Ctrl-C or --duration), 2 when the port cannot be opened or is lost."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "console", help="show a board's log over USB serial, with host timestamps",
        description="Show what the board prints (boot messages, events, MQTT link) line by line, "
                    "each prefixed with the host's time. Read-only; Ctrl-C exits.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0")
    p.add_argument("--reset", action="store_true",
                   help="restart the board first (interrupt + soft reboot) to see its boot log")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--utc", action="store_true", help="stamp lines in UTC instead of local time")
    p.set_defaults(func=_cmd)


def _stamp(utc: bool) -> str:
    now = _dt.datetime.now(_dt.timezone.utc) if utc else _dt.datetime.now()
    return now.strftime("%Y-%m-%d %H:%M:%S.") + "%03d" % (now.microsecond // 1000)


def _open(port: str) -> serial.Serial:
    try:
        return serial.Serial(port, BAUD, timeout=0.2, exclusive=True)
    except (serial.SerialException, OSError):
        raise _diagnose_open(port) from None


def _restart(s: serial.Serial) -> None:
    """Interrupt whatever runs, leave the raw REPL if a tool left it there, then soft-reboot:
    boot.py and main.py run again and their output shows up."""
    s.write(b"\r\x03\x03")
    time.sleep(0.2)
    s.write(b"\r\x02")
    time.sleep(0.2)
    s.reset_input_buffer()
    s.write(b"\x04")


def follow(port: str, out=sys.stdout, reset: bool = False, duration: float | None = None,
           utc: bool = False) -> None:
    s = _open(port)
    end = time.monotonic() + duration if duration else None
    buf = bytearray()
    last = time.monotonic()

    def emit(raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        out.write("%s  %s\n" % (_stamp(utc), text))
        out.flush()

    try:
        if reset:
            _restart(s)
        while end is None or time.monotonic() < end:
            try:
                data = s.read(4096)
            except (serial.SerialException, OSError) as e:
                raise DeviceError("lost %s: %s" % (port, getattr(e, "strerror", None) or e)) from None
            now = time.monotonic()
            if data:
                buf += data
                last = now
                while b"\n" in buf:
                    i = buf.index(b"\n")
                    emit(bytes(buf[:i]))
                    del buf[:i + 1]
            elif buf and now - last > 0.5:  # a prompt or a line without its end yet
                emit(bytes(buf))
                buf.clear()
    finally:
        with contextlib.suppress(Exception):
            s.close()


def _cmd(args: argparse.Namespace) -> int:
    try:
        follow(args.port, reset=args.reset, duration=args.duration, utc=args.utc)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # piped into head & co.
        with contextlib.suppress(Exception):
            sys.stdout.close()
    return 0
