# aedgate.hmac_sha256 against the published vectors: RFC 4231 (HMAC-SHA256) and RFC 5869 (HKDF).
# Runs under CPython (pytest) and the MicroPython unix port (mprun.py).
from binascii import unhexlify

from aedgate import hmac_sha256 as mac
import hkdf


def _h(s):
    return unhexlify(s.replace(" ", ""))


def test_rfc4231_case1():
    assert mac.hmac_sha256(b"\x0b" * 20, b"Hi There") == _h(
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")


def test_rfc4231_case2_short_key():
    assert mac.hmac_sha256(b"Jefe", b"what do ya want for nothing?") == _h(
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


def test_rfc4231_case3():
    assert mac.hmac_sha256(b"\xaa" * 20, b"\xdd" * 50) == _h(
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe")


def test_rfc4231_case4():
    assert mac.hmac_sha256(bytes(range(1, 26)), b"\xcd" * 50) == _h(
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b")


def test_rfc4231_case6_key_longer_than_block():
    assert mac.hmac_sha256(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First") == _h(
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")


def test_rfc4231_case7_long_key_and_data():
    data = (b"This is a test using a larger than block-size key and a larger than block-size data."
            b" The key needs to be hashed before being used by the HMAC algorithm.")
    assert mac.hmac_sha256(b"\xaa" * 131, data) == _h(
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2")


def test_hmac_over_parts_equals_hmac_over_joined():
    parts = (b"\x84\x64MAC0", b"", memoryview(b"abc"), bytearray(b"\x40"), b"x" * 100)
    assert mac.hmac_sha256(b"k", parts) == mac.hmac_sha256(b"k", b"".join(bytes(p) for p in parts))
    assert mac.hmac_sha256(b"k" * 64, b"m") != mac.hmac_sha256(b"k" * 65, b"m")


def test_rfc5869_a1():
    okm = hkdf.hkdf_sha256(b"\x0b" * 22, bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm == _h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                     "34007208d5b887185865")
    # PRK of A.1, through the extract step alone.
    assert mac.hmac_sha256(bytes(range(13)), b"\x0b" * 22) == _h(
        "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")


def test_rfc5869_a2_long_inputs():
    okm = hkdf.hkdf_sha256(bytes(range(0x50)), bytes(range(0x60, 0xB0)), bytes(range(0xB0, 0x100)), 82)
    assert okm == _h("b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
                     "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
                     "cc30c58179ec3e87c14c01d5c1f3434f1d87")


def test_rfc5869_a3_no_salt_no_info():
    want = _h("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
              "9d201395faa4b61a96c8")
    assert hkdf.hkdf_sha256(b"\x0b" * 22, b"", b"", 42) == want
    assert hkdf.hkdf_sha256(b"\x0b" * 22, None, b"", 42) == want


def test_hkdf_length_limits():
    assert hkdf.hkdf_sha256(b"k", b"s", b"i", 0) == b""
    assert len(hkdf.hkdf_sha256(b"k", b"s", b"i", 255 * 32)) == 255 * 32
    try:
        hkdf.hkdf_sha256(b"k", b"s", b"i", 255 * 32 + 1)
        assert False, "too long accepted"
    except ValueError:
        pass


def test_equal():
    a = bytes(range(32))
    assert mac.equal(a, bytes(range(32)))
    assert mac.equal(b"", b"")
    for i in range(32):
        b = bytearray(a)
        b[i] ^= 0x80
        assert not mac.equal(a, bytes(b))
    assert not mac.equal(a, a[:31])
    assert not mac.equal(a, a + b"\x00")
    assert mac.equal(memoryview(a), bytearray(a))


def test_device_key_follows_the_protocol():
    master = bytes(range(32))
    want = hkdf.hkdf_sha256(master, b"aedgate/v1", b"device-key:cab-0001", 32)
    assert hkdf.device_key(master, "cab-0001") == want
    assert hkdf.device_key(master, b"cab-0001") == want
    assert hkdf.device_key(master, "cab-0002") != want
    assert len(want) == 32
    try:
        hkdf.device_key(b"short", "cab-0001")
        assert False, "short master key accepted"
    except ValueError:
        pass


def test_key_id_is_a_short_check_value():
    key = hkdf.device_key(bytes(32), "cab-0001")
    kid = mac.key_id(key)
    assert len(kid) == 8
    assert kid == mac.hmac_sha256(key, b"aedgate/v1 kid")[:8]
    assert kid != mac.key_id(hkdf.device_key(bytes(32), "cab-0002"))
