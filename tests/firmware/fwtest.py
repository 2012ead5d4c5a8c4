# Helpers for firmware unit tests; runs under CPython and the MicroPython unix port alike.
import os

from aedgate.compat import sleep_ms
from aedgate.storage import Flash


def temp_flash():
    """A fresh flash folder (the unix port has no tempfile module)."""
    name = "/tmp/aedtest-" + "".join("%02x" % b for b in os.urandom(6))
    return Flash(name)


def wipe(flash):
    _rmtree(flash.root)


def _rmtree(path):
    for name in os.listdir(path):
        p = path + "/" + name
        if os.stat(p)[0] & 0x4000:
            _rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


class FullFlash:
    """A flash whose filesystem fills up: past `room` bytes of new data (or at once, room=0),
    writes and appends raise OSError(ENOSPC) as littlefs does; removing frees room."""

    def __init__(self, inner, room=0, top=None):
        self.inner = inner
        self.top = top or self
        self.room = room
        self.refused = 0

    def _take(self, n):
        if self.top.room < n:
            self.top.refused += 1
            raise OSError(28, "ENOSPC")
        self.top.room -= n

    def read(self, name):
        return self.inner.read(name)

    def names(self):
        return self.inner.names()

    def write(self, name, data):
        old = self.inner.read(name)
        self._take(max(0, len(data) - (len(old) if old else 0)))
        self.inner.write(name, data)

    def append(self, name, data):
        self._take(len(data))
        self.inner.append(name, data)

    def remove(self, name):
        old = self.inner.read(name)
        if old is not None:
            self.top.room += len(old)
        self.inner.remove(name)

    def move(self, name, dest):
        self.inner.move(name, dest.inner)

    def sub(self, name):
        return FullFlash(self.inner.sub(name), top=self.top)


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
        self.siren = Pin(0)
        self.led = Pin(0)
        self.battery = ADC(2500000)  # 2.5 V at the pin x 5.0 divider = 12.5 V
        self.temp = Thermo(21.0)
        self.lines = []
        self.log = self.lines.append
