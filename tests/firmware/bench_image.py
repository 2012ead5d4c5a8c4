# Writing a MicroPython image with aedgate/image.py into the twin's OTA partition (shims/esp32.py
# over host files, as in the vdev), run under the MicroPython unix port:
#   micropython -X heapsize=8M bench_image.py FIRMWARE_DIR SHIMS_DIR OUT.json [SIZE [CHUNK]]
# Prints and writes: host time to write the whole image in CHUNK-byte pieces (get's default
# update_block 1024), the longest single write() (a loop stall), heap kept by an Image and
# allocated per write(), resume() over a whole written image and its longest step, and the
# flash operations counted and priced with the twin's costs (shims/_vdevflash.py COST_US).
import gc
import hashlib
import json
import os
import sys
import time

firmware, shims, out = sys.argv[1], sys.argv[2], sys.argv[3]
SIZE = int(sys.argv[4]) if len(sys.argv) > 4 else 1500000
CHUNK = int(sys.argv[5]) if len(sys.argv) > 5 else 1024
sys.path.insert(0, firmware)
sys.path.append(shims)
import _vdevflash  # noqa: E402
import _vdevota as O  # noqa: E402
import esp32  # noqa: E402
from aedgate.image import Image  # noqa: E402

sys.path.remove(shims)
folder = "/tmp/aedimg-" + "".join("%02x" % b for b in os.urandom(4))
os.mkdir(folder)
O.make(folder)
for name in O.APPS:
    esp32._files[name] = open(folder + "/" + name + ".img", "r+b")
esp32._files["otadata"] = open(folder + "/" + O.OTADATA, "r+b")


class Counted:
    """The partition, with its flash operations counted (nothing else changed)."""

    def __init__(self, part):
        self.part = part
        self.n = {"read": 0, "read_bytes": 0, "prog": 0, "prog_bytes": 0, "erase": 0}

    def readblocks(self, b, buf, off=0):
        self.n["read"] += 1
        self.n["read_bytes"] += len(buf)
        self.part.readblocks(b, buf, off)

    def writeblocks(self, b, buf, off=None):
        self.n["prog"] += 1
        self.n["prog_bytes"] += len(buf)
        self.part.writeblocks(b, buf, off)

    def ioctl(self, op, arg):
        if op == 6:
            self.n["erase"] += 1
        return self.part.ioctl(op, arg)

    def set_boot(self):
        self.part.set_boot()

    def priced_ms(self):
        r, p, e = _vdevflash.COST_US["read"], _vdevflash.COST_US["prog"], _vdevflash.COST_US["erase"]
        n = self.n
        return (n["read"] * r[0] + n["read_bytes"] * r[1] + n["prog"] * p[0] + n["prog_bytes"] * p[1]
                + n["erase"] * e[0]) / 1000


head = O.image("9.9.9")
data = bytearray(SIZE)
data[:len(head)] = head
x = 1
for i in range(len(head), SIZE, 4):  # a pseudo-random body, cheap to make
    x = (x * 1103515245 + 12345) & 0x7FFFFFFF
    data[i] = x & 0xFF
data = bytes(data)
hashes = b"".join(hashlib.sha256(data[i:i + 4096]).digest() for i in range(0, SIZE, 4096))

class RamPart:
    """A partition in a preallocated bytearray, allocating (almost) nothing itself, as the C
    esp32.Partition allocates nothing: what a write() allocates here is image.py's own."""

    def __init__(self, blocks):
        self.mv = memoryview(bytearray(blocks * 4096))
        self.blocks = blocks
        self.ff = b"\xff" * 4096

    def readblocks(self, b, buf, off=0):
        p = b * 4096 + off
        buf[:] = self.mv[p:p + len(buf)]

    def writeblocks(self, b, buf, off=0):
        p = b * 4096 + off
        self.mv[p:p + len(buf)] = buf

    def ioctl(self, op, arg):
        if op == 6:
            self.mv[arg * 4096:arg * 4096 + 4096] = self.ff
            return 0
        return {4: self.blocks, 5: 4096}.get(op, 0)


def heap_of_writes(part, n):
    """Most bytes one write() allocates, over n chunks (block ends included)."""
    img = Image(part, hashes, SIZE)
    most = 0
    off = 0
    gc.collect()
    gc.disable()
    for k in range(n):
        c = chunks[k]
        a = gc.mem_alloc()
        off = img.write(off, c)
        most = max(most, gc.mem_alloc() - a)
    gc.enable()
    return most


part = Counted(esp32.Partition(esp32.Partition.RUNNING).get_next_update())
gc.collect()
base = gc.mem_alloc()
img = Image(part, hashes, SIZE)
gc.collect()
kept = gc.mem_alloc() - base
chunks = [data[i:i + CHUNK] for i in range(0, 16 * CHUNK, CHUNK)]  # made before measuring
per_write = heap_of_writes(RamPart(384), 16)  # image.py's own
per_write_twin = heap_of_writes(part, 16)  # with the twin's Python shim under it
part.n = dict((k, 0) for k in part.n)
longest = 0
t0 = time.ticks_us()
off = img.next_offset()
while off < SIZE:
    c = data[off:off + CHUNK]
    t = time.ticks_us()
    off = img.write(off, c)
    longest = max(longest, time.ticks_diff(time.ticks_us(), t))
write_ms = time.ticks_diff(time.ticks_us(), t0) / 1000
writes = dict(part.n)
write_flash_ms = part.priced_ms()

part.n = dict((k, 0) for k in part.n)
img2 = Image(part, hashes, SIZE)
step = 0
t0 = time.ticks_us()
t = t0
for _ in img2.checking():
    now = time.ticks_us()
    step = max(step, time.ticks_diff(now, t))
    t = now
resume_ms = time.ticks_diff(time.ticks_us(), t0) / 1000
assert img2.next_offset() == SIZE
resume_reads = dict(part.n)
resume_flash_ms = part.priced_ms()
img2.finish()

row = {"size": SIZE, "chunk": CHUNK, "blocks": img.blocks,
       "write_ms": round(write_ms), "write_kb_s": round(SIZE / 1024 / (write_ms / 1000)),
       "longest_write_us": longest, "write_ops": writes, "write_flash_ms_priced": round(write_flash_ms),
       "heap_kept_bytes": kept, "heap_per_write_bytes": per_write,
       "heap_per_write_with_twin_shim_bytes": per_write_twin,
       "resume_ms": round(resume_ms), "resume_longest_step_us": step, "resume_ops": resume_reads,
       "resume_flash_ms_priced": round(resume_flash_ms)}
print(json.dumps(row))
with open(out, "w") as f:
    json.dump(row, f)
for name in list(esp32._files):
    esp32._files[name].close()
for name in os.listdir(folder):
    os.remove(folder + "/" + name)
os.rmdir(folder)
