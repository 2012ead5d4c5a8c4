# aedgate.ed25519 and aedgate.sha512 on both runtimes: RFC 8032 §7.1 vectors, FIPS 180-4
# SHA-512 vectors, and signatures a forger could build if a check were missing (each one below
# verifies when its check is removed, so the test would fail).
from aedgate import ed25519
from aedgate.compat import asyncio, sleep_ms
from aedgate.ed25519 import L, P
from aedgate.sha512 import sha512
from ed25519_vectors import RFC8032
from edsign import verify

H = bytes.fromhex
TEST1 = RFC8032[0]
SK1, PK1, SIG1 = H(TEST1[1]), H(TEST1[2]), H(TEST1[4])
IDENTITY = b"\x01" + bytes(31)  # the neutral point (0, 1): order 1
# An order-8 point (y from the list of small-order encodings libsodium rejects).
ORDER8 = H("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")


def _le(n):
    return n.to_bytes(32, "little")


def _secret_scalar(sk):
    # RFC 8032 §5.1.5: the clamped first half of SHA-512(secret key).
    h = bytearray(sha512(sk).digest()[:32])
    h[0] &= 248
    h[31] &= 127
    h[31] |= 64
    return int.from_bytes(bytes(h), "little")


def _k(r, a, msg):
    return int.from_bytes(sha512(r + a + msg).digest(), "little") % L


def test_sha512_fips_vectors():
    assert sha512(b"").digest() == H(
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e")
    assert sha512(b"abc").digest() == H(
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f")
    two_blocks = (b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
                  b"ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu")
    assert sha512(two_blocks).digest() == H(
        "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
        "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909")


def test_sha512_updates_in_pieces_equal_one_update():
    data = bytes(range(256)) * 3
    h = sha512()
    for i in range(0, len(data), 37):
        h.update(data[i:i + 37])
    assert h.digest() == sha512(data).digest()
    assert h.digest() == h.digest()  # digest() does not disturb the state


def test_rfc8032_vectors_verify():
    for name, _sk, pk, msg, sig in RFC8032:
        assert verify(H(pk), H(sig), (H(msg),)), name


def test_rfc8032_vectors_verify_async():
    for name, _sk, pk, msg, sig in RFC8032:
        assert asyncio.run(ed25519.verify_async(H(pk), H(sig), (H(msg),))), name


def test_message_in_parts_is_the_message_joined():
    name, _sk, pk, msg, sig = RFC8032[3]
    m = H(msg)
    assert verify(H(pk), H(sig), (m[:100], b"", m[100:700], m[700:]))
    assert not verify(H(pk), H(sig), (m[:100], m[101:]))


def test_public_key_of_secret_matches_vector():
    # The test's own helper (used by the forgeries below) agrees with RFC 8032: [a]B = A.
    a = _secret_scalar(SK1)
    assert verify(PK1, SIG1, (b"",))
    # A signature made here with a and a chosen nonce verifies: the helper is right.
    r = 12345
    rb = _sign_r(r)
    s = (r + _k(rb, PK1, b"hello") * a) % L
    assert verify(PK1, rb + _le(s), (b"hello",))


def _sign_r(r):
    # Encoding of [r]B without a point encoder: r·B for r = secret scalar of TEST 1 is PK1,
    # so other nonces are built as R = [r]B using the module's arithmetic.
    q = ed25519._ZERO
    b = ed25519._decode(b"\x58" + b"\x66" * 31)
    for i in range(255, -1, -1):
        q = ed25519._double(q)
        if (r >> i) & 1:
            q = ed25519._add(q, b)
    x, y, z, _ = q
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return _le(y | ((x & 1) << 255))


def test_tampered_message_or_signature_or_key_refused():
    name, _sk, pk, msg, sig = RFC8032[2]
    pk, msg, sig = H(pk), H(msg), H(sig)
    assert not verify(pk, sig, (msg + b"\x00",))
    assert not verify(pk, sig, (b"\xaf\x83",))
    for i in (0, 31, 32, 63):
        bad = bytearray(sig)
        bad[i] ^= 1
        assert not verify(pk, bytes(bad), (msg,)), i
    assert not verify(PK1, sig, (msg,))  # someone else's key


def test_wrong_lengths_refused():
    assert not verify(PK1, SIG1[:63], (b"",))
    assert not verify(PK1, SIG1 + b"\x00", (b"",))
    assert not verify(PK1[:31], SIG1, (b"",))
    assert not verify(b"", b"", (b"",))


def test_non_canonical_s_refused():
    # S + L satisfies the equation ([S + L]B = [S]B): only the S < L check refuses it.
    s = int.from_bytes(SIG1[32:], "little")
    assert s + L < 1 << 256
    assert not verify(PK1, SIG1[:32] + _le(s + L), (b"",))


def test_small_order_public_key_refused():
    # With A of small order, [k]A vanishes (k is a multiple of 8 for these forgeries, or A is
    # the identity), so R = [r]B, S = r "signs" every message. Identity: always.
    r = 777
    forged = _sign_r(r) + _le(r)
    assert not verify(IDENTITY, forged, (b"any message",))
    assert not verify(IDENTITY, forged, (b"another one",))
    assert not verify(ORDER8, forged, (b"any message",))


def test_small_order_r_refused():
    # R = identity, S = k·a: valid for the equation [S]B - [k]A = R; only the small-order
    # check on R refuses it.
    a = _secret_scalar(SK1)
    msg = b"release"
    s = _k(IDENTITY, PK1, msg) * a % L
    assert not verify(PK1, IDENTITY + _le(s), (msg,))


def test_small_order_encodings_are_small_order():
    assert ed25519._small(ed25519._decode(IDENTITY))
    assert ed25519._small(ed25519._decode(ORDER8))
    assert not ed25519._small(ed25519._decode(PK1))


def test_non_canonical_point_encodings_refused():
    # y >= p: y + p for every y < 19 (all such encodings fit in 255 bits).
    for y in range(19):
        assert ed25519._decode(_le(y + P)) is None, y
    # x = 0 with the sign bit set: (0, 1) and (0, -1) written as "negative zero".
    assert ed25519._decode(_le(1 | (1 << 255))) is None
    assert ed25519._decode(_le((P - 1) | (1 << 255))) is None
    # Not on the curve: y = 2 has no x (u/v is not a square).
    assert ed25519._decode(_le(2)) is None
    # The canonical versions of the first two decode.
    assert ed25519._decode(IDENTITY) is not None
    assert ed25519._decode(_le(P - 1)) is not None


def test_public_key_with_y_above_p_refused():
    assert not verify(_le(1 + P), SIG1, (b"",))
    assert not verify(PK1, _le(P + 3) + SIG1[32:], (b"",))


def test_async_verify_gives_the_loop_back():
    # While one manifest is verified, another task keeps running: it is scheduled between steps.
    ticks = []

    async def other():
        while True:
            ticks.append(1)
            await sleep_ms(0)

    async def main():
        t = asyncio.create_task(other())
        name, _sk, pk, msg, sig = RFC8032[3]
        ok = await ed25519.verify_async(H(pk), H(sig), (H(msg),))
        t.cancel()
        return ok

    assert asyncio.run(main())
    assert len(ticks) >= 30, len(ticks)  # 253 rounds / 8 + hash chunks
