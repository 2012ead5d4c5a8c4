# The small differences between MicroPython (ESP32, unix port) and CPython, in one place.
# Everything else in the firmware uses the subset both share.
import sys
import time

try:
    import asyncio
except ImportError:  # older MicroPython
    import uasyncio as asyncio

MICROPYTHON = sys.implementation.name == "micropython"

try:
    from micropython import const
except ImportError:
    def const(x):
        return x

# ESP32 ticks wrap at 2**30 ms (~12.4 days). We use that period on every runtime, so a wrap bug
# shows up on a PC too. TICKS_START lets a run begin just before the wrap (as Linux starts its
# jiffies near overflow) so the wrap is crossed early instead of after twelve days.
TICKS_PERIOD = const(1 << 30)
_TICKS_MASK = const((1 << 30) - 1)
_TICKS_HALF = const(1 << 29)
_ticks_start = 0

if MICROPYTHON:
    _raw_ms = time.ticks_ms
else:
    def _raw_ms():
        return int(time.monotonic() * 1000)


def set_ticks_start(start_ms):
    global _ticks_start
    _ticks_start = (start_ms - _raw_ms()) & _TICKS_MASK


def ticks_ms():
    return (_raw_ms() + _ticks_start) & _TICKS_MASK


def ticks_add(t, delta):
    return (t + delta) & _TICKS_MASK


def ticks_diff(a, b):
    # Signed difference a - b on the wrapping clock; valid while |a - b| < 2**29 ms.
    return ((a - b + _TICKS_HALF) & _TICKS_MASK) - _TICKS_HALF


# Unix seconds, whatever the port's epoch (ESP32: 2000-01-01, unix port and CPython: 1970).
EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0


def unix_time():
    return int(time.time()) + EPOCH_OFFSET


def sleep_ms(ms):
    if MICROPYTHON:
        return asyncio.sleep_ms(ms)
    return asyncio.sleep(ms / 1000)


if MICROPYTHON:
    wait_ms = asyncio.wait_for_ms
else:
    async def wait_ms(aw, ms):
        """await `aw`, for at most `ms`; asyncio.TimeoutError after that. CPython 3.11's
        wait_for can swallow a cancellation that lands as the awaited thing finishes (a task
        then lives on after it was cancelled) and makes a task per call; timeout() does neither."""
        async with asyncio.timeout(ms / 1000):
            return await aw


# Two ways to wake a waiting task (docs/design.md, "compat"). Both wake one waiter and clear
# themselves when it runs; wait_ms() gives up after `ms` and says which happened.
# - TaskSignal: set by another task. On MicroPython an asyncio.Event (set() puts the waiter
#   straight on the run queue: microseconds); never set it from an interrupt handler, not even
#   a scheduled one (extmod/asyncio/event.py says so: the handler may run while the scheduler
#   is halfway through changing its queues).
# - IrqSignal: set by a pin interrupt handler. On MicroPython an asyncio.ThreadSafeFlag, which
#   the scheduler polls like a socket: safe from any context, but slower to wake (on the unix
#   port a poller holding one never sleeps in poll() longer than 1 ms and each wake costs ~1 ms).
# On CPython both are one future while someone waits and nothing otherwise (an asyncio.Event
# costs ~0.75 KB and the simulator has several per cabinet); the simulator's pins call their
# handlers from the loop's own thread.
if MICROPYTHON:
    class TaskSignal(asyncio.Event):
        """Wakes one waiting task; set() only from a task (or plain code on the loop)."""

        def set(self):
            if self.waiting.peek():
                asyncio.Event.set(self)  # runs the waiter, which takes the signal with it
                self.state = False
            else:
                self.state = True

        def wait(self):
            # Event's own wait (no coroutine of ours around it): this is every ack's wait.
            if self.state:
                self.state = False
                return sleep_ms(0)
            return asyncio.Event.wait(self)

        async def wait_ms(self, ms):
            """wait(), but for at most `ms`: True when set, False on time-out."""
            if self.state:
                self.state = False
                return True
            try:
                await wait_ms(asyncio.Event.wait(self), ms)
                return True
            except asyncio.TimeoutError:
                return False

    class IrqSignal:
        """Wakes one waiting task; safe to set from a pin interrupt handler."""

        def __init__(self):
            self._f = asyncio.ThreadSafeFlag()

        def set(self):
            self._f.set()

        def wait(self):
            return self._f.wait()
else:
    class TaskSignal:
        """Wakes one waiting task. One future while someone waits and nothing otherwise."""

        __slots__ = ("_is_set", "_waiter")

        def __init__(self):
            self._is_set = False
            self._waiter = None

        def set(self):
            self._is_set = True
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(None)

        async def wait(self):
            if not self._is_set:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            self._is_set = False

        async def wait_ms(self, ms):
            """wait(), but for at most `ms`: True when set, False on time-out."""
            try:
                await wait_ms(self.wait(), ms)
                return True
            except asyncio.TimeoutError:
                return False

    IrqSignal = TaskSignal  # CPython has no interrupts: the simulator's pins run on the loop


def unsent(writer):
    """Whether `writer` may hold bytes that only drain() will send. MicroPython's Stream tries
    the socket at once in write() and keeps only what did not fit (out_buf); other writers
    (CPython's, test links) are always drained."""
    return getattr(writer, "out_buf", True)


def days_from_civil(y, m, d):
    # Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's algorithm): no
    # dependence on the port's mktime/epoch.
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_date(text):
    """'YYYY-MM-DD' -> days since 1970-01-01, or None when it is not a real date."""
    if not isinstance(text, str) or len(text) != 10 or text[4] != "-" or text[7] != "-":
        return None
    try:
        y, m, d = int(text[:4]), int(text[5:7]), int(text[8:])
    except ValueError:
        return None
    if not (1 <= m <= 12 and 1 <= d <= 31):
        return None
    days = days_from_civil(y, m, d)
    # Reject 2026-02-30 and the like: the date must survive a round trip.
    if civil_from_days(days) != (y, m, d):
        return None
    return days


def civil_from_days(z):
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return (y + (m <= 2), m, d)
