"""`aedgate release`: build, sign and inspect firmware releases (docs/updates.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from host_tools import releases
from host_tools.cli import CliError

_RAW = argparse.RawDescriptionHelpFormatter

_DESCRIPTION = """\
Signed firmware releases. A release is a folder: files/ (the firmware compiled with mpy-cross
for the board), manifest.cbor (version, board, every file's path, size and SHA-256) and, once
signed, release.cose (the manifest in a COSE_Sign1, Ed25519). Cabinets hold one or two release
public keys (config `release_keys`) and install only what one of them signed.

The private key never touches the dispatch backend or a cabinet: keep it offline (an
air-gapped laptop, a USB stick in a safe), sign there, carry release.cose back.

examples (the typical flow):
  aedgate release keygen --out release.key        # once, offline
  aedgate release build --version 0.2.0 --out rel-0.2.0
  aedgate release sign --key release.key rel-0.2.0  # offline
  aedgate release inspect rel-0.2.0 --key release.key.pub"""

_KEYGEN_EPILOG = """\
example:
  aedgate release keygen --out release.key
writes release.key (the private key, PEM, mode 0600, never overwritten) and release.key.pub, and
prints the public key's config entry for the cabinets:
  "release_keys": [{"kid": "3f1c...", "key": "9a7b..."}]
Rotation: make the next key now, put both in release_keys (current first), and when the
current key retires, sign with the next one and drop the old entry with the next release."""

_BUILD_EPILOG = """\
examples:
  aedgate release build --version 0.2.0 --out rel-0.2.0
  aedgate release build --version 0.2.1 --min-version 0.2.0 --out rel-0.2.1
  aedgate release build --version 0.1.9 --may-replace 0.2.1 --out rel-0.1.9   # a sanctioned
                                                                              # downgrade
Each file of firmware/package.json is compiled with mpy-cross -march=xtensawin (boot.py and
main.py stay source: the board runs them by name). --source ships every file as .py and leaves
`mpy` out of the manifest: releases for `aedsim rollout`, whose cabinets run CPython. A cabinet refuses a release older than, or
equal to, what it runs unless --may-replace covers its version, and one that needs
--min-version when it runs something older.
  aedgate release build --version 0.3.0 --image micropython.bin --out rel-0.3.0
adds the MicroPython app image (the ESP32_GENERIC-OTA build's micropython.bin or the .app-bin
download, not the combined image for esptool) as files/micropython.bin, with
files/micropython.bin.sha: the SHA-256 of each 4096-byte block. A cabinet writes it into its
other OTA app partition, block by block, and boots it on trial (docs/updates-install.md)."""

_SIGN_EPILOG = """\
example:
  aedgate release sign --key release.key rel-0.2.0
checks manifest.cbor with the cabinets' own rules, then writes rel-0.2.0/release.cose.
The key file must be mode 0600 (not readable by group or others)."""

_INSPECT_EPILOG = """\
examples:
  aedgate release inspect rel-0.2.0 --key release.key.pub
  aedgate release inspect rel-0.2.0/release.cose --key 9a7b...(64 hex) --key next.key.pub
prints the manifest and checks the signature twice: with the cabinets' own verifier (strict:
canonical encodings, no small-order keys) and with OpenSSL. Given a folder, also checks every
file under files/ against the manifest, and micropython.bin.sha against micropython.bin.
exit status: 0 valid, 1 refused (the reason on one line), 2 usage error or unreadable input."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("release", help="build, sign and inspect firmware releases",
                              description=_DESCRIPTION, formatter_class=_RAW)
    sub = p.add_subparsers(dest="release_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _usage(p))

    k = sub.add_parser("keygen", help="make a release signing key (offline)",
                       description="Generate an Ed25519 release signing key.",
                       epilog=_KEYGEN_EPILOG, formatter_class=_RAW)
    k.add_argument("--out", required=True, metavar="FILE", help="private key file to create")
    k.set_defaults(func=cmd_keygen)

    b = sub.add_parser("build", help="compile the firmware and write its manifest",
                       description="Build an unsigned release folder from firmware/.",
                       epilog=_BUILD_EPILOG, formatter_class=_RAW)
    b.add_argument("--version", required=True, help="this release, MAJOR.MINOR.PATCH")
    b.add_argument("--out", required=True, metavar="DIR", help="new (or empty) release folder")
    b.add_argument("--board", default="esp32", help="target board (default esp32: xtensawin)")
    b.add_argument("--min-version", metavar="V", help="oldest running version that may install it")
    b.add_argument("--may-replace", metavar="V",
                   help="newest running version it may replace (allows a downgrade)")
    b.add_argument("--created", type=int, metavar="UNIX_S", help="build time (default: now)")
    b.add_argument("--source", action="store_true",
                   help="ship the .py files, not .mpy (for simulated cabinets, which run CPython)")
    b.add_argument("--image", metavar="PATH",
                   help="a MicroPython app image (ESP32_GENERIC-OTA micropython.bin / .app-bin) "
                        "to install too, with its block hash list")
    b.set_defaults(func=cmd_build)

    s = sub.add_parser("sign", help="sign a release's manifest (offline)",
                       description="Sign DIR/manifest.cbor into DIR/release.cose.",
                       epilog=_SIGN_EPILOG, formatter_class=_RAW)
    s.add_argument("release", metavar="DIR", help="release folder made by `release build`")
    s.add_argument("--key", required=True, metavar="FILE", help="private key (release keygen)")
    s.set_defaults(func=cmd_sign)

    i = sub.add_parser("inspect", help="print and verify a signed release",
                       description="Print a release's manifest and verify its signature.",
                       epilog=_INSPECT_EPILOG, formatter_class=_RAW)
    i.add_argument("release", metavar="DIR_OR_FILE", help="release folder or release.cose")
    i.add_argument("--key", action="append", required=True, metavar="PUBLIC",
                   help="release public key: 64 hex or a .pub file (repeat for current and next)")
    i.set_defaults(func=cmd_inspect)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        public = releases.keygen(args.out)
    except releases.ReleaseToolError as e:
        raise CliError(str(e)) from None
    print('"release_keys": [{"kid": "%s", "key": "%s"}]' % (releases.key_id(public).hex(), public.hex()))
    print("wrote %s (private, mode 0600: keep it offline and backed up) and %s.pub"
          % (args.out, args.out), file=sys.stderr)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    try:
        m = releases.build(args.out, args.version, args.board, args.min_version,
                           args.may_replace, args.created, source=args.source,
                           image=args.image)
    except releases.ReleaseToolError as e:
        raise CliError(str(e)) from None
    total = sum(f[1] for f in m["files"])
    print("built %s %s for %s: %d files, %d bytes; sign with: aedgate release sign --key KEY %s"
          % ("aedgate", args.version, args.board, len(m["files"]), total, args.out))
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    try:
        m, kid = releases.sign_release(args.release, args.key)
    except releases.ReleaseToolError as e:
        raise CliError(str(e)) from None
    print("signed %s %s with kid %s: %s" % (m["board"], ".".join(map(str, m["version"])), kid.hex(),
                                            Path(args.release) / releases.RELEASE_FILE))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.release)
    files_dir = None
    if path.is_dir():
        files_dir = str(path / releases.FILES_DIR)
        path = path / releases.RELEASE_FILE
    try:
        raw = path.read_bytes()
        publics = [releases.load_public(k) for k in args.key]
    except OSError as e:
        raise CliError("cannot read %s: %s" % (path, e.strerror)) from None
    except releases.ReleaseToolError as e:
        raise CliError(str(e)) from None
    try:
        m = releases.inspect(raw, publics, files_dir)
    except releases.Refused as e:
        raise CliError("%s: %s" % (path, e), code=1) from None
    print(_show(m))
    print("OK: signature valid (kid %s; firmware verifier and OpenSSL)%s"
          % (m["kid"], ", %d files match" % len(m["files"]) if files_dir else ""))
    return 0


def _show(m: dict) -> str:
    lines = []
    for k in ("version", "board", "created", "min_version", "may_replace", "mpy", "kid"):
        if k in m:
            lines.append("%-12s %s" % (k, m[k]))
    lines.append("files        %d" % len(m["files"]))
    for path, size, digest in m["files"]:
        lines.append("  %-36s %7d  %s" % (path, size, digest.hex()))
    return "\n".join(lines)
