# A small RFC 8032 Ed25519 signer for the firmware tests (the cabinet only verifies, so no
# signer ships), and verify(): the firmware's steps() run to the end without a loop. Runs on both runtimes with the firmware's own arithmetic; tests/host/ checks
# its signatures against `cryptography`, so it is not the thing under test.
from aedgate import ed25519
from aedgate.ed25519 import L, P
from aedgate.sha512 import sha512


def scalar_mult_base(n):
    """Encoding of [n]B."""
    q = ed25519._ZERO
    b = ed25519._decode(b"\x58" + b"\x66" * 31)
    for i in range(255, -1, -1):
        q = ed25519._double(q)
        if (n >> i) & 1:
            q = ed25519._add(q, b)
    x, y, z, _ = q
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _h(data):
    return int.from_bytes(sha512(data).digest(), "little")


def secret_scalar(seed):
    h = bytearray(sha512(seed).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return int.from_bytes(bytes(h), "little")


def public_key(seed):
    return scalar_mult_base(secret_scalar(seed))


def sign(seed, msg):
    """RFC 8032 §5.1.6: the 64-byte signature of msg by the 32-byte secret seed."""
    a = secret_scalar(seed)
    pub = scalar_mult_base(a)
    r = _h(sha512(seed).digest()[32:] + msg) % L
    big_r = scalar_mult_base(r)
    s = (r + _h(big_r + pub + msg) * a) % L
    return big_r + s.to_bytes(32, "little")


def verify(public, signature, parts):
    """ed25519.verify_async without asyncio: True when the signature is valid."""
    ok = False
    for ok in ed25519.steps(public, signature, parts):
        pass
    return ok is True
