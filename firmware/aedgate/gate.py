# The one way a signed command gets in (SECURITY.md rule 1, after the verifier itself):
# verify -> not seen before -> record the cti and raise the time floor ON FLASH -> only then
# may the caller act. Shared by the MQTT commands (unlock, service, time) and by the serial
# service path, so there is exactly one implementation of the order that keeps tokens single-use.
from aedgate import token
from aedgate.hmac_sha256 import key_id
from aedgate.replay import Replay
from aedgate.timefloor import TimeFloor


def key_slots(cfg):
    """(kid, key) pairs from the config; an empty kid means the key's default kid."""
    slots = []
    for s in cfg["keys"]:
        key = bytes.fromhex(s["key"])
        slots.append((bytes.fromhex(s["kid"]) if s["kid"] else key_id(key), key))
    return slots


class Gate:
    def __init__(self, flash, cfg, device_id):
        self.cfg = cfg
        self.device_id = device_id
        self.floor = TimeFloor(flash)
        self.replay = Replay(flash, floor=self.floor.floor())
        self.slots = key_slots(cfg)

    def now(self, clock_time):
        return self.floor.now(clock_time)

    def admit(self, raw, kind, clock_time, check=None):
        """Returns the token's claims once it is recorded as used; raises token.TokenError(reason,
        info) otherwise. `check(claims)` may refuse a genuine token (raising TokenError) before
        its cti is spent. Nothing is actuated here."""
        if raw is None:
            raise token.TokenError("too_large", {})
        if not self.slots:
            raise token.TokenError("unknown_kid", {})  # not provisioned with a key yet
        try:
            claims = token.verify(raw, self.device_id, self.slots, self.now(clock_time),
                                  issuer=self.cfg["issuer"], max_window_s=self.cfg["max_window_s"],
                                  kind=kind)
        except token.TokenError as e:
            # An authenticated iat still proves the real time has reached it.
            iat = e.args[1].get("iat") if len(e.args) > 1 else None
            if iat:
                self.floor.raise_to(iat)
            raise
        if check:
            check(claims)
        if self.replay.seen(claims["cti"], claims["iat"]):
            raise token.TokenError("replay", {"cti": claims["cti"], "mission": claims["mission"]})
        self.replay.add(claims["cti"], claims["exp"], claims["iat"])  # persisted before acting
        self.floor.raise_to(claims["iat"])
        self.replay.prune(self.floor.floor())
        return claims
