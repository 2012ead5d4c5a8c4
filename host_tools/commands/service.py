"""`aedgate service`: a technician's signed service command — the AED is back and checked, or
new pads / new AED battery with their expiry dates.

The command is a signed, single-use token (host_tools.signed_commands.mint_service, the same COSE
profile and per-device key as mission tokens), so the cabinet verifies it exactly like an
unlock. Two ways to deliver it:
  --broker URL  publish on aed/v1/<id>/cmd/service and wait for the cabinet's ack;
  --port PORT   over USB at the cabinet: the app is interrupted, the firmware verifies and
                applies it (aedgate.service.apply_serial) and prints one JSON line; the board
                is then reset so the app runs again.
"""
from __future__ import annotations

import argparse
import json

import cbor2

from host_tools.cli import CliError
from host_tools.commands.keys import check_device, load_fleet_key

_EPILOG = """\
examples:
  aedgate service --broker mqtt://10.0.0.5:1883 --fleet-key fleet.key --device cab-0001 --aed-checked
  aedgate service --port /dev/ttyUSB0 --fleet-key fleet.key --device cab-0001 --pads-expiry 2028-03-31

Exit status: 0 accepted, 1 rejected by the cabinet, 3 no answer within --timeout, 2 usage or
device errors."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "service", help="send a signed service command (AED checked, new pads/battery expiry)",
        description="Mint a signed service command for one cabinet and deliver it over MQTT "
                    "(--broker) or over USB (--port); print the cabinet's answer.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", help="deliver over USB serial at the cabinet")
    where.add_argument("--broker", metavar="URL", help="deliver over MQTT, e.g. mqtt://host:1883")
    p.add_argument("--fleet-key", required=True, metavar="FILE", help="fleet master key file (64 hex)")
    p.add_argument("--device", required=True, metavar="ID", help="cabinet id, e.g. cab-0001")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--aed-checked", action="store_true", help="the AED is back and checked after use")
    what.add_argument("--pads-expiry", metavar="DATE", help="new electrode pads, expiring YYYY-MM-DD")
    what.add_argument("--aed-battery-expiry", metavar="DATE", help="new AED battery, expiring YYYY-MM-DD")
    p.add_argument("--ticket", metavar="ID", help="service ticket or mission id to record with it")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wait this long for an answer")
    p.set_defaults(func=_cmd)


def _action(args: argparse.Namespace) -> tuple[str, str | None]:
    if args.aed_checked:
        return "aed_checked", None
    if args.pads_expiry:
        return "set_pads_expiry", args.pads_expiry
    return "set_aed_battery_expiry", args.aed_battery_expiry


def _cti(raw: bytes) -> str:
    msg = cbor2.loads(raw)
    while isinstance(msg, cbor2.CBORTag):
        msg = msg.value
    return cbor2.loads(msg[2])[7].hex()


# The board's own id, from the config it runs (config.json, else the last good copy).
_BOARD_ID = ("import json\nfor f in ('config.json', 'config.good'):\n try:\n"
             "  print('device_id=%s' % json.load(open(f))['device_id'])\n  break\n except Exception:\n  pass\n")


def over_serial(port: str, raw: bytes, timeout: float = 10.0, device_id: str | None = None) -> dict:
    from host_tools.device import Device, DeviceError
    with Device(port, timeout=timeout) as dev:
        if device_id is not None:
            # A command signed for another cabinet would only come back as unknown_kid (its key
            # is not this board's): say what is really wrong.
            board = [ln[10:] for ln in dev.exec(_BOARD_ID).splitlines() if ln.startswith("device_id=")]
            if board and board[0] != device_id:
                raise DeviceError("this board is %s, not %s: check --device (a service command is "
                                  "signed for one cabinet)" % (board[0], device_id))
        try:
            out = dev.exec("import aedgate.service\naedgate.service.apply_serial(%r)" % raw)
        except DeviceError as e:
            if "ImportError" in str(e):
                raise DeviceError("the board's firmware has no service module: run aedgate provision") from None
            raise
        dev.reset()
    for line in reversed(out.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    raise DeviceError("the board gave no result line: %r" % out.strip()[-80:])


def over_mqtt(url: str, device_id: str, raw: bytes, timeout: float = 10.0) -> dict | None:
    import os

    from host_tools.commands.unlock import Dispatch, parse_broker
    host, port = parse_broker(url)
    d = Dispatch(host, port, client_id="aedgate-service-%d" % os.getpid())
    try:
        d.watch(device_id)
        cti = _cti(raw)
        t0 = d.send(device_id, "service", raw)
        ack = d.wait(lambda t, o: t == "aed/v1/%s/ack" % device_id and o.get("cmd") == "service"
                     and o.get("cti") in (cti, None), t0, timeout)
    finally:
        d.close()
    return None if ack is None else ack[2]


def _cmd(args: argparse.Namespace) -> int:
    from host_tools import signed_commands, tokens
    device_id = check_device(args.device)
    master = load_fleet_key(args.fleet_key)
    action, value = _action(args)
    try:
        raw = signed_commands.mint_service(master, device_id, action, value, ticket=args.ticket)
    except tokens.TokenMintError as e:
        raise CliError(str(e)) from None
    if args.port:
        result = over_serial(args.port, raw, args.timeout, device_id)
    else:
        result = over_mqtt(args.broker, device_id, raw, args.timeout)
        if result is None:
            print("%s: no answer within %gs (offline? the command waits at the broker only while "
                  "the cabinet's session lasts)" % (device_id, args.timeout))
            return 3
    verdict = result.get("result")
    detail = ("reason %s" % result.get("reason")) if verdict == "rejected" else (value or "")
    print("%s: %s %s%s" % (device_id, action, verdict, (" — " + detail) if detail else ""))
    return 0 if verdict == "accepted" else 1
