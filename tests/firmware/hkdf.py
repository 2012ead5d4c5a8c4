# HKDF-SHA256 (RFC 5869) and the per-device key derivation (docs/protocol.md, "Key derivation
# (fixed)"), on the firmware's HMAC, for tests on both runtimes. A device never derives keys (it
# stores its own); dispatch and provisioning derive them on the host (host_tools/fleetkeys.py).
from aedgate.hmac_sha256 import hmac_sha256

DEVICE_KEY_SALT = b"aedgate/v1"
DEVICE_KEY_INFO = b"device-key:"


def hkdf_sha256(ikm, salt, info, length):
    """RFC 5869 HKDF with SHA-256: extract with `salt` (None or b"" = 32 zero bytes), then
    expand with `info` to `length` bytes (at most 255 * 32)."""
    if length < 0 or length > 255 * 32:
        raise ValueError("hkdf length")
    if not salt:
        salt = bytes(32)
    prk = hmac_sha256(salt, ikm)
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac_sha256(prk, (block, info, bytes((counter,))))
        out += block
        counter += 1
    return out[:length]


def device_key(master_key, device_id):
    """HKDF-SHA256(IKM=fleet master key, salt=b"aedgate/v1", info=b"device-key:" + device_id
    as UTF-8, L=32)."""
    if len(master_key) != 32:
        raise ValueError("master key must be 32 bytes")
    if isinstance(device_id, str):
        device_id = device_id.encode()
    return hkdf_sha256(master_key, DEVICE_KEY_SALT, DEVICE_KEY_INFO + device_id, 32)
