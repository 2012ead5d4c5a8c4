# aedgate.release on both runtimes: COSE_Sign1 envelopes and release manifests, good and bad.
# Built here with the token tests' tiny CBOR encoder and a test-only signer (edsign.py);
# tests/host/test_release_interop.py cross-checks against cbor2, `cryptography` and `cwt`.
import hashlib

from aedgate import release
from aedgate.compat import asyncio
from aedgate.release import ReleaseError
from edsign import public_key, sign
from test_token import Raw, Tag, enc

SEED = bytes(range(32))
SEED2 = bytes(range(1, 33))
PUB = public_key(SEED)
PUB2 = public_key(SEED2)
KID = release.key_id(PUB)
KID2 = release.key_id(PUB2)
KEYS = [(KID, PUB), (KID2, PUB2)]
APP = b"print('hello from 0.2.0')\n"


def manifest(**kw):
    m = {"format": 1, "version": "0.2.0", "board": "esp32", "created": 1795000000,
         "files": [["aedgate/app.py", len(APP), hashlib.sha256(APP).digest()]]}
    for k in kw:
        if kw[k] is None:
            del m[k]
        else:
            m[k] = kw[k]
    return m


def signed(m=None, seed=SEED, kid=None, protected=None, unprotected=None, tag=True, payload=None):
    if protected is None:
        protected = {1: -8, 4: release.key_id(public_key(seed)) if kid is None else kid}
    p = protected.data if isinstance(protected, Raw) else enc(protected)
    body = enc(manifest() if m is None else m) if payload is None else payload
    sig = sign(seed, enc(["Signature1", p, b"", body]))
    msg = [p, {} if unprotected is None else unprotected, body, sig]
    return enc(Tag(18, msg) if tag else msg)


def run(raw, keys=KEYS):
    return asyncio.run(release.verify(raw, keys))


def reason(raw, keys=KEYS):
    try:
        run(raw, keys)
    except ReleaseError as e:
        return e.args[0]
    return "accepted"


def test_good_release_verifies_with_either_key_slot():
    m = run(signed())
    assert m["version"] == (0, 2, 0) and m["board"] == "esp32"
    assert m["files"][0][0] == "aedgate/app.py"
    assert run(signed(seed=SEED2))["version"] == (0, 2, 0)  # the next key, after rotation
    assert run(signed(tag=False))["format"] == 1              # tag 18 is optional


def test_tampered_payload_refused():
    raw = bytearray(signed())
    i = raw.find(b"0.2.0")
    raw[i + 2] = ord("9")  # "0.9.0": a different manifest under the same signature
    assert reason(bytes(raw)) == "bad_signature"


