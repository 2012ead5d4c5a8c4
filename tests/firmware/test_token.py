# aedgate.token.verify and aedgate.cbor against valid and hostile tokens (the threats in
# docs/security.md). Tokens are built here with a tiny CBOR encoder so the file runs unchanged under
# CPython and the MicroPython unix port; tests/host/ cross-checks against cbor2 and `cwt`.
import struct

from aedgate import cbor, token
from aedgate import hmac_sha256 as mac
import hkdf
from aedgate.token import TokenError

MASTER = bytes(range(32))
DEV = "cab-0001"
KEY = hkdf.device_key(MASTER, DEV)
KID = mac.key_id(KEY)
NEXT_KEY = hkdf.hkdf_sha256(b"next fleet key", b"aedgate/v1", b"device-key:" + DEV.encode(), 32)
NEXT_KID = b"next"
SLOTS = [(KID, KEY), (NEXT_KID, NEXT_KEY)]
NOW = 1800000000


class Tag:
    def __init__(self, tag, value):
        self.tag, self.value = tag, value


class Raw:
    """Bytes spliced into the encoding as they are."""

    def __init__(self, data):
        self.data = data


class Pairs:
    """A map given as (key, value) pairs, so duplicate keys can be written."""

    def __init__(self, pairs):
        self.pairs = pairs


def _head(major, n):
    if n < 24:
        return bytes((major << 5 | n,))
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes((major << 5 | info,)) + n.to_bytes(size, "big")
    raise ValueError("too big")


def enc(v):
    if isinstance(v, Raw):
        return v.data
    if v is True:
        return b"\xf5"
    if v is False:
        return b"\xf4"
    if v is None:
        return b"\xf6"
    if isinstance(v, float):
        return b"\xfb" + struct.pack(">d", v)
    if isinstance(v, int):
        return _head(0, v) if v >= 0 else _head(1, -1 - v)
    if isinstance(v, (bytes, bytearray)):
        return _head(2, len(v)) + bytes(v)
    if isinstance(v, str):
        b = v.encode()
        return _head(3, len(b)) + b
    if isinstance(v, (list, tuple)):
        return _head(4, len(v)) + b"".join(enc(x) for x in v)
    if isinstance(v, dict):
        v = Pairs(list(v.items()))
    if isinstance(v, Pairs):
        return _head(5, len(v.pairs)) + b"".join(enc(k) + enc(x) for k, x in v.pairs)
    if isinstance(v, Tag):
        return _head(6, v.tag) + enc(v.value)
    raise TypeError("cannot encode %r" % (v,))


def claims(**kw):
    c = {1: "dispatch", 3: DEV, 4: NOW + 120, 6: NOW, 7: b"\x5a" * 16, -65537: "M-2291",
         -65538: 120}
    names = {"iss": 1, "aud": 3, "exp": 4, "nbf": 5, "iat": 6, "cti": 7, "mission": -65537,
             "window": -65538}
    for name, value in kw.items():
        if value is _DROP:
            del c[names[name]]
        else:
            c[names[name]] = value
    return c


_DROP = object()


def make(payload=None, protected=None, unprotected=None, key=KEY, tag17=True, cwt=False, mac_tag=None):
    if protected is None:
        protected = {1: 5, 4: KID}
    p = protected.data if isinstance(protected, Raw) else (enc(protected) if protected != {} else b"")
    body = enc(claims() if payload is None else payload)
    if mac_tag is None:
        mac_tag = mac.hmac_sha256(key, enc(["MAC0", p, b"", body]))
    msg = [p, {} if unprotected is None else unprotected, body, mac_tag]
    if tag17:
        msg = Tag(17, msg)
    if cwt:
        msg = Tag(61, msg)
    return enc(msg)


def reason(raw, now=NOW, **kw):
    try:
        token.verify(raw, DEV, SLOTS, now, **kw)
    except TokenError as e:
        assert e.args[0] in token.REASONS and e.args[0] != "internal", e.args
        assert isinstance(e.args[1], dict)
        return e.args[0]
    return None


