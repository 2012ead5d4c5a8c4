"""Fleet master keys and the per-device keys derived from them.

The fleet master key is 32 random bytes kept by the dispatch backend (an HSM in production). On
disk, for development and provisioning, it is one line of 64 hex characters in a file readable
only by its owner (mode 0600). Each cabinet holds only its own key:

    device key = HKDF-SHA256(IKM=master, salt=b"aedgate/v1", info=b"device-key:" + device_id, L=32)

(fixed in docs/protocol.md). This module uses `cryptography`'s HKDF, deliberately not the firmware's
own code, so the tests cross-check two independent implementations.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
KEY_LEN = 32
SALT = b"aedgate/v1"
INFO_PREFIX = b"device-key:"
KID_LABEL = b"aedgate/v1 kid"


class KeyFileError(ValueError):
    """A key file that is missing, unreadable or not 64 hex characters."""


def check_device_id(device_id: str) -> str:
    """Return `device_id` when it matches ^[A-Za-z0-9_-]{1,64}$, else raise ValueError."""
    if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
        raise ValueError("bad device id %r: use 1-64 of A-Z a-z 0-9 _ -" % (device_id,))
    return device_id


def generate() -> bytes:
    """A new random 32-byte fleet master key."""
    return secrets.token_bytes(KEY_LEN)


def parse_hex_key(text: str) -> bytes:
    """32 bytes from 64 hex characters (surrounding whitespace allowed), else KeyFileError."""
    text = text.strip()
    if len(text) != 2 * KEY_LEN:
        raise KeyFileError("expected 64 hex characters, found %d characters" % len(text))
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise KeyFileError("not hexadecimal") from None


def load(path: str | os.PathLike[str]) -> bytes:
    """Read a fleet master key file (64 hex characters on one line)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except FileNotFoundError:
        raise KeyFileError("key file %s does not exist" % p) from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError("cannot read key file %s: %s" % (p, getattr(e, "strerror", None) or e)) from None
    try:
        return parse_hex_key(text)
    except KeyFileError as e:
        raise KeyFileError("key file %s: %s" % (p, e)) from None


def save(path: str | os.PathLike[str], key: bytes, overwrite: bool = False) -> Path:
    """Write `key` as 64 hex characters + newline, created with mode 0600. Refuses to replace
    an existing file unless `overwrite` (a lost fleet key locks out the whole fleet)."""
    if len(key) != KEY_LEN:
        raise ValueError("a fleet key is 32 bytes")
    p = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(p, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when an existing file is overwritten
        os.write(fd, (key.hex() + "\n").encode("ascii"))
    finally:
        os.close(fd)
    return p


def derive_device_key(master_key: bytes, device_id: str) -> bytes:
    """The 32-byte key of one cabinet (RFC 5869 HKDF-SHA256, parameters fixed in docs/protocol.md)."""
    if len(master_key) != KEY_LEN:
        raise ValueError("a fleet key is 32 bytes")
    check_device_id(device_id)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=SALT,
                info=INFO_PREFIX + device_id.encode("utf-8"))
    return hkdf.derive(master_key)


def key_id(device_key: bytes) -> bytes:
    """Default COSE kid of a device key: HMAC-SHA256(key, b"aedgate/v1 kid")[:8]. The device
    computes the same value from the key it holds (firmware aedgate.hmac_sha256.key_id)."""
    return hmac.new(device_key, KID_LABEL, hashlib.sha256).digest()[:8]
