# The commands a cabinet takes on aed/v1/<id>/cmd/...: unlock, time and service, each through
# the Gate (docs/security.md rule 1), and how their rejections are reported: an ack each, and
# token_rejected events thinned so a flood of garbage cannot flood the outbox (rule 5).
from aedgate import service, token
from aedgate.compat import const, ticks_diff, ticks_ms

_FLOOD_BUDGET = const(10)        # rejections reported one by one per minute, then summarised
_FLOOD_PERIOD_MS = const(60000)


class Commands:
    def __init__(self, app, gate, window):
        self.app = app
        self.gate = gate
        self.window = window
        self._flood_start = ticks_ms()
        self._flood_count = 0
        self._suppressed = 0
        app.commands["unlock"] = self.on_unlock
        app.commands["time"] = self.on_time
        app.commands["service"] = self.on_service

    def reject(self, cmd, e):
        reason = e.args[0]
        info = e.args[1] if len(e.args) > 1 else {}
        ack = {"cmd": cmd, "result": "rejected", "reason": reason}
        ev = {"type": "token_rejected", "reason": reason}
        if info.get("cti"):
            ack["cti"] = ev["cti"] = info["cti"].hex()
        if info.get("mission"):
            ack["mission"] = ev["mission"] = info["mission"]
        if reason in ("expired", "not_yet_valid", "bad_claims") and info.get("cti"):
            # Authenticated and refused for time: dispatch learns the floor it may have to
            # correct with a signed reset (docs/protocol.md, "Time and clocks").
            ack["floor"] = self.gate.floor.floor()
        self.app.ack(ack)
        # A flood of garbage must not flood the outbox: report the first few per minute, then
        # one summary. Verification itself never pauses, so a valid token always gets through.
        now = ticks_ms()
        if ticks_diff(now, self._flood_start) > _FLOOD_PERIOD_MS:
            if self._suppressed:
                self.app.emit({"type": "token_rejected", "reason": "rate_limited", "count": self._suppressed})
            self._flood_start, self._flood_count, self._suppressed = now, 0, 0
        self._flood_count += 1
        if self._flood_count <= _FLOOD_BUDGET:
            self.app.emit(ev)
        else:
            self._suppressed += 1

    def on_unlock(self, raw, dup):
        app = self.app
        try:
            claims = self.gate.admit(raw, "unlock", app.clock.time(), clock_known=app.clock_known)
        except token.TokenError as e:
            self.reject("unlock", e)
            return
        mission = claims["mission"]
        window_s = claims["window_s"]
        app.log("unlock accepted: mission %s, %d s" % (mission, window_s))
        self.window.start(mission, window_s)
        app.ack({"cmd": "unlock", "result": "accepted", "cti": claims["cti"].hex(), "mission": mission})

    def on_time(self, raw, dup):
        app = self.app
        try:
            claims = self.gate.admit(raw, "time", app.clock.time(), clock_known=app.clock_known)
        except token.TokenError as e:
            self.reject("time", e)
            return
        # An accepted signed time has moved the floor to it: the clock follows (docs/twin.md).
        app._set_clock(self.gate.floor.floor())
        app.clock_known = True
        app.ack({"cmd": "time", "result": "accepted", "cti": claims["cti"].hex(),
                 "floor": self.gate.floor.floor()})

    def on_service(self, raw, dup):
        service.on_command(self.app, self.gate, self.reject, raw)
