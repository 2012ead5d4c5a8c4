"""docs/protocol.md alone is enough to mint a token a provisioned cabinet accepts (issue 11
point 10: the default kid used to be written only in a firmware docstring, and the worked example
used kid "k1", which no cabinet set up by `aedgate provision` or `aedsim run --fleet-key` knows).

Everything minted here comes from the document's text: the HKDF parameters, the default-kid
derivation (parsed from its code block) and the worked example's values; cbor2, hmac and
`cryptography` do the work, none of our own minting code. The firmware's own config path
(gate.key_slots on a config with an empty kid, as provisioning writes it) then verifies it.
"""
import hashlib
import hmac
import re
import time
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from aedgate import token as fw_token
from aedgate.gate import key_slots

DOC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def _section(title):
    start = DOC.index("### " + title + "\n")
    end = DOC.find("\n### ", start + 1)
    return DOC[start:end if end > 0 else None]


def _documented_device_key(device_id):
    sec = _section("Key derivation (fixed)")
    salt = re.search(r'salt = b"([^"]+)"', sec).group(1).encode()
    info = re.search(r'info = b"([^"]+)" \+ device_id', sec).group(1).encode()
    length = int(re.search(r"L\s+= (\d+)", sec).group(1))
    master = bytes.fromhex(re.search(r"# ([0-9a-f]{64})", sec).group(1))
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt,
                info=info + device_id.encode()).derive(master)


def _documented_default_kid(key):
    sec = _section("Default kid")
    m = re.search(r'default_kid = HMAC-SHA256\(key = device_key, message = b"([^"]+)"\)'
                  r"\[0:(\d+)\]", sec)
    assert m, "the derivation is not written where a minter would find it"
    return hmac.new(key, m.group(1).encode(), hashlib.sha256).digest()[:int(m.group(2))]


def _mint(key, kid, device_id, now):
    protected = cbor2.dumps({1: 5})
    payload = cbor2.dumps({1: "dispatch", 3: device_id, 4: now + 300, 6: now,
                           7: bytes(range(16)), -65537: "M-DOC-1", -65538: 60})
    tag = hmac.new(key, cbor2.dumps(["MAC0", protected, b"", payload]), hashlib.sha256).digest()
    return cbor2.dumps(cbor2.CBORTag(17, [protected, {4: kid}, payload, tag]))


def test_default_kid_table_follows_the_documented_derivation():
    table = dict(re.findall(r"\| `(cab-\d+)` \| `([0-9a-f]{16})` \|", _section("Default kid")))
    assert set(table) == {"cab-0001", "cab-0002"}
    for device_id, kid_hex in table.items():
        assert _documented_default_kid(_documented_device_key(device_id)).hex() == kid_hex


def test_token_minted_from_the_document_opens_a_provisioned_cabinet():
    device_id = "cab-0001"
    key = _documented_device_key(device_id)
    # config.json as `aedgate provision` / `aedsim run --fleet-key` write it: an empty kid.
    slots = key_slots({"keys": [{"kid": "", "key": key.hex()}]})
    now = int(time.time())
    raw = _mint(key, _documented_default_kid(key), device_id, now)
    assert fw_token.verify(raw, device_id, slots, now)["mission"] == "M-DOC-1"
    # The old worked example's kid "k1" is what such a cabinet refuses.
    try:
        fw_token.verify(_mint(key, b"k1", device_id, now), device_id, slots, now)
    except fw_token.TokenError as e:
        assert e.args[0] == "unknown_kid"
    else:
        raise AssertionError("a token with kid k1 was accepted")


def test_worked_token_opens_a_provisioned_cabinet():
    sec = _section("Worked token")
    raw = bytes.fromhex(re.search(r"\| token, tag 17 \(\d+ bytes\) \| `([0-9a-f]+)` \|", sec).group(1))
    key = _documented_device_key("cab-0001")
    slots = key_slots({"keys": [{"kid": "", "key": key.hex()}]})
    iat = re.search(r"6: (\d+)", sec).group(1)
    got = fw_token.verify(raw, "cab-0001", slots, int(iat))
    assert got["mission"] == "M-2026-0001"
