# A download through the real App under the MicroPython unix port: heap and time.
# Usage: micropython -X heapsize=8M bench_update.py FIRMWARE_DIR [OUT.json]
# A signed release of 24 files (64 KB in all, the size of the compiled firmware) is served
# block by block by test_update.Server (the publisher's MQTT client, answering each get at
# once), so the figures are the cabinet's own cost: no broker, no network.
# Prints one JSON line: heap_import (what loading aedgate.update took, modules from .py),
# heap_peak (the most the heap held beyond what it held before the offer, sampled after a
# collection at each get: includes release.py, ed25519.py and sha512.py, loaded for the check
# and kept), heap_files (the same while the files stream in), gets, seconds, kb_per_s.
import gc
import json
import sys
import time

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/../tests/firmware")

from aedgate.app import App  # noqa: E402,F401
from aedgate import cbor, release  # noqa: E402,F401  (loaded by the app's gate already)
import slots  # noqa: E402,F401
gc.collect()
_b = gc.mem_alloc()
import aedgate.update  # noqa: E402,F401
gc.collect()
heap_import = gc.mem_alloc() - _b
from fwtest import temp_flash, wipe  # noqa: E402
import test_update as tu  # noqa: E402

files = []
for i in range(24):
    files.append(("aedgate/m%02d.mpy" % i, bytes((i * 7 + j) & 0xFF for j in range(2731))))
files += tu._files("0.2.0")
raw, files = tu._release("0.2.0", files=files)
f = temp_flash()
tu._root(f)
app = tu._app(f, update_block=1024)
app.log = lambda m: None
gc.collect()
base = gc.mem_alloc()
peak = [0, 0]


class Bench(tu.Server):
    async def publish(self, topic, payload, qos=0, retain=False):
        if topic.endswith("/update/get"):
            gc.collect()
            used = gc.mem_alloc() - base
            peak[0] = max(peak[0], used)
            if "release.cose" not in payload:
                peak[1] = max(peak[1], used)
        await tu.Server.publish(self, topic, payload, qos, retain)
        self.n = getattr(self, "n", 0) + len(self.gets)
        self.gets.clear()          # the bench keeps nothing of its own on the heap
        self.events.clear()


server = Bench(app, raw, files)
tu.offer(app, raw)
t0 = time.ticks_ms()
end = tu.drive(app, server, lambda s: False, limit_ms=600000)
dt = time.ticks_diff(time.ticks_ms(), t0) / 1000
size = sum(len(d) for _, d in files)
out = {"restart": type(end).__name__, "files": len(files), "bytes": size, "block": 1024,
       "gets": server.n, "seconds": round(dt, 2), "kb_per_s": round(size / 1024 / dt, 1),
       "heap_import": heap_import, "heap_peak": peak[0], "heap_files": peak[1]}
wipe(f)
print(json.dumps(out))
if len(sys.argv) > 2:
    with open(sys.argv[2], "w") as fh:
        fh.write(json.dumps(out) + "\n")
