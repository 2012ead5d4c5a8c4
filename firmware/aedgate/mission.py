# The mission flow: a dispatch token opens this cabinet for one volunteer, for a few minutes.
#   token accepted -> `unlocked` (mission, window) -> lock released, locate beacon on ->
#   door opened (`door_opened` with the mission, not an alarm) -> door closed or window over ->
#   `relocked`. A cabinet opened in a mission then reports `service_needed` (its AED was
#   probably taken) until a technician's signed `aed_checked` service command clears it.
import json

from aedgate import lock as locks
from aedgate import token
from aedgate.compat import asyncio, const, sleep_ms, ticks_add, ticks_diff, ticks_ms

_SERVICE_FILE = "service"
_FLOOD_BUDGET = const(10)        # rejections reported one by one per minute, then summarised
_FLOOD_PERIOD_MS = const(60000)
_BUTTON_GAP_MS = const(2000)     # the button re-pulses at most this often (heat, wear)


class Missions:
    def __init__(self, app, gate):
        self.app = app
        self.gate = gate
        hw = app.hw
        self.lock = locks.make(app.cfg, hw.lock, getattr(hw, "lock_sense", None),
                               getattr(hw, "lock_timer", None)) if hw.lock else None
        self.missions = []          # mission ids of the open window (a second volunteer adds one)
        self.opened = False         # the door was opened inside this window
        self._window_end = None     # ticks_ms
        self._window = None         # task
        self._flood_start = ticks_ms()
        self._flood_count = 0
        self._suppressed = 0
        self._pulses = []
        self._closing = False       # the window is over and the lock is being secured
        self._reopen = []           # missions whose token came in while it was being secured
        self._pressed = None        # ticks of the last button press that re-pulsed
        app.cabinet.service_needed = app.flash.read(_SERVICE_FILE) is not None
        app.commands["unlock"] = self.on_unlock
        app.commands["time"] = self.on_time

    # -- commands ------------------------------------------------------------------------
    def _reject(self, cmd, e):
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
            claims = self.gate.admit(raw, "unlock", app.clock.time())
        except token.TokenError as e:
            self._reject("unlock", e)
            return
        mission = claims["mission"]
        window_s = claims["window_s"]
        app.log("unlock accepted: mission %s, %d s" % (mission, window_s))
        self.start(mission, window_s)
        app.ack({"cmd": "unlock", "result": "accepted", "cti": claims["cti"].hex(), "mission": mission})

    def on_time(self, raw, dup):
        app = self.app
        try:
            claims = self.gate.admit(raw, "time", app.clock.time())
        except token.TokenError as e:
            self._reject("time", e)
            return
        app.ack({"cmd": "time", "result": "accepted", "cti": claims["cti"].hex(),
                 "floor": self.gate.floor.floor()})

    # -- the window ----------------------------------------------------------------------
    def start(self, mission, window_s):
        app = self.app
        end = ticks_add(ticks_ms(), window_s * 1000)
        if self._window_end is None or ticks_diff(end, self._window_end) > 0:
            self._window_end = end
        if self._closing:
            if mission not in self._reopen:
                self._reopen.append(mission)  # opened again once the lock is secured
        elif mission not in self.missions:
            self.missions.append(mission)
        app.cabinet.mission = mission
        app.cabinet.lock = "unlocked"
        app.emit({"type": "unlocked", "mission": mission, "window_s": window_s})
        if self._window is None:
            self._window = asyncio.create_task(self._run_window())
        elif not self._closing:
            self._pulse()  # a second volunteer: release again if the door is still closed
        # else: the window is being closed; _run_window opens it again for this mission

    def _pulse(self):
        if self.lock and not self.opened and not self._closing:
            self._pulses = [t for t in self._pulses if not t.done()]
            self._pulses.append(asyncio.create_task(self._release()))

    async def _release(self):
        fault = await self.lock.release(ticks_diff(self._window_end, ticks_ms()))
        if fault:
            self._fault(fault)

    def _fault(self, detail):
        cab = self.app.cabinet
        if cab.lock != "fault":
            cab.lock = "fault"
            cab.alarms.add("lock_fault")
            self.app.emit({"type": "lock_fault", "detail": detail})

    async def _run_window(self):
        app = self.app
        while True:
            reason = await self._watch_window()
            # Over. From here on nothing may release the lock again: no button, no pulse still
            # waiting for its turn; only a new token, which reopens the window after this close.
            self._closing = True
            await self._cancel_pulses()
            app._promises.pop("lock", None)
            try:
                fault = await self.lock.secure() if self.lock else None
            finally:
                self._closing = False
            for m in self.missions:
                app.emit({"type": "relocked", "mission": m, "reason": reason})
            self.missions, self._reopen = self._reopen, []
            self.opened = False
            if fault:
                self._fault(fault)
            elif app.cabinet.lock != "fault":
                app.cabinet.lock = "locked"
            if self.missions:  # a token arrived while the lock was being secured
                app.cabinet.mission = self.missions[-1]
                app.cabinet.lock = "unlocked"
                continue
            break
        self._window = None
        self._window_end = None
        app.cabinet.mission = None
        app.state_changed()

    async def _watch_window(self):
        """Beacon and lock release until the door closes after opening or the time is up;
        returns the reason."""
        app = self.app
        beacon = asyncio.create_task(self._beacon())
        self._pulse()
        try:
            while True:
                app.alive("lock", 10000)
                left = ticks_diff(self._window_end, ticks_ms())
                if self.opened and app.cabinet.door == "closed":
                    return "door_closed"
                if left <= 0 and not self.opened:
                    return "window_over"
                # The window's end is in real time (ticks), like the lock's physics.
                await sleep_ms(200 if self.opened else min(max(left, 0), 200))
        except asyncio.CancelledError:
            # The app is stopping (power cut, crash, reset): outputs off, nothing more to say.
            self.all_off()
            raise
        finally:
            beacon.cancel()
            self._beacon_off()

    async def _cancel_pulses(self):
        for t in self._pulses:
            t.cancel()
        self._pulses = []
        await sleep_ms(0)  # let them run their finally (output off) before the lock is secured

    async def _beacon(self):
        # Guide the volunteer: LED blinking, a short chirp every few seconds.
        led, siren = self.app.hw.led, self.app.hw.siren
        n = 0
        while True:
            if led:
                led.value(n % 2 == 0)
            if siren and n % 6 == 0 and self.app.cabinet.door == "closed":
                siren.value(1)
                await sleep_ms(60)
                siren.value(0)
            n += 1
            await sleep_ms(500)

    def _beacon_off(self):
        if self.app.hw.led:
            self.app.hw.led.value(0)

    # -- door and button, called by the app ----------------------------------------------
    def door_opened(self):
        if self.missions and not self.opened:
            self.opened = True
            if not self.app.cabinet.service_needed:
                self.app.cabinet.service_needed = True
                self.app.flash.write(_SERVICE_FILE, json.dumps({"mission": self.missions[-1]}))

    def button_pressed(self):
        # Within a window the cabinet's button re-pulses the lock (a volunteer who missed the
        # first pulse); outside a window it does nothing.
        if self._window is None or self.opened or self._closing:
            return
        now = ticks_ms()
        if self._pressed is not None and 0 <= ticks_diff(now, self._pressed) < _BUTTON_GAP_MS:
            return
        self._pressed = now
        self._pulse()

    def service_done(self):
        self.app.flash.remove(_SERVICE_FILE)
        self.app.cabinet.service_needed = False

    def all_off(self):
        if self.lock:
            self.lock.off()

    def stop(self):
        """The app is stopping: cancel the window and any pulse; the lock output goes off."""
        for t in self._pulses + ([self._window] if self._window else []):
            t.cancel()
        self._pulses = []
        self.all_off()
