"""The vdev harness's Ctrl-C pressed again for the flash (simulator/vdev/device.py, docs/twin.md):
requests that come together give one press. The unix port exits when a second SIGINT comes
before it has raised the first (ports/unix/unix_mphal.c sighandler), where a board's UART
interrupt only schedules the same KeyboardInterrupt again: two presses 2 ms apart could end the
interpreter, which the harness then took for a soft reboot and main.py ran again."""
import asyncio

from simulator.vdev.device import VirtualDevice


def test_requests_that_come_together_give_one_press_and_a_later_one_another():
    async def main():
        dev = VirtualDevice()
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
        if dev._tmp:
            dev._tmp.cleanup()
        return first, pressed

    first, pressed = asyncio.run(main())
    assert first == [b"\x03"]
    assert pressed == [b"\x03", b"\x03"]
