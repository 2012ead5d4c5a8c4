# Heap in use after boot with MQTT connected, under the MicroPython unix port.
# Usage: micropython bench_heap.py FIRMWARE_DIR BROKER_PORT
# Prints one JSON line: heap_after_boot (all of it, modules loaded from .py/.mpy files),
# heap_code (what importing the modules took) and heap_running (the app's own state: tasks,
# buffers, config: about what a build with the firmware frozen in, see manifest.py, uses).
import gc
import json
import sys

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/../tests/firmware")
gc.collect()
base = gc.mem_alloc()

from aedgate.app import App  # noqa: E402
from aedgate.compat import asyncio, sleep_ms  # noqa: E402
from fwtest import Hardware, LoopNet, temp_flash, wipe  # noqa: E402

gc.collect()
code = gc.mem_alloc() - base  # module objects and bytecode: in flash, not heap, when frozen



flash = temp_flash()
flash.write("config.json", json.dumps({"device_id": "cab-heap", "broker_host": "127.0.0.1",
                                        "broker_port": int(sys.argv[2]), "sample_s": 1}))
hw = Hardware()
hw.net = LoopNet()
hw.log = lambda msg: None
app = App(hw, flash)
result = {}


async def main():
    task = asyncio.create_task(app.run())
    for _ in range(500):
        if app.online and not len(app.outbox) and not app.cabinet.changed:
            break
        await sleep_ms(10)
    await sleep_ms(200)
    gc.collect()
    result["online"] = app.online
    result["heap_after_boot"] = gc.mem_alloc() - base
    result["heap_code"] = code
    result["heap_running"] = result["heap_after_boot"] - code
    result["heap_free"] = gc.mem_free()
    task.cancel()
    await sleep_ms(10)


asyncio.run(main())
wipe(flash)
print(json.dumps(result))
