"""Hypothesis against the firmware verifier (run under CPython): random bytes, mutated valid
tokens and structured-but-wrong CBOR never raise anything but TokenError, never hit the
"internal" safety net, and never verify. 12,000 generated inputs in all.

The structured cases carry a correct MAC, so the fuzzing reaches the claims checks that only
authentic bytes get to."""
from __future__ import annotations

from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aedgate import token  # firmware, on sys.path via tests/conftest.py
from host_tools import fleetkeys, tokens

DEV = "cab-0001"
MASTER = bytes(range(32))
KEY = fleetkeys.derive_device_key(MASTER, DEV)
KID = fleetkeys.key_id(KEY)
SLOTS = [(KID, KEY), (b"next", bytes(32))]
NOW = 1800000000
VALID = tokens.mint(MASTER, DEV, "M-1", 60, now=NOW)
VALID_61 = b"\xd8\x3d" + VALID  # the same token inside CWT tag 61
# The same message in each wrapping the profile accepts (tags 61 and 17 are optional).
EQUIVALENT = {VALID, VALID[1:], VALID_61, b"\xd8\x3d" + VALID[1:]}



def fuzz(max_examples: int) -> settings:
    # Explicit count, no deadline (CI machines vary), same inputs on every run.
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _rejected(raw: Any) -> str:
    try:
        got = token.verify(raw, DEV, SLOTS, NOW)
    except token.TokenError as e:
        assert e.args[0] in token.REASONS and e.args[0] != "internal", e.args
        assert isinstance(e.args[1], dict)
        return e.args[0]
    raise AssertionError("verified: %r -> %r" % (bytes(raw).hex(), got))


def test_valid_tokens_do_verify() -> None:
    assert token.verify(VALID, DEV, SLOTS, NOW)["mission"] == "M-1"
    assert token.verify(VALID_61, DEV, SLOTS, NOW)["mission"] == "M-1"


@fuzz(3000)
@given(st.binary(max_size=600))
def test_random_bytes(raw: bytes) -> None:
    _rejected(raw)


@fuzz(3000)
@given(st.sampled_from([VALID, VALID_61]),
       st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "dup"]),
                          st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_valid_tokens(base: bytes, edits: list[tuple[str, int, int]]) -> None:
    raw = bytearray(base)
    for op, where, value in edits:
        i = where % (len(raw) + 1)
        if op == "flip" and i < len(raw):
            raw[i] ^= 1 << (value % 8)
        elif op == "set" and i < len(raw):
            raw[i] = value
        elif op == "insert":
            raw[i:i] = bytes((value,))
        elif op == "delete" and i < len(raw):
            del raw[i]
        elif op == "dup":
            raw[i:i] = raw[i:i + value % 16]
    if bytes(raw) in EQUIVALENT:
        return  # the edits cancelled out, or only removed an optional tag
    # Re-encodings that cbor2 reads as the same valid token differ in bytes the MAC covers,
    # or are refused by the strict decoder; either way, not accepted.
    _rejected(bytes(raw))


# Any CBOR value cbor2 can write, including the types the profile forbids.
_leaf = st.one_of(st.integers(-(2 ** 70), 2 ** 70), st.binary(max_size=40), st.text(max_size=20),
                  st.booleans(), st.none(), st.floats(allow_nan=True),
                  st.builds(cbor2.CBORTag, st.sampled_from([0, 1, 2, 3, 17, 24, 61, 96, 97]),
                            st.integers(0, 2 ** 40)))
_any = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=5),
    st.dictionaries(st.one_of(st.integers(-70000, 70000), st.text(max_size=5)), inner, max_size=5)),
    max_leaves=12)

_GOOD_CLAIMS = {1: "dispatch", 3: DEV, 4: NOW + 120, 6: NOW, 7: b"\x01" * 16, -65537: "M-1",
                -65538: 60}
