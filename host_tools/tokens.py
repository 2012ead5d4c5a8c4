"""Mission tokens on the host side: minting (what dispatch does) and inspecting (what a person
debugging a rejected unlock needs).

A token is a COSE_Mac0 (RFC 9052, HMAC 256/256) over CWT claims (RFC 8392), the profile fixed in
docs/protocol.md. Built with cbor2 and cryptography only; the firmware's verifier
(firmware/aedgate/token.py) is a separate implementation and the tests check one against the
other and both against the independent `cwt` library.

    >>> raw = mint(master_key, "cab-0001", "M-2291", window_s=120)
    >>> inspect(raw, master_key)["verdict"]
    'valid'
"""
from __future__ import annotations

import datetime as _dt
import secrets
import time
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes, hmac

from host_tools import fleetkeys

ALG_HMAC_256_256 = 5
TAG_COSE_MAC0 = 17
TAG_CWT = 61
MAX_TOKEN_BYTES = 512
MAX_TTL_S = 900  # devices refuse tokens living longer (exp - iat): bad_claims

HEADER_NAMES = {1: "alg", 4: "kid"}
CLAIM_NAMES = {1: "iss", 3: "aud", 4: "exp", 5: "nbf", 6: "iat", 7: "cti",
               -65537: "mission", -65538: "window_s"}
ALG_NAMES = {5: "HMAC 256/256", 4: "HMAC 256/64", 6: "HMAC 384/384", 7: "HMAC 512/512",
             -7: "ES256", -8: "EdDSA"}


class TokenMintError(ValueError):
    """Arguments that would make a token the firmware refuses."""


def mac_structure(protected: bytes, payload: bytes) -> bytes:
    """The bytes that are MACed: ["MAC0", protected, external_aad = b"", payload]."""
    return cbor2.dumps(["MAC0", protected, b"", payload])


def compute_tag(device_key: bytes, protected: bytes, payload: bytes) -> bytes:
    h = hmac.HMAC(device_key, hashes.SHA256())
    h.update(mac_structure(protected, payload))
    return h.finalize()


def mint_with_device_key(device_key: bytes, device_id: str, mission: str, window_s: int,
                         ttl_s: int = 120, now: int | None = None, kid: bytes | None = None,
                         issuer: str = "dispatch", tagged: bool = True, cwt_tag: bool = False,
                         kid_in_protected: bool = True, cti: bytes | None = None) -> bytes:
    """A token for `device_id` MACed with that device's own key (see mint())."""
    fleetkeys.check_device_id(device_id)
    if not isinstance(mission, str) or not 1 <= len(mission) <= 64:
        raise TokenMintError("mission id must be 1-64 characters")
    if not isinstance(window_s, int) or isinstance(window_s, bool) or window_s < 1:
        raise TokenMintError("window must be a whole number of seconds >= 1")
    if not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S:
        raise TokenMintError("ttl must be 1-%d seconds" % MAX_TTL_S)
    if cti is None:
        cti = secrets.token_bytes(16)
    if not 8 <= len(cti) <= 32:
        raise TokenMintError("cti must be 8-32 bytes")
    iat = int(time.time()) if now is None else int(now)
    if kid is None:
        kid = fleetkeys.key_id(device_key)
    header: dict[int, Any] = {1: ALG_HMAC_256_256}
    unprotected: dict[int, Any] = {}
    (header if kid_in_protected else unprotected)[4] = bytes(kid)
    protected = cbor2.dumps(header)
    payload = cbor2.dumps({1: issuer, 3: device_id, 4: iat + ttl_s, 6: iat, 7: bytes(cti),
                           -65537: mission, -65538: window_s})
    msg: Any = [protected, unprotected, payload, compute_tag(device_key, protected, payload)]
    if tagged or cwt_tag:
        msg = cbor2.CBORTag(TAG_COSE_MAC0, msg)
    if cwt_tag:
        msg = cbor2.CBORTag(TAG_CWT, msg)
    raw = cbor2.dumps(msg)
    if len(raw) > MAX_TOKEN_BYTES:
        raise TokenMintError("token is %d bytes, over the %d byte limit" % (len(raw), MAX_TOKEN_BYTES))
    return raw


