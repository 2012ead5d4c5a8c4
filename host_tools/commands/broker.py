"""`aedgate broker`: per-device credentials and the ACL of the production Mosquitto broker
(docs/deploy/mosquitto/, docs/broker.md).

A cabinet logs in with its device id as MQTT user name and a password of its own. The broker's
password file holds one PBKDF2-SHA512 hash per device (Mosquitto's `$7$` format); its ACL file
holds `pattern` rules with `%u` (the user name), which cover every device at once. So adding a
device means adding one password entry; the ACL only has to contain the pattern rules once.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from host_tools.cli import CliError

# Device ids as fixed by the protocol. Checked with fullmatch (re.match with $ would also accept
# a trailing newline, which would split a password-file line).
DEVICE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Service-account names, never device ids, whatever the ACL file says (a mistyped --acl path
# must not turn `add-device --device dispatch` into a new password for dispatch): these names
# and any name starting with one of them and "-" (extra accounts such as dispatch-ops,
# docs/deploy/mosquitto/README.md "One account per process").
RESERVED_NAMES = ("dispatch", "registry", "monitor", "update")

# The rules every device needs, and the only `pattern` rules the ACL may contain.
PATTERN_RULES = (
    "pattern write aed/v1/%u/status",
    "pattern write aed/v1/%u/state",
    "pattern write aed/v1/%u/event",
    "pattern write aed/v1/%u/ack",
    "pattern read aed/v1/%u/cmd/#",
    "pattern write aed/v1/%u/update/get",
    "pattern read aed/v1/%u/update/offer",
    "pattern read aed/v1/%u/update/block",
)

# mosquitto_passwd (Mosquitto 2.0) writes $7$<iterations>$<base64 salt>$<base64 hash> with 101
# PBKDF2-SHA512 iterations and a 12-byte salt; we write the same. The broker runs this hash on
# every CONNECT, so a reconnect storm of a whole fleet pays it thousands of times a second; the
# generated passwords are 192 random bits, which no amount of stretching would make stronger.
PBKDF2_ITERATIONS = 101
SALT_LEN = 12
MAX_PASSWORD_LEN = 128  # the firmware's config allows broker_password up to 128 characters

_ADD_EPILOG = """\
examples:
  aedgate broker add-device --device cab-0001 \\
      --password-file /etc/mosquitto/aedgate/passwd --acl /etc/mosquitto/aedgate/acl
      generates a password, stores its hash and prints the password once on stdout:
      put it in the cabinet's config.json as "broker_password" (user name: the device id)
  sudo systemctl reload mosquitto
      makes the broker re-read both files (SIGHUP); connected clients stay connected

  Running add-device again for the same device replaces its password (rotation): the cabinet
  must get the new one before the broker is reloaded, or it is locked out until it does.
  --password PW sets a chosen password instead (it lands in your shell history);
  --password-stdin reads it from the first line of standard input.

The ACL file must exist (install docs/deploy/mosquitto/acl first); the per-device pattern rules
are appended when absent; they cover every device, so usually only the password entry is new.
Service-account names (dispatch, registry, monitor, update, and names starting with them and "-") are
refused whatever the ACL says. Exit status: 0 done, 2 refused (bad id, reserved name, missing
or unreadable file)."""

_CHECK_EPILOG = """\
example:
  aedgate broker check-acl --acl /etc/mosquitto/aedgate/acl
Checks that the eight per-device pattern rules are present and that no other pattern rule (which
would apply to every device) and no rule outside a `user` block exist. Exit status: 0 fine,
1 problems found (one per line), 2 unreadable file."""

_REMOVE_EPILOG = """\
example:
  aedgate broker remove-device --device cab-0001 --password-file /etc/mosquitto/aedgate/passwd
  sudo systemctl reload mosquitto
