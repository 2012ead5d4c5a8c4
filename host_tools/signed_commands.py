"""Signed service and time commands (docs/protocol.md, cmd/service and cmd/time): the same
COSE_Mac0 profile and per-device key as mission tokens, with claims that say what they may do."""
from __future__ import annotations

import datetime as _dt
import secrets
import time
from typing import Any

import cbor2

from host_tools import fleetkeys, tokens

SERVICE_ACTIONS = ("aed_checked", "set_pads_expiry", "set_aed_battery_expiry")


def _mint_claims(master_key: bytes, device_id: str, extra: dict[int, Any], ttl_s: int,
                 now: int | None, issuer: str = "dispatch") -> bytes:
    fleetkeys.check_device_id(device_id)
    key = fleetkeys.derive_device_key(master_key, device_id)
    iat = int(time.time()) if now is None else int(now)
    claims: dict[int, Any] = {1: issuer, 3: device_id, 4: iat + ttl_s, 6: iat, 7: secrets.token_bytes(16)}
    claims.update(extra)
    protected = cbor2.dumps({1: tokens.ALG_HMAC_256_256, 4: fleetkeys.key_id(key)})
    payload = cbor2.dumps(claims)
    msg = [protected, {}, payload, tokens.compute_tag(key, protected, payload)]
    return cbor2.dumps(cbor2.CBORTag(tokens.TAG_COSE_MAC0, msg))


def mint_service(master_key: bytes, device_id: str, action: str, value: str | None = None,
                 ticket: str | None = None, ttl_s: int = 300, now: int | None = None) -> bytes:
    """A service command: `aed_checked` (the AED is back after a mission), or a new expiry date
    (`set_pads_expiry` / `set_aed_battery_expiry` with value YYYY-MM-DD)."""
    if action not in SERVICE_ACTIONS:
        raise tokens.TokenMintError("action must be one of %s" % ", ".join(SERVICE_ACTIONS))
    if action == "aed_checked":
        if value is not None:
            raise tokens.TokenMintError("aed_checked takes no value")
    else:
        try:
            _dt.date.fromisoformat(value or "")
        except ValueError:
            raise tokens.TokenMintError("%s needs a date YYYY-MM-DD, got %r" % (action, value))
    extra: dict[int, Any] = {-65539: action}
    if value is not None:
        extra[-65540] = value
    if ticket is not None:
        extra[-65537] = ticket
    return _mint_claims(master_key, device_id, extra, ttl_s, now)


def mint_time(master_key: bytes, device_id: str, ttl_s: int = 120, now: int | None = None,
              reset_floor: int | None = None) -> bytes:
    """Signed time: the cabinet raises its time floor to this token's iat. With `reset_floor`
    (the floor the cabinet reported in an ack, exactly), it lowers that floor to iat instead
    (docs/protocol.md, "Time and clocks")."""
    extra: dict[int, Any] = {} if reset_floor is None else {-65541: int(reset_floor)}
    return _mint_claims(master_key, device_id, extra, ttl_s, now)
