"""A signed release folder as the update server serves it (docs/updates.md, "Release format"):
`release.cose` (the signed manifest), `files/<path>` for each manifest entry. Loaded once; every
file's bytes stay in memory (a release is the firmware package, ~100 KB, plus at most one
MicroPython image of ~1.5 MB), so a block costs a slice, not a disk read.

The server trusts nothing it does not check itself: the manifest is parsed with the cabinets' own
rules (firmware/aedgate/release.py, on CPython), each file must have the size and SHA-256 the
manifest names (a cabinet would refuse it anyway, after downloading all of it), and with release
public keys given the signature is verified the way `aedgate release inspect` does."""
from __future__ import annotations

import hashlib
from pathlib import Path

import cbor2

from host_tools import releases

COSE = releases.RELEASE_FILE   # "release.cose": the name a get uses for the signed manifest


# Every reason a cabinet gives for refusing a release (`update_refused`) or going back from one
# (`update_rolled_back`), with what it means for the operator. The failed-cabinets report shows
# the meaning beside the code; docs/updates.md ("Why a cabinet failed") lists the same codes.
# tests/rollout/test_reasons.py derives the codes the firmware can send from its source and
# holds this list and the docs to them.
REFUSED = {
    "too_large": "release.cose is over 8,192 bytes",
    "malformed": "release.cose is not a COSE_Sign1 (or shorter than offered)",
    "bad_header": "the signature's header has other fields than alg and kid",
    "bad_alg": "not signed with EdDSA",
    "unknown_kid": "signed with a key not in the cabinet's release_keys",
    "bad_signature": "the signature does not verify: tampered or wrongly signed",
    "bad_manifest": "the signed manifest breaks the manifest rules",
    "wrong_board": "built for another board",
    "wrong_mpy": "compiled for another MicroPython .mpy format",
    "not_newer": "not newer than the running or last confirmed version (rollback protection)",
    "needs_version": "the cabinet runs a version older than the release's min_version",
    "bad_version": "the manifest's version is not MAJOR.MINOR.PATCH",
    "on_trial": "another release is still on trial on the cabinet",
    "bad_file": "a file's size or SHA-256 differs from the manifest (detail: its path)",
    "no_image_slot": "the release has a MicroPython image and the board has no OTA partition",
    "bad_image": "the MicroPython image failed its block hashes or the bootloader's check",
    "no_space": "the cabinet's flash (or its OTA partition) has no room for the release",
    "internal": "a fault in the cabinet while checking (detail: the error); the cabinet runs on",
}
ROLLED_BACK = {
    "crash_loop": "the new release reset more than 3 times on trial",
    "trial_timeout": "the new release did not come online and healthy within update_trial_s",
    "slot_missing": "the new release's slot was incomplete at boot",
}
CONTROLLER = {
    "timeout": "no progress from the cabinet within the wave timeout",
    "already": "the cabinet already ran the release",
}


def explain(reason: str | None) -> str:
    """What a failed cabinet's recorded reason ("refused:<code>", "rolled_back:<code>", or one
    of the controller's own) means, in one line; an unknown code says so."""
    if not reason:
        return ""
    kind, _, code = reason.partition(":")
    table = {"refused": REFUSED, "rolled_back": ROLLED_BACK}.get(kind)
    if table is None:
        return CONTROLLER.get(reason, "unknown reason")
    return table.get(code, "unknown reason code (newer firmware than these tools?)")


class ReleaseDirError(Exception):
    """A release folder the server will not serve; str() is one line."""


def release_id(cose: bytes) -> str:
    """The id offers and gets name a release by: first 8 bytes of SHA-256 of release.cose, hex."""
    return hashlib.sha256(cose).digest()[:8].hex()


class ServedRelease:
    """`ServedRelease.load(folder[, publics])`: .id (16 hex), .rid (8 bytes), .version, .manifest,
    .files {name: bytes} ("release.cose" and every manifest path), .size (bytes of release.cose)."""

    def __init__(self, folder: Path, cose: bytes, manifest: dict, files: dict[str, bytes]):
        self.folder = folder
        self.cose = cose
        self.id = release_id(cose)
        self.rid = bytes.fromhex(self.id)
        self.manifest = manifest
        self.version = manifest["version"]   # as written in the manifest: "0.2.0"
        self.files = files
        self.size = len(cose)
        self.total_bytes = sum(len(b) for b in files.values())

    @classmethod
    def load(cls, folder, publics: list[bytes] | None = None) -> "ServedRelease":
        folder = Path(folder)
        if not folder.is_dir():
            raise ReleaseDirError("release folder %s does not exist" % folder)
        try:
            cose = (folder / COSE).read_bytes()
        except FileNotFoundError:
            raise ReleaseDirError("%s has no %s: the release is not signed (aedgate release sign)"
                                  % (folder, COSE)) from None
        except OSError as e:
            raise ReleaseDirError("cannot read %s: %s" % (folder / COSE, e.strerror)) from None
        fw = releases._firmware_release()
        if len(cose) > fw.MAX_RELEASE_BYTES:
            raise ReleaseDirError("%s is %d bytes; cabinets take at most %d"
                                  % (COSE, len(cose), fw.MAX_RELEASE_BYTES))
        if publics:
            try:
                releases.inspect(cose, publics)
            except releases.Refused as e:
                raise ReleaseDirError("%s: %s" % (folder, e.args[0])) from None
        try:
            msg = cbor2.loads(cose)
            msg = msg.value if isinstance(msg, cbor2.CBORTag) else msg
            payload = msg[2]
            fw.parse_manifest(payload)        # the cabinets' rules (it gives versions as tuples)
            manifest = cbor2.loads(payload)   # ... what a person and the `state` message read
        except fw.ReleaseError as e:
            raise ReleaseDirError("%s: manifest refused (%s)" % (folder / COSE, e.args[1] or e.args[0])) from None
        except Exception:  # noqa: BLE001  (any decoding failure: not a COSE_Sign1)
            raise ReleaseDirError("%s is not a signed release (COSE_Sign1)" % (folder / COSE)) from None
        files = {COSE: cose}
        for path, size, sha in manifest["files"]:
            try:
                data = (folder / releases.FILES_DIR / path).read_bytes()
            except OSError as e:
                raise ReleaseDirError("%s: file %s: %s" % (folder, path, e.strerror)) from None
            if len(data) != size or hashlib.sha256(data).digest() != sha:
                raise ReleaseDirError("%s: files/%s differs from the signed manifest (size or "
                                      "SHA-256)" % (folder, path))
            files[path] = data
        return cls(folder, cose, manifest, files)