The device can no longer log in after the reload (an open connection stays until it drops)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "broker", help="device credentials and ACL for the production Mosquitto broker",
        description="Manage the production Mosquitto broker's password file and ACL "
                    "(see docs/broker.md and docs/deploy/mosquitto/).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="broker_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])

    add = sub.add_parser("add-device", help="add a cabinet's credentials, or rotate them",
                         description="Add or replace one cabinet's broker password and make "
                                     "sure the ACL has the per-device rules.",
                         epilog=_ADD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add.add_argument("--device", required=True, metavar="ID",
                     help="device id = MQTT user name (1-64 of A-Z a-z 0-9 _ -)")
    add.add_argument("--password-file", required=True, metavar="FILE",
                     help="Mosquitto password_file (created if missing, mode 0600)")
    add.add_argument("--acl", required=True, metavar="FILE",
                     help="Mosquitto acl_file (must exist)")
    pw = add.add_mutually_exclusive_group()
    pw.add_argument("--password", metavar="PW", help="use this password instead of generating one")
    pw.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of standard input")
    add.add_argument("--hash-with", choices=("auto", "mosquitto_passwd", "builtin"),
                     default="auto",
                     help="auto (default): mosquitto_passwd -b when installed, else the built-in "
                          "PBKDF2-SHA512 writer; builtin also keeps the password off any "
                          "command line")
    add.set_defaults(func=_cmd_add)

    rm = sub.add_parser("remove-device", help="delete a cabinet's credentials",
                        description="Delete one cabinet's password entry.",
                        epilog=_REMOVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    rm.add_argument("--device", required=True, metavar="ID", help="device id")
    rm.add_argument("--password-file", required=True, metavar="FILE", help="Mosquitto password_file")
    rm.set_defaults(func=_cmd_remove)

    chk = sub.add_parser("check-acl", help="check an ACL file against the aedgate rules",
                         description="Check a Mosquitto ACL file for the aedgate device rules.",
                         epilog=_CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    chk.add_argument("--acl", required=True, metavar="FILE", help="Mosquitto acl_file")
    chk.set_defaults(func=_cmd_check)


# -- library functions (also used by tests) -------------------------------------------------

def check_device_id(device_id: str) -> str:
    if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
        raise ValueError("bad device id %r: use 1-64 of A-Z a-z 0-9 _ - (no + # / or spaces)"
                         % (device_id,))
    return device_id


def is_reserved(name: str) -> bool:
    return any(name == r or name.startswith(r + "-") for r in RESERVED_NAMES)


def hash_password(password: str, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto's `$7$` password hash: PBKDF2-HMAC-SHA512, base64 salt and digest."""
    salt = secrets.token_bytes(SALT_LEN) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return "$7$%d$%s$%s" % (iterations, base64.b64encode(salt).decode(),
                            base64.b64encode(digest).decode())


def verify_password(entry_hash: str, password: str) -> bool:
    """True when `password` matches a `$7$` hash (as mosquitto_passwd or hash_password wrote)."""
    parts = entry_hash.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt = base64.b64decode(parts[3])
    return secrets.compare_digest(hash_password(password, salt, int(parts[2])), entry_hash)


def find_mosquitto_passwd() -> str | None:
    for cand in (shutil.which("mosquitto_passwd"), "/usr/bin/mosquitto_passwd",
                 "/usr/local/bin/mosquitto_passwd"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def read_password_file(path: Path) -> dict[str, str]:
    """user -> hash, from a Mosquitto password file (empty when the file does not exist)."""
    entries = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return entries
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            user, _, h = line.partition(":")
            entries[user] = h
    return entries


def _write_atomically(path: Path, text: str) -> None:
    # Same directory, then rename: the broker reloading meanwhile sees the old or the new file,
    # never half of one. Keeps an existing file's mode and owner; a new one is 0600.
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix="." + path.name + ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, (st.st_mode & 0o7777) if st else 0o600)
        if st is not None and hasattr(os, "chown"):
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except PermissionError:
                pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def set_password(path: Path, user: str, password: str, hash_with: str = "auto") -> str:
    """Add or replace `user`'s entry. Returns which writer did it ("mosquitto_passwd" or
    "builtin")."""
    tool = find_mosquitto_passwd() if hash_with in ("auto", "mosquitto_passwd") else None
    if hash_with == "mosquitto_passwd" and tool is None:
        raise CliError("mosquitto_passwd is not installed (use --hash-with builtin)")
    if tool:
        new = not path.exists()
        cmd = [tool] + (["-c"] if new else []) + ["-b", str(path), user, password]
        # mosquitto_passwd -c creates the file with the umask's mode: make a new one private.
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=(lambda: os.umask(0o077)) if new else None)
        if res.returncode != 0:
            raise CliError("mosquitto_passwd failed: %s" % " ".join(res.stdout.split()))
        return "mosquitto_passwd"
    entries = read_password_file(path)
    entries[user] = hash_password(password)
    _write_atomically(path, "".join("%s:%s\n" % kv for kv in entries.items()))
    return "builtin"


def remove_password(path: Path, user: str) -> bool:
    entries = read_password_file(path)
    if user not in entries:
        return False
    del entries[user]
    _write_atomically(path, "".join("%s:%s\n" % kv for kv in entries.items()))
    return True


def _acl_lines(text: str) -> list[tuple[int, list[str]]]:
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if words and not words[0].startswith("#"):
            out.append((n, words))
    return out


def acl_service_users(text: str) -> list[str]:
    """User names that have their own `user` block (service accounts)."""
    return [w[1] for _, w in _acl_lines(text) if w[0] == "user" and len(w) >= 2]


def acl_problems(text: str) -> list[str]:
    """What is wrong with an ACL file for an aedgate fleet (empty list: nothing)."""
    problems = []
    present = set()
    in_user = False
    for n, w in _acl_lines(text):
        if w[0] == "user":
            in_user = True
        elif w[0] == "pattern":
            rule = " ".join(w)
            if rule in PATTERN_RULES:
                present.add(rule)
            else:
                problems.append("line %d: %r applies to every device; only the aedgate device "
                                "patterns belong here" % (n, rule))
        elif w[0] == "topic":
            if not in_user:
                problems.append("line %d: %r before any `user` line applies to anonymous clients"
                                % (n, " ".join(w)))
        else:
            problems.append("line %d: unknown rule %r" % (n, " ".join(w)))
    for rule in PATTERN_RULES:
        if rule not in present:
            problems.append("missing device rule %r" % rule)
    return problems


def ensure_acl(path: Path) -> list[str]:
    """Create the ACL file or append the device pattern rules it lacks; returns the rules added."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = None
    have = set() if text is None else {" ".join(w) for _, w in _acl_lines(text)}
    missing = [r for r in PATTERN_RULES if r not in have]
    if not missing:
        return []
    if text is None:
        new = ("# aedgate broker ACL (see docs/deploy/mosquitto/acl for the full example).\n"
               "# Every device: write its own telemetry, read its own commands and updates.\n")
    else:
        new = text + ("" if text.endswith("\n") or not text else "\n")
        new += "\n# Added by aedgate broker add-device: the per-device rules.\n"
    new += "".join(r + "\n" for r in missing)
    _write_atomically(path, new)
    return missing


# -- commands ---------------------------------------------------------------------------------

def _device(args) -> str:
    try:
        return check_device_id(args.device)
    except ValueError as e:
        raise CliError(str(e)) from None


def _cmd_add(args) -> int:
    device = _device(args)
    pwfile, aclfile = Path(args.password_file), Path(args.acl)
    for f in (pwfile, aclfile):
        if not f.parent.is_dir():
            raise CliError("directory %s does not exist" % f.parent)
    if is_reserved(device):
        raise CliError("%r is reserved for service accounts (%s, and names starting with them "
                       "and '-'), not a device id" % (device, ", ".join(RESERVED_NAMES)))
    try:
        acl_text = aclfile.read_text(encoding="utf-8")
    except FileNotFoundError:
        # Never a fresh ACL behind the user's back: a typo in the path would hide the service
        # accounts of the real one. The install step copies docs/deploy/mosquitto/acl.
        raise CliError("ACL file %s does not exist (install docs/deploy/mosquitto/acl there "
                       "first)" % aclfile) from None
    except OSError as e:
        raise CliError("cannot read %s: %s" % (aclfile, e.strerror)) from None
    if device in acl_service_users(acl_text):
        raise CliError("%r is a service account in %s, not a device id" % (device, aclfile))
    generated = args.password is None and not args.password_stdin
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif generated:
        password = secrets.token_urlsafe(24)  # 192 bits, 32 characters of A-Z a-z 0-9 - _
    else:
        password = args.password
    if not password or len(password) > MAX_PASSWORD_LEN or any(c in password for c in "\r\n\0"):
        raise CliError("the password must be 1-%d characters, on one line" % MAX_PASSWORD_LEN)
    try:
        existed = device in read_password_file(pwfile)
        added = ensure_acl(aclfile)
        how = set_password(pwfile, device, password, args.hash_with)
    except OSError as e:
        raise CliError("%s: %s" % (e.filename or pwfile, e.strerror)) from None
    if added:
        print("added %d device rule(s) to %s" % (len(added), aclfile), file=sys.stderr)
    print("%s %s in %s (%s); reload the broker: systemctl reload mosquitto"
          % ("replaced the password of" if existed else "added", device, pwfile, how),
          file=sys.stderr)
    if generated:
        print("password for %s (shown only now; put it in the cabinet's config.json as "
              "broker_password):" % device, file=sys.stderr)
        print(password)
    return 0


def _cmd_remove(args) -> int:
    device = _device(args)
    pwfile = Path(args.password_file)
    try:
        if not remove_password(pwfile, device):
            raise CliError("%s has no entry in %s" % (device, pwfile))
    except OSError as e:
        raise CliError("%s: %s" % (e.filename or pwfile, e.strerror)) from None
    print("removed %s from %s; reload the broker: systemctl reload mosquitto" % (device, pwfile),
          file=sys.stderr)
    return 0


def _cmd_check(args) -> int:
    try:
        text = Path(args.acl).read_text(encoding="utf-8")
    except OSError as e:
        raise CliError("cannot read %s: %s" % (args.acl, e.strerror)) from None
    problems = acl_problems(text)
    for p in problems:
        print("%s: %s" % (args.acl, p))
    if problems:
        return 1
    users = acl_service_users(text)
    print("%s: ok (device rules present; service accounts: %s)"
          % (args.acl, ", ".join(users) or "none"))
    return 0
