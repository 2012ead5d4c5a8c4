# Signed releases (docs/updates.md): a COSE_Sign1 (RFC 9052, alg EdDSA -8) whose payload is the
# release manifest, checked in this order: size cap -> strict parse -> pinned alg -> key slot by
# kid -> Ed25519 signature -> only then is the manifest decoded -> its rules -> file hashes.
#
#   manifest = await release.verify(raw, keys)   # keys: [(kid, 32-byte public key), ...]
#   release.accept(manifest, "esp32", (0, 1, 0), mpy)   # board, running version, .mpy format
#   release.check_file(manifest["files"][i], chunks)    # after download, before install
# Each raises ReleaseError(reason, detail); reason is one of REASONS, for the refused event.
import hashlib

from aedgate import cbor
from aedgate.compat import MICROPYTHON, const
from aedgate.token import _bstr_head

MAX_RELEASE_BYTES = const(8192)
MAX_FILES = const(64)
_ALG_EDDSA = const(-8)
_H_ALG = const(1)
_H_KID = const(4)
_KEYS = ("format", "version", "board", "created", "files", "min_version", "may_replace", "mpy")
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./"

REASONS = ("too_large", "malformed", "bad_alg", "bad_header", "unknown_kid", "bad_signature",
           "bad_manifest", "wrong_board", "wrong_mpy", "not_newer", "needs_version", "bad_file",
           "internal")


class ReleaseError(Exception):
    """A refused release: args[0] a reason code (REASONS), args[1] a detail (str) or None."""


def key_id(public):
    """A release key's default kid: the first 8 bytes of SHA-256 of the public key."""
    return hashlib.sha256(public).digest()[:8]


def slots(cfg):
    """The config's release_keys as [(kid, public key)], current first."""
    out = []
    for s in cfg["release_keys"]:
        key = bytes.fromhex(s["key"])
        out.append((bytes.fromhex(s["kid"]) if s["kid"] else key_id(key), key))
    return out


async def verify(raw, keys):
    """Check the envelope and signature of a release, then return its manifest (a dict whose
    versions are tuples, files [[path, size, sha256], ...]). Never decodes an unsigned payload.
    Any other failure (a bug, no memory) is ReleaseError("internal"): the caller never crashes."""
    try:
        return await _verify(raw, keys)
    except ReleaseError:
        raise
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise ReleaseError("internal", type(e).__name__)
    finally:
        _forget()


def _forget():
    # The signature code runs once per release: on a board its ~19 KB (ed25519, sha512 and its
    # constants) go back to the heap for the download instead of staying loaded. (CPython keeps
    # them: a simulator verifies for thousands of cabinets, and an import costs ~2 ms there.)
    if MICROPYTHON:
        import sys
        import aedgate
        for name in ("ed25519", "sha512"):
            sys.modules.pop("aedgate." + name, None)
            try:
                delattr(aedgate, name)
            except (AttributeError, KeyError):  # not loaded (MicroPython says KeyError)
                pass


async def _verify(raw, keys):
    if len(raw) > MAX_RELEASE_BYTES:
        raise ReleaseError("too_large", None)
    raw = bytes(raw)
    pos = 1 if raw[:1] == b"\xd2" else 0  # optional COSE_Sign1 tag 18
    try:
        msg = cbor.decode(raw, 2, pos)
    except cbor.CBORError as e:
        raise ReleaseError("malformed", e.args[0])
    if (type(msg) is not list or len(msg) != 4 or type(msg[0]) is not bytes
            or type(msg[1]) is not dict or type(msg[2]) is not bytes
            or type(msg[3]) is not bytes):
        raise ReleaseError("malformed", "not a COSE_Sign1")
    protected, unprotected, payload, signature = msg
    try:
        header = cbor.decode(protected, 1)
    except cbor.CBORError:
        header = None
    if type(header) is not dict:
        raise ReleaseError("bad_header", None)
    if header.get(_H_ALG) != _ALG_EDDSA:
        raise ReleaseError("bad_alg", None)
    # kid protected or not (RFC 9052 allows both; it only picks the key), never both; nothing
    # else in either header (an unknown "crit" parameter must not be ignored).
    kid = header.get(_H_KID, unprotected.get(_H_KID))
    if (len(header) + len(unprotected) != 2 or type(kid) is not bytes
            or (_H_KID in unprotected and _H_ALG in unprotected)):
        raise ReleaseError("bad_header", None)
    public = None
    for slot_kid, slot_key in keys:
        if slot_kid == kid:
            public = slot_key
    if public is None:
        raise ReleaseError("unknown_kid", None)
    # Sig_structure = ["Signature1", protected, external_aad b"", payload], fed in pieces.
    parts = (b"\x84\x6aSignature1", _bstr_head(len(protected)), protected, b"\x40",
             _bstr_head(len(payload)), payload)
    from aedgate import ed25519  # loaded for this check only (_forget)
    if not await ed25519.verify_async(public, signature, parts):
        raise ReleaseError("bad_signature", None)
    return parse_manifest(payload)


