"""Release signatures across independent implementations: `cryptography` (OpenSSL) signs and
the firmware verifies, `cwt` encodes COSE_Sign1 and the firmware verifies, the firmware's
test signer agrees with OpenSSL, and hypothesis looks for a message or a flipped bit that
breaks the agreement."""
from __future__ import annotations

import asyncio

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cwt import COSE, COSEKey
from hypothesis import given, settings
from hypothesis import strategies as st

from aedgate import ed25519, release  # firmware, on sys.path via tests/conftest.py
from ed25519_vectors import RFC8032
import edsign
from host_tools import releases

SEED = bytes(range(32))
PRIV = Ed25519PrivateKey.from_private_bytes(SEED)
PUB = PRIV.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
KID = releases.key_id(PUB)


def _manifest(**kw):
    m = {"format": 1, "version": "0.2.0", "board": "esp32", "created": 1795000000,
         "files": [["aedgate/app.mpy", 3, bytes(32)]]}
    m.update(kw)
    return cbor2.dumps(m)


@pytest.mark.parametrize("vector", RFC8032, ids=lambda v: v[0])
def test_vectors_file_is_rfc8032_as_openssl_computes_it(vector):
    name, sk, pk, msg, sig = vector
    k = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(sk))
    assert k.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw).hex() == pk
    assert k.sign(bytes.fromhex(msg)).hex() == sig
    assert edsign.sign(bytes.fromhex(sk), bytes.fromhex(msg)).hex() == sig  # the test signer too


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600), st.binary(min_size=32, max_size=32))
def test_openssl_signatures_verify_on_the_firmware(msg, seed):
    k = Ed25519PrivateKey.from_private_bytes(seed)
    pub = k.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    assert edsign.verify(pub, k.sign(msg), (msg,))


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.data())
def test_a_single_flipped_bit_never_verifies(msg, data):
    sig = PRIV.sign(msg)
    where = data.draw(st.sampled_from(["msg", "sig", "pub"]))
    buf = bytearray({"msg": msg, "sig": sig, "pub": PUB}[where])
    bit = data.draw(st.integers(0, len(buf) * 8 - 1))
    buf[bit // 8] ^= 1 << (bit % 8)
    args = {"msg": msg, "sig": sig, "pub": PUB}
    args[where] = bytes(buf)
    assert not edsign.verify(args["pub"], args["sig"], (args["msg"],))


def test_release_signed_by_the_host_tool_verifies_on_the_firmware():
    raw = releases.sign(_manifest(), PRIV)
    m = asyncio.run(release.verify(raw, [(KID, PUB)]))
    assert m["version"] == (0, 2, 0) and m["files"][0][0] == "aedgate/app.mpy"


def test_cwt_cose_sign1_verifies_on_the_firmware_and_ours_on_cwt():
    pem = PRIV.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    key = COSEKey.from_pem(pem, kid=KID)
    payload = _manifest()
    theirs = COSE.new(alg_auto_inclusion=True, kid_auto_inclusion=True).encode(payload, key)
    assert cbor2.loads(theirs).tag == 18
    assert asyncio.run(release.verify(theirs, [(KID, PUB)]))["board"] == "esp32"
    ours = releases.sign(payload, PRIV)
    pub_pem = PRIV.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    assert COSE.new().decode(ours, COSEKey.from_pem(pub_pem, kid=KID)) == payload


def test_s_plus_l_refused_by_the_firmware_and_by_openssl():
    # S + L: OpenSSL refuses it as well (both check S < L); the firmware refuses it too.
    sig = PRIV.sign(b"m")
    s = int.from_bytes(sig[32:], "little") + ed25519.L
    bad = sig[:32] + s.to_bytes(32, "little")
    assert not edsign.verify(PUB, bad, (b"m",))
    from cryptography.exceptions import InvalidSignature
    with pytest.raises(InvalidSignature):
        PRIV.public_key().verify(bad, b"m")


@settings(max_examples=80, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_firmware_sha512_equals_hashlib(chunks):
    import hashlib
    from aedgate.sha512 import sha512
    h = sha512()
    for c in chunks:
        h.update(c)
    assert h.digest() == hashlib.sha512(b"".join(chunks)).digest()
