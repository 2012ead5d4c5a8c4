# ESP32 board: builds the hardware objects the cabinet app receives, from machine/network.
# The only firmware module (with boot.py/main.py) that touches hardware modules. Pin numbers
# come from config.json ("pins"), with the defaults below for the reference wiring.
import machine
import network

from aedgate import config, link
from aedgate.compat import asyncio, sleep_ms, unix_time
from aedgate.storage import Flash

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


# Station status codes (ports/esp32/modnetwork_globals.h; reasons from ESP-IDF wifi_err_reason_t),
# named for the console.
_WIFI_STATUS = {1000: "idle", 1001: "connecting", 1010: "got_ip", 200: "beacon_timeout",
                201: "no_ap_found", 202: "wrong_password", 203: "assoc_fail", 204: "handshake_timeout"}


class WiFi:
    """Station-mode Wi-Fi and the sockets over it (hw.net). The ESP32's driver reconnects by
    itself after a drop, for ever once connect() was asked (ports/esp32/network_wlan.c), and a
    connect() while it is connecting raises OSError("Wifi Internal Error") (micropython issue
    17661): so connect() is asked only of an idle station, and otherwise we just wait."""

    def __init__(self, ssid, password, log=print):
        self.wlan = network.WLAN(network.STA_IF)
        self.ssid, self.password = ssid, password
        self.log = log
        self._said = None  # the last status reported on the console

    def isconnected(self):
        return self.wlan.isconnected()

    async def join(self):
        """Returns once the station has an address; OSError (with the status) after 8 s, inside
        the MQTT client's 10 s connect timeout (which would otherwise cut this wait short and
        hide the status)."""
        w = self.wlan
        if w.isconnected():
            self._said = None
            return
        if not self.ssid:
            raise OSError("wifi: no ssid configured")
        if not w.active():
            w.active(True)
        if w.status() == network.STAT_IDLE:  # never asked, or disconnected: not retrying
            try:
                w.connect(self.ssid, self.password)
            except OSError as e:  # the driver kept trying across a soft reset: let it
                self.log("wifi: connect: %s (status %s)" % (e, self._status()))
        for _ in range(80):  # up to 8 s, without blocking the loop
            if w.isconnected():
                self._said = None
                return
            await sleep_ms(100)
        st = self._status()
        if st != self._said:  # once per status, not every attempt
            self._said = st
            self.log("wifi: not connected, status %s" % st)
        raise OSError("wifi: not connected (%s)" % st)

    def _status(self):
        st = self.wlan.status()
        return "%d %s" % (st, _WIFI_STATUS.get(st, "?")) if isinstance(st, int) else str(st)

    def getaddrinfo(self, host, port):
        return link.lookup(host, port)

    def connect(self, addr, ssl=None, server_hostname=None):
        return link.open_stream(addr, ssl, server_hostname)


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
    """DS18B20 on a 1-Wire bus (onewire and ds18x20 are frozen into stock ESP32 firmware). A
    sensor that stops answering (unplugged, wire cut, replaced by one with another ROM code) is
    looked for again on the next reading, not asked for by its old ROM code for ever."""

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
        try:
            self.ds.convert_temp()
            await sleep_ms(750)  # conversion time at 12-bit resolution
            return self.ds.read_temp(self.roms[0])
        except Exception:  # onewire.OneWireError, "CRC error": scan the bus again next time
            self.roms = []
            raise


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
        self.siren = out("siren")
        self.led = out("led")
        self.battery = None
        if pins.get("battery_adc") is not None:
            self.battery = machine.ADC(Pin(pins["battery_adc"]), atten=machine.ADC.ATTN_11DB)
        self.temp = Thermometer(pins["temp"]) if pins.get("temp") is not None else None
        self.wdt = Watchdog() if hasattr(machine, "WDT") else None
        self.log = None

    def tls_context(self, cfg):
        # Called once per boot (App keeps it): parsing the CA and a new SSLContext cost heap and
        # time on every reconnect attempt otherwise.
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
