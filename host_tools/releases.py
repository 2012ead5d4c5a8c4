"""Signed releases on the host (docs/updates.md): build the firmware files and their manifest,
sign the manifest as a COSE_Sign1 with an offline Ed25519 key, and inspect a signed release the
way a cabinet would. Signing uses `cryptography` (OpenSSL); inspecting runs both OpenSSL and the
firmware's own verifier (firmware/aedgate/release.py), so what inspect passes, a cabinet takes."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from host_tools.commands.provision import NOT_COMPILED, _mpy_cross
from host_tools.firmware import FIRMWARE

# Board name written into the manifest -> mpy-cross architecture. Only native (@native/@viper)
# code uses it; today's firmware is bytecode only, but a release is built for one board.
BOARDS = {"esp32": "xtensawin"}
MANIFEST_FILE = "manifest.cbor"
RELEASE_FILE = "release.cose"
FILES_DIR = "files"
VERSION_FILE = "aedgate/__init__.py"  # its VERSION line is set to the release's version
ALG_EDDSA = -8
TAG_COSE_SIGN1 = 18
# The MicroPython image (docs/updates-install.md "The MicroPython image"): written by the cabinet
# into its next OTA app partition (firmware/aedgate/image.py), each 4096-byte block checked
# against the hash list, a manifest file of its own fetched first.
IMAGE_FILE = "micropython.bin"
IMAGE_HASHES = "micropython.bin.sha"
IMAGE_BLOCK = 4096
APP_PARTITION_BYTES = 0x180000  # ota_0/ota_1 of ESP32_GENERIC-OTA (ports/esp32/partitions-4MiB-ota.csv)
_ESP_IMAGE_MAGIC = 0xE9  # esp_image_header_t.magic (ESP-IDF esp_app_format.h)
_CHIP_IDS = {"esp32": 0x0000}  # esp_image_header_t.chip_id: ESP_CHIP_ID_ESP32


class ReleaseToolError(Exception):
    """One-line, user-facing error."""


def _firmware_release():
    """The firmware's own release module (runs on CPython): one verifier, not two."""
    if str(FIRMWARE) not in sys.path:
        sys.path.insert(0, str(FIRMWARE))
    from aedgate import release
    return release


def parse_version(text: str) -> tuple[int, int, int]:
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 5 for p in parts):
        raise ReleaseToolError("version %r: use MAJOR.MINOR.PATCH, digits only (e.g. 0.2.0)" % text)
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def key_id(public: bytes) -> bytes:
    return hashlib.sha256(public).digest()[:8]


# -- keys -----------------------------------------------------------------------------------------
def keygen(path: str) -> bytes:
    """Write a new private key (PKCS#8 PEM, mode 0600, never overwriting) to path and its public
    key (64 hex, the form config release_keys takes) to path + ".pub". Returns the public key."""
    priv = Ed25519PrivateKey.generate()
    pem = priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    public = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pub_path = path + ".pub"
    for p in (path, pub_path):
        if os.path.lexists(p):
            raise ReleaseToolError("%s already exists; refusing to overwrite a release key" % p)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        Path(pub_path).write_text(public.hex() + "\n")
    except OSError as e:
        raise ReleaseToolError("cannot write %s: %s" % (e.filename or path, e.strerror or e)) from None
    return public


def load_private(path: str) -> Ed25519PrivateKey:
    try:
        st = os.stat(path)
        data = Path(path).read_bytes()
    except OSError as e:
        raise ReleaseToolError("cannot read key %s: %s" % (path, e.strerror or e)) from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ReleaseToolError("%s is readable by others (mode %03o); chmod 600 it" %
                               (path, stat.S_IMODE(st.st_mode)))
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseToolError("%s is not a release key (an Ed25519 PEM from release keygen)" % path)
    return key