def test_every_flipped_bit_of_the_signature_is_refused():
    raw = signed()
    for i in range(len(raw) - 64, len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x10
        assert reason(bytes(bad)) == "bad_signature", i


def test_wrong_key_refused():
    # Signed by SEED2 but claiming SEED's kid; and a kid the cabinet does not hold.
    assert reason(signed(seed=SEED2, kid=KID)) == "bad_signature"
    assert reason(signed(seed=SEED2), keys=[(KID, PUB)]) == "unknown_kid"
    assert reason(signed(), keys=[]) == "unknown_kid"


def test_truncated_refused_at_every_length():
    raw = signed()
    for n in range(0, len(raw), 7):
        assert reason(raw[:n]) in ("malformed", "bad_signature"), n
    assert reason(raw[:-1]) == "malformed"


def test_wrong_alg_and_headers_refused():
    assert reason(signed(protected={1: 5, 4: KID})) == "bad_alg"        # HMAC, not EdDSA
    assert reason(signed(protected={1: -7, 4: KID})) == "bad_alg"       # ES256
    assert reason(signed(protected={4: KID})) == "bad_alg"
    assert reason(signed(protected={1: -8})) == "bad_header"            # no kid
    assert reason(signed(protected={1: -8, 4: KID, 2: [1]})) == "bad_header"  # crit
    assert reason(signed(unprotected={4: KID})) == "bad_header"                # kid twice
    assert reason(signed(protected={1: -8}, unprotected={1: -8})) == "bad_header"
    assert reason(signed(protected={1: -8}, unprotected={4: KID, 5: b""})) == "bad_header"
    assert reason(signed(protected={1: -8}, unprotected={4: "x"})) == "bad_header"


def test_kid_in_the_unprotected_header_accepted():
    # RFC 9052 lets kid sit in either header (`cwt` puts it in the unprotected one).
    assert run(signed(protected={1: -8}, unprotected={4: KID}))["version"] == (0, 2, 0)
    assert reason(signed(protected={1: -8}, unprotected={4: KID2})) == "bad_signature"
    assert reason(signed(protected=Raw(b"\xa1\x01"))) == "bad_header"   # torn header
    assert reason(signed(protected={1: -8, 4: "kid"})) == "bad_header"


def test_not_a_sign1_refused():
    assert reason(enc([b"", {}, b""])) == "malformed"
    assert reason(enc({1: 2})) == "malformed"
    assert reason(enc(Tag(17, [b"", {}, b"", b""]))) == "malformed"  # a Mac0 tag
    assert reason(b"\xff" * 10) == "malformed"
    assert reason(b"") == "malformed"
    assert reason(bytes(release.MAX_RELEASE_BYTES + 1)) == "too_large"


def test_unexpected_input_is_internal_not_a_crash():
    assert reason("a text, not bytes") == "internal"
    assert reason(signed(), keys=[(KID, 12345)]) == "internal"  # a broken key slot


def test_bad_signature_lengths_refused():
    raw = signed(tag=False)
    body = raw[:-66]  # drop the 64-byte signature and its 2-byte head
    assert reason(body + enc(b"\x00" * 63)) == "bad_signature"
    assert reason(body + enc(b"")) == "bad_signature"


def test_signed_but_bad_manifests_refused():
    for m in (manifest(format=2), manifest(format=None), manifest(version="1.2"),
              manifest(version="1.2.x"), manifest(version=3), manifest(board=None),
              manifest(created="today"), manifest(files=[]), manifest(extra=1),
              manifest(files=[["../boot.py", 1, bytes(32)]]),
              manifest(files=[["/boot.py", 1, bytes(32)]]),
              manifest(files=[["a//b.py", 1, bytes(32)]]),
              manifest(files=[["a.py", -1, bytes(32)]]),
              manifest(files=[["a.py", 1, bytes(31)]]),
              manifest(files=[["a.py", 1, bytes(32)], ["a.py", 2, bytes(32)]]),
              manifest(min_version="x"), manifest(mpy="6")):
        assert reason(signed(m)) == "bad_manifest", m
    assert reason(signed(payload=b"\xa1")) == "bad_manifest"  # signed garbage


def test_manifest_with_many_files_verifies():
    files = [["f%02d.mpy" % i, i, bytes(32)] for i in range(release.MAX_FILES)]
    assert len(run(signed(manifest(files=files)))["files"]) == 64
    files.append(["f64.mpy", 1, bytes(32)])
    assert reason(signed(manifest(files=files))) == "bad_manifest"


def _accept(m, board="esp32", running=(0, 1, 0), mpy=None):
    try:
        release.accept(run(signed(m)), board, running, mpy)
    except ReleaseError as e:
        return e.args[0]
    return "accepted"


def test_accept_rules():
    assert _accept(manifest()) == "accepted"
    assert _accept(manifest(), board="esp32s3") == "wrong_board"
    assert _accept(manifest(), running=(0, 2, 0)) == "not_newer"      # reinstall
    assert _accept(manifest(), running=(0, 10, 0)) == "not_newer"     # downgrade
    assert _accept(manifest(may_replace="0.10.0"), running=(0, 10, 0)) == "accepted"
    assert _accept(manifest(may_replace="0.10.0"), running=(0, 10, 1)) == "not_newer"
    assert _accept(manifest(min_version="0.1.5"), running=(0, 1, 4)) == "needs_version"
    assert _accept(manifest(min_version="0.1.5"), running=(0, 1, 5)) == "accepted"
    assert _accept(manifest(mpy=6), mpy=6) == "accepted"
    assert _accept(manifest(mpy=6), mpy=5) == "wrong_mpy"
    assert _accept(manifest(mpy=6)) == "accepted"                   # a .py runtime


def test_check_file():
    entry = run(signed())["files"][0]
    release.check_file(entry, (APP,))
    release.check_file(entry, (APP[:5], b"", APP[5:]))
    for chunks in ((APP + b"\n",), (APP[:-1],), (APP.replace(b"0.2.0", b"0.2.1"),), ()):
        try:
            release.check_file(entry, chunks)
            assert False, chunks
        except ReleaseError as e:
            assert e.args == ("bad_file", "aedgate/app.py")


def test_slots_from_config():
    cfg = {"release_keys": [{"kid": "", "key": PUB.hex()}, {"kid": "0102", "key": PUB2.hex()}]}
    assert release.slots(cfg) == [(KID, PUB), (b"\x01\x02", PUB2)]
