# ESP32 board: builds the hardware objects the cabinet app receives, from machine/network.
# The only firmware module (with boot.py/main.py) that touches hardware modules. Pin numbers
# come from config.json ("pins"), with the defaults below for the reference wiring.
import time

import machine
import network

from aedgate import config, link
from aedgate.compat import EPOCH_OFFSET, sleep_ms, unix_time
from aedgate.storage import Flash

LOCK_TIMER_ID = 1
# Off the strapping pins (0, 2, 5, 12, 15): GPIO5 is pulled high from reset until boot.py runs
# (a lock there would fire at every reset) and GPIO0 held low at reset starts download mode.
PINS = {"door": 4, "lock": 26, "lock_sense": None, "siren": 18, "led": 25, "battery_adc": 34,
        "mains": 35, "temp": 32, "button": 33}


def _pins(cfg):
    pins = dict(PINS)
    pins.update(cfg.get("pins") or {})
    return pins


def outputs_off():
    """Drive the lock and siren outputs low as the very first thing at boot, before anything
    that could fail (boot.py calls this). Uses defaults when the config is unreadable; config.py
    has already refused pins the chip refuses, and one pin failing never skips the other."""
    try:
        cfg, _ = config.load(Flash("/"), "boot")
        pins = _pins(cfg)
    except Exception:
        pins = PINS
    for name in ("lock", "siren"):
        for num in (pins.get(name), PINS[name]):
            try:
                if num is not None:
                    machine.Pin(num, machine.Pin.OUT, value=0)
                break
            except (ValueError, TypeError):
                pass


def boot():
    """boot.py: runs at every reset and every soft reboot, including the raw-REPL soft reboot
    of mpremote and the aedgate tools (main.py then does not run; ports/esp32/main.c). Outputs
    off, then a hardware timer feeds the watchdog until the app's own, health-based feeding
    takes over: the WDT outlives soft reboots but the timer that fed it does not."""
    outputs_off()
    if hasattr(machine, "WDT"):
        Watchdog().hold()


def reset_cause():
    causes = {machine.PWRON_RESET: "power_on", machine.HARD_RESET: "hard",
              machine.WDT_RESET: "watchdog", machine.DEEPSLEEP_RESET: "deepsleep",
              machine.SOFT_RESET: "soft"}
    return causes.get(machine.reset_cause(), "unknown")


class Clock:
    """The ESP32's clock (ESP-IDF system time): 2000-01-01 at power-on, kept across soft and
    software resets. time() is Unix seconds whatever the port's epoch (compat.unix_time)."""

    def time(self):
        return unix_time()

    def sleep_ms(self, ms):
        return sleep_ms(ms)

    def set(self, t):
        # RTC().datetime: (year, month, mday, weekday, hour, minute, second, microsecond), UTC;
        # the weekday is ignored when setting (ports/esp32/machine_rtc.c).
        tm = time.gmtime(int(t) - EPOCH_OFFSET)
        machine.RTC().datetime((tm[0], tm[1], tm[2], 0, tm[3], tm[4], tm[5], 0))

    def sntp(self, host):
        """Unix seconds from `host` (ntptime is frozen into ESP32 firmware). Blocks for the
        name lookup and at most ntptime.timeout (1 s); OSError when there is no answer."""
        import ntptime
        ntptime.host = host
        return ntptime.time() + EPOCH_OFFSET


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
        if w.isconnected():  # it got its address between the last look and the status read
            self._said = None
            return
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
    tasks are healthy; past timeout_ms without food the board resets (cause: watchdog).
    machine.WDT is one watchdog: constructing it again re-times the running one (same object),
    it cannot be stopped and it outlives soft reboots (ports/esp32/machine_wdt.c, main.c)."""

    feed_ms = 5000
    TIMER = 3  # hardware timer 3 of 0-3 feeds it while the app is not running

    def __init__(self, timeout_ms=30000):
        self._wdt = machine.WDT(timeout=timeout_ms)
        self._held = True  # boot.py's timer may be feeding it: stopped by the app's first feed

    def feed(self):
        if self._held:
            # The app's own feeding starts: a timer would keep feeding a hung app too.
            machine.Timer(self.TIMER).deinit()
            self._held = False
        self._wdt.feed()

    def hold(self):
        # Nobody checks the app's health now (boot.py; a technician at the REPL after Ctrl-C):
        # a soft timer feeds the watchdog. It runs between bytecodes, so a Python loop that
        # never ends is not caught, but a blocking call longer than the timeout still is.
        wdt = self._wdt
        machine.Timer(self.TIMER).init(period=self.feed_ms, callback=lambda t: wdt.feed())
        self._held = True

    hold_for_repl = hold


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

    def image_valid(self):
        """The app is online and healthy: keep the MicroPython image it runs on. An image booted
        after esp32.Partition.set_boot() is rolled back by the bootloader at the next reset
        unless this is called (docs/updates-install.md); harmless when there is nothing to
        confirm, OSError(-261) on a build without rollback."""
        try:
            import esp32
            P = esp32.Partition
            # ESP-IDF marks the otadata entry that boots next, whichever image it names: after
            # set_boot() (an image waiting for the reset) that would confirm the new image before
            # it ever ran, and its trial would be lost (esp_ota_ops.c, docs/twin.md).
            if P(P.BOOT).info() == P(P.RUNNING).info():
                P.mark_app_valid_cancel_rollback()
        except (ImportError, AttributeError, OSError):
            pass

    def image_slot(self):
        """The OTA app partition a new MicroPython image is written to (not the running one), or
        None on a board without OTA partitions (ESP32_GENERIC: esp_ota_get_next_update_partition
        finds none, esp32_partition.c raises OSError(ENOENT)) or without esp32.Partition."""
        try:
            import esp32
            return esp32.Partition(esp32.Partition.RUNNING).get_next_update()
        except (ImportError, AttributeError, OSError):
            return None

    def all_off(self):
        for p in (self.lock, self.siren):
            if p:
                p.value(0)


def setup():
    flash = Flash("/")
    return Hardware(flash), flash