def load_public(text_or_path: str) -> bytes:
    """A public key given as 64 hex characters or as a file holding them (e.g. release.key.pub)."""
    text = text_or_path
    if not _is_hex(text, 32):
        try:
            text = Path(text_or_path).read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ReleaseToolError("public key %s: neither 64 hex characters nor a readable file (%s)"
                                   % (text_or_path, getattr(e, "strerror", None) or e)) from None
        if not _is_hex(text, 32):
            raise ReleaseToolError("%s does not hold a public key (64 hex characters)" % text_or_path)
    return bytes.fromhex(text)


def _is_hex(text: str, n: int) -> bool:
    try:
        return len(bytes.fromhex(text)) == n and len(text) == 2 * n
    except ValueError:
        return False


# -- build ----------------------------------------------------------------------------------------
def image_hashes(image: bytes) -> bytes:
    """The hash list of an image: the SHA-256 of each 4096-byte block, concatenated (the last
    block hashed as it is, without padding)."""
    return b"".join(hashlib.sha256(image[i:i + IMAGE_BLOCK]).digest()
                    for i in range(0, len(image), IMAGE_BLOCK))


def check_image(image: bytes, board: str, name: str) -> None:
    """An app image a cabinet's bootloader could start: refuse what cannot work on any cabinet
    before it is signed and sent to a fleet."""
    if len(image) < 24 or image[0] != _ESP_IMAGE_MAGIC:
        raise ReleaseToolError("%s is not an ESP32 app image (no 0xE9 header); use the build's "
                               "micropython.bin or the .app-bin download" % name)
    # Flashed at 0x1000, the combined image holds the partition table at 0x8000: its entries
    # start with the magic AA 50 (ESP-IDF esp_flash_partitions.h ESP_PARTITION_MAGIC), 32 bytes each.
    if image[0x7000:0x7002] == b"\xaa\x50" and image[0x7020:0x7022] == b"\xaa\x50":
        raise ReleaseToolError("%s is the combined image for esptool (bootloader, partition table "
                               "and app); use the app alone (micropython.bin / .app-bin)" % name)
    chip = int.from_bytes(image[12:14], "little")
    if chip != _CHIP_IDS[board]:
        raise ReleaseToolError("%s is built for chip id %d, not %s" % (name, chip, board))
    if len(image) > APP_PARTITION_BYTES:
        raise ReleaseToolError("%s is %d bytes; an app partition holds %d"
                               % (name, len(image), APP_PARTITION_BYTES))