def info(raw, now=NOW, **kw):
    try:
        token.verify(raw, DEV, SLOTS, now, **kw)
    except TokenError as e:
        return e.args[1]
    assert False, "accepted"


def test_valid_token_accepted_in_every_wrapping():
    for raw in (make(), make(tag17=False), make(cwt=True), make(tag17=False, cwt=True),
                make(protected={1: 5}, unprotected={4: KID})):
        got = token.verify(raw, DEV, SLOTS, NOW)
        assert got == {"kind": "unlock", "mission": "M-2291", "cti": b"\x5a" * 16,
                       "exp": NOW + 120, "iat": NOW, "window_s": 120, "kid": KID,
                       "action": None, "value": None, "floor": None}, got


def test_next_key_slot_and_bytearray_input():
    raw = make(protected={1: 5, 4: NEXT_KID}, key=NEXT_KEY)
    assert token.verify(bytearray(raw), DEV, SLOTS, NOW)["kid"] == NEXT_KID
    assert token.verify(memoryview(raw), DEV, SLOTS, NOW)["mission"] == "M-2291"
    # Right kid, other slot's key: refused.
    assert reason(make(protected={1: 5, 4: NEXT_KID}, key=KEY)) == "bad_mac"


def test_every_single_bit_flip_rejected():
    raw = make()
    for i in range(len(raw)):
        for bit in range(8):
            b = bytearray(raw)
            b[i] ^= 1 << bit
            assert reason(bytes(b)) is not None, (i, bit)


def test_every_truncation_rejected():
    raw = make(cwt=True)
    for n in range(len(raw)):
        assert reason(raw[:n]) is not None, n


def test_trailing_bytes_rejected():
    raw = make()
    for extra in (b"\x00", b"\xf6", b"\x40", raw):
        assert reason(raw + extra) == "malformed"


def test_oversized_inputs_rejected_before_allocating():
    for n in (513, 1024, 64 * 1024, 1024 * 1024):
        blob = b"\x9f" + b"\x00" * (n - 1)
        assert reason(blob) == "too_large", n
    assert reason(make() + b"\x00" * (513 - len(make()))) == "too_large"
    try:
        import gc
        alloc = gc.mem_alloc  # MicroPython only
    except (ImportError, AttributeError):
        return
    big = b"\x5a\x00\x10\x00\x00" + bytes(1024 * 1024)  # a 1 MB byte string, claimed length 1 MB
    gc.collect()
    gc.disable()
    try:
        before = alloc()
        assert reason(big) == "too_large"
        assert alloc() - before < 1024
    finally:
        gc.enable()


def test_deep_nesting_rejected_without_crash():
    for opener in (b"\x81", b"\xa1\x01"):
        deep = opener * 10000 + b"\x00"
        try:
            cbor.decode(deep)
            assert False, "accepted"
        except cbor.CBORError as e:
            assert e.args[0] == "too deep"
        assert reason(deep) == "too_large"
        assert reason(opener * 200 + b"\x00") == "malformed"
    # Nesting inside the MACed payload: authentic but not the profile.
    assert reason(make(payload=Raw(b"\x81" * 300 + b"\x00"))) == "bad_claims"


def test_alg_pinned():
    assert reason(make(protected={4: KID})) == "bad_alg"
    # The protected header must be a non-empty map: empty bstr, empty map, not CBOR, not a map.
    for p in ({}, Raw(b"\xa0"), Raw(b"\xa1\x01"), Raw(b"\x05"), Raw(b"\x81\x05")):
        assert reason(make(protected=p)) == "bad_header"
    for alg in (0, 4, 6, 7, -7, -8, 1, "HS256", b"\x05", 5.0, True, -5, 261):
        assert reason(make(protected={1: alg, 4: KID})) == "bad_alg", alg
    assert reason(make(protected={4: KID}, unprotected={1: 5})) == "bad_alg"
    assert reason(make(unprotected={1: 5})) == "bad_header"


