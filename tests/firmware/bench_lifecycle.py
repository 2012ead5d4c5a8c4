# The cabinet's life under a heap cap, on the MicroPython unix port: boot, online (plain MQTT or
# TLS), then whatever the host does to it over the broker (signed unlocks, connections cut from
# the broker's side), until it has seen `unlocks` accepted unlocks, each relocked, and
# `reconnects` reconnections, and is online and quiet again.
# Usage: micropython -X heapsize=N bench_lifecycle.py FIRMWARE_DIR|- STUBS_DIR SETUP_JSON
#   FIRMWARE_DIR: where the firmware's .py/.mpy files are; "-": the firmware is frozen into
#   this binary (firmware/manifest.py), so nothing may shadow it.
#   STUBS_DIR: a `network` module (the unix port has none; board.py imports it).
#   SETUP_JSON: {"config": config.json's content, "unlocks": n, "reconnects": n, "timeout_s": s}
# Prints one JSON line: heap figures (gc.mem_alloc after gc.collect) or {"fail": why}. The
# driver, simulator/bench/heap.py, sends the tokens, cuts the connections and bisects heapsize.
# Named bench_* so pytest does not collect it.
import gc
import sys

gc.collect()
base0 = gc.mem_alloc()  # the interpreter and this script's own bytecode
FIRMWARE, STUBS, SETUP = sys.argv[1], sys.argv[2], sys.argv[3]
if FIRMWARE != "-":
    sys.path.insert(0, FIRMWARE)
sys.path.append(STUBS)
sys.path.append(sys.argv[0].rpartition("/")[0] or ".")
import json  # noqa: E402


import board  # noqa: E402  (tls_context; on the device board.py is loaded too)
from aedgate.app import App  # noqa: E402
from aedgate.compat import asyncio, sleep_ms, ticks_diff, ticks_ms, unix_time  # noqa: E402

gc.collect()
code = gc.mem_alloc() - base0  # module objects and bytecode: in flash, not heap, when frozen

from fwtest import Hardware, LoopNet, Pin, temp_flash, wipe  # noqa: E402

gc.collect()
base = gc.mem_alloc() - code  # the interpreter, this script and the test harness (fwtest)
with open(SETUP) as f:
    setup = json.load(f)



class Clock:
    """The board's clock once set: real Unix time (the host's tokens are minted against it)."""

    def time(self):
        return unix_time()

    def sleep_ms(self, ms):
        return sleep_ms(ms)


class Timer:
    """hw.lock_timer as machine.Timer keeps it: a callback held until deinit() (no thread here:
    the window's own relock always comes first in this run)."""

    ONE_SHOT = 0

    def __init__(self):
        self.cb = None

    def init(self, mode=0, period=0, callback=None):
        self.cb = callback

    def deinit(self):
        self.cb = None


class Out(Pin):
    """An output that keeps its level only (fwtest.Pin's history would grow with every unlock
    and every beacon blink, which is the harness's heap, not the cabinet's)."""

    def value(self, v=None):
        if v is None:
            return self.level
        self.level = 1 if v else 0


class Hw(Hardware):
    def __init__(self):
        super().__init__()
        self.lock, self.siren, self.led = Out(0), Out(0), Out(0)

    def tls_context(self, cfg):
        return board.Hardware.tls_context(self, cfg)


st = {"fail": None, "accepted": 0, "relocked": 0, "online": 0}


def log(msg):
    if setup.get("verbose"):
        print("log:", msg)
    # A MemoryError anywhere (the app catches and logs them, then retries) fails the run.
    if "MemoryError" in msg or "ENOMEM" in msg or "Errno 12" in msg or "ALLOC" in msg:
        if st["fail"] is None and setup.get("verbose"):
            import micropython
            micropython.mem_info(1)  # where it failed: used, free, largest free block, block map
        st["fail"] = msg
    elif msg.startswith("unlock accepted"):
        st["accepted"] += 1
    elif msg.startswith("event relocked"):
        st["relocked"] += 1


flash = temp_flash()
flash.write("config.json", json.dumps(setup["config"]))
hw = Hw()
hw.clock = Clock()
hw.net = LoopNet()
hw.lock_timer = Timer()
hw.log = log
result = {"heap_base": base0, "heap_harness": base - base0, "heap_code": code,
          "aedgate_from": __import__("aedgate").__file__}


def heap():
    gc.collect()
    return gc.mem_alloc() - base


async def volunteer(app):
    """Whoever the token was for: opens the door once the lock is released, takes the AED out,
    closes it (the window then relocks)."""
    door, lock = hw.door, hw.lock
    while True:
        w = app.window
        if w.task is not None and not w.opened and lock.level == 0 and door.level == 0:
            door.drive(1)
            await sleep_ms(60)
            door.drive(0)
        await sleep_ms(20)


def quiet(app):
    return app.online and not len(app.outbox) and not app.cabinet.changed and not app._acks \
        and app.window.task is None


async def main():
    app = App(hw, flash)
    task = asyncio.create_task(app.run())
    helper = asyncio.create_task(volunteer(app))
    t0 = ticks_ms()
    was = False
    booted = False
    n_unlocks, n_reconnects = setup["unlocks"], setup["reconnects"]
    while st["fail"] is None:
        if app.online and not was:
            st["online"] += 1
            if setup.get("verbose"):
                from asyncio import core
                print("online %d: heap %d, io map %d" % (st["online"], heap(), len(core._io_queue.map)))
        was = app.online
        if not booted and quiet(app):
            await sleep_ms(200)  # let the state message go
            if quiet(app):
                booted = True
                result["heap_running"] = heap() - code
                result["boot_ms"] = ticks_diff(ticks_ms(), t0)
                print(json.dumps({"booted": result["boot_ms"]}))  # the host starts its unlocks and cuts now
        if booted and st["accepted"] >= n_unlocks and st["relocked"] >= n_unlocks \
                and st["online"] > n_reconnects and quiet(app):
            await sleep_ms(200)
            if quiet(app):
                break
        if ticks_diff(ticks_ms(), t0) > setup["timeout_s"] * 1000:
            st["fail"] = "timeout: online %d times, %d unlocks accepted, %d relocked" % (
                st["online"], st["accepted"], st["relocked"])
        await sleep_ms(5)
    result["heap_running_end"] = heap() - code
    result["heap_free_end"] = gc.mem_free()
    helper.cancel()
    task.cancel()
    await sleep_ms(20)


try:
    asyncio.run(main())
except MemoryError as e:
    st["fail"] = "MemoryError %s" % e
wipe(flash)
for k in ("accepted", "relocked", "online", "fail"):
    result[k] = st[k]
print(json.dumps(result))
sys.exit(1 if st["fail"] else 0)
