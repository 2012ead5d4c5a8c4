# `machine` for the virtual device: the ESP32 API the firmware uses, backed by the simulated
# cabinet in the harness (simulator/vdev/device.py) through _vdevrt. Placed on the unix port's path it
# overrides the port's built-in `machine`.
import os
import time

import _vdevrt

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
        self.id = id.id if isinstance(id, Pin) else id
        self._mode = self.IN
        self._pull = None
        self._out = 0
        self._handler = None
        self._trigger = 0
        self.init(mode, pull, value=value)

    def init(self, mode=-1, pull=-1, *, value=None):
        if mode != -1 and mode is not None:
            self._mode = mode
        if pull != -1:
            self._pull = pull
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

    def irq(self, handler=None, trigger=3, wake=None, hard=False):
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
    def __init__(self, id=0, timeout=5000):
        self._timeout = timeout
        _vdevrt.send({"wdt": timeout})

    def feed(self):
        _vdevrt.send({"feed": 1})


class RTC:
    def datetime(self, dt=None):
        if dt is not None:
            return None  # the virtual device's clock is the host's
        t = time.localtime()
        return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)

    def init(self, dt):
        pass


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