def mint(master_key: bytes, device_id: str, mission: str, window_s: int, ttl_s: int = 120,
         now: int | None = None, kid: bytes | None = None, issuer: str = "dispatch",
         tagged: bool = True, cwt_tag: bool = False) -> bytes:
    """A mission token opening `device_id` for `window_s` seconds, valid `ttl_s` seconds from
    `now` (default: the current time). The MAC key is derived from the fleet `master_key`; `kid`
    defaults to fleetkeys.key_id(device key). `tagged` adds COSE tag 17, `cwt_tag` also wraps it
    in CWT tag 61."""
    device_key = fleetkeys.derive_device_key(master_key, device_id)
    return mint_with_device_key(device_key, device_id, mission, window_s, ttl_s=ttl_s, now=now,
                                kid=kid, issuer=issuer, tagged=tagged, cwt_tag=cwt_tag)


def _utc(t: Any) -> str | None:
    if not isinstance(t, int) or isinstance(t, bool):
        return None
    try:
        return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


_STRICT_NOTE = ("not in the strict encoding devices require (trailing bytes, duplicate map keys, "
                "indefinite or non-shortest lengths)")


def _strict(data: bytes, obj: Any) -> bool:
    # cbor2 reads leniently; the firmware does not. Every profile value re-encodes to exactly
    # the bytes it came from when, and only when, the input was strict.
    try:
        return cbor2.dumps(obj) == data
    except Exception:
        return False


def _describe(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex(), "len": len(value)}
    if isinstance(value, cbor2.CBORTag):
        return {"tag": value.tag, "value": _describe(value.value)}
    if isinstance(value, list):
        return [_describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in value.items()}
    return value if isinstance(value, (int, str, bool, type(None))) else repr(value)


def inspect(raw: bytes, master_key: bytes | None = None, now: int | None = None,
            issuer: str = "dispatch") -> dict[str, Any]:
    """Explain a token: tags, headers, claims (with UTC times) and what a device would say.

    Returns a dict with "size", "tags", "protected", "unprotected", "claims", "problems" (a list
    of short findings) and "verdict": "valid", "invalid" or "unchecked" (no master key given,
    so the MAC could not be checked). Never raises for bad input: problems are reported."""
    now = int(time.time()) if now is None else int(now)
    out: dict[str, Any] = {"size": len(raw), "tags": [], "protected": {}, "unprotected": {},
                           "claims": {}, "mac": "unchecked", "problems": []}
    problems: list[str] = out["problems"]
    if len(raw) > MAX_TOKEN_BYTES:
        problems.append("too_large: %d bytes, devices accept at most %d" % (len(raw), MAX_TOKEN_BYTES))
    try:
        obj = cbor2.loads(raw)
    except Exception as e:  # cbor2 raises several types for bad input
        problems.append("malformed: not CBOR (%s)" % e)
        out["verdict"] = "invalid"
        return out
    if not _strict(raw, obj):
        problems.append("malformed: token " + _STRICT_NOTE)
    while isinstance(obj, cbor2.CBORTag):
        out["tags"].append(obj.tag)
        obj = obj.value
    if out["tags"] not in ([], [TAG_COSE_MAC0], [TAG_CWT, TAG_COSE_MAC0], [TAG_CWT]):
        problems.append("malformed: tags %s (allowed: 61, 17)" % out["tags"])
    if not (isinstance(obj, list) and len(obj) == 4 and isinstance(obj[0], bytes)
            and isinstance(obj[1], dict) and isinstance(obj[2], bytes) and isinstance(obj[3], bytes)):
        problems.append("malformed: not a COSE_Mac0 [protected, unprotected, payload, tag]")
        out["verdict"] = "invalid"
        out["structure"] = _describe(obj)
        return out
    protected, unprotected, payload, tag = obj
    try:
        header = cbor2.loads(protected) if protected else {}
        if protected and not _strict(protected, header):
            problems.append("bad_header: protected header " + _STRICT_NOTE)
    except Exception as e:
        header = {}
        problems.append("malformed: protected header is not CBOR (%s)" % e)
    if not isinstance(header, dict):
        problems.append("malformed: protected header is not a map")
        header = {}
    for where, hdr in (("protected", header), ("unprotected", unprotected)):
        for k, v in hdr.items():
            name = HEADER_NAMES.get(k, str(k))
            entry = _describe(v)
            if k == 1:
                entry = {"value": v, "name": ALG_NAMES.get(v, "unknown")} if isinstance(v, int) else entry
            out[where][name] = entry
            if where == "unprotected" and k != 4:
                problems.append("bad_header: unprotected parameter %r (only kid allowed)" % (k,))
            if where == "protected" and k not in (1, 4):
                problems.append("bad_header: protected parameter %r not in the profile" % (k,))
    if header.get(1) != ALG_HMAC_256_256 or isinstance(header.get(1), bool):
        problems.append("bad_alg: protected alg must be 5 (HMAC 256/256), found %r" % (header.get(1),))
    kid = header.get(4, unprotected.get(4))
    if 4 in header and 4 in unprotected:
        problems.append("bad_header: kid in both the protected and the unprotected header")
    if kid is not None and not isinstance(kid, bytes):
        problems.append("bad_header: kid must be a byte string")
    if kid is None:
        out["kid_note"] = "no kid: devices check it with their current key slot"
    try:
        claims = cbor2.loads(payload)
        if not _strict(payload, claims):
            problems.append("bad_claims: claims " + _STRICT_NOTE)
    except Exception as e:
        claims = {}
        problems.append("bad_claims: payload is not CBOR (%s)" % e)
    if not isinstance(claims, dict):
        problems.append("bad_claims: payload is not a claims map")
        claims = {}
    for k, v in claims.items():
        name = CLAIM_NAMES.get(k, str(k))
        entry: dict[str, Any] = {"value": _describe(v)}
        if k in (4, 5, 6) and _utc(v):
            entry["utc"] = _utc(v)
        out["claims"][name] = entry
    _check_claims(claims, now, issuer, problems)

    aud = claims.get(3)
    if master_key is not None and isinstance(aud, str) and fleetkeys.DEVICE_ID_RE.fullmatch(aud):
        device_key = fleetkeys.derive_device_key(master_key, aud)
        h = hmac.HMAC(device_key, hashes.SHA256())
        h.update(mac_structure(protected, payload))
        try:
            h.verify(tag)  # constant-time
            out["mac"] = "valid"
        except Exception:
            out["mac"] = "invalid"
            problems.append("bad_mac: tag does not match the key derived for %s" % aud)
        expected_kid = fleetkeys.key_id(device_key)
        if isinstance(kid, bytes) and kid != expected_kid:
            out["kid_note"] = "kid %s is not the default kid %s of this device key" % (
                kid.hex(), expected_kid.hex())
    if problems:
        out["verdict"] = "invalid"
    else:
        out["verdict"] = "valid" if out["mac"] == "valid" else "unchecked"
    return out


