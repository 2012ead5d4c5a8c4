"""The simulated physical world of one cabinet, and the hardware objects the firmware sees.

The firmware receives these objects exactly where, on the ESP32, board.py hands it machine.Pin,
machine.ADC and a Wi-Fi backed network: same small interfaces, different backing.
"""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import threading
import time
from typing import Callable

from simulator.world.net import SimNet

# Lock solenoid model: a pulse solenoid heats ~8 °C per second energised; above 130 °C its
# insulation fails (burnt out, the cabinet cannot be opened electrically any more).
COIL_HEAT_C_PER_S = 8.0
COIL_MAX_C = 130.0

# Battery model: a 12 V lead-acid backup battery. Discharges while mains is off, recharges while
# it is on. Rates are per simulated hour.
FULL_MV = 12750
DRAIN_MV_PER_H = 40
CHARGE_MV_PER_H = 120


class SimPin:
    """A GPIO pin: inputs are driven by the world, outputs by the firmware."""

    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, level: int = 0, on_output: Callable[[int], None] | None = None):
        self._level = level
        self._handler = None
        self._on_output = on_output

    def value(self, v: int | None = None):
        if v is None:
            return self._level
        v = 1 if v else 0
        if v != self._level:
            self._level = v
            if self._on_output:
                self._on_output(v)

    def irq(self, handler=None, trigger=3):
        self._handler = handler

    def drive(self, level: int) -> None:
        """The world changes the input level; fires the interrupt handler like an edge would."""
        level = 1 if level else 0
        if level != self._level:
            self._level = level
            if self._handler:
                self._handler(self)


class SimClock:
    """Unix time for the firmware, optionally accelerated (`speed`) and shiftable (clock jumps).
    Firmware timers (heartbeat, door left open, sampling) sleep through `sleep_ms`, so they run
    `speed` times faster too; MQTT keepalive uses real time because the broker is real."""

    def __init__(self, speed: float = 1.0, start: float | None = None):
        self.speed = speed
        self._t0 = time.monotonic()
        self._base = start if start is not None else time.time()
        self.offset = 0.0

    def time(self) -> int:
        return int(self._base + (time.monotonic() - self._t0) * self.speed + self.offset)

    def sleep_ms(self, ms: int):
        return asyncio.sleep(ms / 1000 / self.speed)


Y2000 = 946684800  # Unix time of 2000-01-01, where an ESP32's clock starts at power-on


class BoardClock:
    """One cabinet's ESP32 clock, as docs/twin.md describes it: 2000-01-01 at power-on, then
    running with the world's time (and its `speed`); set by the firmware (RTC().datetime()),
    kept across resets and crashes, lost only when the power goes. `sntp()` is the firmware's
    SNTP query answered through the simulated network, without packets: the world's time when
    the Wi-Fi is up and the SNTP server answers (world key `sntp`), else the ESP32's time-out
    error. At fleet scale that costs one method call per sync instead of a UDP round trip."""

    __slots__ = ("world_clock", "net", "offset", "sntp_up", "syncs")

    def __init__(self, world_clock: SimClock, net: SimNet):
        self.world_clock = world_clock
        self.net = net
        self.sntp_up = True
        self.syncs = 0
        self.power_on()

    def power_on(self) -> None:
        self.offset = Y2000 - self.world_clock.time()

    def time(self) -> int:
        return self.world_clock.time() + self.offset

    def sleep_ms(self, ms: int):
        return self.world_clock.sleep_ms(ms)

    def set(self, t: int) -> None:
        self.offset = int(t) - self.world_clock.time()

    def sntp(self, host: str) -> int:
        if not (self.net.up and self.sntp_up):
            raise OSError(116, "ETIMEDOUT")  # ntptime's recv time-out (newlib's errno on the ESP32)
        self.syncs += 1
        return self.world_clock.time()


# ADC and DS18B20 as the ESP32 shows them (docs/twin.md; the virtual device's shims/machine.py
# and shims/onewire.py model the same): read_uv() is one noisy conversion in millivolt steps,
# linear only up to 2450 mV at the pin (ATTN_11DB), and a DS18B20 that powers up reads +85.0 °C
# until a conversion completes (the first one after power-up is lost).
ADC_LINEAR_MV = 2450
ADC_FULL_MV = 3100
ADC_NOISE_MV = 12.0  # sigma at the pin
_SENSOR_RNG = random.Random(0xADC)  # seeded: a run can be repeated; shared (fleet-scale RAM)