def _stamped(path: Path, version: str, tmp: Path) -> Path:
    """A copy of the package's __init__.py with VERSION = version: the cabinet reports the
    version it runs from this line (boot event, status and state `fw`), and the rollout counts a
    cabinet done only when `fw` names the release's version, so a release built as 0.2.0 from a
    tree that says 0.1.0 would run 0.2.0 yet never be seen done (test_vdev_update.py)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ReleaseToolError("cannot read %s: %s" % (path, e.strerror or e)) from None
    text, n = re.subn(r'(?m)^VERSION = "[^"\n]*"$', 'VERSION = "%s"' % version, text)
    if n != 1:
        raise ReleaseToolError("%s has no line VERSION = \"...\" to set the release's version in" % path)
    out = tmp / "__init__.py"
    out.write_text(text)
    return out


def build(out_dir: str, version: str, board: str = "esp32", min_version: str | None = None,
          may_replace: str | None = None, created: int | None = None,
          firmware: Path = FIRMWARE, source: bool = False,
          image: str | None = None) -> dict[str, Any]:
    """Compile the firmware package (firmware/package.json) for `board` into out_dir/files and
    write out_dir/manifest.cbor (unsigned). With `image` (a MicroPython app image file), add it
    and its hash list. Returns the manifest.
    `source`: ship the .py files as they are, no mpy-cross, and no `mpy` in the manifest: a
    release for the simulator, whose cabinets run the firmware on CPython (it cannot load .mpy;
    docs/updates.md). A board takes it too (MicroPython imports .py), only slower to import."""
    for v in (version, min_version, may_replace):
        if v is not None:
            parse_version(v)
    if board not in BOARDS:
        raise ReleaseToolError("board %r: known boards are %s" % (board, ", ".join(BOARDS)))
    image_data = None
    if image is not None:
        try:
            image_data = Path(image).read_bytes()
        except OSError as e:
            raise ReleaseToolError("cannot read image %s: %s" % (image, e.strerror or e)) from None
        check_image(image_data, board, image)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReleaseToolError("%s exists and is not an empty folder; build into a new one" % out_dir)
    try:
        pkg = json.loads((firmware / "package.json").read_text())
    except (OSError, ValueError) as e:
        raise ReleaseToolError("cannot read %s/package.json: %s" % (firmware, e)) from None
    mpy_cross = None
    if not source:
        try:
            mpy_cross = _mpy_cross()
        except Exception as e:  # provision raises its CliError: same message, our type
            raise ReleaseToolError(str(e)) from None
    files = []
    mpy = None
    stamp = tempfile.TemporaryDirectory(prefix="aedgate-release-")
    for dest, src in pkg["urls"]:
        path = firmware / src
        if dest == VERSION_FILE:
            path = _stamped(path, version, Path(stamp.name))
        if mpy_cross and dest.endswith(".py") and dest not in NOT_COMPILED:
            dest = dest[:-3] + ".mpy"
            target = out / FILES_DIR / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            # -s: the name tracebacks show is the package path, not this machine's folder
            r = subprocess.run([mpy_cross, "-march=" + BOARDS[board], "-s", dest[:-4] + ".py", "-o",
                                str(target), str(path)], capture_output=True, text=True)
            if r.returncode:
                raise ReleaseToolError("mpy-cross failed on %s: %s"
                                       % (src, (r.stderr.strip().splitlines() or ["?"])[-1]))
            data = target.read_bytes()
            mpy = data[1]  # header: b"M", bytecode format version, flags, ...
        else:
            data = path.read_bytes()
            target = out / FILES_DIR / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        files.append([dest, len(data), hashlib.sha256(data).digest()])
    stamp.cleanup()
    if image_data is not None:
        # The hash list first: a cabinet fetches and keeps it before the image's blocks.
        for dest, data in ((IMAGE_HASHES, image_hashes(image_data)), (IMAGE_FILE, image_data)):
            (out / FILES_DIR / dest).write_bytes(data)
            files.append([dest, len(data), hashlib.sha256(data).digest()])
    manifest: dict[str, Any] = {"format": 1, "version": version, "board": board,
                                "created": int(time.time()) if created is None else created,
                                "files": files}
    if mpy is not None:
        manifest["mpy"] = mpy
    if min_version:
        manifest["min_version"] = min_version
    if may_replace:
        manifest["may_replace"] = may_replace
    (out / MANIFEST_FILE).write_bytes(cbor2.dumps(manifest))
    return manifest


# -- sign and inspect -------------------------------------------------------------------------------
def sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def sign(payload: bytes, private: Ed25519PrivateKey) -> bytes:
    """COSE_Sign1 (tag 18) over payload, alg EdDSA, kid = key_id(public key)."""
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    protected = cbor2.dumps({1: ALG_EDDSA, 4: key_id(public)})
    signature = private.sign(sig_structure(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(TAG_COSE_SIGN1, [protected, {}, payload, signature]))


def sign_release(release_dir: str, key_path: str) -> tuple[dict[str, Any], bytes]:
    """Sign release_dir/manifest.cbor into release_dir/release.cose. The manifest is checked with
    the firmware's rules first: a release the cabinets would refuse is never signed."""
    private = load_private(key_path)
    try:
        payload = (Path(release_dir) / MANIFEST_FILE).read_bytes()
    except OSError as e:
        raise ReleaseToolError("cannot read %s: %s" % (e.filename, e.strerror)) from None
    fw = _firmware_release()
    try:
        manifest = fw.parse_manifest(payload)
    except fw.ReleaseError as e:
        raise ReleaseToolError("%s: the cabinets would refuse it: %s" % (MANIFEST_FILE, _why(e))) from None
    raw = sign(payload, private)
    if len(raw) > fw.MAX_RELEASE_BYTES:
        raise ReleaseToolError("signed release is %d bytes, the cabinets take at most %d"
                               % (len(raw), fw.MAX_RELEASE_BYTES))
    (Path(release_dir) / RELEASE_FILE).write_bytes(raw)
    return manifest, key_id(private.public_key().public_bytes(serialization.Encoding.Raw,
                                                              serialization.PublicFormat.Raw))