def _check_claims(claims: dict[Any, Any], now: int, issuer: str, problems: list[str]) -> None:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    iss, aud = claims.get(1), claims.get(3)
    if not isinstance(iss, str):
        problems.append("bad_claims: iss (1) must be text, found %r" % (iss,))
    elif iss != issuer:
        problems.append("wrong_iss: iss %r, devices expect %r" % (iss, issuer))
    if not isinstance(aud, str):
        problems.append("bad_claims: aud (3) must be text, found %r" % (aud,))
    elif not fleetkeys.DEVICE_ID_RE.fullmatch(aud):
        problems.append("wrong_aud: aud %r is not a device id" % (aud,))
    exp, iat, nbf = claims.get(4), claims.get(6), claims.get(5)
    if not is_int(exp) or not is_int(iat) or (nbf is not None and not is_int(nbf)):
        problems.append("bad_claims: exp and iat must be integers (nbf too when present)")
    else:
        if exp - iat > MAX_TTL_S or iat > exp:
            problems.append("bad_claims: lifetime exp - iat = %d s (allowed 0-%d)" % (exp - iat, MAX_TTL_S))
        if exp <= now:
            problems.append("expired: %d s ago" % (now - exp))
        if nbf is not None and nbf > max(now, iat) + 60:
            problems.append("not_yet_valid: nbf is %d s ahead" % (nbf - now))
    cti = claims.get(7)
    if not isinstance(cti, bytes) or not 8 <= len(cti) <= 32:
        problems.append("bad_claims: cti must be 8-32 bytes")
    mission = claims.get(-65537)
    if not isinstance(mission, str) or not 1 <= len(mission) <= 64:
        problems.append("bad_claims: mission must be text of 1-64 characters")
    window = claims.get(-65538)
    if not is_int(window) or window < 1:
        problems.append("bad_claims: window (-65538) must be an integer >= 1")
    if -65539 in claims or -65540 in claims:
        problems.append("bad_claims: service claims (-65539/-65540) in an unlock token")