class SimADC:
    def __init__(self, world: "CabinetWorld"):
        self.world = world

    def read_uv(self) -> int:
        mv = self.world.battery_mv() / self.world.divider
        mv += _SENSOR_RNG.gauss(0.0, self.world.adc_noise_mv)
        if mv > ADC_LINEAR_MV:
            mv = ADC_LINEAR_MV + (mv - ADC_LINEAR_MV) / 2  # beyond the linear range: reads short
        return int(max(0.0, min(mv, ADC_FULL_MV))) * 1000


class SimTemp:
    def __init__(self, world: "CabinetWorld"):
        self.world = world
        self.fresh = True  # just powered up: the first conversion is lost, the register says 85.0

    async def read_c(self) -> float:
        while self.world.sensor_hung:  # a 1-Wire sensor that never answers
            await asyncio.sleep(0.5)
        if self.world.sensor_lost:
            self.fresh = True  # when it comes back it powers up again
            raise OSError("DS18B20: no presence pulse")
        await asyncio.sleep(0.75 / self.world.clock.speed)  # the conversion (12 bits)
        if self.fresh:
            self.fresh = False
            return 85.0
        return self.world.temp_c + _SENSOR_RNG.uniform(-0.1, 0.1)


class SimWDT:
    """machine.WDT: past timeout_ms without feed(), the board resets (cause "watchdog")."""

    feed_ms = 5000
    timeout_ms = 30000  # as board.py sets the ESP32's

    def __init__(self, on_expire: Callable[[], None], timeout_ms: int | None = None):
        self.timeout_s = (timeout_ms or self.timeout_ms) / 1000
        self._on_expire = on_expire
        self._handle = None
        self._deadline = 0.0
        self.feed()  # armed when created, as machine.WDT(timeout=...) is

    def feed(self) -> None:
        # Moves the deadline only; the one timer looks again when it fires. (A new timer per
        # feed would leave ~6 cancelled ones per cabinet in the loop's heap: at fleet scale
        # that is the loop's busiest work and the garbage collector's too.)
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self.timeout_s
        if self._handle is None:
            self._handle = loop.call_at(self._deadline, self._check)

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            self._handle = None
            self._on_expire()
        else:
            self._handle = loop.call_at(self._deadline, self._check)

    def stop(self) -> None:
        """The board lost power (or reset): this watchdog is gone."""
        if self._handle:
            self._handle.cancel()
            self._handle = None


# Real time for the timer thread, whatever a test does to time.monotonic (virtual-time tests).
_monotonic = time.monotonic


class _TimerThread:
    """One thread for every SimTimer of the process: a heap of deadlines."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list = []
        self._seq = itertools.count()
        self._c_calls = 0
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, timer: "SimTimer", gen: int) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), timer, gen))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="SimTimer", daemon=True)
                self._thread.start()
            self._cond.notify()

    @contextlib.contextmanager
    def blocking_c_call(self):
        with self._cond:
            self._c_calls += 1
        try:
            yield
        finally:
            with self._cond:
                self._c_calls -= 1
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._heap and self._c_calls == 0:
                        wait = self._heap[0][0] - _monotonic()
                        if wait <= 0:
                            _, _, timer, gen = heapq.heappop(self._heap)
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
            timer._fire(gen)


_TIMERS = _TimerThread()


def blocking_c_call():
    """Wrap a simulated call during which the ESP32 runs no Python at all (lwIP's getaddrinfo,
    an mbedTLS handshake step, a flash erase): SimTimer callbacks due meanwhile wait for it."""
    return _TIMERS.blocking_c_call()


class SimTimer:
    """machine.Timer as the ESP32 has it (ports/esp32/machine_timer.c): ids 0-3 (ValueError
    "invalid Timer number" otherwise, v1.25+), ONE_SHOT = 0, PERIODIC = 1 (the default),
    init(mode=, period= ms, callback=), deinit(). The interrupt does not run the callback: it
    is scheduled (mp_sched_schedule) and runs between bytecodes, so it still runs while asyncio
    is held up by Python code or short blocking calls, but not inside one long blocking C call.
    Here one shared thread waits out the period and calls it; the GIL hands over between
    bytecodes of the loop's thread (or while it sleeps), and `blocking_c_call()` holds it back
    as the ESP32 would. Only ONE_SHOT is modelled (the firmware uses nothing else)."""

    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, timer_id: int):
        if not 0 <= timer_id <= 3:
            raise ValueError("invalid Timer number")
        self.id = timer_id
        self._lock = threading.Lock()
        self._gen = 0
        self._callback = None
        self.fired = 0

    def init(self, *, mode: int = 1, period: int = 0xFFFFFFFF, callback=None, tick_hz: int = 1000):
        if mode != self.ONE_SHOT:
            raise NotImplementedError("the simulator models one-shot timers only")
        with self._lock:
            self._gen += 1
            self._callback = callback
            gen = self._gen
        _TIMERS.arm(_monotonic() + period / tick_hz, self, gen)

    def deinit(self) -> None:
        with self._lock:
            self._gen += 1
            self._callback = None

    def _fire(self, gen: int) -> None:
        with self._lock:  # deinit() cannot slip in between the check and the call
            if gen != self._gen or self._callback is None:
                return
            callback, self._callback = self._callback, None
            self.fired += 1
            callback(self)


class SimHardware:
    """What the firmware's App receives as `hw` in the simulator."""

    def __init__(self, world: "CabinetWorld", reset_cause: str, wdt: "SimWDT | None" = None):
        self.world = world
        self.wdt = wdt
        self.unique_id = world.device_id
        self.reset_cause = reset_cause
        self.clock = world.board_clock
        self.net = world.net
        self.door = world.door_pin
        self.mains = world.mains_pin
        self.button = world.button_pin
        self.lock = SimPin(0, world.lock_output)
        self.lock_timer = SimTimer(1)  # board.LOCK_TIMER_ID
        self.lock_sense = None
        self.siren = SimPin(0, world.siren_output)
        self.led = SimPin(0)
        self.battery = SimADC(world)
        self.temp = SimTemp(world)
        self.log = world.log
        self.image_valid = None  # the fleet models no OTA image partition

    def tls_context(self, cfg):
        import ssl
        ctx = ssl.create_default_context()
        return ctx

    def image_slot(self):
        """No OTA image partition in the fleet: a release with micropython.bin is refused
        (no_image_slot), as on an ESP32_GENERIC board (docs/hardware.md)."""
        return None

    def all_off(self):
        """Every output off (docs/hardware.md): what main.py does after a crash."""
        for out in (self.lock, self.siren, self.led):
            out.value(0)


