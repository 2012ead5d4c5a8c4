"""Token format cross-checks, both ways, between three independent implementations:
the firmware verifier (firmware/aedgate/token.py, run here under CPython), the host minting code
(host_tools/tokens.py: cbor2 + cryptography) and the `cwt` library from PyPI."""
from __future__ import annotations

import time

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cwt import COSE, CWT, COSEKey

from aedgate import token  # firmware, on sys.path via tests/conftest.py
from aedgate import hmac_sha256 as mac
import hkdf  # tests/firmware/hkdf.py: the derivation on the firmware's HMAC
from host_tools import fleetkeys, tokens

MASTER = bytes(range(32))
DEV = "cab-0001"


def _hkdf(master: bytes, device_id: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"aedgate/v1",
                info=b"device-key:" + device_id.encode()).derive(master)


def _slots(device_id: str = DEV, master: bytes = MASTER) -> list[tuple[bytes, bytes]]:
    key = fleetkeys.derive_device_key(master, device_id)
    return [(fleetkeys.key_id(key), key)]


def _claims(now: int, over: dict[int, object] | None = None) -> dict[int, object]:
    c: dict[int, object] = {1: "dispatch", 3: DEV, 4: now + 120, 6: now, 7: b"\x11" * 16,
                            -65537: "M-77", -65538: 90}
    c.update(over or {})
    return c


def _cwt_key(device_id: str = DEV, alg: str = "HS256") -> tuple[COSEKey, bytes, bytes]:
    key = fleetkeys.derive_device_key(MASTER, device_id)
    kid = fleetkeys.key_id(key)
    return COSEKey.from_symmetric_key(key, alg=alg, kid=kid), key, kid


@pytest.mark.parametrize("device_id", ["cab-0001", "cab-0002", "A", "x" * 64, "Z_9-z"])
def test_device_key_firmware_equals_cryptography(device_id: str) -> None:
    want = _hkdf(MASTER, device_id)
    assert hkdf.device_key(MASTER, device_id) == want
    assert fleetkeys.derive_device_key(MASTER, device_id) == want
    assert mac.key_id(want) == fleetkeys.key_id(want)


def test_device_keys_of_the_protocol_document() -> None:
    # docs/protocol.md, "Key derivation (fixed)", worked example.
    assert hkdf.device_key(MASTER, "cab-0001").hex() == \
        "fe3568814b3a44a6621ea8aec9f8d607b814996407006d6859387615960f2199"
    assert hkdf.device_key(MASTER, "cab-0002").hex() == \
        "b9796159167ad9e6375cb9c9e25d5c1335323c68200921d10f4b269cb54c450d"


def test_worked_token_of_the_protocol_document() -> None:
    raw = bytes.fromhex(
        "d18443a10105a10448d75fb396cb3d9d13584ba70168646973706174636803686361622d30303031041a6955ba2c061a"
        "6955b90007500102030405060708090a0b0c0d0e0f103a000100006b4d2d323032362d303030313a0001"
        "000118b45820e79d5eaa0d86dbd75dd43ef5ccb3c017e8daedc5fd3feea5565fe7dd70472752")
    key = hkdf.device_key(MASTER, DEV)
    got = token.verify(raw, DEV, [(mac.key_id(key), key)], 1767225600)  # the default kid
    assert got["mission"] == "M-2026-0001" and got["window_s"] == 180
    assert got["cti"] == bytes(range(1, 17))
    # Our minting code produces exactly these bytes from the same inputs.
    assert tokens.mint_with_device_key(key, DEV, "M-2026-0001", 180, ttl_s=300, now=1767225600,
                                       kid=mac.key_id(key), kid_in_protected=False,
                                       cti=bytes(range(1, 17))) == raw
    assert tokens.inspect(raw, MASTER, now=1767225600)["verdict"] == "valid"
    cwt_key = COSEKey.from_symmetric_key(key, alg="HS256", kid=mac.key_id(key))
    assert cbor2.loads(COSE.new().decode(raw, cwt_key))[-65537] == "M-2026-0001"


@pytest.mark.parametrize("kid_where", ["protected", "unprotected"])
def test_cwt_cose_mac0_accepted_by_firmware(kid_where: str) -> None:
    now = int(time.time())
    ckey, key, kid = _cwt_key()
    payload = cbor2.dumps(_claims(now))
    if kid_where == "protected":
        raw = COSE.new().encode_and_mac(payload, ckey, protected={1: 5, 4: kid})
    else:
        raw = COSE.new().encode_and_mac(payload, ckey, protected={1: 5}, unprotected={4: kid})
    assert raw[0] == 0xD1  # tag 17
    got = token.verify(raw, DEV, [(kid, key)], now)
    assert (got["mission"], got["window_s"], got["cti"]) == ("M-77", 90, b"\x11" * 16)
    # Untagged: the same array without tag 17.
    tagged = COSE.new().encode_and_mac(payload, ckey, protected={1: 5, 4: kid}, out="cbor2/CBORTag")
    untagged = cbor2.dumps(tagged.value)
    assert untagged[0] == 0x84
    assert token.verify(untagged, DEV, [(kid, key)], now)["mission"] == "M-77"


