# Lock drivers. Whatever the caller asks, the driver itself bounds how long an output stays on
# (SECURITY.md rule 4): a solenoid held on burns out, and a stuck output must not leave a
# cabinet open. Every driver starts with its output off.
#
#   pulse  - a pulse solenoid or strike: energise for pulse_ms (capped at 10 s), then a cool-down
#            before the next pulse; the door stays unlatched until closed.
#   motor  - a motor latch: like pulse, but motors need only a short drive (capped at 3 s).
#   hold   - a magnetic lock, fail-safe: powered = locked. Released (output off) for the window,
#            powered again after; a power cut opens it, which is what fail-safe means.
from aedgate.compat import const, sleep_ms, ticks_diff, ticks_ms

_PULSE_CAP_MS = const(10000)
_MOTOR_CAP_MS = const(3000)
_SENSE_WAIT_MS = const(300)


class PulseLock:
    def __init__(self, out, pulse_ms, cooldown_ms, cap_ms=_PULSE_CAP_MS, sense=None):
        self._out = out
        out.value(0)
        self.pulse_ms = min(pulse_ms, cap_ms)
        self.cooldown_ms = cooldown_ms
        self._last_off = None
        self._sense = sense
        self.busy = False

    async def release(self, window_ms):
        """Energise once for the pulse time. Returns None, or a fault detail string."""
        if self.busy:
            return None  # a pulse is running already: the door is unlatched right now
        self.busy = True
        try:
            if self._last_off is not None:
                wait = self.cooldown_ms - ticks_diff(ticks_ms(), self._last_off)
                if wait > 0:
                    await sleep_ms(wait)
            self._out.value(1)
            fault = await _confirm(self._sense, 0)
            await sleep_ms(self.pulse_ms)
            return fault
        finally:
            self._out.value(0)  # also when cancelled (power cut in the simulator, a crash)
            self._last_off = ticks_ms()
            self.busy = False

    async def secure(self):
        self._out.value(0)
        return None

    def off(self):
        self._out.value(0)


class HoldLock:
    def __init__(self, out, sense=None):
        self._out = out
        self._sense = sense
        out.value(1)  # the app has started: lock the cabinet (boot.py left it off)
        self.busy = False

    async def release(self, window_ms):
        self._out.value(0)
        return await _confirm(self._sense, 0)

    async def secure(self):
        self._out.value(1)
        return await _confirm(self._sense, 1)

    def off(self):
        self._out.value(0)


async def _confirm(sense, expected):
    """With a lock sensor, check the lock followed the command; None when fine or unknown."""
    if sense is None:
        return None
    await sleep_ms(_SENSE_WAIT_MS)
    # sense reads 1 while the bolt is engaged (locked)
    if sense.value() != expected:
        return "feedback"
    return None


def make(cfg, out, sense=None):
    kind = cfg["lock_type"]
    if kind == "hold":
        return HoldLock(out, sense)
    cap = _MOTOR_CAP_MS if kind == "motor" else _PULSE_CAP_MS
    return PulseLock(out, cfg["lock_pulse_ms"], cfg["lock_cooldown_ms"], cap, sense)
