# The one way a signed command gets in (docs/protocol.md "Verification order", after the verifier
# itself):
# verify -> not seen before -> record the cti and raise the time floor ON FLASH -> only then
# may the caller act. Shared by the MQTT commands (unlock, service, time) and by the serial
# service path, so there is exactly one implementation of the order that keeps tokens single-use.
from aedgate import token
from aedgate.hmac_sha256 import key_id
from aedgate.replay import Replay
from aedgate.timefloor import BUILD_TIME, TimeFloor


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

    def admit(self, raw, kind, clock_time, check=None, clock_known=True):
        """Returns the token's claims once it is recorded as used; raises token.TokenError(reason,
        info) otherwise. `check(claims)` may refuse a genuine token (raising TokenError) before
        its cti is spent. Nothing is actuated here, except a floor reset (cmd/time, below)."""
        if raw is None:
            raise token.TokenError("too_large", {})
        if not self.slots:
            raise token.TokenError("unknown_kid", {})  # not provisioned with a key yet
        floor = self.floor.floor()
        now = self.floor.now(clock_time)
        # The iat bound (docs/protocol.md, "Time and clocks"): only against a clock the device
        # believes (`clock_known`: kept through a reset, or set by SNTP or a signed time since
        # power-on, and not behind its floor). A device that lost its clock still opens for a
        # fresh token, whatever its iat: an emergency never waits on a clock.
        max_future = None
        if clock_known and clock_time is not None and clock_time >= floor:
            max_future = self.cfg["iat_max_future_s"]
        if kind == "time":
            # Time commands set the time: their exp is judged against the clock when it is
            # plausible (believed, see above), never against the floor they may have to correct.
            now = int(clock_time) if clock_known and clock_time is not None and clock_time >= BUILD_TIME else 0
            max_future = None
        try:
            claims = token.verify(raw, self.device_id, self.slots, now,
                                  issuer=self.cfg["issuer"], max_window_s=self.cfg["max_window_s"],
                                  kind=kind, max_future_s=max_future)
        except token.TokenError as e:
            # An authenticated iat still proves the real time has reached it; not one beyond
            # the bound, which is exactly what a dispatch clock gone wrong would send.
            iat = e.args[1].get("iat") if len(e.args) > 1 else None
            if iat and (max_future is None or iat <= now + max_future):
                self.floor.raise_to(iat)
            raise
        reset = kind == "time" and claims["floor"] is not None
        if reset and (claims["floor"] != floor or claims["iat"] >= floor):
            # A reset names the floor it corrects: any other state, and it is stale (a replay,
            # or the floor moved since dispatch read it). Refused before its cti is spent.
            raise token.TokenError("bad_claims", {"cti": claims["cti"]})
        if check:
            check(claims)
        if self.replay.seen(claims["cti"], claims["iat"]):
            raise token.TokenError("replay", {"cti": claims["cti"], "mission": claims["mission"]})
        self.replay.add(claims["cti"], claims["exp"], claims["iat"])  # persisted before acting
        if reset:
            # Lower the floor to the reset's iat, and count every token minted up to then as
            # used: tokens forgotten while the floor was too high cannot come back.
            self.replay.forget_before(claims["iat"])
            self.floor.reset_to(claims["iat"])
        else:
            self.floor.raise_to(claims["iat"])
        # Forget tokens expired below a time that is never ahead of the real one: the floor,
        # but not beyond the clock (a floor raised too far may be reset later).
        prune = self.floor.floor()
        if clock_time is None or clock_time < prune:
            prune = int(clock_time) if clock_time is not None and clock_time > 0 else 0
        self.replay.prune(prune)
        return claims
