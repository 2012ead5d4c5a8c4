"""The virtual serial device (`aedsim vdev`): real mpremote and pyserial against the MicroPython
unix port behind a pty, with ESP32 REPL semantics. No hardware, loopback only."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from simulator.vdev.device import UP_AGAIN
from simulator.vdev.flashimage import IMAGE_NAME, FlashImage

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class VDev:
    """`aedsim vdev` in a subprocess: its pty path, its flash (`v.flash / "name"` reads and
    writes files inside its littlefs image), stdin for world changes."""

    def __init__(self, flash_dir, *extra, settle=True, files=None):
        self.dir = Path(flash_dir)
        self.flash = FlashImage(self.dir / IMAGE_NAME)
        # Files a test needs at the first boot go in before the board starts: written while its
        # interpreter mounts and reads the same littlefs, they raced it (two writers on one
        # filesystem, which no board has; a full-suite run saw the REPL hang after such a boot).
        if files:
            if not self.flash.path.exists():
                self.flash.format()
            for name, text in files.items():
                (self.flash / name).write_text(text)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simulator.cli", "vdev", "--flash-dir", str(flash_dir), *extra],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.dir.parent / "vdev.log", "ab"),
            text=True)
        self.path = self.proc.stdout.readline().strip()
        assert self.path.startswith("/dev/pts/"), "vdev did not print its pty: %r" % self.path
        # The harness holds host bytes until the first interpreter can take them, as a board's
        # UART does (docs/twin.md), and the two start-up tests below connect at once to prove it.
        # Every other test still gives the first boot 1.5 s: one fresh-clone suite run after
        # that fix saw a first `mpremote exec` on a blank vdev wait 30 s for a raw REPL
        # (test_flash_is_littlefs_…), which 6 runs alone and the 16-start test did not show.
        # Until that hole is found, the rest of the suite does not depend on it.
        if settle:
            time.sleep(1.5)

    def world(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def log(self):
        return (self.dir.parent / "vdev.log").read_text()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def vdev_factory(tmp_path):
    made = []

    def make(*extra, name="flash", settle=True, files=None):
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        v = VDev(d, *extra, settle=settle, files=files)
        made.append(v)
        return v
    yield make
    for v in made:
        v.stop()


def mpremote(port, *args, timeout=30):
    r = subprocess.run([str(BIN / "mpremote"), "connect", port, *args], capture_output=True, text=True,
                       timeout=timeout)
    return r


def mpremote_until(port, marker, *args, timeout=8, grace=0.5):
    """mpremote's output up to `marker` and `grace` seconds more (then it is stopped), or all of
    it after `timeout`: for a command after which the board never answers again (it crashed)."""
    import selectors
    p = subprocess.Popen([str(BIN / "mpremote"), "connect", port, *args], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    out = b""
    end = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    try:
        seen = False
        while time.monotonic() < end:
            if not seen and marker.encode() in out:
                seen, end = True, min(end, time.monotonic() + grace)
            if sel.select(max(0.0, end - time.monotonic())):
                chunk = os.read(p.stdout.fileno(), 4096)
                if not chunk:
                    break
                out += chunk
    finally:
        sel.close()
        p.kill()
        p.wait()
        p.stdout.close()
    return out.decode(errors="replace")


def wait_log(v, text, count=1, timeout=10):
    """Wait until the harness's log holds `text` `count` times (world changes are asynchronous)."""
    end = time.monotonic() + timeout
    while v.log().count(text) < count and time.monotonic() < end:
        time.sleep(0.05)
    assert v.log().count(text) >= count, "no %r (x%d) in the vdev's log:\n%s" % (text, count, v.log()[-1500:])


def reset(v):
    """`mpremote reset`, then wait until the chip has started again: what the host sends while
    it restarts is lost, on a board as here (docs/twin.md), and mpremote sends its Ctrl-C once."""
    n = v.log().count(UP_AGAIN)
    r = mpremote(v.path, "reset")
    assert r.returncode == 0, r.stderr
    wait_log(v, UP_AGAIN, n + 1)


