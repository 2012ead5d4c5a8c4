# Helpers for firmware unit tests; runs under CPython and the MicroPython unix port alike.
import _thread
import os
import time

from aedgate.compat import sleep_ms
from aedgate.storage import Flash


def temp_flash():
    """A fresh flash folder (the unix port has no tempfile module)."""
    name = "/tmp/aedtest-" + "".join("%02x" % b for b in os.urandom(6))
    return Flash(name)


def wipe(flash):
    for n in flash.names():
        flash.remove(n)
    try:
        os.rmdir(flash.root)
    except OSError:
        pass


class Pin:
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, level=0):
        self.level = level
        self.handler = None
        self.history = []

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = 1 if v else 0
        self.history.append(self.level)

    def irq(self, handler=None, trigger=3):
        self.handler = handler

    def drive(self, level):
        if level != self.level:
            self.level = level
            if self.handler:
                self.handler(self)


class Timer:
    """A one-shot hardware timer that behaves like the ESP32's machine.Timer (hw.lock_timer):
    ONE_SHOT = 0, init(mode=, period=, callback=), deinit(); the callback is *scheduled*, not run
    in an interrupt (ports/esp32/machine_timer.c: mp_sched_schedule). On MicroPython a thread
    waits out the period and hands the callback to micropython.schedule, exactly that path.
    Under CPython the thread calls it itself; the GIL passes between bytecodes of the main
    thread, or while it waits in a call that releases the GIL (as time.sleep, which on the ESP32
    runs scheduled callbacks too)."""

    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self):
        self._gen = 0
        self.fired = 0
        self.armed = False

    def init(self, mode=1, period=0xFFFFFFFF, callback=None):
        if mode != self.ONE_SHOT:
            raise ValueError("only ONE_SHOT here")
        self._gen += 1
        self.armed = True
        _thread.start_new_thread(self._wait, (self._gen, period, callback))

    def deinit(self):
        self._gen += 1
        self.armed = False

    def _wait(self, gen, period, callback):
        time.sleep(period / 1000)
        if _schedule:
            _schedule(self._fire, (gen, callback))
        else:
            self._fire((gen, callback))

    def _fire(self, arg):
        gen, callback = arg
        if gen != self._gen:
            return  # deinit() or a new init() came first
        self._gen += 1
        self.armed = False
        self.fired += 1
        callback(self)


try:
    from micropython import schedule as _schedule
except ImportError:
    _schedule = None


class Clock:
    def __init__(self, t=1795000000):
        self.t = t

    def time(self):
        return self.t

    def sleep_ms(self, ms):
        return sleep_ms(ms)


class ADC:
    def __init__(self, uv):
        self.uv = uv

    def read_uv(self):
        return self.uv


class Thermo:
    def __init__(self, c):
        self.c = c

    async def read_c(self):
        return self.c


class NoNet:
    def isconnected(self):
        return False

    async def open(self, host, port, ssl=None, server_hostname=None):
        raise OSError("no network in this test")


class Hardware:
    def __init__(self):
        self.unique_id = "cab-test"
        self.reset_cause = "power_on"
        self.clock = Clock()
        self.net = NoNet()
        self.door = Pin(0)
        self.mains = Pin(1)
        self.button = Pin(0)
        self.lock = Pin(0)
        self.lock_sense = None
        self.lock_timer = Timer()
        self.siren = Pin(0)
        self.led = Pin(0)
        self.battery = ADC(2500000)  # 2.5 V at the pin x 5.0 divider = 12.5 V
        self.temp = Thermo(21.0)
        self.lines = []
        self.log = self.lines.append
