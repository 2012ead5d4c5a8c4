# The virtual device's flash: the ESP32's "vfs" partition as a block device over a host file,
# with MicroPython's own littlefs (vfs.VfsLfs2) on top, mounted as "/" the way the board does it.
#
# What is modelled, and where the ESP32 does it (MicroPython v1.28.0 unless said):
# - 4096-byte blocks (ports/esp32/esp32_partition.c NATIVE_BLOCK_SIZE_BYTES), 512 of them: the
#   2 MiB "vfs" partition of ESP32_GENERIC on 4 MiB flash (partitions-4MiB.csv up to v1.25;
#   created at run time from the end of the app partition since v1.26, main.c).
# - The protocol esp32.Partition gives littlefs (esp32_partition.c, extmod/vfs_blockdev.c):
#   readblocks(n, buf, off), writeblocks(n, buf, off) without erase, writeblocks(n, buf) with
#   erase, ioctl 1-6 (6 = erase one block).
# - Mounted as modules/_boot.py does: vfs.mount(bdev, "/") auto-detects littlefs with the
#   VfsLfs2 defaults (readsize=progsize=lookahead=32, so lfs2's cache is 128 bytes: many small
#   reads per operation, extmod/vfs_lfsx.c init_config). A blank or unreadable partition is
#   formatted and gets inisetup.py's boot.py (modules/inisetup.py setup()).
# - NOR flash: erased bytes read 0xFF and programming can only clear bits, so a write to a
#   block that was not erased first ANDs into it, as on the chip.
# - Every call is counted (reads, programs, erases and their bytes) and can be priced in
#   microseconds for benchmarks (COST_US below; the figures and their sources are in
#   docs/twin.md): flash I/O blocks the whole board on the ESP32.
# - Power cuts: the harness kills the interpreter; every program or erase has already reached
#   the host file (unbuffered writes), so the next boot sees what a board would after a cut.
#
# Ctrl-C: littlefs calls these methods from C, also under the import machinery's stat(). A
# KeyboardInterrupt raised here (the unix port raises it from a syscall interrupted by SIGINT)
# would unwind through littlefs mid-operation, which a board's native driver never does. So the
# operation is finished, and the harness is asked to press Ctrl-C again once it has returned
# (on_interrupt).
import os

BLOCK_SIZE = 4096
BLOCK_COUNT = 512
_ERASED = b"\xff" * BLOCK_SIZE
FILLER = "/.flash_fill"  # the files of the "flash full" world fault

# Cost per call in microseconds: (fixed, per byte). Typical figures for the 4 MiB SPI NOR chip
# of an ESP32-WROOM-32 module (Winbond W25Q32JV datasheet, "AC electrical characteristics":
# page program tPP 0.4 ms typical, 4 KiB sector erase tSE 45 ms typical) read at the ESP-IDF
# default of DIO 40 MHz (2 bits a clock: 0.1 us a byte), plus ~20 us of driver overhead per call
# (an assumption, stated in docs/twin.md).
COST_US = {"read": (20, 0.1), "prog": (400, 0.1), "erase": (45000, 0)}