def test_kid_selects_a_slot():
    assert reason(make(protected={1: 5, 4: b"other"})) == "unknown_kid"
    assert reason(make(protected={1: 5}, unprotected={4: b""})) == "unknown_kid"
    # No kid at all: the current slot (the first) is used.
    assert reason(make(protected={1: 5})) is None
    assert reason(make(protected={1: 5}, key=NEXT_KEY)) == "bad_mac"
    try:
        token.verify(make(), DEV, [], NOW)
        assert False, "accepted with no key slots"
    except TokenError as e:
        assert e.args[0] == "unknown_kid"
    for bad in ("kid", 7, [KID], {1: KID}):
        assert reason(make(protected={1: 5, 4: bad})) in ("bad_header", "malformed"), bad
        assert reason(make(protected={1: 5}, unprotected={4: bad})) in ("bad_header", "malformed"), bad
    # kid in both buckets is ambiguous.
    assert reason(make(protected={1: 5, 4: KID}, unprotected={4: KID})) == "bad_header"


def test_extra_header_parameters_rejected():
    for extra in ({5: b"iv"}, {33: b"x"}, {"x": 1}, {3: 0}, {2: 1}):
        u = {4: KID}
        u.update(extra)
        assert reason(make(protected={1: 5}, unprotected=u)) == "bad_header", extra
        p = {1: 5, 4: KID}
        p.update(extra)
        assert reason(make(protected=p)) == "bad_header", extra


def test_mac_checks():
    assert reason(make(key=hkdf.device_key(MASTER, "cab-0002"))) == "bad_mac"
    assert reason(make(mac_tag=b"\x00" * 32)) == "bad_mac"
    good = mac.hmac_sha256(KEY, enc(["MAC0", enc({1: 5, 4: KID}), b"", enc(claims())]))
    assert reason(make(mac_tag=good[:16])) == "malformed"  # tag must be 32 bytes
    assert reason(make(mac_tag=good + b"\x00")) == "malformed"
    assert info(make(mac_tag=b"\x00" * 32)) == {}  # nothing unauthenticated is echoed
    assert reason(make(mac_tag=good)) is None


def test_audience_and_issuer():
    for aud in ("cab-0002", DEV + "\x00", DEV.upper(), "", " " + DEV):
        assert reason(make(claims(aud=aud))) == "wrong_aud", aud
    for aud in ([DEV], DEV.encode(), _DROP, 1):  # missing or of the wrong type
        assert reason(make(claims(aud=aud))) == "bad_claims", aud
    for iss in ("Dispatch", "dispatch\x00", ""):
        assert reason(make(claims(iss=iss))) == "wrong_iss", iss
    for iss in (b"dispatch", _DROP, ["dispatch"]):
        assert reason(make(claims(iss=iss))) == "bad_claims", iss
    # Authenticated values are echoed; iat only once iss and aud passed.
    assert info(make(claims(aud="cab-0002"))) == {"cti": b"\x5a" * 16, "mission": "M-2291"}
    raw = make(claims(iss="region-7"))
    assert reason(raw, issuer="region-7") is None


def test_time_claims_must_be_plain_integers():
    for name in ("exp", "iat"):
        for bad in (float(NOW + 60), True, False, str(NOW + 60), Tag(2, b"\x6b\x49\xd2\x00"),
                    Tag(1, NOW + 60), None, _DROP, [NOW]):
            assert reason(make(claims(**{name: bad}))) == "bad_claims", (name, bad)
    assert reason(make(claims(nbf=float(NOW)))) == "bad_claims"


def test_duplicate_claim_keys_rejected():
    c = list(claims().items()) + [(3, "cab-0002")]
    assert reason(make(Pairs(c))) == "bad_claims"
    c = list(claims().items()) + [(4, NOW + 100)]
    assert reason(make(Pairs(c))) == "bad_claims"
    assert reason(make(protected=Pairs([(1, 5), (4, KID), (1, 5)]))) == "bad_header"
    assert reason(make(unprotected=Pairs([(4, KID), (4, KID)]), protected={1: 5})) == "malformed"