# For each claim, values that must be refused where they stand.
_BAD_VALUE = {
    1: st.one_of(st.text(max_size=12).filter(lambda s: s != "dispatch"), st.binary(max_size=8),
                 st.integers(), st.none()),
    3: st.one_of(st.text(max_size=66).filter(lambda s: s != DEV), st.just([DEV]),
                 st.just(DEV + "\x00"), st.just(DEV.encode())),
    # Each value is wrong on its own, whatever else is changed (so no exp/iat pair that
    # happens to fit together).
    4: st.one_of(st.integers(-(2 ** 63), NOW), st.floats(), st.booleans(), st.text(max_size=10),
                 st.builds(cbor2.CBORTag, st.just(2), st.binary(min_size=1, max_size=9))),
    6: st.one_of(st.floats(), st.booleans(), st.text(max_size=10), st.none(),
                 st.builds(cbor2.CBORTag, st.just(3), st.binary(min_size=1, max_size=9))),
    7: st.one_of(st.binary(max_size=7), st.binary(min_size=33, max_size=60), st.text(max_size=10),
                 st.integers()),
    -65537: st.one_of(st.just(""), st.text(min_size=65, max_size=80), st.binary(max_size=10),
                      st.integers()),
    -65538: st.one_of(st.integers(-(2 ** 64), 0), st.floats(), st.booleans(), st.text(max_size=4)),
}


@st.composite
def _wrong_claims(draw: st.DrawFn) -> Any:
    claims = dict(_GOOD_CLAIMS)
    for key in draw(st.lists(st.sampled_from(sorted(_BAD_VALUE)), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()):
            del claims[key]
        else:
            claims[key] = draw(_BAD_VALUE[key])
    if draw(st.booleans()):
        claims.update(draw(st.dictionaries(st.integers(-70000, 70000).filter(
            lambda k: k not in _GOOD_CLAIMS), _any, max_size=3)))
    if draw(st.integers(0, 9)) == 0:
        claims[-65539] = "aed_checked"  # a service claim never rides on an unlock token
    return claims


def _mac0(protected: bytes, unprotected: Any, payload: bytes, wrap: int) -> bytes:
    msg: Any = [protected, unprotected, payload, tokens.compute_tag(KEY, protected, payload)]
    if wrap >= 1:
        msg = cbor2.CBORTag(17, msg)
    if wrap == 2:
        msg = cbor2.CBORTag(61, msg)
    return cbor2.dumps(msg)


@fuzz(3000)
@given(_wrong_claims(), st.integers(0, 2), st.booleans())
def test_authentic_but_wrong_claims(claims: Any, wrap: int, kid_protected: bool) -> None:
    protected = cbor2.dumps({1: 5, 4: KID} if kid_protected else {1: 5})
    unprotected = {} if kid_protected else {4: KID}
    _rejected(_mac0(protected, unprotected, cbor2.dumps(claims), wrap))


@fuzz(3000)
@given(st.one_of(_any, st.dictionaries(st.integers(-3, 40), _any, max_size=4)),
       st.one_of(_any, st.dictionaries(st.integers(-3, 40), _any, max_size=4)),
       st.one_of(_any, st.just(_GOOD_CLAIMS)),
       st.integers(0, 2), st.sampled_from(["mac", "raw", "shape"]))
def test_structured_wrong_cbor(header: Any, unprotected: Any, claims: Any, wrap: int, how: str) -> None:
    if how == "shape":
        # Arbitrary CBOR where the COSE_Mac0 array should be.
        _rejected(cbor2.dumps(cbor2.CBORTag(17, header) if wrap else header))
        return
    protected = header if how == "raw" and isinstance(header, bytes) else cbor2.dumps(header)
    if not isinstance(unprotected, dict):
        unprotected = {}
    payload = cbor2.dumps(claims)
    raw = _mac0(protected, unprotected, payload, wrap)
    if len(raw) > 512:
        assert _rejected(raw) == "too_large"
        return
    try:
        got = token.verify(raw, DEV, SLOTS, NOW)
    except token.TokenError as e:
        assert e.args[0] in token.REASONS and e.args[0] != "internal", e.args
        return
    # Accepted only when it really is a profile token: alg 5, nothing but kid around it.
    hdr = cbor2.loads(protected)
    assert hdr.get(1) == 5 and type(hdr[1]) is int and set(hdr) <= {1, 4}, (hdr, got)
    assert set(unprotected) <= {4} and claims == _GOOD_CLAIMS, (unprotected, claims)
