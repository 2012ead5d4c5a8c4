"""`aedgate token`: mint a mission token (as dispatch would) and inspect one."""
from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from pathlib import Path

from host_tools import tokens
from host_tools.cli import CliError
from host_tools.commands.keys import check_device, load_fleet_key

_DESCRIPTION = """\
Mission tokens: COSE_Mac0 (HMAC 256/256) over CWT claims, at most 512 bytes, MACed with the
cabinet's own key (derived from the fleet key). A cabinet opens for WINDOW seconds when it
receives a valid, unexpired, never-seen token on aed/v1/<id>/cmd/unlock."""

_MINT_EPILOG = """\
examples:
  aedgate token mint --fleet-key fleet.key --device cab-0001 --mission M-2291 --window 120
      prints the token as base64url (no padding) on stdout
  aedgate token mint --fleet-key fleet.key --device cab-0001 --mission M-2291 --window 120 \\
      --ttl 60 --out token.cbor
      writes the raw bytes, ready to publish as the MQTT payload"""

_INSPECT_EPILOG = """\
examples:
  aedgate token inspect 0oRDoQEFoQRI...
  aedgate token inspect --in token.cbor --fleet-key fleet.key
Without --fleet-key the MAC cannot be checked and the verdict is "unchecked". Exit status: 0
valid or unchecked, 1 invalid."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("token", help="mint or inspect mission tokens",
                              description=_DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="token_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])

    mint = sub.add_parser("mint", help="create a token for one cabinet",
                          description="Create a mission token that opens one cabinet.",
                          epilog=_MINT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    mint.add_argument("--fleet-key", required=True, metavar="FILE",
                      help="fleet master key file (64 hex characters)")
    mint.add_argument("--device", required=True, metavar="ID", help="cabinet id, e.g. cab-0001")
    mint.add_argument("--mission", required=True, metavar="M",
                      help="mission id from dispatch (1-64 characters), echoed in events and acks")
    mint.add_argument("--window", required=True, type=int, metavar="S",
                      help="seconds the lock stays open, >= 1 (the cabinet clamps it to its maximum)")
    mint.add_argument("--ttl", type=int, default=120, metavar="S",
                      help="seconds the token stays valid (1-%d, default 120)" % tokens.MAX_TTL_S)
    mint.add_argument("--issuer", default="dispatch", help="iss claim (default: dispatch)")
    mint.add_argument("--kid", metavar="KID",
                      help="key id the cabinet was provisioned with: hex:6b31 or text (k1); "
                           "default: the key's check value (aedgate keys derive prints it)")
    mint.add_argument("--out", metavar="FILE", help="write the raw token bytes here instead of "
                                                    "printing base64url")
    mint.set_defaults(func=cmd_mint)

    ins = sub.add_parser("inspect", help="explain a token's headers, claims and validity",
                         description="Decode a token and explain every header and claim; with "
                                     "--fleet-key also check its MAC.",
                         epilog=_INSPECT_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    ins.add_argument("token", nargs="?", metavar="TOKEN",
                     help="the token as base64url (or base64, or hex); '-' reads stdin")
    ins.add_argument("--in", dest="infile", metavar="FILE", help="read raw token bytes from FILE")
    ins.add_argument("--fleet-key", metavar="FILE", help="fleet master key file, to check the MAC")
    ins.add_argument("--json", action="store_true", help="print the full analysis as JSON")
    ins.set_defaults(func=cmd_inspect)


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_text_token(text: str) -> bytes:
    """Bytes of a token given as base64url, base64 or hex text."""
    text = "".join(text.split())
    if not text:
        raise CliError("empty token")
    if len(text) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    try:
        padded = text + "=" * (-len(text) % 4)
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise CliError("token is not base64url, base64 or hex") from None


def parse_kid(text: str | None) -> bytes | None:
    """`hex:6b31` -> b"k1", `k1` -> b"k1", None -> None (the default kid)."""
    if text is None:
        return None
    if text.startswith("hex:"):
        try:
            kid = bytes.fromhex(text[4:])
        except ValueError:
            raise CliError("--kid hex:... is not hexadecimal") from None
    else:
        kid = text.encode("utf-8")
    if not 1 <= len(kid) <= 32:
        raise CliError("--kid must be 1-32 bytes")
    return kid


def cmd_mint(args: argparse.Namespace) -> int:
    device = check_device(args.device)
    master = load_fleet_key(args.fleet_key)
    try:
        raw = tokens.mint(master, device, args.mission, args.window, ttl_s=args.ttl,
                          issuer=args.issuer, kid=parse_kid(args.kid))
    except tokens.TokenMintError as e:
        raise CliError(str(e)) from None
    if args.out:
        try:
            Path(args.out).write_bytes(raw)
        except OSError as e:
            raise CliError("cannot write %s: %s" % (args.out, e.strerror or e)) from None
        print("wrote %d bytes to %s" % (len(raw), args.out), file=sys.stderr)
    else:
        print(b64url(raw))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    if args.infile and args.token:
        raise CliError("give TOKEN or --in FILE, not both")
    if args.infile:
        try:
            raw = Path(args.infile).read_bytes()
        except OSError as e:
            raise CliError("cannot read %s: %s" % (args.infile, e.strerror or e)) from None
    elif args.token:
        raw = decode_text_token(sys.stdin.read() if args.token == "-" else args.token)
    else:
        raise CliError("give the token as an argument or with --in FILE")
    master = load_fleet_key(args.fleet_key) if args.fleet_key else None
    report = tokens.inspect(raw, master)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_report(report)
    return 1 if report["verdict"] == "invalid" else 0


def _print_report(r: dict) -> None:
    tags = " ".join(str(t) for t in r["tags"]) or "none"
    print("size      %d bytes, tags: %s" % (r["size"], tags))
    for where in ("protected", "unprotected"):
        for name, value in r[where].items():
            print("%-9s %s = %s" % (where[:9], name, _short(value)))
    for name, entry in r["claims"].items():
        extra = "  (%s)" % entry["utc"] if "utc" in entry else ""
        print("claim     %s = %s%s" % (name, _short(entry["value"]), extra))
    print("mac       %s" % r["mac"])
    if r.get("kid_note"):
        print("note      %s" % r["kid_note"])
    for problem in r["problems"]:
        print("problem   %s" % problem)
    print("verdict   %s" % r["verdict"])


def _short(value: object) -> str:
    if isinstance(value, dict) and set(value) == {"hex", "len"}:
        return "h'%s' (%d bytes)" % (value["hex"], value["len"])
    if isinstance(value, dict) and "name" in value:
        return "%s (%s)" % (value["value"], value["name"])
    return json.dumps(value) if not isinstance(value, str) else repr(value)
