# `machine` for the virtual device: the ESP32 API the firmware uses, backed by the simulated
# cabinet in the harness (simulator/vdev/device.py) through _vdevrt. Placed on the unix port's path it
# overrides the port's built-in `machine`. What the ESP32 does and where that is written in
# MicroPython's sources: docs/twin.md.
import os
import time

import _vdevrt

# GPIOs that exist on the ESP32 classic (ports/esp32/machine_pin.h MICROPY_HW_ENABLE_GPIOn,
# v1.23-v1.28: 0-23, 25-27, 32-39; 24 and 28-31 are not bonded out).
_VALID_PINS = set(range(0, 24)) | {25, 26, 27} | set(range(32, 40))
_FIRST_INPUT_ONLY = 34  # machine_pin.c GPIO_FIRST_NON_OUTPUT: 34-39 have no output driver, no pulls

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5

    def __init__(self, id, mode=-1, pull=-1, *, value=None):
        id = id.id if isinstance(id, Pin) else id
        # machine_pin_find(): anything but an existing GPIO number is "invalid pin"
        if not isinstance(id, int) or id not in _VALID_PINS:
            raise ValueError("invalid pin")
        self.id = id
        self._mode = self.IN
        self._pull = None
        self._out = 0
        self._handler = None
        self._trigger = 0
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, *, value=None):
        if mode != -1 and mode is not None:
            if mode & 2 and self.id >= _FIRST_INPUT_ONLY:  # OUT and OPEN_DRAIN have the output bit
                raise ValueError("pin can only be input")
            if 6 <= self.id <= 11:
                # Accepted by machine.Pin, but on WROOM/WROVER modules these pads are the SPI flash
                # the code runs from (docs/esp32/quickref.rst): configuring one as a GPIO cuts the
                # flash off and the chip crashes (panic -> HARD_RESET). Modelled as that crash.
                print("vdev: GPIO%d is the module's flash bus: the board crashes" % self.id)
                _vdevrt.halt("hard")
            self._mode = mode
        if pull != -1:
            # 34-39 have no pull resistors: ESP-IDF refuses, MicroPython ignores the error, the
            # pin floats (reads whatever the world drives, 0 when nothing does).
            self._pull = pull if self.id < _FIRST_INPUT_ONLY else None
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            if self._mode in (self.OUT, self.OPEN_DRAIN):
                return self._out
            _vdevrt.drain()
            level = _vdevrt.state["pins"].get(str(self.id))
            if level is None:
                return 1 if self._pull == self.PULL_UP else 0
            return level
        v = 1 if v else 0
        if self._mode in (self.OUT, self.OPEN_DRAIN):
            self._out = v
            _vdevrt.send({"out": self.id, "v": v})

    __call__ = value

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3, wake=None):
        # no `hard` on the ESP32 (machine_pin.c): every pin handler is scheduled (soft)
        self._handler = handler
        self._trigger = trigger
        _vdevrt.watch(self)

    def __repr__(self):
        return "Pin(%d)" % self.id


