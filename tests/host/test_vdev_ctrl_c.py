"""The vdev harness's Ctrl-C pressed again for the flash (simulator/vdev/device.py, docs/twin.md):
requests that come together give one press. The unix port exits when a second SIGINT comes
before it has raised the first (ports/unix/unix_mphal.c sighandler), where a board's UART
interrupt only schedules the same KeyboardInterrupt again: two presses 2 ms apart could end the
interpreter, which the harness then took for a soft reboot and main.py ran again."""
import asyncio

from simulator.vdev.device import VirtualDevice


def test_requests_that_come_together_give_one_press_and_a_later_one_another(tmp_path):
    async def main():
        dev = VirtualDevice(tmp_path)  # (never started: its flash folder is the test's)
        dev.loop = asyncio.get_running_loop()
        dev.proc = object()  # the interpreter that asked
        dev._accepting, dev._phase = True, "boot"
        pressed = []
        dev._write_dev = pressed.append
        dev._on_shim({"intr": 1})
        dev._on_shim({"intr": 1})  # the same Ctrl-C asked for twice (interrupted while asking)
        await asyncio.sleep(0.05)
        first = list(pressed)
        dev._on_shim({"intr": 1})  # a later Ctrl-C the flash could not take: pressed again
        await asyncio.sleep(0.05)
        dev._phase = "run"         # the boot scripts are over: no late Ctrl-C at the REPL
        dev._on_shim({"intr": 1})
        await asyncio.sleep(0.05)
        return first, pressed

    first, pressed = asyncio.run(main())
    assert first == [b"\x03"]
    assert pressed == [b"\x03", b"\x03"]


def test_what_follows_a_ctrl_c_reaches_the_interpreter_a_little_later(tmp_path):
    # `\x03\x03` (aedgate console --reset; a double press) must not bring two SIGINTs at once
    import os
    import time

    from simulator.vdev.device import CTRL_C_GAP_S

    async def main():
        dev = VirtualDevice(tmp_path)  # (never started: its flash folder is the test's)
        dev.loop = asyncio.get_running_loop()
        r, w = os.pipe()
        os.set_blocking(r, False)
        dev._inner_m = w
        got = []
        dev.loop.add_reader(r, lambda: got.append((time.monotonic(), os.read(r, 100))))
        dev._write_dev(b"\r\x03\x03\r\x01")
        dev._write_dev(b"x")  # more input meanwhile keeps its place behind them
        await asyncio.sleep(4 * CTRL_C_GAP_S)
        dev.loop.remove_reader(r)
        os.close(r)
        os.close(w)
        return got

    got = asyncio.run(main())
    assert b"".join(b for _, b in got) == b"\r\x03\x03\r\x01x"
    assert [b for _, b in got] == [b"\r\x03", b"\x03", b"\r\x01x"]
    assert got[1][0] - got[0][0] >= CTRL_C_GAP_S * 0.9 and got[2][0] - got[1][0] >= CTRL_C_GAP_S * 0.9


def test_a_ctrl_c_for_running_code_waits_until_the_interpreter_waits_in_a_system_call(tmp_path):
    # The unix port raises KeyboardInterrupt inside its SIGINT handler: landing while it holds
    # its qstr mutex (an import compiling) left the mutex locked and the next import hung (a
    # full suite lost a selftest to it). The harness sends the SIGINT when the main thread
    # waits in a system call instead: here a child that computes for 0.4 s, then sleeps.
    import sys

    child = ("import signal, sys, time\n"
             "got = []\n"
             "signal.signal(signal.SIGINT, lambda *a: got.append(time.monotonic()))\n"
             "print('ready', flush=True)\n"
             "end = time.monotonic() + 0.4\n"
             "while time.monotonic() < end:\n    pass\n"
             "print('computed', time.monotonic(), flush=True)\n"
             "time.sleep(1.0)\n"
             "print('got', got[0] if got else None, flush=True)\n")

    async def main():
        dev = VirtualDevice(tmp_path)  # (never started: its flash folder is the test's)
        dev.loop = asyncio.get_running_loop()
        dev._inner_m = -1  # (an interpreter is running; nothing is written to it here)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", child, stdout=asyncio.subprocess.PIPE)
        dev.proc = proc
        assert (await proc.stdout.readline()).startswith(b"ready")
        dev._interrupt_when_safe(proc, dev.loop.time())
        computed = float((await proc.stdout.readline()).split()[1])
        got = (await proc.stdout.readline()).split()[1]
        dev._inner_m = None
        if dev._paced:
            dev._paced.cancel()
        await proc.wait()
        return computed, got

    computed, got = asyncio.run(main())
    assert got != b"None", "no SIGINT reached the child"
    assert float(got) >= computed, (float(got), computed)  # not while it computed
