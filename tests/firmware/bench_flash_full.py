# The cabinet on a full littlefs (the twin's flash, ESP32 geometry), under the MicroPython unix
# port: something filled the filesystem until littlefs said ENOSPC; the board must boot, again
# and again, keep its alarms and report what it dropped.
#   micropython bench_flash_full.py FIRMWARE_DIR SHIMS_DIR FWTEST_DIR
# Prints one JSON line.
import json
import os
import sys

firmware, shims, fwtest_dir = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, firmware)
sys.path.insert(0, shims)
sys.path.insert(0, fwtest_dir)
import _vdevflash  # noqa: E402
from aedgate.app import App  # noqa: E402
from aedgate.storage import Flash  # noqa: E402
from fwtest import Hardware  # noqa: E402

img = "/tmp/aedfull-%s.img" % "".join("%02x" % b for b in os.urandom(3))
bdev = _vdevflash.BlockDevice(img)
_vdevflash.mount(bdev, "/fl", quiet=True)
flash = Flash("/fl")
flash.write("config.json", json.dumps({"device_id": "cab-0001", "debounce_ms": 10}))
App(Hardware(), flash)                     # a first boot while there was room
result = {"filled": _vdevflash.fill("/fl/.fill"), "boots": 0, "errors": []}
for boot in range(3):                      # then three boots on the full flash
    try:
        app = App(Hardware(), flash)
        result["boots"] += 1
        for t in ("door_opened", "door_closed", "door_alarm", "door_opened", "lock_fault"):
            app.emit({"type": t})
    except Exception as e:
        result["errors"].append("%s %s" % (type(e).__name__, e))
        continue
if result["boots"]:
    ob = app.outbox
    first = ob.seq + 1
    alarms = []
    for i in range(150):                   # past the spare blocks: routine events go first
        app.emit({"type": "door_opened" if i % 2 else "door_alarm", "n": i})
        if i % 2 == 0:
            alarms.append(i)
    pending = ob.pending() if hasattr(ob, "pending") else ob._pending
    evs = [ob.get(s) for s in pending]
    late = [e for e in evs if e and e["seq"] >= first]
    result["alarms_kept"] = sorted(e["n"] for e in late if e["type"] == "door_alarm") == alarms
    result["routine_kept"] = sum(1 for e in late if e["type"] == "door_opened")
    result["dropped"] = sum(e["count"] for e in late if e["type"] == "events_dropped")
    seqs = [e["seq"] for e in late]
    # Routine events already on flash keep their seq when dropped (a gap that events_dropped
    # accounts for); those refused at the door never got one.
    result["missing_seqs"] = len(set(range(first, ob.seq + 1)) - set(seqs))
    result["routine_emitted"] = 75
    result["in_ram"] = len(ob._ram) if hasattr(ob, "_ram") else 0
result["free_blocks"] = os.statvfs("/fl")[3] if os.statvfs("/fl")[3] < 512 else 0
_vdevflash.unfill("/fl/.fill")             # room again: the next boot writes to flash
try:
    app = App(Hardware(), flash)
    result["after_unfill_seq"] = app.outbox.seq
except Exception as e:
    result["errors"].append("after unfill: %s %s" % (type(e).__name__, e))
import vfs  # noqa: E402
vfs.umount("/fl")
bdev.close()
os.remove(img)
print(json.dumps(result))
