# SHA-512 (FIPS 180-4) in plain Python, for Ed25519 (RFC 8032 hashes with SHA-512).
# MicroPython's hashlib has no sha512 on any port (extmod/modhashlib.c offers sha256, and sha1
# and md5 only with SSL; ports/esp32/mpconfigport.h adds nothing), so the cabinet brings its own.
# It only ever hashes a release manifest (a few KB): speed is secondary, code size is not.
#
# The 80 round constants and 8 initial words are not written out: FIPS 180-4 §4.2.3 and §5.3.5
# define them as the first 64 bits of the fractional parts of the cube roots (square roots) of
# the first 80 (8) primes, and they are computed that way, once, on first use (saves ~1.5 KB of
# .mpy). tests/firmware/test_ed25519.py checks the digests against FIPS and hashlib vectors.

_M = (1 << 64) - 1
_K = None
_H0 = None


def _root(n, k, x):
    # Integer k-th root of n by Newton's method, from an over-estimate x (descends monotonically).
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            return x
        x = y


def _constants():
    global _K, _H0
    primes = []
    n = 2
    while len(primes) < 80:
        for q in primes:
            if n % q == 0:
                break
        else:
            primes.append(n)
        n += 1
    # Primes <= 409: cube roots < 8, square roots of the first 8 < 5 (the starting guesses).
    _K = [_root(q << 192, 3, 8 << 64) & _M for q in primes]
    _H0 = [_root(q << 128, 2, 5 << 64) & _M for q in primes[:8]]


def _rotr(x, n):
    return ((x >> n) | (x << (64 - n))) & _M


class SHA512:
    def __init__(self):
        if _K is None:
            _constants()
        self._h = list(_H0)
        self._buf = b""
        self._len = 0

    def update(self, data):
        self._len += len(data)
        buf = self._buf + bytes(data)
        i = 0
        while len(buf) - i >= 128:
            self._block(buf, i)
            i += 128
        self._buf = buf[i:]

    def digest(self):
        # Padding on a copy of the state, so update() may go on after digest() as in hashlib.
        h, buf, n = list(self._h), self._buf, self._len
        buf += b"\x80" + bytes((111 - n) % 128) + (n * 8).to_bytes(16, "big")
        for i in range(0, len(buf), 128):
            self._block(buf, i)
        out = b"".join(x.to_bytes(8, "big") for x in self._h)
        self._h = h
        return out

    def _block(self, buf, i):
        K = _K
        M = _M
        w = [0] * 80  # one allocation: a growing list would be copied as it grows
        for t in range(16):
            w[t] = int.from_bytes(buf[i + 8 * t:i + 8 * t + 8], "big")
        for t in range(16, 80):
            x, y = w[t - 15], w[t - 2]
            w[t] = (w[t - 16] + w[t - 7]
                    + (_rotr(x, 1) ^ _rotr(x, 8) ^ (x >> 7))
                    + (_rotr(y, 19) ^ _rotr(y, 61) ^ (y >> 6))) & M
        h = self._h
        a, b, c, d, e, f, g, hh = h
        for t in range(80):
            # Rotations written out: a call per rotation costs more than the rotation here.
            t1 = (hh + ((((e >> 14) | (e << 50)) ^ ((e >> 18) | (e << 46))
                         ^ ((e >> 41) | (e << 23))) & M)
                  + ((e & f) ^ ((e ^ M) & g)) + K[t] + w[t])
            t2 = (((((a >> 28) | (a << 36)) ^ ((a >> 34) | (a << 30)) ^ ((a >> 39) | (a << 25)))
                   & M) + ((a & b) ^ (a & c) ^ (b & c)))
            hh, g, f, e, d, c, b, a = g, f, e, (d + t1) & M, c, b, a, (t1 + t2) & M
        for j, x in enumerate((a, b, c, d, e, f, g, hh)):
            h[j] = (h[j] + x) & M


def sha512(data=b""):
    h = SHA512()
    h.update(data)
    return h