def test_window_is_clamped():
    assert token.verify(make(claims(window=1)), DEV, SLOTS, NOW)["window_s"] == 1
    assert token.verify(make(claims(window=5)), DEV, SLOTS, NOW, min_window_s=10)["window_s"] == 10
    assert token.verify(make(claims(window=2 ** 40)), DEV, SLOTS, NOW)["window_s"] == 300
    assert token.verify(make(claims(window=2 ** 64 - 1)), DEV, SLOTS, NOW)["window_s"] == 300
    assert token.verify(make(claims(window=900)), DEV, SLOTS, NOW, max_window_s=600)["window_s"] == 600
    for bad in (0, -1, -(2 ** 40), "60", 60.0, True, _DROP):
        assert reason(make(claims(window=bad))) == "bad_claims", bad


def test_expiry_and_not_before():
    raw = make()
    assert reason(raw, now=NOW + 119) is None
    assert reason(raw, now=NOW + 120) == "expired"
    assert reason(raw, now=NOW + 10 ** 6) == "expired"
    # Expired but authentic: iat is handed back for the time floor.
    assert info(raw, now=NOW + 120) == {"cti": b"\x5a" * 16, "mission": "M-2291", "iat": NOW}
    # A device that lost its clock has only an old floor: a fresh token must still work.
    assert reason(raw, now=NOW - 30 * 86400) is None
    assert reason(make(claims(nbf=NOW))) is None
    assert reason(make(claims(nbf=NOW)), now=NOW - 86400) is None
    assert reason(make(claims(nbf=NOW + 61))) == "not_yet_valid"
    assert reason(make(claims(nbf=NOW + 600, exp=NOW + 900))) == "not_yet_valid"
    # iat in the future is refused only by a caller that trusts its clock.
    ahead = make(claims(iat=NOW + 100, exp=NOW + 200))
    assert reason(ahead) is None
    assert reason(ahead, max_future_s=60) == "not_yet_valid"
    assert reason(ahead, max_future_s=120) is None


def test_lifetime_bounded():
    assert reason(make(claims(exp=NOW + 900))) is None
    assert reason(make(claims(exp=NOW + 901))) == "bad_claims"
    assert reason(make(claims(exp=NOW - 1, iat=NOW))) == "bad_claims"
    assert reason(make(claims(exp=NOW + 7200)), max_ttl_s=7200) is None
    # Times the replay store and the time floor could not record are refused, not crashed on.
    assert reason(make(claims(iat=2 ** 63 - 10, exp=2 ** 63 + 10))) == "bad_claims"
    assert reason(make(claims(iat=2 ** 63 - 100, exp=2 ** 63 - 1))) is None
    assert reason(make(claims(iat=-10, exp=100))) == "bad_claims"


def test_command_kinds_kept_apart():
    unlock = make()
    assert reason(unlock, kind="service") == "bad_claims"
    assert reason(unlock, kind="time") == "bad_claims"
    assert reason(unlock, kind="nonsense") == "bad_claims"
    service = make(Pairs(list(claims(window=_DROP).items()) + [(-65539, "aed_checked")]))
    got = token.verify(service, DEV, SLOTS, NOW, kind="service")
    assert got["kind"] == "service" and got["action"] == "aed_checked" and got["window_s"] is None
    assert reason(service) == "bad_claims"  # a service token never unlocks
    c = claims(window=_DROP)
    c[-65539] = "set_pads_expiry"
    c[-65540] = "2027-01-31"
    got = token.verify(make(c), DEV, SLOTS, NOW, kind="service")
    assert got["value"] == "2027-01-31" and got["mission"] == "M-2291"
    t = claims(window=_DROP, mission=_DROP)
    assert token.verify(make(t), DEV, SLOTS, NOW, kind="time")["iat"] == NOW
    assert reason(make(t)) == "bad_claims"
    assert reason(make(t), kind="service") == "bad_claims"
    c = claims()
    c[-65539] = "aed_checked"
    assert reason(make(c)) == "bad_claims"  # unlock claims plus an action: refused