class ADC:
    """The ESP32's ADC1 as read_uv() reports it (ports/esp32/adc.c: one conversion, calibrated,
    millivolt steps; docs/esp32/quickref.rst): linear only within 150-2450 mV at ATTN_11DB (above
    that the twin compresses the reading, so a value there is wrong, as on the chip, up to
    raw 4095 near 3.1 V); each conversion carries noise (ESP-IDF "Minimizing Noise"): gaussian,
    sigma _NOISE_MV at the pin (the world's adc_noise_mv), from a generator seeded with the
    board's id so a run can be repeated."""

    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 3
    _LINEAR_MV = (950, 1250, 1750, 2450)  # top of the linear range per attenuation
    _NOISE_MV = 12

    def __init__(self, pin, *, atten=0):
        self.id = pin.id if isinstance(pin, Pin) else pin
        self._atten = atten
        self._rng = (int.from_bytes(unique_id(), "big") ^ (self.id * 2654435761)) & 0xFFFFFFFF or 1

    def atten(self, a):
        self._atten = a

    def width(self, w):
        pass

    def _uniform(self):
        x = self._rng  # xorshift32: our own stream, so the firmware's `random` stays unseeded
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._rng = x
        return x / 4294967296

    def read_uv(self):
        _vdevrt.drain()
        mv = _vdevrt.state["adc"].get(str(self.id), 0) / 1000
        sigma = _vdevrt.state.get("adc_noise_mv", self._NOISE_MV)
        mv += sigma * (sum(self._uniform() for _ in range(12)) - 6)  # ~gaussian
        top = self._LINEAR_MV[self._atten]
        if mv > top:
            mv = top + (mv - top) / 2  # beyond the linear range the reading falls short
        full = top + 650 if self._atten == 3 else top + 100
        return int(max(0, min(mv, full))) * 1000

    def read_u16(self):
        return min(65535, self.read_uv() * 65535 // 3300000)

    def read(self):
        return self.read_u16() >> 4


class WDT:
    """ports/esp32/machine_wdt.c: one task watchdog, id 0 only; no deinit. Constructing it again
    re-times the same watchdog. It lives in the harness, so it outlives soft resets (Ctrl-D,
    raw-REPL entry) as the C static does on the board; only a hard reset or power-off ends it."""

    _the = None

    def __new__(cls, id=0, timeout=5000):
        if id != 0:
            raise ValueError()
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        if cls._the is None:
            cls._the = object.__new__(cls)
        return cls._the

    def __init__(self, id=0, timeout=5000):
        _vdevrt.send({"wdt": timeout})

    def feed(self):
        _vdevrt.send({"feed": 1})


class Timer:
    """ports/esp32/machine_timer.c (v1.25+): hardware timers 0-3, callbacks are soft (scheduled:
    they run between bytecodes, never inside a blocking call), all stopped by a soft reset
    (main.c machine_timer_deinit_all). Here a thread per running timer schedules the callback;
    its gc.collect() signals the main thread, so a REPL waiting for input or a sleep runs the
    callback as the board does (the unix port runs pending callbacks on EINTR). A soft reset
    ends the interpreter and its threads: the timers stop."""

    ONE_SHOT = 0
    PERIODIC = 1
    _all = {}

    def __new__(cls, id, **kw):
        if not isinstance(id, int) or not 0 <= id <= 3:
            raise ValueError("invalid Timer number")
        t = cls._all.get(id)
        if t is None:
            t = object.__new__(cls)
            t.id, t._gen, t._cb, t._start, t._period = id, 0, None, None, 0
            cls._all[id] = t
        return t

    def __init__(self, id, **kw):
        if kw:
            self.init(**kw)

    def init(self, *, mode=1, callback=None, period=0xffffffff, tick_hz=1000, freq=None, hard=False):
        if hard:
            raise ValueError("hard Timers are not implemented")
        if freq is not None:
            period = 1000 / freq
        else:
            period = period * 1000 / tick_hz
        self.deinit()
        self._cb, self._period, self._start = callback, period, time.ticks_ms()
        gen = self._gen
        import _thread
        _thread.start_new_thread(self._run, (gen, mode, max(1, int(period))))

    def _run(self, gen, mode, period_ms):
        import gc
        import micropython
        import utime
        next_at = utime.ticks_add(utime.ticks_ms(), period_ms)
        while self._gen == gen:
            left = utime.ticks_diff(next_at, utime.ticks_ms())
            if left > 0:
                utime.sleep_ms(left if left < 50 else 50)
                continue
            next_at = utime.ticks_add(next_at, period_ms)
            if self._cb is not None:
                try:
                    micropython.schedule(self._cb, self)
                except RuntimeError:  # queue full: the board drops the event too
                    pass
                gc.collect()  # wakes the main thread (signal, EINTR) to run it now
            if mode == self.ONE_SHOT:
                return

    def value(self):
        if self._start is None:
            raise ValueError("timer not set")
        return time.ticks_diff(time.ticks_ms(), self._start)

    def deinit(self):
        self._gen += 1
        self._cb = None


class RTC:
    """ports/esp32/machine_rtc.c: a singleton; datetime() is (year, month, mday, weekday, hour,
    minute, second, microsecond), weekday 0 = Monday, ignored when setting; exactly 8 items.
    The clock itself is the `time` shim's (epoch 2000, kept by the harness across resets)."""

    _the = None

    def __new__(cls, id=0):
        if cls._the is None:
            cls._the = object.__new__(cls)
        return cls._the

    def datetime(self, dt=None):
        if dt is None:
            now = time._now()
            t = time.gmtime(int(now))
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], int((now % 1) * 1000000))
        if len(dt) != 8:
            raise ValueError("requested length 8 but object has length %d" % len(dt))
        secs = time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0)) + dt[7] / 1000000
        host_s, dev_s = time._set(secs)
        _vdevrt.send({"rtc": [host_s, dev_s]})


def unique_id():
    return bytes.fromhex(os.getenv("VDEV_UID") or "a0b1c2d3e4f5")


def reset_cause():
    return int(os.getenv("VDEV_RESET_CAUSE") or PWRON_RESET)


def reset():
    _vdevrt.halt("hard")


def soft_reset():
    _vdevrt.halt("soft")


def deepsleep(ms=0):
    _vdevrt.halt("deepsleep", ms=ms)


def lightsleep(ms=0):
    time.sleep_ms(ms)


def idle():
    time.sleep_ms(1)


def freq(hz=None):
    return 240000000 if hz is None else None


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


def bootloader():
    print("the virtual device has no bootloader")