class BlockDevice:
    def __init__(self, path, block_count=BLOCK_COUNT, block_size=BLOCK_SIZE):
        self.block_size = block_size
        self.block_count = block_count
        self.path = path
        size = block_count * block_size
        try:
            have = os.stat(path)[6]
        except OSError:
            have = None
        if have is None:  # a new chip: every byte erased
            with open(path, "wb") as f:
                for _ in range(block_count):
                    f.write(_ERASED[:block_size])
        elif have != size:
            raise ValueError("flash image %s is %d bytes, not %d" % (path, have, size))
        self._f = open(path, "r+b")
        self.on_interrupt = None
        self.reset_counts()

    def reset_counts(self):
        self.reads = self.progs = self.erases = 0
        self.read_bytes = self.prog_bytes = 0

    def counts(self):
        return {"reads": self.reads, "progs": self.progs, "erases": self.erases,
                "read_bytes": self.read_bytes, "prog_bytes": self.prog_bytes, "ms": self.cost_ms()}

    def cost_ms(self):
        r, p, e = COST_US["read"], COST_US["prog"], COST_US["erase"]
        us = (self.reads * r[0] + self.read_bytes * r[1] + self.progs * p[0]
              + self.prog_bytes * p[1] + self.erases * e[0])
        return us / 1000

    def close(self):
        self._f.close()

    # -- what littlefs calls -------------------------------------------------------------
    def readblocks(self, block, buf, off=0):
        self.reads += 1
        self.read_bytes += len(buf)
        self._io(self._read, block * self.block_size + off, buf)

    def writeblocks(self, block, buf, off=None):
        if off is None:  # esp32.Partition's 2-argument form erases the covered blocks first
            n = (len(buf) + self.block_size - 1) // self.block_size
            for b in range(block, block + n):
                self.ioctl(6, b)
            off = 0
        self.progs += 1
        self.prog_bytes += len(buf)
        self._io(self._prog, block * self.block_size + off, buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.block_count
        if op == 5:
            return self.block_size
        if op == 6:
            self.erases += 1
            self._io(self._erase, arg * self.block_size, None)
            return 0
        return 0  # 1 init, 2 deinit, 3 sync: nothing to do, as on the ESP32

    # -- the host file -------------------------------------------------------------------
    def _io(self, fn, pos, buf):
        # Everything that could see a pending Ctrl-C (a syscall, a jump) runs inside the try.
        # A Ctrl-C during on_interrupt asks again rather than repeating the operation; the
        # harness presses once for requests that come together (a second Ctrl-C before the
        # unix port took the first ends the interpreter: unix_mphal.c sighandler, exit(1)).
        done = interrupted = False
        while True:
            try:
                if not done:
                    fn(pos, buf)  # repeated whole when interrupted: it is idempotent
                    done = True
                if interrupted and self.on_interrupt:
                    self.on_interrupt()
                    interrupted = False
                return
            except KeyboardInterrupt:
                interrupted = True

    def _read(self, pos, buf):
        self._f.seek(pos)
        self._f.readinto(buf)

    def _prog(self, pos, buf):
        f = self._f
        f.seek(pos)
        old = f.read(len(buf))
        if old != _ERASED[:len(buf)]:
            buf = bytes(a & b for a, b in zip(old, buf))  # NOR: bits only go 1 -> 0
        f.seek(pos)
        f.write(buf)

    def _erase(self, pos, _):
        self._f.seek(pos)
        self._f.write(_ERASED[:self.block_size])


def mount(bdev, point="/", quiet=False, readonly=False):
    """Mount the block device on `point` like the board's _boot.py: littlefs is found by
    vfs.mount's autodetection; a blank or unreadable partition is formatted and gets the boot.py
    that inisetup.py writes."""
    import vfs
    try:
        vfs.mount(bdev, point, readonly=readonly)
    except OSError:
        if readonly:
            raise
        if not quiet:
            print("Performing initial setup")
        vfs.VfsLfs2.mkfs(bdev)
        vfs.mount(vfs.VfsLfs2(bdev), point)
        with open(point.rstrip("/") + "/boot.py", "w") as f:
            f.write(_BOOT_PY)
    return bdev


def fill(path=None):
    """A world fault: something fills the filesystem (a technician's copy, logs). Writes
    files until littlefs says ENOSPC. Returns the bytes written."""
    path = path or FILLER
    n = 0
    for size in (BLOCK_SIZE, 128):  # whole blocks, then what is left in the last metadata
        chunk = b"\0" * size
        try:
            f = open(path + str(size), "wb")
        except OSError:
            break
        try:
            while True:
                f.write(chunk)
                f.flush()
                n += size
        except OSError:
            pass
        try:
            f.close()
        except OSError:
            pass
    return n


def unfill(path=None):
    path = path or FILLER
    for size in (BLOCK_SIZE, 128):
        try:
            os.remove(path + str(size))
        except OSError:
            pass


# What inisetup.py writes on a freshly formatted board.
_BOOT_PY = """\
# This file is executed on every boot (including wake-boot from deepsleep)
#import esp
#esp.osdebug(None)
#import webrepl
#webrepl.start()
"""
