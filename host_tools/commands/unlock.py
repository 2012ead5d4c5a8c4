"""`aedgate unlock`: what dispatch does for a volunteer — mint a mission token for one cabinet,
publish it, and report what the cabinet did (ack, unlocked, door opened, relocked).
Talks to the broker through host_tools.backend (CommandSender)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from host_tools import tokens
from host_tools.backend import BrokerError, BrokerOptions, CommandSender, add_broker_arguments
from host_tools.cli import CliError
from host_tools.commands.keys import check_device, load_fleet_key

_EPILOG = """\
examples:
  aedgate unlock --broker mqtt://127.0.0.1:1883 --fleet-key fleet.key --device cab-0001 --mission M-2291
  AEDGATE_BROKER_PASSWORD=... aedgate unlock --broker mqtts://broker.example:8883 --ca ca.pem \\
      --user dispatch --fleet-key fleet.key --device cab-0001 --mission M-2291
  aedgate unlock ... --window 180 --follow 300     (also wait for door opened/closed and relock)

--follow needs an account that may read the cabinet's events: the production ACL lets the
dispatch account read acks only, and unlock says so instead of waiting in silence.

Exit status: 0 accepted, 1 rejected by the cabinet, 2 usage errors, 3 no answer within --timeout
or broker unreachable, 4 the broker refused the credentials."""


def answers_unlock(ack: dict, mission: str) -> bool:
    """Is this ack the cabinet's answer to our unlock for `mission`? An authenticated answer
    names the mission; a rejection before the MAC check names none (it must not echo
    unauthenticated bytes), so that one counts too."""
    return ack.get("cmd") == "unlock" and ack.get("mission") in (mission, None)


def unlock(d: CommandSender, master_key: bytes, device_id: str, mission: str, window_s: int = 120,
           ttl_s: int = 120, timeout: float = 10.0) -> dict[str, Any]:
    """Send one unlock and wait for the cabinet's ack (matched by the token's cti). Returns a
    result dict with the ack and latency_ms (publish -> ack received)."""
    raw = tokens.mint(master_key, device_id, mission, window_s, ttl_s=ttl_s)
    sent = d.send(device_id, "unlock", raw, mission)
    ack = d.wait(sent, timeout)
    if ack is None:
        return {"device": device_id, "mission": mission, "result": "timeout", "t0": sent.t0}
    return {"device": device_id, "mission": mission, "result": ack.get("result"),
            "reason": ack.get("reason"), "ack": ack, "latency_ms": sent.latency_ms, "t0": sent.t0}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "unlock", help="open one cabinet for a volunteer (as dispatch does)",
        description="Mint a mission token for one cabinet, publish it on aed/v1/<id>/cmd/unlock, "
                    "and print what the cabinet answers, with the latency.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_arguments(p, "dispatch")
    p.add_argument("--fleet-key", required=True, metavar="FILE", help="fleet master key file (64 hex chars)")
    p.add_argument("--device", required=True, metavar="ID", help="cabinet id, e.g. cab-0001")
    p.add_argument("--mission", required=True, metavar="M", help="mission id (1-64 chars)")
    p.add_argument("--window", type=int, default=120, metavar="S", help="seconds to keep it open (default 120)")
    p.add_argument("--ttl", type=int, default=120, metavar="S", help="token validity in seconds (default 120)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wait this long for the ack (default 10)")
    p.add_argument("--follow", type=float, default=0.0, metavar="S",
                   help="after the ack, keep printing this cabinet's events for up to S seconds, "
                        "until it relocks")
    p.set_defaults(func=_cmd)


def sender_from_args(args: argparse.Namespace, role: str) -> CommandSender:
    """A started CommandSender for the tool's --broker options; CliError (one line) otherwise."""
    try:
        opts = BrokerOptions.from_args(args)
    except ValueError as e:
        raise CliError(str(e)) from None
    if len(opts) != 1:
        raise CliError("--broker takes one URL here")
    try:
        from host_tools.backend import unique_client_id
        return CommandSender(opts[0], unique_client_id(role, opts[0].user)).start()
    except BrokerError as e:
        raise CliError(str(e), e.code) from None


def _cmd(args: argparse.Namespace) -> int:
    key = load_fleet_key(args.fleet_key)
    device = check_device(args.device)
    d = sender_from_args(args, "dispatch")
    try:
        follow = bool(args.follow)
        if follow:  # before the token: the cabinet's first events come within milliseconds
            why = d.follow(device)
            if why:
                print("aedgate: cannot follow: %s" % why, file=sys.stderr)
                follow = False
        try:
            r = unlock(d, key, device, args.mission, args.window, args.ttl, args.timeout)
        except tokens.TokenMintError as e:
            raise CliError(str(e))
        if r["result"] == "timeout":
            print("no answer from %s within %.0f s: the broker %s took the token, the cabinet did "
                  "not answer (offline? not provisioned for this broker?)"
                  % (device, args.timeout, d.opts.describe()))
            return 3
        print("%s %s mission %s in %.1f ms%s" % (device, r["result"], args.mission, r["latency_ms"],
                                                 (": " + r["reason"]) if r.get("reason") else ""))
        if r["result"] != "accepted":
            return 1
        if follow:
            _follow(d, device, r["t0"], args.follow)
        return 0
    finally:
        d.close()


def _follow(d: CommandSender, device: str, since: float, seconds: float) -> None:
    print("following %s for up to %g s (until it relocks)..." % (device, seconds), flush=True)
    shown = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
        events = d.events(device)
        for t, ev in events[shown:]:
            extra = {k: v for k, v in ev.items() if k not in ("v", "ts", "type", "seq")}
            print("  +%6.2f s  #%s %-12s %s" % (t - since, ev.get("seq"), ev.get("type"),
                                                 " ".join("%s=%s" % kv for kv in extra.items())),
                  flush=True)
        shown = len(events)
        if any(ev.get("type") == "relocked" for _t, ev in events):
            return
    print("  (%g s passed without a relock)" % seconds)