def test_cwt_tag61_accepted_by_firmware() -> None:
    now = int(time.time())
    ckey, key, kid = _cwt_key()
    raw = CWT.new().encode_and_mac(_claims(now), ckey, tagged=True)
    assert raw[:3] == b"\xd8\x3d\xd1"  # 61(17([...]))
    got = token.verify(raw, DEV, [(kid, key)], now)
    assert got["mission"] == "M-77"
    assert tokens.inspect(raw, MASTER, now=now)["verdict"] == "valid"


def test_cwt_tokens_that_must_fail() -> None:
    now = int(time.time())
    ckey, key, kid = _cwt_key()
    slots = [(kid, key)]
    # Truncated or other HMACs: the token may not choose the algorithm.
    for name, alg in (("HMAC 256/64", 4), ("HS384", 6), ("HS512", 7)):
        weak, _, _ = _cwt_key(alg=name)
        raw = COSE.new().encode_and_mac(cbor2.dumps(_claims(now)), weak, protected={1: alg, 4: kid})
        with pytest.raises(token.TokenError) as e:
            token.verify(raw, DEV, slots, now)
        assert e.value.args[0] in ("bad_alg", "malformed"), name  # malformed: tag not 32 bytes
    # Other cabinet's key and aud.
    other, _, _ = _cwt_key("cab-0002")
    raw = COSE.new().encode_and_mac(cbor2.dumps(_claims(now)), other, protected={1: 5, 4: kid})
    with pytest.raises(token.TokenError, match="bad_mac"):
        token.verify(raw, DEV, slots, now)
    raw = COSE.new().encode_and_mac(cbor2.dumps(_claims(now, {3: "cab-0002"})), ckey,
                                    protected={1: 5, 4: kid})
    with pytest.raises(token.TokenError, match="wrong_aud"):
        token.verify(raw, DEV, slots, now)
    # Expired.
    raw = COSE.new().encode_and_mac(cbor2.dumps(_claims(now - 600)), ckey, protected={1: 5, 4: kid})
    with pytest.raises(token.TokenError, match="expired"):
        token.verify(raw, DEV, slots, now)


@pytest.mark.parametrize("tagged,cwt_tag", [(True, False), (False, False), (True, True)])
def test_our_tokens_verify_with_cwt(tagged: bool, cwt_tag: bool) -> None:
    now = int(time.time())
    raw = tokens.mint(MASTER, DEV, "M-9", 60, now=now, tagged=tagged, cwt_tag=cwt_tag)
    ckey, key, kid = _cwt_key()
    # And with the firmware, for good measure.
    assert token.verify(raw, DEV, [(kid, key)], now)["mission"] == "M-9"
    if cwt_tag:
        claims = CWT.new().decode(raw, ckey)
        assert claims[-65537] == "M-9" and claims[3] == DEV
        return
    obj = cbor2.loads(raw)
    if not tagged:
        assert isinstance(obj, list)
        obj = cbor2.CBORTag(17, obj)  # cwt only reads tagged messages
    claims = cbor2.loads(COSE.new().decode(obj, ckey))
    assert claims == {1: "dispatch", 3: DEV, 4: now + 120, 6: now, 7: claims[7],
                      -65537: "M-9", -65538: 60}
    assert len(claims[7]) == 16


def test_our_tampered_token_fails_with_cwt() -> None:
    raw = bytearray(tokens.mint(MASTER, DEV, "M-9", 60))
    raw[-1] ^= 1
    ckey, _, _ = _cwt_key()
    with pytest.raises(Exception):
        COSE.new().decode(bytes(raw), ckey)


def test_mint_refuses_what_devices_refuse() -> None:
    for kw in ({"mission": ""}, {"mission": "m" * 65}, {"window_s": 0}, {"ttl_s": 901},
               {"device_id": "cab/1"}):
        args = {"master_key": MASTER, "device_id": DEV, "mission": "M", "window_s": 30}
        args.update(kw)
        with pytest.raises(ValueError):
            tokens.mint(**args)  # type: ignore[arg-type]


def test_inspect_agrees_with_firmware_on_strictness() -> None:
    now = 1800000000
    raw = tokens.mint(MASTER, DEV, "M-9", 60, now=now)
    assert tokens.inspect(raw, MASTER, now=now)["verdict"] == "valid"
    for bad in (raw + b"\x00", b"\xd1\x98\x04" + raw[2:]):
        with pytest.raises(token.TokenError, match="malformed"):
            token.verify(bad, DEV, _slots(), now)
        report = tokens.inspect(bad, MASTER, now=now)
        assert report["verdict"] == "invalid"
        assert any(p.startswith("malformed") for p in report["problems"]), report["problems"]