def copy_firmware(port, *top, timeout=120):
    """The firmware's source files onto the board, as a technician's `mpremote cp` would: the
    aedgate package's .py files (no host __pycache__) and the named top-level files."""
    import shutil
    import tempfile
    fw = ROOT / "firmware"
    with tempfile.TemporaryDirectory() as tmp:
        pkg = Path(tmp) / "aedgate"
        pkg.mkdir()
        for f in (fw / "aedgate").glob("*.py"):
            shutil.copy(f, pkg / f.name)
        return mpremote(port, "cp", "-r", str(pkg), ":", "+", "cp", *[str(fw / t) for t in top], ":",
                        timeout=timeout)


def read_until(s, marker, timeout=10.0):
    data = b""
    end = time.monotonic() + timeout
    while marker not in data and time.monotonic() < end:
        data += s.read(s.in_waiting or 1)
    assert marker in data, "no %r in %r" % (marker, data[-300:])
    return data


def test_mpremote_cp_ls_exec_reset_on_a_persistent_flash(vdev_factory, tmp_path):
    v = vdev_factory()
    src = tmp_path / "hello.py"
    src.write_text("GREETING = 'hello from flash'\n")
    r = mpremote(v.path, "cp", str(src), ":hello.py", "+", "mkdir", ":lib", "+", "ls", ":",
                 "+", "exec", "import hello, os; print(hello.GREETING, os.getcwd())")
    assert r.returncode == 0, r.stderr
    assert "hello.py" in r.stdout and "lib/" in r.stdout
    assert "hello from flash /" in r.stdout
    assert (v.flash / "hello.py").read_text() == src.read_text()  # the flash image's root
    # A new board's flash was formatted by inisetup.py, which left a comment-only boot.py.
    assert (v.flash / "boot.py").read_text().startswith("# This file is executed on every boot")
    # The firmware's Flash("/") lands in the same folder, atomic rename included.
    r = mpremote(v.path, "mkdir", ":aedgate", "+", "cp", str(ROOT / "firmware/aedgate/__init__.py"),
                 ":aedgate/__init__.py", "+", "cp", str(ROOT / "firmware/aedgate/storage.py"),
                 ":aedgate/storage.py", "+", "exec", "from aedgate.storage import Flash\nFlash('/').write('x.txt', b'42')",
                 "+", "exec", "print(open('/x.txt').read())")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("42")
    assert (v.flash / "x.txt").read_bytes() == b"42"
    assert not (v.flash / "x.txt.tmp").exists()
    # sha256 computed on the device matches the host's
    r = mpremote(v.path, "sha256sum", ":hello.py")
    import hashlib
    assert hashlib.sha256(src.read_bytes()).hexdigest() in r.stdout
    # reset: machine.reset() restarts the chip: HARD_RESET (2) on v1.23-v1.28 (esp_restart is
    # ESP_RST_SW); `resume` enters the raw REPL without the soft reset that would make it SOFT_RESET
    reset(v)
    r = mpremote(v.path, "resume", "exec", "import machine; print(machine.reset_cause(), machine.unique_id().hex())")
    assert r.returncode == 0, r.stderr
    cause, uid = r.stdout.split()
    assert cause == "2" and len(uid) == 12
    r = mpremote(v.path, "exec", "import machine; print(machine.reset_cause())")
    assert r.stdout.strip() == "5"  # after a soft reboot: SOFT_RESET until the next chip reset


