# Flash cost of the outbox on the twin's littlefs (ESP32 geometry: 512 blocks of 4096 bytes,
# VfsLfs2 defaults), run under the MicroPython unix port:
#   micropython bench_outbox_flash.py FIRMWARE_DIR SHIMS_DIR OUT.json DEPTH...
# For each depth: a fresh filesystem, `depth` events waiting in the outbox, then one emit
# (Outbox.add, the mean of 60: a segment holds ~55), one boot scan (Outbox(...) as App does at start), one publish (payload +
# remove of the oldest). Counts block-device calls and prices them (shims/_vdevflash.py COST_US).
import gc
import json
import os
import sys

firmware, shims, out = sys.argv[1], sys.argv[2], sys.argv[3]
depths = [int(a) for a in sys.argv[4:]]
sys.path.insert(0, firmware)
sys.path.insert(0, shims)
import _vdevflash  # noqa: E402
from aedgate.outbox import Outbox  # noqa: E402
from aedgate.storage import Flash  # noqa: E402

EVENT = {"type": "door_alarm", "v": 1, "ts": 1795000000}
LIMIT = 2000
EMITS = 60
results = []
for depth in depths:
    img = "/tmp/aedbench-%d-%s.img" % (depth, "".join("%02x" % b for b in os.urandom(3)))
    bdev = _vdevflash.BlockDevice(img)
    _vdevflash.mount(bdev, "/fl", quiet=True)
    flash = Flash("/fl")
    flash.write("config.json", b'{"device_id": "cab-0001"}' + b" " * 600)  # a typical root
    flash.write("config.good", b'{"device_id": "cab-0001"}' + b" " * 600)
    row = {"depth": depth}
    ob = Outbox(flash, LIMIT)
    try:
        for i in range(depth):
            ob.add(dict(EVENT))
        bdev.reset_counts()
        for i in range(EMITS):       # the mean of a run of emits: a segment's fill varies
            ob.add(dict(EVENT))
        row["emit"] = dict((k, v / EMITS) for k, v in bdev.counts().items())
        ob = None
        gc.collect()
        heap = gc.mem_alloc()
        bdev.reset_counts()
        ob = Outbox(flash, LIMIT)
        row["boot_scan"] = bdev.counts()
        gc.collect()
        row["heap_bytes"] = gc.mem_alloc() - heap   # what the outbox keeps in RAM
        bdev.reset_counts()
        seq = ob.oldest()
        ob.payload(seq)
        ob.remove(seq)
        row["publish"] = bdev.counts()
        st = os.statvfs("/fl")
        row["blocks_used"] = st[2] - st[3]
    except OSError as e:
        row["error"] = "OSError %s after %d events" % (e.args[0], len(ob))
        st = os.statvfs("/fl")
        row["blocks_used"] = st[2] - st[3]
    results.append(row)
    print(json.dumps(row))
    import vfs
    vfs.umount("/fl")
    bdev.close()
    os.remove(img)
with open(out, "w") as f:
    f.write(json.dumps(results))
