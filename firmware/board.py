# ESP32 board: builds the hardware objects the cabinet app receives, from machine/network.
# The only firmware module (with boot.py/main.py) that touches hardware modules. Pin numbers
# come from config.json ("pins"), with the defaults below for the reference wiring.
import machine
import network

from aedgate import config
from aedgate.compat import asyncio, sleep_ms, unix_time
from aedgate.storage import Flash

LOCK_TIMER_ID = 1
PINS = {"door": 4, "lock": 5, "lock_sense": None, "siren": 18, "led": 2, "battery_adc": 34,
        "mains": 35, "temp": 15, "button": 0}


def _pins(cfg):
    pins = dict(PINS)
    pins.update(cfg.get("pins") or {})
    return pins


def outputs_off():
    """Drive the lock and siren outputs low as the very first thing at boot, before anything
    that could fail (boot.py calls this). Uses defaults when the config is unreadable."""
    try:
        cfg, _ = config.load(Flash("/"), "boot")
        pins = _pins(cfg)
    except Exception:
        pins = PINS
    for name in ("lock", "siren"):
        if pins.get(name) is not None:
            machine.Pin(pins[name], machine.Pin.OUT, value=0)


def reset_cause():
    causes = {machine.PWRON_RESET: "power_on", machine.HARD_RESET: "hard",
              machine.WDT_RESET: "watchdog", machine.DEEPSLEEP_RESET: "deepsleep",
              machine.SOFT_RESET: "soft"}
    return causes.get(machine.reset_cause(), "unknown")


class Clock:
    def time(self):
        return unix_time()

    def sleep_ms(self, ms):
        return sleep_ms(ms)


class WiFi:
    """Station-mode Wi-Fi; open() (re)associates on demand, so an outage is just a failed
    connect that the MQTT session retries with backoff."""

    def __init__(self, ssid, password):
        self.wlan = network.WLAN(network.STA_IF)
        self.ssid, self.password = ssid, password

    def isconnected(self):
        return self.wlan.isconnected()

    async def open(self, host, port, ssl=None, server_hostname=None):
        if not self.wlan.isconnected():
            self.wlan.active(True)
            if self.ssid:
                self.wlan.connect(self.ssid, self.password)
            for _ in range(150):  # up to 15 s, without blocking the loop
                if self.wlan.isconnected():
                    break
                await sleep_ms(100)
            else:
                raise OSError("wifi: not connected")
        if ssl is None:
            return await asyncio.open_connection(host, port)
        return await asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname)


class Watchdog:
    """The ESP32's hardware watchdog. The app feeds it every feed_ms while all its critical
    tasks are healthy; past timeout_ms without food the board resets (cause: watchdog)."""

    feed_ms = 5000

    def __init__(self, timeout_ms=30000):
        self._wdt = machine.WDT(timeout=timeout_ms)
        self._timer = None

    def feed(self):
        self._wdt.feed()

    def hold_for_repl(self):
        # A technician stopped main.py (Ctrl-C) to work at the REPL. Once started the watchdog
        # cannot be stopped, so a timer keeps feeding it while the app is not running.
        self._timer = machine.Timer(0)
        self._timer.init(period=self.feed_ms, callback=lambda t: self._wdt.feed())


class Thermometer:
    """DS18B20 on a 1-Wire bus (onewire and ds18x20 are frozen into stock ESP32 firmware)."""

    def __init__(self, pin):
        import ds18x20
        import onewire
        self.ds = ds18x20.DS18X20(onewire.OneWire(machine.Pin(pin)))
        self.roms = []

    async def read_c(self):
        if not self.roms:
            self.roms = self.ds.scan()
            if not self.roms:
                raise OSError("no DS18B20")
        self.ds.convert_temp()
        await sleep_ms(750)  # conversion time at 12-bit resolution
        return self.ds.read_temp(self.roms[0])


class Hardware:
    def __init__(self, flash):
        cfg, _ = config.load(flash, "boot")  # the app reports config errors itself
        pins = _pins(cfg)
        Pin = machine.Pin

        def inp(name, pull=None):
            return Pin(pins[name], Pin.IN, pull) if pins.get(name) is not None else None

        def out(name):
            return Pin(pins[name], Pin.OUT, value=0) if pins.get(name) is not None else None

        self.unique_id = "aed-" + "".join("%02x" % b for b in machine.unique_id())
        self.reset_cause = reset_cause()
        self.clock = Clock()
        self.net = WiFi(cfg["wifi_ssid"], cfg["wifi_password"])
        self.door = inp("door", Pin.PULL_UP)
        self.button = inp("button", Pin.PULL_UP)
        self.mains = inp("mains")
        self.lock_sense = inp("lock_sense", Pin.PULL_UP)
        self.lock = out("lock")
        # Ends a lock output even while the asyncio loop is stalled (aedgate/lock.py). Timer 0
        # feeds the watchdog at the REPL; the ESP32 has ids 0-3 (machine_timer.c).
        self.lock_timer = machine.Timer(LOCK_TIMER_ID) if self.lock and hasattr(machine, "Timer") else None
        self.siren = out("siren")
        self.led = out("led")
        self.battery = None
        if pins.get("battery_adc") is not None:
            self.battery = machine.ADC(Pin(pins["battery_adc"]), atten=machine.ADC.ATTN_11DB)
        self.temp = Thermometer(pins["temp"]) if pins.get("temp") is not None else None
        self.wdt = Watchdog() if hasattr(machine, "WDT") else None
        self.log = None

    def tls_context(self, cfg):
        # Verify the broker's certificate against the CA file on flash (MicroPython verifies
        # only with a context set up like this, not with a bare ssl=True).
        # MicroPython's mbedTLS takes the CA as DER bytes, passed positionally (the unix port
        # 1.29 rejects both the cadata= keyword and PEM text).
        import tls
        ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
        ctx.verify_mode = tls.CERT_REQUIRED
        with open("/" + cfg["broker_ca"], "rb") as f:
            ctx.load_verify_locations(f.read())
        return ctx

    def all_off(self):
        for p in (self.lock, self.siren):
            if p:
                p.value(0)


def setup():
    flash = Flash("/")
    return Hardware(flash), flash
