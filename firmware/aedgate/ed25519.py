# Ed25519 signature verification (RFC 8032 §5.1.7), verify only, in plain Python big integers:
# MicroPython ships no public-key signatures, and a release must be checked on the cabinet.
#
# What is refused (the checks libsodium's crypto_sign_verify_detached makes, analysed in
# "Taming the many EdDSAs", Chalkias, Garillot, Nikolaenko, 2020):
#   - S >= L (malleable signatures);
#   - a public key A or a point R whose y is >= p, whose x is 0 with the sign bit set, or that
#     is not on the curve (non-canonical or invalid encodings);
#   - A or R of small order (8·P = identity): with such a key one signature fits many messages.
# Equation: cofactorless, [S]B - [k]A == R, as libsodium and OpenSSL do. Cofactored and
# cofactorless differ only for points with a torsion part, which an honest RFC 8032 signer
# never produces; with cofactorless, every signature the cabinet accepts is also accepted by
# `cryptography`/OpenSSL, which `aedgate release inspect` uses (docs/updates.md).
#
# Not constant-time: it handles only public data (key, message, signature).
# The work is a generator that yields between small pieces of work (below), so verify_async()
# can give the asyncio loop back (unlocks keep being served) while a manifest is checked.
from aedgate.compat import const, sleep_ms
try:  # a runtime with a native SHA-512 (CPython, where the simulator runs whole fleets)
    from hashlib import sha512 as SHA512
except ImportError:  # every MicroPython port: our own (aedgate/sha512.py)
    from aedgate.sha512 import SHA512

# Work between two yields: one point decoding, one 128-byte SHA-512 block (each ~0.75 ms on the
# unix port, the longest steps: docs/benchmarks.md, bench_ed25519.py) or _STEP rounds of the
# double-and-add ladder (~0.2 ms: more yields would only add the scheduler's overhead).
_STEP = const(8)

P = (1 << 255) - 19
L = (1 << 252) + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, P - 2, P) % P         # d = -121665/121666
_D2 = _D * 2 % P
_I = pow(2, (P - 1) // 4, P)                    # a square root of -1
_ZERO = (0, 1, 1, 0)                            # identity, extended coordinates (X, Y, Z, T)
_B = None                                       # base point, decoded on first use


def _add(p, q):
    # RFC 8032 §5.1.4 addition (complete for a = -1: also doubles and adds the identity).
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = t1 * _D2 * t2 % P
    d = z1 * 2 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _double(p):
    # RFC 8032 §5.1.4 doubling (4M + 4S).
    x1, y1, z1, _ = p
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _decode(s):
    # RFC 8032 §5.1.3; None for a non-canonical encoding or a point not on the curve.
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    u = (y * y - 1) % P
    v = (_D * y * y + 1) % P
    x = u * v ** 3 * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    vxx = v * x * x % P
    if vxx != u:
        if vxx != P - u:
            return None
        x = x * _I % P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def _small(p):
    # Small order: 8·p is the identity (X = 0, Y = Z in projective terms).
    p = _double(_double(_double(p)))
    return p[0] == 0 and p[1] == p[2]


def steps(public, signature, parts):
    """The verification as a generator: yields None now and then, and True or False last.
    public: 32 bytes; signature: 64 bytes; parts: the message as a tuple of byte strings
    (hashed in order without joining them)."""
    global _B
    if len(public) != 32 or len(signature) != 64:
        yield False
        return
    s = int.from_bytes(signature[32:], "little")
    r = _decode(signature[:32])
    if s >= L or r is None or _small(r):
        yield False
        return
    yield
    a = _decode(public)
    if a is None or _small(a):
        yield False
        return
    yield
    if _B is None:
        _B = _decode(b"\x58" + b"\x66" * 31)  # y = 4/5, x even (RFC 8032 §5.1)
    h = SHA512()
    h.update(signature[:32])
    h.update(public)
    for part in parts:
        for i in range(0, len(part), 128):
            h.update(part[i:i + 128])
            yield
    k = int.from_bytes(h.digest(), "little") % L
    # [S]B + [k](-A) by Straus' trick: one doubling per bit, one addition where a bit is set.
    x, y, z, t = a
    na = (P - x, y, z, P - t)
    both = _add(_B, na)
    q = _ZERO
    for i in range(252, -1, -1):
        q = _double(q)
        bs = (s >> i) & 1
        bk = (k >> i) & 1
        if bs or bk:
            q = _add(q, both if bs and bk else (_B if bs else na))
        if i % _STEP == 0:
            yield
    x, y, z, _ = q
    yield x == r[0] * z % P and y == r[1] * z % P


async def verify_async(public, signature, parts):
    """True when signature is a valid Ed25519 signature of the message by public (see steps),
    giving the asyncio loop back between steps (sleep_ms(0))."""
    ok = False
    for ok in steps(public, signature, parts):
        if ok is None:
            await sleep_ms(0)
    return ok is True
