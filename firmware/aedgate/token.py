# Command token verification: COSE_Mac0 (RFC 9052) carrying CWT claims (RFC 8392), profile
# fixed in docs/protocol.md ("Mission token profile"), checks in the order of docs/security.md rule 1.
# This module only says whether a token is genuine and current; the caller then checks replay
# (aedgate.replay), persists the cti, raises the time floor and actuates.
#
#   claims = token.verify(raw, "cab-0001", [(kid, key), (next_kid, next_key)], now)
#   -> {"kind": "unlock", "mission": str, "cti": bytes, "exp": int, "iat": int,
#       "window_s": int, "kid": bytes, "action": None, "value": None}
#   or raises TokenError(reason, info): reason one of REASONS; info a dict holding what could be
#   read from the authenticated claims ("cti", "mission", and "iat" once iss and aud passed,
#   for the time floor), empty for every rejection at or before the MAC check.
#
# Time: `now` is required and should be timefloor.now(clock): a lower bound on the real time,
# never an upper bound. So `exp > now` is checked strictly, but "not yet valid" is judged with
# care: a device that lost its clock has now == floor, possibly weeks behind, and a fresh token
# (iat = real time) must still open the cabinet in an emergency. Hence:
#   - nbf is compared with max(now, iat) + skew: the authenticated iat is itself evidence that
#     real time has reached iat, so only a token that says "not before later than I was made"
#     is refused;
#   - iat is compared with now only when `max_future_s` is given (default off), for callers that
#     hold a trusted clock.
from aedgate import cbor
from aedgate.hmac_sha256 import equal, hmac_sha256
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
_C_ACTION = const(-65539)
_C_VALUE = const(-65540)
_C_FLOOR = const(-65541)  # cmd/time only: the floor a reset expects to lower (docs/protocol.md)
_TAG_LEN = const(32)
_TIME_LIMIT = const(1 << 63)  # times must fit the 8-byte fields of the replay and floor files

REASONS = ("too_large", "malformed", "bad_alg", "bad_header", "unknown_kid", "bad_mac",
           "bad_claims", "wrong_iss", "wrong_aud", "expired", "not_yet_valid", "internal")
KINDS = ("unlock", "service", "time")


class TokenError(Exception):
    """A rejected token: args[0] is the reason code (one of REASONS) for the ack, args[1] a
    dict of authenticated values that could be read (see the module comment)."""


def verify(raw, device_id, keys, now, issuer="dispatch", max_window_s=300, min_window_s=1,
           kind="unlock", skew_s=60, max_ttl_s=900, max_future_s=None):
    """Check a command token and return its claims, or raise TokenError(reason, info).

    raw: the MQTT payload (bytes/bytearray/memoryview), at most 512 bytes.
    device_id: this cabinet's id; the token's aud must equal it exactly.
    keys: key slots, a list of (kid bytes, 32-byte key): current first, then next. A token
      without kid is checked with the current slot.
    now: Unix seconds, normally timefloor.now(clock) (see the module comment).
    kind: "unlock" (needs mission and window), "service" (needs action -65539, may carry value
      -65540 and mission) or "time" (none of -65537..-65540).
    window_s in the result is clamped into [min_window_s, max_window_s] (a window of 0 or less
      is bad_claims, per the profile: uint >= 1).
    Tokens living longer than max_ttl_s (exp - iat) are bad_claims: a device with a stale clock
      cannot be opened with an old long-lived token, and the replay store only ever has to
      remember a cti for that long.
    """
    try:
        return _verify(raw, device_id, keys, now, issuer, max_window_s, min_window_s, kind,
                       skew_s, max_ttl_s, max_future_s)
    except TokenError:
        raise
    except Exception:  # noqa: BLE001 - no input may crash the caller; "internal" marks a bug
        raise TokenError("internal", {})


