# Helpers for firmware unit tests; runs under CPython and the MicroPython unix port alike.
import _thread
import os
import time

from aedgate.compat import sleep_ms
from aedgate.storage import Flash
from aedgate.mqttwire import publish_header


def temp_flash():
    """A fresh flash folder (the unix port has no tempfile module)."""
    name = "/tmp/aedtest-" + "".join("%02x" % b for b in os.urandom(6))
    return Flash(name)


def joined(data):
    """What storage.Flash.write writes: bytes or str, or its parts one after the other (each
    copied as it comes: the firmware may reuse one buffer for the next part)."""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return b"".join([p.encode() if isinstance(p, str) else bytes(p) for p in data])


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


class ReadThrough:
    """Base of the flash wrappers below that change only how writes behave: reads and listings
    go to the wrapped flash unchanged."""

    def read(self, name):
        return self.inner.read(name)

    def read_at(self, name, start, size):
        return self.inner.read_at(name, start, size)

    def names(self):
        return self.inner.names()


class FullFlash(ReadThrough):
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

    def write(self, name, data):
        data = joined(data)
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


class Recorder:
    """A flash that notes how big a piece of heap each call hands over or takes back: the
    largest part given to write() (a whole file in one piece counts as one part) and the bytes
    each read returns (storage.Flash.write takes parts so no caller needs a big block)."""

    def __init__(self, inner, top=None):
        self.inner = inner
        self.top = top or self
        self.largest_part = 0
        self.reads = []   # (name, bytes returned)

    def _note(self, n):
        self.top.largest_part = max(self.top.largest_part, n)

    def read(self, name):
        data = self.inner.read(name)
        self.top.reads.append((name, len(data) if data else 0))
        return data

    def read_at(self, name, start, size):
        data = self.inner.read_at(name, start, size)
        self.top.reads.append((name, len(data) if data else 0))
        return data

    def names(self):
        return self.inner.names()

    def write(self, name, data):
        if isinstance(data, (bytes, bytearray, memoryview, str)):
            data = (data,)

        def parts():
            for p in data:
                self._note(len(p))
                yield p
        self.inner.write(name, parts())

    def append(self, name, data):
        self._note(len(data))
        self.inner.append(name, data)

    def remove(self, name):
        self.inner.remove(name)

    def move(self, name, dest):
        self.inner.move(name, dest.inner)

    def sub(self, name):
        return Recorder(self.inner.sub(name), top=self.top)


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
    """A board's clock: Unix seconds, settable (RTC), with an SNTP server answering `sntp_t`
    (an exception instance: the server fails so)."""

    def __init__(self, t=1796000000):
        self.t = t
        self.sntp_t = None
        self.asked = []

    def time(self):
        return self.t

    def set(self, t):
        self.t = t

    def sntp(self, host):
        self.asked.append(host)
        if isinstance(self.sntp_t, Exception):
            raise self.sntp_t
        if self.sntp_t is None:
            raise OSError(110)
        return self.sntp_t

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


class LoopNet:
    """Wi-Fi that is up; sockets through the firmware's own link.py, as board.WiFi does (the
    hw.net of docs/hardware.md, for runs against a real broker on loopback)."""

    def isconnected(self):
        return True

    async def join(self):
        pass

    def getaddrinfo(self, host, port):
        from aedgate import link
        return link.lookup(host, port)

    def connect(self, addr, ssl=None, server_hostname=None):
        from aedgate import link
        return link.open_stream(addr, ssl, server_hostname)


class NoNet:
    up = False  # Wi-Fi associated (the broker is still unreachable)

    def isconnected(self):
        return self.up

    async def join(self):
        raise OSError("no network in this test")

    def getaddrinfo(self, host, port):
        raise OSError(-202)

    async def connect(self, addr, ssl=None, server_hostname=None):
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
        self.battery = ADC(2083334)  # 2.083 V at the pin x 6.0 divider = 12.5 V
        self.temp = Thermo(21.0)
        self.wdt = None
        self.image_valid = None  # no OTA image partition here
        self.image_part = None  # a test may set the twin's (otatwin.py): image_slot() gives it
        self.lines = []
        self.log = self.lines.append

    def tls_context(self, cfg):
        try:
            import tls  # MicroPython
            return tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        except ImportError:
            import ssl
            return ssl.create_default_context()

    def image_slot(self):
        return self.image_part

    def all_off(self):
        for out in (self.lock, self.siren, self.led):
            out.value(0)


def publish_packet(topic, payload, qos=0, retain=False, dup=False, pid=0):
    """A whole PUBLISH packet, as a broker sends one (the firmware only needs the header)."""
    if isinstance(payload, str):
        payload = payload.encode()
    return bytes(publish_header(topic, len(payload), qos, retain, dup, pid, payload))


class PowerCut(BaseException):
    """The board lost power (a BaseException: nothing in the firmware may swallow it)."""


class CutFlash(ReadThrough):
    """A storage.Flash that loses power before its `limit`-th change (write, append, remove,
    move, counted across sub-folders in `count` = [changes so far, the change that does not
    happen]); after that nothing reaches it. Flash.write replaces a file atomically, so a cut
    inside one is the old file, or the new one = the cut before the next change."""

    def __init__(self, inner, count=None, limit=-1):
        self.inner = inner
        self.count = count if count is not None else [0, limit]

    def _change(self):
        c = self.count
        if c[0] >= c[1] >= 0:
            c[1] = c[0]        # stays cut
            raise PowerCut()
        c[0] += 1

    def write(self, name, data):
        self._change()
        self.inner.write(name, data)

    def append(self, name, data):
        self._change()
        self.inner.append(name, data)

    def remove(self, name):
        self._change()
        self.inner.remove(name)

    def move(self, name, dest):
        self._change()
        self.inner.move(name, dest.inner)

    def sub(self, name):
        return CutFlash(self.inner.sub(name), self.count)
