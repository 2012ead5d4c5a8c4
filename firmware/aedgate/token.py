# Mission token verification: COSE_Mac0 (RFC 9052) carrying CWT claims (RFC 8392), profile
# fixed in docs (PROTOCOL.md "Mission token (fixed profile)"), checks in the order of
# SECURITY.md rule 1. This module only says whether a token is genuine and current; the caller
# then checks replay (aedgate.replay), persists, raises the time floor and actuates.
#
#   claims = token.verify(raw, "cab-0001", [(kid, key), (next_kid, next_key)], now=t)
#   # -> {"mission": str, "cti": bytes, "exp": int, "iat": int, "window_s": int, "kid": bytes}
#   # or raises TokenError(reason), reason one of REASONS.
#
# Time: `now` is required and should be timefloor.now(clock): a lower bound on the real time,
# never an upper bound. So `exp > now` is checked strictly, but "not yet valid" is judged with
# care: a device that lost its clock has now == floor, possibly weeks behind, and a fresh token
# (iat = real time) must still open the cabinet in an emergency. Hence:
#   - nbf is compared with max(now, iat) + skew: the authenticated iat is itself evidence that
#     real time has reached iat, so only a token that says "not before later than I was made"
#     is refused;
#   - iat is compared with now only when `max_future_s` is given (default off), for callers that
#     hold a trusted clock (the simulator, tests).
from aedgate import cbor
from aedgate.mac import equal, hmac_sha256
from aedgate.compat import const

MAX_TOKEN_BYTES = const(512)
_ALG_HMAC_256_256 = const(5)
_H_ALG = const(1)
_H_KID = const(4)
_C_ISS = const(1)
_C_AUD = const(3)
_C_EXP = const(4)
_C_NBF = const(5)
_C_IAT = const(6)
_C_CTI = const(7)
_C_MISSION = const(-65537)
_C_WINDOW = const(-65538)
_TAG_LEN = const(32)
_MIN_WINDOW_S = const(10)

REASONS = ("too_large", "malformed", "bad_alg", "bad_header", "unknown_kid", "bad_mac",
           "bad_claim", "wrong_iss", "wrong_aud", "expired", "not_yet_valid", "internal")


class TokenError(Exception):
    """A rejected token; args[0] is the short reason code (one of REASONS) for the ack."""


def verify(raw, device_id, keys, now, issuer="dispatch", max_window_s=300, skew_s=60,
           max_ttl_s=3600, max_future_s=None):
    """Check a mission token and return its claims, or raise TokenError(reason).

    raw: the MQTT payload (bytes/bytearray/memoryview), at most 512 bytes.
    device_id: this cabinet's id; the token's aud must equal it exactly.
    keys: key slots, a list of (kid bytes, 32-byte key): current and next, for rotation.
    now: Unix seconds, normally timefloor.now(clock) (see the module comment).
    window_s in the result is clamped into [10, max_window_s]; a window of 0 is clamped up
    rather than refused, so a dispatch-side slip never keeps the AED locked.
    Tokens living longer than max_ttl_s (exp - iat) are refused: the replay store then only ever
    has to remember a cti for that long.
    """
    try:
        return _verify(raw, device_id, keys, now, issuer, max_window_s, skew_s, max_ttl_s,
                       max_future_s)
    except TokenError:
        raise
    except Exception:  # noqa: BLE001 - no input may crash the caller; "internal" marks a bug
        raise TokenError("internal")


