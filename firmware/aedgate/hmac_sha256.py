# HMAC-SHA256 (RFC 2104), HKDF-SHA256 (RFC 5869) and a constant-time compare, built on
# hashlib.sha256 only: stock ESP32 MicroPython has hashlib but no frozen `hmac` module, and
# micropython-lib's hmac has no compare_digest.
import hashlib

from aedgate.compat import const

_BLOCK = const(64)
_HASH_LEN = const(32)
_IPAD = const(0x36)
_OPAD = const(0x5C)

# Per-device key derivation, fixed by docs/protocol.md ("Key derivation (fixed)").
DEVICE_KEY_SALT = b"aedgate/v1"
DEVICE_KEY_INFO = b"device-key:"
# kid convention (not part of the fixed contract, see key_id below).
KID_LABEL = b"aedgate/v1 kid"


def hmac_sha256(key, msg):
    """HMAC-SHA256 of `msg` under `key`. `msg` may be one bytes-like object or a list/tuple of
    them, hashed one after the other, so callers need not join pieces into a new buffer."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    pad = bytearray(_BLOCK)
    pad[:len(key)] = key
    for i in range(_BLOCK):
        pad[i] ^= _IPAD
    inner = hashlib.sha256(pad)
    if type(msg) is tuple or type(msg) is list:
        for part in msg:
            inner.update(part)
    else:
        inner.update(msg)
    for i in range(_BLOCK):
        pad[i] ^= _IPAD ^ _OPAD
    outer = hashlib.sha256(pad)
    outer.update(inner.digest())
    return outer.digest()


def hkdf_sha256(ikm, salt, info, length):
    """RFC 5869 HKDF with SHA-256: extract with `salt` (None or b"" = 32 zero bytes), then
    expand with `info` to `length` bytes (at most 255 * 32)."""
    if length < 0 or length > 255 * _HASH_LEN:
        raise ValueError("hkdf length")
    if not salt:
        salt = bytes(_HASH_LEN)
    prk = hmac_sha256(salt, ikm)
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac_sha256(prk, (block, info, bytes((counter,))))
        out += block
        counter += 1
    return out[:length]


def equal(a, b):
    """Compare two MACs in time that depends only on their length (never returns early on the
    first differing byte, unlike `==`, which is memcmp on MicroPython)."""
    if len(a) != len(b):
        return False  # lengths are public (a tag is always 32 bytes)
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def device_key(master_key, device_id):
    """The device's own 32-byte key: HKDF-SHA256(IKM=fleet master key, salt=b"aedgate/v1",
    info=b"device-key:" + device_id as UTF-8, L=32). Only the dispatch backend and the
    provisioning tool call this with the master key; a device stores just the result."""
    if len(master_key) != 32:
        raise ValueError("master key must be 32 bytes")
    if isinstance(device_id, str):
        device_id = device_id.encode()
    return hkdf_sha256(master_key, DEVICE_KEY_SALT, DEVICE_KEY_INFO + device_id, 32)


def key_id(key):
    """The default `kid` for a key: the first 8 bytes of HMAC-SHA256(key, b"aedgate/v1 kid").
    A key check value, so the device can compute its slots' kids from the keys it holds and the
    minting side can compute the same kid; it reveals nothing usable about the key."""
    return hmac_sha256(key, KID_LABEL)[:8]
