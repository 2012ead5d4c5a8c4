# HMAC-SHA256 (RFC 2104), the default kid, and a constant-time compare, built on hashlib.sha256
# only: stock ESP32 MicroPython has hashlib but no frozen `hmac` module, and micropython-lib's
# hmac has no compare_digest. (Key derivation, HKDF, happens on the provisioning host, never on a
# device: host_tools/fleetkeys.py; tests/firmware/hkdf.py for the tests on MicroPython.)
import hashlib

from aedgate.compat import const

_BLOCK = const(64)
_IPAD = const(0x36)
_OPAD = const(0x5C)

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


def equal(a, b):
    """Compare two MACs in time that depends only on their length (never returns early on the
    first differing byte, unlike `==`, which is memcmp on MicroPython)."""
    if len(a) != len(b):
        return False  # lengths are public (a tag is always 32 bytes)
    diff = 0
    for i in range(len(a)):
        diff |= a[i] ^ b[i]
    return diff == 0


def key_id(key):
    """The default `kid` for a key: the first 8 bytes of HMAC-SHA256(key, b"aedgate/v1 kid").
    A key check value, so the device can compute its slots' kids from the keys it holds and the
    minting side can compute the same kid; it reveals nothing usable about the key."""
    return hmac_sha256(key, KID_LABEL)[:8]
