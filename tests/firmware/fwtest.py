# Helpers for firmware unit tests; runs under CPython and the MicroPython unix port alike.
import os

from aedgate.compat import sleep_ms
from aedgate.storage import Flash
from aedgate.mqttwire import publish_header


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


def publish_packet(topic, payload, qos=0, retain=False, dup=False, pid=0):
    """A whole PUBLISH packet, as a broker sends one (the firmware only needs the header)."""
    if isinstance(payload, str):
        payload = payload.encode()
    return bytes(publish_header(topic, len(payload), qos, retain, dup, pid, payload))
