# The unlock window: a dispatch token opens this cabinet for one volunteer, for a few minutes.
#   token accepted -> `unlocked` (mission, window) -> lock released, locate beacon on ->
#   door opened (`door_opened` with the mission, not an alarm) -> door closed or window over ->
#   `relocked`. A cabinet opened in a mission then reports `service_needed` (its AED was
#   probably taken) until a technician's signed `aed_checked` service command clears it.
# At the end of the window the lock is secured whatever happens meanwhile: waiting pulses are
# cancelled, the button is ignored, and a token arriving then opens a new window after it.
import json

from aedgate.beacon import Beacon
from aedgate.compat import asyncio, const, sleep_ms, ticks_add, ticks_diff, ticks_ms
from aedgate.service import SERVICE_FILE

_BUTTON_GAP_MS = const(2000)     # the button re-pulses at most this often (heat, wear)


class UnlockWindow:
    def __init__(self, app, lock):
        self.app = app
        self.lock = lock            # a driver from aedgate.lock, or None (no lock output)
        self.beacon = Beacon(app.hw, app.cabinet)
        self.missions = []          # mission ids of the open window (a second volunteer adds one)
        self.opened = False         # the door was opened inside this window
        self.task = None            # the running window, or None when the cabinet is locked
        self._end = None            # ticks_ms
        self._pulses = []
        self._closing = False       # the window is over and the lock is being secured
        self._reopen = []           # missions whose token came in while it was being secured
        self._pressed = None        # ticks of the last button press that re-pulsed
        app.cabinet.service_needed = app.flash.read(SERVICE_FILE) is not None

    def start(self, mission, window_s):
        app = self.app
        end = ticks_add(ticks_ms(), window_s * 1000)
        if self._end is None or ticks_diff(end, self._end) > 0:
            self._end = end
        if self._closing:
            if mission not in self._reopen:
                self._reopen.append(mission)  # opened again once the lock is secured
        elif mission not in self.missions:
            self.missions.append(mission)
        app.cabinet.mission = mission
        app.cabinet.lock = "unlocked"
        app.emit({"type": "unlocked", "mission": mission, "window_s": window_s})
        if self.task is None:
            self.task = asyncio.create_task(self._run())
        elif not self._closing:
            self._pulse()  # a second volunteer: release again if the door is still closed
        # else: the window is being closed; _run opens it again for this mission

    def _pulse(self):
        if self.lock and not self.opened and not self._closing:
            self._pulses = [t for t in self._pulses if not t.done()]
            self._pulses.append(asyncio.create_task(self._release()))

    async def _release(self):
        fault = await self.lock.release(ticks_diff(self._end, ticks_ms()))
        if fault:
            self._fault(fault)

    def _fault(self, detail):
        cab = self.app.cabinet
        if cab.lock != "fault":
            cab.lock = "fault"
            cab.alarms.add("lock_fault")
            self.app.emit({"type": "lock_fault", "detail": detail})

    async def _run(self):
        app = self.app
        while True:
            reason = await self._watch()
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
        self.task = None
        self._end = None
        app.cabinet.mission = None
        app.state_changed()

    async def _watch(self):
        """Beacon and lock release until the door closes after opening or the time is up;
        returns the reason."""
        app = self.app
        beacon = asyncio.create_task(self.beacon.run())
        self._pulse()
        try:
            while True:
                app.alive("lock", 10000)
                left = ticks_diff(self._end, ticks_ms())
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
            self.beacon.off()

    async def _cancel_pulses(self):
        for t in self._pulses:
            t.cancel()
        self._pulses = []
        await sleep_ms(0)  # let them run their finally (output off) before the lock is secured

    # -- door and button, called by the app ----------------------------------------------
    def door_opened(self):
        if self.missions and not self.opened:
            self.opened = True
            if not self.app.cabinet.service_needed:
                self.app.cabinet.service_needed = True
                self.app.flash.write(SERVICE_FILE, json.dumps({"mission": self.missions[-1]}))

    def button_pressed(self):
        # Within a window the cabinet's button re-pulses the lock (a volunteer who missed the
        # first pulse); outside a window it does nothing.
        if self.task is None or self.opened or self._closing:
            return
        now = ticks_ms()
        if self._pressed is not None and 0 <= ticks_diff(now, self._pressed) < _BUTTON_GAP_MS:
            return
        self._pressed = now
        self._pulse()

    def all_off(self):
        if self.lock:
            self.lock.off()

    def stop(self):
        """The app is stopping: cancel the window and any pulse; the lock output goes off."""
        for t in self._pulses + ([self.task] if self.task else []):
            t.cancel()
        self._pulses = []
        self.all_off()