def _why(e: Exception) -> str:
    reason, detail = e.args
    return reason if detail is None else "%s (%s)" % (reason, detail)


class Refused(Exception):
    """The release does not verify: args[0] a one-line reason."""


def inspect(raw: bytes, publics: list[bytes], files_dir: str | None = None) -> dict[str, Any]:
    """Verify raw (a release.cose) against publics with OpenSSL and with the firmware's verifier;
    if files_dir is given, check every file's size and SHA-256. Returns the decoded manifest (for
    display) or raises Refused(reason)."""
    fw = _firmware_release()
    keys = [(key_id(p), p) for p in publics]
    try:
        manifest = asyncio.run(fw.verify(raw, keys))
    except fw.ReleaseError as e:
        raise Refused("refused as a cabinet would: %s" % _why(e)) from None
    # The same bytes through OpenSSL: an independent implementation must agree.
    msg = cbor2.loads(raw).value if raw[:1] == b"\xd2" else cbor2.loads(raw)
    protected, _, payload, signature = msg
    kid = cbor2.loads(protected)[4]
    public = next(p for k, p in keys if k == kid)
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, sig_structure(protected, payload))
    except InvalidSignature:
        raise Refused("OpenSSL refuses the signature the firmware accepted") from None
    by_path = {f[0]: f for f in manifest["files"]}
    if (IMAGE_FILE in by_path) != (IMAGE_HASHES in by_path):
        raise Refused("%s and %s come together (the image's blocks are checked against the list)"
                      % (IMAGE_FILE, IMAGE_HASHES))
    if IMAGE_HASHES in by_path and by_path[IMAGE_HASHES][1] != \
            32 * ((by_path[IMAGE_FILE][1] + IMAGE_BLOCK - 1) // IMAGE_BLOCK):
        raise Refused("%s is %d bytes; %s of %d bytes needs 32 per 4096-byte block"
                      % (IMAGE_HASHES, by_path[IMAGE_HASHES][1], IMAGE_FILE, by_path[IMAGE_FILE][1]))
    if files_dir is not None:
        for entry in manifest["files"]:
            path = Path(files_dir) / entry[0]
            try:
                data = path.read_bytes()
            except OSError as e:
                raise Refused("file %s: %s" % (entry[0], e.strerror)) from None
            try:
                fw.check_file(entry, (data,))
            except fw.ReleaseError as e:
                raise Refused("file %s differs from the manifest (size or SHA-256)" % e.args[1]) from None
        if IMAGE_FILE in by_path:
            image = (Path(files_dir) / IMAGE_FILE).read_bytes()
            hashes = (Path(files_dir) / IMAGE_HASHES).read_bytes()
            mine = image_hashes(image)
            if hashes != mine:
                bad = next(i for i in range(0, len(mine), 32) if hashes[i:i + 32] != mine[i:i + 32])
                raise Refused("%s does not match %s: block %d (offset %d) differs"
                              % (IMAGE_HASHES, IMAGE_FILE, bad // 32, bad // 32 * IMAGE_BLOCK))
    shown = cbor2.loads(payload)
    shown["kid"] = kid.hex()
    return shown