def parse_manifest(payload):
    """The manifest's rules (updates.md); raises bad_manifest. Called only on signed bytes here
    (errors are then the build tool's); the host tools call it before signing."""
    try:
        m = cbor.decode(payload, 3, 0, MAX_FILES)
    except cbor.CBORError as e:
        raise ReleaseError("bad_manifest", e.args[0])
    if type(m) is not dict or m.get("format") != 1:
        raise ReleaseError("bad_manifest", "format")
    for k in m:
        if k not in _KEYS:
            raise ReleaseError("bad_manifest", k)
    for k in ("version", "min_version", "may_replace"):
        if k in m or k == "version":
            m[k] = _version(m.get(k), k)
    files = m.get("files")
    if (type(m.get("board")) is not str or type(m.get("created")) is not int
            or type(files) is not list or not files):
        raise ReleaseError("bad_manifest", "fields")
    seen = []
    for f in files:
        if not (type(f) is list and len(f) == 3 and _path_ok(f[0]) and type(f[1]) is int
                and f[1] >= 0 and type(f[2]) is bytes and len(f[2]) == 32) or f[0] in seen:
            raise ReleaseError("bad_manifest", "files")
        seen.append(f[0])
    mpy = m.get("mpy")
    if mpy is not None and type(mpy) is not int:
        raise ReleaseError("bad_manifest", "mpy")
    return m


def _version(text, field):
    # "MAJOR.MINOR.PATCH", digits only -> a tuple that compares in release order.
    try:
        parts = text.split(".")
        if len(parts) == 3 and all(p.isdigit() and len(p) <= 5 for p in parts):
            return tuple(int(p) for p in parts)
    except AttributeError:
        pass
    raise ReleaseError("bad_manifest", field)


def _path_ok(p):
    # Relative, below the slot's folder: no empty parts, no "." or "..", no leading "/".
    if type(p) is not str or not 1 <= len(p) <= 64:
        return False
    for c in p:
        if c not in _PATH_CHARS:
            return False
    for part in p.split("/"):
        if part in ("", ".", ".."):
            return False
    return True


def accept(m, board, running, mpy=None):
    """May this cabinet install the (verified) manifest m? board: this build's board name;
    running: the running version as a tuple; mpy: the .mpy format this MicroPython loads
    (sys.implementation._mpy & 0xFF, the bytecode format version), None when it loads .py."""
    if m["board"] != board:
        raise ReleaseError("wrong_board", m["board"])
    if mpy is not None and m.get("mpy") is not None and m["mpy"] != mpy:
        raise ReleaseError("wrong_mpy", None)
    # Rollback protection: older (or the same) only when the release says it may replace ours.
    if m["version"] <= running and not ("may_replace" in m and m["may_replace"] >= running):
        raise ReleaseError("not_newer", None)
    if "min_version" in m and running < m["min_version"]:
        raise ReleaseError("needs_version", None)


def check_file(entry, chunks):
    """entry: one [path, size, sha256] of a verified manifest; chunks: the file's bytes, as an
    iterable of byte strings (read in pieces from flash). Raises bad_file on any difference."""
    h = hashlib.sha256()
    n = 0
    for c in chunks:
        n += len(c)
        h.update(c)
    if n != entry[1] or h.digest() != entry[2]:
        raise ReleaseError("bad_file", entry[0])
