"""`aedgate keys`: create a fleet master key and derive the per-cabinet keys from it."""
from __future__ import annotations

import argparse
import os
import sys

from host_tools import fleetkeys
from host_tools.cli import CliError

_DESCRIPTION = """\
Fleet keys. One fleet master key (32 random bytes, stored as 64 hex characters) stays with the
dispatch backend. Each cabinet gets only its own key, derived from the master key and its device
id with HKDF-SHA256 (salt "aedgate/v1", info "device-key:<id>"), so dumping one cabinet's flash
never exposes the others."""

_NEW_EPILOG = """\
example:
  aedgate keys new --out fleet.key
The file is created with mode 0600 and is never overwritten: losing a fleet key means
re-provisioning every cabinet, so back it up."""

_DERIVE_EPILOG = """\
example:
  aedgate keys derive --fleet-key fleet.key --device cab-0001
prints the cabinet's key (64 hex characters) and its default key id (kid), the values a
technician provisions into that cabinet's config."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("keys", help="create a fleet key, derive cabinet keys",
                              description=_DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _usage(p))

    new = sub.add_parser("new", help="generate a fleet master key file",
                         description="Generate a random fleet master key and write it to FILE.",
                         epilog=_NEW_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    new.add_argument("--out", required=True, metavar="FILE",
                     help="where to write the key (must not exist yet)")
    new.set_defaults(func=cmd_new)

    derive = sub.add_parser("derive", help="print one cabinet's key",
                            description="Derive the key of one cabinet from the fleet master key.",
                            epilog=_DERIVE_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    derive.add_argument("--fleet-key", required=True, metavar="FILE",
                        help="fleet master key file (64 hex characters)")
    derive.add_argument("--device", required=True, metavar="ID",
                        help="device id, 1-64 of A-Z a-z 0-9 _ - (e.g. cab-0001)")
    derive.set_defaults(func=cmd_derive)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def load_fleet_key(path: str) -> bytes:
    """The master key in `path`, or CliError with a one-line reason."""
    try:
        return fleetkeys.load(path)
    except fleetkeys.KeyFileError as e:
        raise CliError(str(e)) from None


def check_device(device_id: str) -> str:
    try:
        return fleetkeys.check_device_id(device_id)
    except ValueError as e:
        raise CliError(str(e)) from None


def cmd_new(args: argparse.Namespace) -> int:
    if os.path.lexists(args.out):
        raise CliError("%s already exists; refusing to overwrite a fleet key" % args.out)
    try:
        fleetkeys.save(args.out, fleetkeys.generate())
    except FileExistsError:
        raise CliError("%s already exists; refusing to overwrite a fleet key" % args.out) from None
    except OSError as e:
        raise CliError("cannot write %s: %s" % (args.out, e.strerror or e)) from None
    print("wrote a new fleet key to %s (mode 0600); keep it secret and backed up" % args.out,
          file=sys.stderr)
    return 0


def cmd_derive(args: argparse.Namespace) -> int:
    device = check_device(args.device)
    key = fleetkeys.derive_device_key(load_fleet_key(args.fleet_key), device)
    print(key.hex())
    print("kid %s" % fleetkeys.key_id(key).hex(), file=sys.stderr)
    return 0