class CabinetWorld:
    """One cabinet's physical surroundings: door, mains, backup battery, temperature, Wi-Fi,
    power. Changed by world-control messages, scenario steps or the Python API."""

    def __init__(self, device_id: str, clock: SimClock, net: SimNet, log=None):
        self.device_id = device_id
        self.clock = clock              # the world's (real, or accelerated) time
        self.net = net
        self.board_clock = BoardClock(clock, net)  # what the firmware reads
        self.log = log or (lambda msg: None)
        self.divider = 6.0  # the reference wiring (docs/config.md battery_divider)
        self.temp_c = 21.0
        self.door_pin = SimPin(0)      # level 1 = open (config door_open_level default)
        self.mains_pin = SimPin(1)
        self.button_pin = SimPin(1)    # pulled up: pressing pulls it low
        self.powered = True
        self.siren = False
        self.lock_on = False
        self.lock_pulses = 0
        self.longest_on_s = 0.0
        self.latch_released = False
        self.lock_burnt = False
        # A magnetic (hold) lock is rated for continuous duty: powered all day, it does not heat
        # like a pulse solenoid. Set from the cabinet's lock_type.
        self.lock_continuous = False
        self.forced = False
        self.sensor_hung = False
        self.sensor_lost = False
        self.adc_noise_mv = ADC_NOISE_MV
        self.coil_c = self.temp_c
        self._coil_at = time.monotonic()
        self._on_since = 0.0
        self._mv = FULL_MV - random.randint(0, 150)
        self._mv_at = clock.time()
        self.on_power: Callable[[bool], None] | None = None
        self.on_flash_cut: Callable[[int], None] | None = None
        self.on_flash_full: Callable[[bool], None] | None = None

    # -- physics ---------------------------------------------------------------------------
    def battery_mv(self) -> int:
        now = self.clock.time()
        hours = (now - self._mv_at) / 3600
        if self.mains_pin.value():
            mv = min(FULL_MV, self._mv + hours * CHARGE_MV_PER_H)
        else:
            mv = max(9000, self._mv - hours * DRAIN_MV_PER_H)
        return int(mv)

    def _settle_battery(self) -> None:
        self._mv = self.battery_mv()
        self._mv_at = self.clock.time()

    def lock_output(self, level: int) -> None:
        """The lock solenoid's physics: it heats while energised and cools when off. A pulse
        solenoid rated for short pulses burns out if held for long; that must never happen."""
        now = time.monotonic()
        self._coil_update(now)
        if level and not self.lock_on:
            self._on_since = now
            self.lock_pulses += 1
            self.latch_released = True  # the strike lets the door open until it closes again
        elif not level and self.lock_on:
            self.longest_on_s = max(self.longest_on_s, now - self._on_since)
        self.lock_on = bool(level)

    def _coil_update(self, now: float) -> None:
        dt = max(0.0, now - self._coil_at)  # a clock that steps back (a test's virtual time) neither heats nor cools
        self._coil_at = now
        if self.lock_on and not self.lock_continuous:
            self.coil_c += COIL_HEAT_C_PER_S * dt
            if self.coil_c > COIL_MAX_C and not self.lock_burnt:
                self.lock_burnt = True
                self.log("LOCK SOLENOID OVERHEATED (%.0f °C): held on too long" % self.coil_c)
        else:
            # Newton cooling towards the cabinet's temperature.
            self.coil_c = self.temp_c + (self.coil_c - self.temp_c) * 0.9 ** dt

    def coil_temp_c(self) -> float:
        self._coil_update(time.monotonic())
        return self.coil_c

    def siren_output(self, level: int) -> None:
        self.siren = bool(level)

    # -- control -----------------------------------------------------------------------------
    def apply(self, change: dict) -> list[str]:
        """Apply a world-control message. Returns a list of errors (unknown keys, bad values);
        the valid part of the message is still applied."""
        errors = []
        if not isinstance(change, dict):
            return ["world change must be a JSON object"]
        for key, val in change.items():
            try:
                handler = getattr(self, "_set_" + str(key), None)
                if handler is None:
                    errors.append("unknown key %r" % key)
                else:
                    err = handler(val)
                    if err:
                        errors.append("%s: %s" % (key, err))
            except (TypeError, ValueError) as e:
                errors.append("%s: %s" % (key, e))
        return errors

    def _set_door(self, v):
        if v not in ("open", "closed"):
            return "expected \"open\" or \"closed\""
        if v == "open" and not self.door_pin.value():
            self.forced = not self.latch_released  # opened while latched: forced or with a key
        if v == "closed":
            self.latch_released = False
        self.door_pin.drive(1 if v == "open" else 0)

    def _set_mains(self, v):
        if not isinstance(v, bool):
            return "expected true or false"
        self._settle_battery()
        self.mains_pin.drive(1 if v else 0)

    def _set_battery_mv(self, v):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 60000:
            return "expected an integer 0-60000"
        self._mv = v
        self._mv_at = self.clock.time()

    def _set_temp_c(self, v):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not -60 <= v <= 100:
            return "expected a number -60..100"
        self.temp_c = float(v)

    def _set_power(self, v):
        if v not in ("on", "off"):
            return "expected \"on\" or \"off\""
        if (v == "on") != self.powered:
            self.powered = v == "on"
            if self.on_power:
                self.on_power(self.powered)

    def _set_wifi(self, v):
        if v not in ("up", "down"):
            return "expected \"up\" or \"down\""
        self.net.set_up(v == "up")

    def _set_flash_cut(self, v):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1000:
            return "expected the n-th flash write from now, 1-1000"
        if self.on_flash_cut is None:
            return "this cabinet has no fault-injecting flash"
        self.on_flash_cut(v)

    def _set_flash(self, v):
        # Something fills the filesystem: every write fails with ENOSPC until "ok".
        if v not in ("full", "ok"):
            return "expected \"full\" or \"ok\""
        if self.on_flash_full is None:
            return "this cabinet has no fault-injecting flash"
        self.on_flash_full(v == "full")

    def _set_clock_jump_s(self, v):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or abs(v) > 10 * 365 * 86400:
            return "expected seconds (negative: backwards)"
        self.board_clock.offset += int(v)  # this cabinet's clock only (a bad RTC, a bad SNTP answer)

    def _set_sntp(self, v):
        if v not in ("up", "down"):
            return "expected \"up\" or \"down\""
        self.board_clock.sntp_up = v == "up"

    def _set_dns(self, v):
        from simulator.world.net import DNS_FAULTS
        if v not in DNS_FAULTS:
            return "expected one of %s" % ", ".join(DNS_FAULTS)
        self.net.dns = DNS_FAULTS[v]

    def _set_sensor(self, v):
        if v not in ("hang", "lost", "ok"):
            return "expected \"hang\", \"lost\" or \"ok\""
        self.sensor_hung = v == "hang"
        self.sensor_lost = v == "lost"

    def _set_adc_noise_mv(self, v):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 500:
            return "expected millivolts 0-500 (sigma at the ADC pin)"
        self.adc_noise_mv = float(v)

    def _set_button(self, v):
        if v != "press":
            return "expected \"press\""
        self.button_pin.drive(0)
        asyncio.get_running_loop().call_later(0.2, self.button_pin.drive, 1)
