# Lock drivers. Whatever the caller asks, the driver itself bounds how long and how often an
# output is on (docs/security.md, "Lock safety"): a solenoid held on, or pulsed too often,
# burns out, and a stuck output must not leave a cabinet open. Every driver starts with its
# output off.
#
#   pulse  - a pulse solenoid or strike: energise for pulse_ms (capped at 10 s), then a cool-down
#            before the next pulse; the door stays unlatched until closed.
#   motor  - a motor latch: like pulse, but motors need only a short drive (capped at 3 s).
#   hold   - a magnetic lock, fail-safe: powered = locked. Released (output off) for the window,
#            powered again after; a power cut opens it, which is what fail-safe means.
#
# Two clocks end an output, so one stalled clock cannot keep it on:
#   - the driver's own timing in asyncio (sleep_ms), and
#   - a one-shot hardware timer (`timer`, a machine.Timer on the ESP32, injected through hw as
#     hw.lock_timer), armed before the output changes. On the ESP32 its callback is scheduled
#     (mp_sched_schedule), so it still runs while the asyncio loop is held up by Python code or
#     by many short blocking calls (an outbox scan, flash writes), but not inside one long
#     blocking C call (a DNS lookup): see docs/security.md for the hardware that closes that gap.
#
# Heat: a pulse coil is rated for a duty cycle, not for back-to-back pulses. The driver keeps an
# estimate of the coil's heat in milliseconds of on-time: each pulse adds its measured on-time,
# and _COOL_RATIO ms off take 1 ms away (a 25 % duty coil). A pulse starts only when its whole
# length fits under the budget (the pulse cap), so no caller (button, tokens, a second volunteer)
# can heat the coil further than one capped pulse from the budget. After a reset the coil may
# still be hot (a power flicker right after a long pulse), so the estimate starts full: the
# first pulse after a boot may wait up to _COOL_RATIO times its length.
from aedgate.compat import const, sleep_ms, ticks_diff, ticks_ms

_PULSE_CAP_MS = const(10000)
_MOTOR_CAP_MS = const(3000)
_HOLD_CAP_MS = const(1800000)   # a magnetic lock is released for one window at most (max_window_s)
_SENSE_WAIT_MS = const(300)
_COOL_RATIO = const(3)          # ms off needed per ms on: a 25 % duty rating
MIN_COOLDOWN_MS = const(500)    # the least pause between two pulses, whatever the config says


class PulseLock:
    def __init__(self, out, pulse_ms, cooldown_ms, cap_ms=_PULSE_CAP_MS, sense=None, timer=None):
        self._out = out
        out.value(0)
        self._timer = timer
        self.pulse_ms = min(pulse_ms, cap_ms)
        self.cooldown_ms = max(cooldown_ms, MIN_COOLDOWN_MS)
        self.budget_ms = cap_ms
        self._heat = cap_ms          # assume hot after a reset (see the module comment)
        self._heat_at = ticks_ms()
        self._last_off = self._heat_at
        self._sense = sense
        self.busy = False

    def heat_ms(self):
        """The coil's estimated heat, in ms of recent on-time (0 = cold)."""
        if self._heat:
            cooled = ticks_diff(ticks_ms(), self._heat_at) // _COOL_RATIO
            # cooled < 0: the ticks wrapped (idle for 6+ days): long cold.
            if cooled < 0 or cooled >= self._heat:
                self._heat = 0
            else:
                return self._heat - cooled
        return 0

    def wait_ms(self):
        """How long the next pulse must wait for the cool-down and the heat budget."""
        wait = 0
        if self._last_off is not None:
            since = ticks_diff(ticks_ms(), self._last_off)
            if 0 <= since < self.cooldown_ms:
                wait = self.cooldown_ms - since
            else:
                self._last_off = None  # cooled down (also after the ticks wrapped)
        over = (self.heat_ms() + self.pulse_ms - self.budget_ms) * _COOL_RATIO
        return over if over > wait else wait

    async def release(self, window_ms):
        """Energise once for the pulse time, as soon as cool-down and heat allow, if that is
        within `window_ms` from now. Returns None, or a fault detail string."""
        if self.busy or window_ms <= 0:
            return None  # a pulse is running or waiting already; or the window is over
        self.busy = True
        start = ticks_ms()
        on_at = None
        heat = 0
        try:
            while True:
                wait = self.wait_ms()
                if wait <= 0:
                    break
                if ticks_diff(ticks_ms(), start) + wait >= window_ms:
                    return None  # the coil cannot pulse again inside this window
                await sleep_ms(wait)
            heat = self.heat_ms()
            timer = self._timer
            if timer:
                # Armed first: if arming fails the output never goes on.
                timer.init(mode=timer.ONE_SHOT, period=self.pulse_ms, callback=self._cut)
            on_at = ticks_ms()
            self._out.value(1)
            fault = await _confirm(self._sense, 0, self.pulse_ms)
            left = self.pulse_ms - ticks_diff(ticks_ms(), on_at)
            if left > 0:
                await sleep_ms(left)
            return fault
        finally:
            self._out.value(0)  # also when cancelled (power cut in the simulator, a crash)
            if self._timer:
                self._timer.deinit()
            if on_at is not None:
                now = ticks_ms()
                # Measured by the loop: longer than the real on-time when the timer cut the
                # pulse during a stall, which only makes the estimate safer.
                self._heat = heat + ticks_diff(now, on_at)
                self._heat_at = self._last_off = now
            self.busy = False

    def _cut(self, timer):
        self._out.value(0)

    async def secure(self):
        self._out.value(0)
        return None

    def off(self):
        self._out.value(0)
        if self._timer:
            self._timer.deinit()


class HoldLock:
    def __init__(self, out, sense=None, timer=None):
        self._out = out
        self._sense = sense
        self._timer = timer
        out.value(1)  # the app has started: lock the cabinet (boot.py left it off)
        self.busy = False

    async def release(self, window_ms):
        """Release the magnet for at most `window_ms` (capped): the hardware timer powers it
        again at the end even if nobody calls secure()."""
        if window_ms <= 0:
            return None  # the window is over: a late button press must not open the cabinet
        timer = self._timer
        if timer:
            timer.init(mode=timer.ONE_SHOT, period=min(window_ms, _HOLD_CAP_MS), callback=self._relock)
        self._out.value(0)
        return await _confirm(self._sense, 0, _SENSE_WAIT_MS)

    def _relock(self, timer):
        self._out.value(1)

    async def secure(self):
        if self._timer:
            self._timer.deinit()
        self._out.value(1)
        return await _confirm(self._sense, 1, _SENSE_WAIT_MS)

    def off(self):
        if self._timer:
            self._timer.deinit()
        self._out.value(0)


async def _confirm(sense, expected, within_ms):
    """With a lock sensor, check the lock followed the command; None when fine or unknown."""
    if sense is None:
        return None
    await sleep_ms(_SENSE_WAIT_MS if _SENSE_WAIT_MS < within_ms else within_ms)
    # sense reads 1 while the bolt is engaged (locked)
    if sense.value() != expected:
        return "feedback"
    return None


def make(cfg, out, sense=None, timer=None):
    kind = cfg["lock_type"]
    if kind == "hold":
        return HoldLock(out, sense, timer)
    cap = _MOTOR_CAP_MS if kind == "motor" else _PULSE_CAP_MS
    return PulseLock(out, cfg["lock_pulse_ms"], cfg["lock_cooldown_ms"], cap, sense, timer)
