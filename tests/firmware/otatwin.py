# The twin's esp32.Partition (simulator/vdev/shims/esp32.py, over the ESP32_GENERIC-OTA table of
# shims/_vdevota.py) for firmware unit tests, on CPython and the MicroPython unix port: the same
# code the virtual device runs, with its app partitions and otadata in memory instead of host
# files. docs/twin.md "OTA partitions" says what it models and where each fact comes from.
import io
import sys

_shims = __file__.rsplit("/", 1)[0] + "/../../simulator/vdev/shims"
# Only for these two imports: the folder also holds machine.py, time.py, ... which must not
# shadow anything for the other tests.
sys.path.append(_shims)
try:
    import _vdevota as O
    import esp32
finally:
    sys.path.remove(_shims)

APP_BYTES = 64 * 1024  # the part of each 1.5 MiB app partition held in memory (tests stay below)


class PowerCut(Exception):
    pass


def new_chip():
    """A board as esptool leaves it: ota_0 holds the factory image and runs, ota_1 and otadata
    are erased. Returns the esp32 module (the shim) set up for it."""
    first = O.image(O.FACTORY)
    esp32._files.clear()
    esp32._files["ota_0"] = io.BytesIO(first + b"\xff" * (APP_BYTES - len(first)))
    esp32._files["ota_1"] = io.BytesIO(b"\xff" * APP_BYTES)
    esp32._files["otadata"] = io.BytesIO(b"\xff" * (2 * O.SECTOR))
    esp32._RUNNING = "ota_0"
    return esp32


def reset():
    """A chip reset: the bootloader's choice (rollback step included) runs next. Returns the
    label and the version text of what it booted (None: no image there, the board is dead)."""
    label = O.choose(esp32._files["otadata"])
    esp32._RUNNING = label
    return label, version(label)


def version(label):
    head = bytearray(64)
    esp32.Partition(label).readblocks(0, head)
    return O.image_version(head)


def content(label, n):
    buf = bytearray(n)
    esp32.Partition(label).readblocks(0, buf)
    return bytes(buf)


class CutPartition:
    """A Partition that loses power at its `limit`-th flash change (erase, program, set_boot),
    either before it or halfway through it (`torn`: half the bytes of a program reach the flash;
    set_boot's otadata sector erased and its entry not yet written)."""

    def __init__(self, part, limit, torn=False):
        self.part = part
        self.limit = limit
        self.torn = torn
        self.changes = 0

    def _change(self):
        if self.changes == self.limit:
            return True
        self.changes += 1
        return False

    def readblocks(self, block, buf, off=0):
        self.part.readblocks(block, buf, off)

    def ioctl(self, op, arg):
        if op == 6 and self._change():
            raise PowerCut()
        return self.part.ioctl(op, arg)

    def writeblocks(self, block, buf, off=None):
        if self._change():
            if self.torn and off is not None and len(buf) > 1:
                self.part.writeblocks(block, bytes(buf)[:len(buf) // 2], off)
            raise PowerCut()
        if off is None:
            self.part.writeblocks(block, buf)
        else:
            self.part.writeblocks(block, buf, off)

    def set_boot(self):
        if self._change():
            if self.torn:
                f = esp32._files["otadata"]
                i = O.active(O.read_entries(f))
                f.seek(0 if i is None else (1 - i) * O.SECTOR)  # the entry set_boot rewrites
                f.write(b"\xff" * O.SECTOR)
            raise PowerCut()
        self.part.set_boot()
