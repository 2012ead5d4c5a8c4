"""Releases for simulated rollouts, built and signed the way an operator does (`aedgate release
build --source` + `sign`), from a copy of firmware/ with its VERSION set to the release's.

Bad releases are the same copy with one deliberate fault, so the rollout's safety nets are
exercised by real failing firmware, not by a flag:
- `crash`:   App() raises at every boot: main.py resets, slots.py counts the hard boots on trial
             and rolls back after MAX_TRIAL_BOOTS (reason `crash_loop`);
- `offline`: the session fails right after CONNACK, every time: the release never comes online,
             its trial timer (config `update_trial_s`) gives it up (reason `trial_timeout`) and
             the board restarts on the previous slot.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from host_tools import releases
from host_tools.firmware import FIRMWARE

KINDS = ("good", "crash", "offline")

# (file, anchor line, line inserted after it): each fault is one line in the release's app.py
_FAULTS = {
    "crash": ("aedgate/app.py", "    def __init__(self, hw, flash):\n",
              '        raise RuntimeError("release fixture: crashes at boot")\n'),
    "offline": ("aedgate/app.py", "    async def _connected(self, client):\n",
                '        raise OSError("release fixture: never comes online")\n'),
}


class FixtureError(Exception):
    pass


def firmware_copy(dest: Path, version: str, kind: str = "good", firmware: Path = FIRMWARE) -> Path:
    """A copy of firmware/ (package.json and the .py files) with VERSION = version and the fault
    `kind` put in. Returns dest."""
    if kind not in KINDS:
        raise FixtureError("release kind %r: one of %s" % (kind, ", ".join(KINDS)))
    shutil.copytree(firmware, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.mpy"))
    init = dest / "aedgate" / "__init__.py"
    text, n = re.subn(r'(?m)^VERSION = "[^"]*"$', 'VERSION = "%s"' % version, init.read_text())
    if n != 1:
        raise FixtureError("no VERSION line in %s" % init)
    init.write_text(text)
    if kind in _FAULTS:
        rel, anchor, line = _FAULTS[kind]
        path = dest / rel
        src = path.read_text()
        if src.count(anchor) != 1:
            raise FixtureError("fault %s: anchor %r not found once in %s" % (kind, anchor.strip(), rel))
        path.write_text(src.replace(anchor, anchor + line))
    return dest


def make_key(folder: Path) -> tuple[str, dict]:
    """A throw-away release key in `folder`: (private key path, its config `release_keys` entry)."""
    path = str(Path(folder) / "release.key")
    public = releases.keygen(path)
    return path, {"kid": releases.key_id(public).hex(), "key": public.hex()}


def build(out: Path, version: str, kind: str, key_path: str, work: Path) -> dict:
    """Build and sign release `version` of `kind` into `out` (a new folder); `work` holds the
    patched firmware copy. Returns the manifest."""
    src = firmware_copy(Path(work) / ("firmware-%s-%s" % (kind, version)), version, kind)
    manifest = releases.build(str(out), version, firmware=src, source=True)
    releases.sign_release(str(out), key_path)
    return manifest


def release_id(folder: Path) -> str:
    """The release's id as offers carry it: first 8 bytes of SHA-256 of release.cose, hex."""
    import hashlib
    return hashlib.sha256((Path(folder) / releases.RELEASE_FILE).read_bytes()).digest()[:8].hex()


def install_files(folder: Path) -> tuple[dict, list[tuple[str, bytes]]]:
    """(manifest, [(path, bytes)]) of a built release, for installing it without the transport
    (Slots.install / App.install) in tests."""
    import cbor2
    m = cbor2.loads((Path(folder) / releases.MANIFEST_FILE).read_bytes())
    return m, [(f[0], (Path(folder) / releases.FILES_DIR / f[0]).read_bytes()) for f in m["files"]]