def test_cti_and_mission_shapes():
    for cti in (b"\x01" * 8, b"\x01" * 32):
        assert reason(make(claims(cti=cti))) is None
    for cti in (b"\x01" * 7, b"\x01" * 33, "0123456789", 12345678, _DROP):
        assert reason(make(claims(cti=cti))) == "bad_claims", cti
    assert reason(make(claims(mission="m" * 64))) is None
    assert token.verify(make(claims(mission="Einsatz-Ü1")), DEV, SLOTS, NOW)["mission"] == "Einsatz-Ü1"
    for m in ("", "m" * 65, b"M-1", 7, _DROP):
        assert reason(make(claims(mission=m))) == "bad_claims", m
    # Invalid UTF-8 (a surrogate, an overlong NUL) in the MACed payload.
    for bad in (b"\x63\xed\xa0\x80", b"\x62\xc0\x80", b"\x64\xf4\x90\x80\x80", b"\x61\xff"):
        c = Pairs(list(claims(mission=_DROP).items()) + [(-65537, Raw(bad))])
        assert reason(make(c)) == "bad_claims", bad


def test_outer_structure():
    assert reason(b"") == "malformed"
    for bad in ("text", None, 12, [make()]):
        assert reason(bad) == "malformed"
    raw = make(tag17=False)
    assert raw[0] == 0x84
    assert reason(b"\x98\x04" + raw[1:]) == "malformed"  # non-shortest array head
    assert reason(b"\x9f" + raw[1:] + b"\xff") == "malformed"  # indefinite array
    assert reason(b"\xd2" + raw) == "malformed"  # tag 18 (COSE_Sign1)
    assert reason(b"\xd8\x11" + raw) == "malformed"  # tag 17, non-shortest
    assert reason(b"\xd9\x00\x3d\xd1" + raw) == "malformed"  # tag 61, non-shortest
    assert reason(b"\xd1\xd1" + raw) == "malformed"
    assert reason(b"\xd8\x3d\xd8\x3d\xd1" + raw) == "malformed"
    assert reason(enc([b"", {}, b""])) == "malformed"
    assert reason(enc(["", {}, b"", b""])) == "malformed"
    assert reason(enc([b"", [], b"", b""])) == "malformed"


def test_cbor_decoder_strictness():
    assert cbor.decode(b"\x18\x18") == 24
    assert cbor.decode(b"\x3a\x00\x01\x00\x00") == -65537
    assert cbor.decode(b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff") == 2 ** 64 - 1
    assert cbor.decode(b"\xa2\x01\x61a\x61b\x40") == {1: "a", "b": b""}
    for other in (b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xf8\x20", b"\xf9\x00\x00", b"\xfa" + bytes(4),
                  b"\xfb" + bytes(8)):
        assert cbor.decode(other) is cbor.OTHER
    assert cbor.decode(b"\x82\xf5\x01") == [cbor.OTHER, 1]
    for bad in (b"\x18\x17", b"\x19\x00\xff", b"\x1a\x00\x00\xff\xff", b"\x1b" + bytes(4) + b"\xff" * 4,
                b"\x5f\xff", b"\x7f\xff", b"\xbf\xff", b"\x1c", b"\xf8\x1f", b"\xf9\x00", b"\xfb" + bytes(7),
                b"\xff", b"\xfc", b"\xa1\xf6\x00", b"\xc2\x40",
                b"\xa2\x01\x00\x01\x01", b"\xa1\x40\x00", b"\xa1\x80\x00", b"\x5a\xff\xff\xff\xff",
                b"\x9a\xff\xff\xff\xff", b"\x91" + b"\x00" * 17, b"\x00\x00", b""):
        try:
            cbor.decode(bad)
            assert False, bad
        except cbor.CBORError:
            pass
    try:
        cbor.decode(b"\x81\x81\x00", 1)
        assert False
    except cbor.CBORError as e:
        assert e.args[0] == "too deep"