def _verify(raw, device_id, keys, now, issuer, max_window_s, skew_s, max_ttl_s, max_future_s):
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise TokenError("malformed")
    n = len(raw)
    if n > MAX_TOKEN_BYTES:
        raise TokenError("too_large")
    buf = memoryview(raw)
    pos = 0
    # Optional CWT tag 61 (0xD8 0x3D), then optional COSE_Mac0 tag 17 (0xD1). Shortest
    # encodings only; any other tag is refused by the decoder.
    if n >= 2 and buf[0] == 0xD8 and buf[1] == 61:
        pos = 2
    if pos < n and buf[pos] == 0xD1:
        pos += 1
    try:
        msg = cbor.decode(buf[pos:], 2)  # [bstr, {kid}, bstr, bstr]: depth 2 at most
    except cbor.CBORError:
        raise TokenError("malformed")
    if (not isinstance(msg, list) or len(msg) != 4 or not isinstance(msg[0], bytes)
            or not isinstance(msg[1], dict) or not isinstance(msg[2], bytes)
            or not isinstance(msg[3], bytes)):
        raise TokenError("malformed")
    protected, unprotected, payload, tag = msg
    header = {}
    if protected:
        try:
            header = cbor.decode(protected, 1)
        except cbor.CBORError:
            raise TokenError("malformed")
        if not isinstance(header, dict):
            raise TokenError("malformed")

    # The algorithm is pinned: the token never chooses it.
    alg = header.get(_H_ALG)
    if type(alg) is not int or alg != _ALG_HMAC_256_256:
        raise TokenError("bad_alg")
    for k in header:
        if k != _H_ALG and k != _H_KID:
            raise TokenError("bad_header")
    for k in unprotected:
        if k != _H_KID or k in header:
            raise TokenError("bad_header")
    kid = header[_H_KID] if _H_KID in header else unprotected.get(_H_KID)
    if kid is None:
        raise TokenError("unknown_kid")
    if not isinstance(kid, bytes):
        raise TokenError("bad_header")
    key = None
    for slot_kid, slot_key in keys:
        if slot_kid == kid:  # kid is public: a plain compare is fine
            key = slot_key
            break
    if key is None:
        raise TokenError("unknown_kid")

    # MAC over MAC_structure = ["MAC0", protected (bytes as received), external_aad b"",
    # payload], encoded here piece by piece and fed to the hash without joining.
    if len(tag) != _TAG_LEN:
        raise TokenError("bad_mac")
    expected = hmac_sha256(key, (b"\x84\x64MAC0", _bstr_head(len(protected)), protected,
                                 b"\x40", _bstr_head(len(payload)), payload))
    if not equal(expected, tag):
        raise TokenError("bad_mac")

    # Claims: from here on the bytes are authentic, so errors are dispatch-side bugs.
    try:
        claims = cbor.decode(payload, 2)
    except cbor.CBORError:
        raise TokenError("bad_claim")
    if not isinstance(claims, dict):
        raise TokenError("bad_claim")
    iss = claims.get(_C_ISS)
    if not isinstance(iss, str) or iss != issuer:
        raise TokenError("wrong_iss")
    aud = claims.get(_C_AUD)
    if not isinstance(aud, str) or aud != device_id:
        raise TokenError("wrong_aud")
    exp = claims.get(_C_EXP)
    iat = claims.get(_C_IAT)
    nbf = claims.get(_C_NBF)
    cti = claims.get(_C_CTI)
    mission = claims.get(_C_MISSION)
    window = claims.get(_C_WINDOW)
    if (type(exp) is not int or type(iat) is not int
            or (nbf is not None and type(nbf) is not int)
            or not isinstance(cti, bytes) or not 8 <= len(cti) <= 32
            or not isinstance(mission, str) or not 1 <= len(mission) <= 64
            or type(window) is not int or window < 0
            or iat > exp or exp - iat > max_ttl_s):
        raise TokenError("bad_claim")
    if exp <= now:
        raise TokenError("expired")
    if nbf is not None and nbf > (now if now > iat else iat) + skew_s:
        raise TokenError("not_yet_valid")
    if max_future_s is not None and iat > now + max_future_s:
        raise TokenError("not_yet_valid")
    if window < _MIN_WINDOW_S:
        window = _MIN_WINDOW_S
    if window > max_window_s:
        window = max_window_s
    return {"mission": mission, "cti": cti, "exp": exp, "iat": iat, "window_s": window,
            "kid": kid}


def _bstr_head(n):
    # CBOR head of a byte string of length n (n < 65536: tokens are capped at 512 bytes).
    if n < 24:
        return bytes((0x40 | n,))
    if n < 256:
        return bytes((0x58, n))
    return bytes((0x59, n >> 8, n & 0xFF))