def test_pyserial_sees_main_py_and_ctrl_c_interrupts_it_like_a_board(vdev_factory):
    v = vdev_factory()
    with serial.Serial(v.path, 115200, timeout=0.2) as s:
        s.write(b"\r\x03")                   # at the REPL (no main.py yet)
        read_until(s, b">>> ")
        # Written only now: the first boot must not race the test for them.
        (v.flash / "boot.py").write_text("print('boot.py ran')\n")
        (v.flash / "main.py").write_text("import time\nn = 0\nwhile True:\n    n += 1\n    print('tick', n)\n"
                                        "    time.sleep_ms(50)\n")
        s.write(b"\x04")                     # friendly soft reboot: boot.py, then main.py
        data = read_until(s, b"tick 3")
        assert b"MPY: soft reboot\r\n" in data and b"boot.py ran\r\n" in data
        assert b"\r\r\n" not in data         # a raw tty: a board's \r\n, no doubling
        s.write(b"\x03")                     # Ctrl-C: KeyboardInterrupt in main.py
        data = read_until(s, b">>> ")
        assert b"KeyboardInterrupt" in data
        s.write(b"print(n > 2, 6 * 7)\r")
        assert b"True 42" in read_until(s, b"42")
        s.write(b"\r\x01")                   # raw REPL, as mpremote uses it
        read_until(s, b"raw REPL; CTRL-B to exit\r\n>")
        s.write(b"\x04")                     # soft reset from the raw REPL: boot.py only, raw again
        data = read_until(s, b"raw REPL; CTRL-B to exit\r\n>")
        assert b"soft reboot\r\n" in data and b"boot.py ran" in data and b"tick" not in data
        s.write(b"print('raw', 1 + 1)\x04")
        assert b"OKraw 2" in read_until(s, b"\x04>")


def test_ctrl_c_sent_while_the_board_boots_is_never_lost(vdev_factory):
    # A technician (or mpremote) presses Ctrl-C the moment the port opens, while boot.py and
    # main.py start. The flash's block device is Python code here, called by littlefs under the
    # import machinery's stat(); the Ctrl-C must still stop main.py as on a board. (It was lost
    # in about one boot in four before the flash asked for it to be pressed again.)
    for i in range(12):
        v = vdev_factory(name="flash%d" % i, settle=False, files={
            "boot.py": "print('boot.py ran')\n",
            "main.py": "import time\nn = 0\nwhile True:\n    n += 1\n    print('tick', n)\n"
                       "    time.sleep_ms(50)\n"})
        with serial.Serial(v.path, 115200, timeout=0.2) as s:
            s.write(b"\r\x03")
            try:
                read_until(s, b">>> ", timeout=5)
                s.write(b"print(6 * 7)\r")
                read_until(s, b"42", timeout=5)
            except AssertionError as e:  # what the board and the harness did, to tell why
                raise AssertionError("boot %d: %s\nthe board's log:\n%s" % (i, e, v.log()[-3000:]))
        v.stop()


TICKS = "import time\nn = 0\nwhile True:\n    n += 1\n    print('tick', n)\n    time.sleep_ms(200)\n"


def test_what_the_host_sends_while_the_chip_restarts_is_lost(vdev_factory):
    # The ESP32 empties its UART's receive FIFO when MicroPython starts after a reset
    # (uart_stdout_init, ports/esp32/uart.c): a Ctrl-C sent during the restart never reaches
    # main.py. The harness used to keep such bytes for the next interpreter, kinder than a board.
    v = vdev_factory("--chip-start-ms", "1000", files={"main.py": TICKS})
    with serial.Serial(v.path, 115200, timeout=0.2) as s:
        read_until(s, b"tick 1")
        s.write(b"\r\x03")
        read_until(s, b">>> ")
        ups = v.log().count(UP_AGAIN)
        s.write(b"import machine; machine.reset()\r")
        read_until(s, b"SW_CPU_RESET")
        s.write(b"\r\x03")  # within the restart
        wait_log(v, UP_AGAIN, ups + 1)
        out = read_until(s, b"tick 3", timeout=10)  # main.py runs: the Ctrl-C was lost
        assert b">>> " not in out.split(b"SW_CPU_RESET")[-1], out
    assert "2 bytes sent while the chip restarted: lost, as on a board" in v.log()