def _verify(raw, device_id, keys, now, issuer, max_window_s, min_window_s, kind, skew_s,
            max_ttl_s, max_future_s):
    if type(raw) is not bytes:
        if not isinstance(raw, bytearray) and not isinstance(raw, memoryview):
            raise TokenError("malformed", {})
        if len(raw) > MAX_TOKEN_BYTES:
            raise TokenError("too_large", {})
        raw = bytes(raw)  # a private copy (<= 512 bytes) nobody can change under us
    n = len(raw)
    if n > MAX_TOKEN_BYTES:
        raise TokenError("too_large", {})
    pos = 0
    # Optional CWT tag 61 (0xD8 0x3D), then optional COSE_Mac0 tag 17 (0xD1). Shortest
    # encodings only; any other tag is refused by the decoder.
    if n >= 2 and raw[0] == 0xD8 and raw[1] == 61:
        pos = 2
    if pos < n and raw[pos] == 0xD1:
        pos += 1
    try:
        msg = cbor.decode(raw, 2, pos)  # [bstr, {kid}, bstr, bstr]: depth 2 at most
    except cbor.CBORError:
        raise TokenError("malformed", {})
    if (not isinstance(msg, list) or len(msg) != 4 or not isinstance(msg[0], bytes)
            or not isinstance(msg[1], dict) or not isinstance(msg[2], bytes)
            or not isinstance(msg[3], bytes) or len(msg[3]) != _TAG_LEN):
        raise TokenError("malformed", {})
    protected, unprotected, payload, tag = msg
    # The protected header must be a non-empty map (bad_header otherwise: there is no alg).
    header = None
    if protected:
        try:
            header = cbor.decode(protected, 1)
        except cbor.CBORError:
            pass
    if not isinstance(header, dict) or not header:
        raise TokenError("bad_header", {})
    # The algorithm is pinned: the token never chooses it.
    alg = header.get(_H_ALG)
    if type(alg) is not int or alg != _ALG_HMAC_256_256:
        raise TokenError("bad_alg", {})
    for k in header:
        if k != _H_ALG and k != _H_KID:
            raise TokenError("bad_header", {})
    for k in unprotected:
        if k != _H_KID or k in header:
            raise TokenError("bad_header", {})
    kid = header[_H_KID] if _H_KID in header else unprotected.get(_H_KID)
    if kid is not None and not isinstance(kid, bytes):
        raise TokenError("bad_header", {})
    key = None
    for slot_kid, slot_key in keys:
        if kid is None or slot_kid == kid:  # kid is public: a plain compare is fine
            key = slot_key
            break
    if key is None:
        raise TokenError("unknown_kid", {})

    # MAC over MAC_structure = ["MAC0", protected (bytes as received), external_aad b"",
    # payload], encoded here piece by piece and fed to the hash without joining.
    expected = hmac_sha256(key, (b"\x84\x64MAC0", _bstr_head(len(protected)), protected,
                                 b"\x40", _bstr_head(len(payload)), payload))
    if not equal(expected, tag):
        raise TokenError("bad_mac", {})

    # Claims: from here on the bytes are authentic, so errors are dispatch-side bugs, and the
    # values read are the issuer's own: they go into TokenError.args[1] for the ack/event.
    info = {}
    try:
        claims = cbor.decode(payload, 2)
    except cbor.CBORError:
        raise TokenError("bad_claims", info)
    if not isinstance(claims, dict):
        raise TokenError("bad_claims", info)
    cti = claims.get(_C_CTI)
    mission = claims.get(_C_MISSION)
    if isinstance(cti, bytes) and 8 <= len(cti) <= 32:
        info["cti"] = cti
    if isinstance(mission, str) and 1 <= len(mission) <= 64:
        info["mission"] = mission
    exp = claims.get(_C_EXP)
    iat = claims.get(_C_IAT)
    nbf = claims.get(_C_NBF)
    iss = claims.get(_C_ISS)
    aud = claims.get(_C_AUD)
    if ("cti" not in info or not isinstance(iss, str) or not isinstance(aud, str)
            or type(exp) is not int or type(iat) is not int
            or (nbf is not None and type(nbf) is not int)
            or iat < 0 or iat > exp or exp >= _TIME_LIMIT or exp - iat > max_ttl_s
            or not _command_claims_ok(claims, kind, mission)):
        raise TokenError("bad_claims", info)
    if iss != issuer:
        raise TokenError("wrong_iss", info)
    if aud != device_id:
        raise TokenError("wrong_aud", info)
    # MAC, iss and aud passed: iat is now authenticated time for the floor, even on rejection.
    info["iat"] = iat
    if exp <= now:
        raise TokenError("expired", info)
    if nbf is not None and nbf > (now if now > iat else iat) + skew_s:
        raise TokenError("not_yet_valid", info)
    if max_future_s is not None and iat > now + max_future_s:
        raise TokenError("not_yet_valid", info)
    window = claims.get(_C_WINDOW)
    if window is not None:
        if window < min_window_s:
            window = min_window_s
        if window > max_window_s:
            window = max_window_s
    action = claims.get(_C_ACTION)
    return {"kind": kind, "mission": mission, "cti": cti, "exp": exp, "iat": iat,
            "window_s": window, "kid": kid, "action": action, "value": claims.get(_C_VALUE),
            "floor": claims.get(_C_FLOOR)}


def _command_claims_ok(claims, kind, mission):
    # One key for every command: the claims decide what a token may do (docs/protocol.md,
    # "Keeping command types apart"). A token for one command is bad_claims on another's topic.
    window = claims.get(_C_WINDOW)
    action = claims.get(_C_ACTION)
    value = claims.get(_C_VALUE)
    if _C_FLOOR in claims and kind != "time":
        return False  # only a time command may reset the floor
    if kind == "unlock":
        return (isinstance(mission, str) and 1 <= len(mission) <= 64
                and type(window) is int and window >= 1
                and action is None and value is None)
    if kind == "service":
        return ((mission is None or (isinstance(mission, str) and 1 <= len(mission) <= 64))
                and window is None and isinstance(action, str) and 1 <= len(action) <= 32
                and (value is None or (isinstance(value, str) and len(value) <= 32)))
    floor = claims.get(_C_FLOOR)
    if kind == "time":
        return (mission is None and window is None and action is None and value is None
                and (floor is None or (type(floor) is int and 0 <= floor < _TIME_LIMIT)))
    return False


def _bstr_head(n):
    # CBOR head of a byte string of length n (n < 65536: tokens are capped at 512 bytes).
    if n < 24:
        return bytes((0x40 | n,))
    if n < 256:
        return bytes((0x58, n))
    return bytes((0x59, n >> 8, n & 0xFF))