def test_aedgate_reaches_a_board_that_lost_its_first_ctrl_c_while_restarting(vdev_factory):
    # aedgate's connection sends Ctrl-C, Ctrl-A again until the raw REPL answers: right after
    # a reset (a provision, then a selftest) the first ones fall into the restart. With one
    # attempt, as mpremote makes, this board's main.py kept running and the command gave up.
    from host_tools.device import Device
    v = vdev_factory("--chip-start-ms", "1500", files={"main.py": TICKS})
    for i in range(2):
        with Device(v.path) as dev:
            dev.reset()
        t0 = time.monotonic()
        with Device(v.path, timeout=10) as dev:
            assert dev.eval("6 * 7") == 42
            assert dev.eval("__import__('machine').reset_cause()") == 5  # its soft reboot
        assert time.monotonic() - t0 > 1.5, "connected before the chip had restarted?"
    assert v.log().count("sent while the chip restarted: lost") >= 2, v.log()[-2000:]


def test_mpremote_the_moment_the_port_appears_always_gets_its_raw_repl(vdev_factory):
    # mpremote opens the port while the first interpreter is still starting and at once sends
    # Ctrl-C, Ctrl-A. A board's UART keeps those bytes until the REPL reads them; the harness
    # must too. (Before the fix about one start in eight lost the raw REPL: the Ctrl-C landed
    # in the runtime's own start-up code, boot.py's end marker never came and mpremote waited
    # for a prompt that never came; the 1.5 s `settle` in VDev hid it; it is gone.)
    # mpremote gives up by itself (non-zero exit) after 10 s without the raw REPL's banner; the
    # 30 s here only bounds the whole command, whose start-up alone can take seconds when the
    # suite's four workers load both cores (one fresh-clone run hit a 10 s bound here, and did
    # not show whether the board was slow or silent).
    for i in range(16):
        v = vdev_factory(name="flash%d" % i, settle=False)
        t0 = time.monotonic()
        try:
            r = mpremote(v.path, "exec", "print(6 * 7)", timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError("start %d: mpremote hung for 30 s; the board's log: %s"
                                 % (i, v.log()[-1500:]))
        assert r.returncode == 0 and r.stdout.strip() == "42", (i, time.monotonic() - t0, r.stdout,
                                                                  r.stderr, v.log()[-1500:])
        v.stop()


def test_world_changes_reach_the_pins_and_bad_keys_are_reported(vdev_factory):
    v = vdev_factory()
    code = ("import machine\nd = machine.Pin(4, machine.Pin.IN, machine.Pin.PULL_UP)\n"
            "a = machine.ADC(machine.Pin(34), atten=machine.ADC.ATTN_11DB)\nprint(d.value(), a.read_uv())")
    v.world('{"adc_noise_mv": 0}')  # exact readings (in mV steps, as read_uv gives them)
    time.sleep(0.3)
    r = mpremote(v.path, "exec", code)
    assert r.stdout.split() == ["0", str(12700 // 6 * 1000)]   # closed; 12.7 V through a 6:1 divider
    v.world('{"door": "open", "battery_mv": 11000, "colour": "red"}')
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = mpremote(v.path, "exec", code)
        if r.stdout.split()[0] == "1":
            break
        time.sleep(0.1)
    assert r.stdout.split() == ["1", str(11000 // 6 * 1000)]
    assert "unknown world key 'colour'" in v.log()


def test_console_stamps_each_line_and_ctrl_c_exits_cleanly(vdev_factory):
    import re
    v = vdev_factory(files={"main.py": "import time\nn = 0\nwhile True:\n    n += 1\n"
                                       "    print('tick', n)\n    time.sleep_ms(100)\n"})
    p = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "console", "--port", v.path, "--reset"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        while len([ln for ln in lines if "tick" in ln]) < 3:
            lines.append(p.stdout.readline())
            assert lines[-1], p.stderr.read()
    finally:
        p.send_signal(signal.SIGINT)
        rc = p.wait(10)
    assert rc == 0
    assert any("MPY: soft reboot" in ln for ln in lines)
    ticks = [ln for ln in lines if "tick" in ln]
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}  tick \d+$", ln.rstrip("\n")) for ln in ticks), ticks


def test_flash_is_littlefs_with_the_esp32_geometry_and_a_fault_fills_it(vdev_factory):
    v = vdev_factory()
    r = mpremote(v.path, "exec", "import os; print(os.statvfs('/')[:3])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0].strip() == "(4096, 4096, 512)"   # 2 MiB of 4096-byte blocks
    assert (v.dir / "vfs.img").stat().st_size == 2 * 1024 * 1024
    write = "f = open('big', 'wb')\ntry:\n    f.write(bytes(20000))\n    f.close()\n    print('written')\nexcept OSError as e:\n    print('OSError', e.errno)"
    v.world('{"flash": "full"}')
    deadline = time.monotonic() + 10
    while True:
        r = mpremote(v.path, "exec", write)
        if "OSError 28" in r.stdout or time.monotonic() > deadline:
            break
        mpremote(v.path, "exec", "import os\ntry:\n    os.remove('big')\nexcept OSError:\n    pass")
        time.sleep(0.2)
    assert "OSError 28" in r.stdout, r.stdout + r.stderr      # ENOSPC, as littlefs says it
    v.world('{"flash": "ok"}')
    deadline = time.monotonic() + 10
    while True:
        r = mpremote(v.path, "exec", "import os\ntry:\n    os.remove('big')\nexcept OSError:\n    pass\n" + write)
        if "written" in r.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "written" in r.stdout, r.stdout + r.stderr
    # The flash is kept: a new vdev process on the same folder (a board powered up again).
    v.stop()
    v2 = vdev_factory()
    r = mpremote(v2.path, "exec", "print(len(open('big', 'rb').read()))")
    assert r.stdout.strip() == "20000", r.stdout + r.stderr


def test_a_blank_vdev_shows_what_a_fresh_esp32_shows(vdev_factory):
    """Issue 10's "done when": the clock reads 2000-01-01 after power-on (epoch 2000), Pin(40) and
    an output on 34 are refused with the ESP32's messages, and a WDT armed in one mpremote
    command is still armed in the next (it survives the raw-REPL soft reset and cannot be
    stopped), so the board resets with WDT_RESET. See docs/twin.md."""
    v = vdev_factory()
    r = mpremote(v.path, "exec", "import time, machine\nprint(time.gmtime()[0], machine.RTC().datetime()[:3], "
                 "time.gmtime(0)[0], time.time() < 600)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2000", "(2000,", "1,", "1)", "2000", "True"], r.stdout
    probe = ("import machine\n"
             "for args in ((40,), (34, machine.Pin.OUT), (24,), (36, machine.Pin.OPEN_DRAIN)):\n"
             "    try:\n        machine.Pin(*args)\n        print('accepted', args)\n"
             "    except ValueError as e:\n        print('refused', args[0], e)\n")
    r = mpremote(v.path, "exec", probe)
    assert r.stdout.splitlines() == ["refused 40 invalid pin", "refused 34 pin can only be input",
                                     "refused 24 invalid pin", "refused 36 pin can only be input"], r.stdout
    # The clock set through RTC().datetime() (ESP32 format) survives the next soft reset.
    r = mpremote(v.path, "exec", "import machine\nmachine.RTC().datetime((2026, 11, 30, 0, 12, 0, 0, 0))")
    assert r.returncode == 0, r.stderr
    r = mpremote(v.path, "exec", "import time\nprint(time.gmtime()[:5])")
    assert r.stdout.strip() == "(2026, 11, 30, 12, 0)", r.stdout
    # A WDT armed in one command is still armed in the next: nobody feeds it, the board resets.
    r = mpremote(v.path, "exec", "import machine\nmachine.WDT(timeout=2000)")
    assert r.returncode == 0, r.stderr
    # mpremote waits for an end that never comes (the board reset): read until the ROM's reset
    # line, or all 15 s if there is none
    ups = v.log().count(UP_AGAIN)
    out = mpremote_until(v.path, "TG0WDT_SYS_RESET", "exec",
                         "import time\nfor i in range(8):\n    print('alive', i)\n    time.sleep(1)", timeout=15)
    assert "alive 0" in out and "alive 7" not in out, out
    wait_log(v, UP_AGAIN, ups + 1)  # (what is sent while the chip restarts is lost)
    r = mpremote(v.path, "resume", "exec", "import machine\nprint(machine.reset_cause())")
    assert r.stdout.strip() == "3", (r.stdout, r.stderr)   # WDT_RESET
    assert "reset: watchdog timeout" in v.log()


def test_ntptime_timers_and_strapping_pins_as_on_the_board(vdev_factory):
    v = vdev_factory()
    # ntptime (frozen on the board, a shim here) is answered on loopback for any host name
    r = mpremote(v.path, "exec", "import ntptime, time\nntptime.host = 'ntp.example.org'\nntptime.settime()\n"
                 "print(time.time() + 946684800)")
    assert r.returncode == 0, r.stderr
    assert abs(int(r.stdout.split()[-1]) - time.time()) < 3, r.stdout
    v.world('{"sntp": "down"}')
    time.sleep(0.3)
    r = mpremote(v.path, "exec", "import ntptime\ntry:\n    ntptime.time()\nexcept OSError as e:\n    print('no answer')")
    assert r.stdout.strip() == "no answer", (r.stdout, r.stderr)
    # machine.Timer: ids 0-3, soft callbacks that run while the REPL waits; a soft reset stops them
    r = mpremote(v.path, "exec", "import machine, time\nn = [0]\ndef tick(t):\n    n[0] += 1\n"
                 "machine.Timer(0).init(period=100, callback=tick)\ntime.sleep(1)\n"
                 "print(n[0] >= 5)\ntry:\n    machine.Timer(4)\nexcept ValueError as e:\n    print(e)")
    assert r.stdout.split() == ["True", "invalid", "Timer", "number"], r.stdout
    r = mpremote(v.path, "exec", "import machine\nprint(machine.Timer(0).value())")
    assert "timer not set" in r.stderr + r.stdout  # the soft reset of mpremote's raw REPL stopped it
    # GPIO6-11 are accepted by Pin() but are the module's flash bus: configuring one crashes it
    # (mpremote waits for ever for the end of a command whose board reset: read until the
    # crash line, then half a second more in case "still running" follows it)
    ups = v.log().count(UP_AGAIN)
    out = mpremote_until(v.path, "flash bus", "exec", "import machine\nmachine.Pin(7, machine.Pin.OUT)\n"
                         "print('still running')", timeout=8)
    assert "still running" not in out and "flash bus" in out, out
    wait_log(v, UP_AGAIN, ups + 1)
    r = mpremote(v.path, "resume", "exec", "import machine\nprint(machine.reset_cause())")
    assert r.stdout.strip() == "2", (r.stdout, r.stderr)  # a panic: HARD_RESET
    # the lock on GPIO5 (the old default) sees the strapping pull-up from every chip reset
    # the flash is a littlefs image: written from the board, and closed (else littlefs may still
    # hold it in its cache when machine.reset() comes, as on a real board)
    r = mpremote(v.path, "exec", "with open('config.json', 'w') as f:\n    f.write('{\"pins\": {\"lock\": 5, \"button\": 0}}')")
    assert r.returncode == 0, r.stderr
    reset(v)
    wait_log(v, "lock output on (GPIO5 is pulled up at reset)")
    # a button on GPIO0 held during a reset: the ROM's download mode, no MicroPython
    v.world('{"button": "hold"}')
    v.world('{"power": "off"}')
    time.sleep(0.3)
    v.world('{"power": "on"}')
    wait_log(v, "download mode")
    try:  # (a board that runs answers this in well under a second)
        r = mpremote(v.path, "exec", "print(6 * 7)", timeout=4)
        answered = "42" in r.stdout
    except subprocess.TimeoutExpired:
        answered = False
    assert not answered
    ups = v.log().count(UP_AGAIN)
    v.world('{"button": "release"}')
    v.world('{"power": "on"}')  # a power cycle with the button released boots again
    wait_log(v, UP_AGAIN, ups + 1)
    r = mpremote(v.path, "exec", "import machine\nprint(machine.reset_cause())")
    assert r.stdout.strip() == "5", (r.stdout, r.stderr)
