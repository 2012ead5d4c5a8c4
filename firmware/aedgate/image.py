# The MicroPython image of a release (docs/updates-install.md, "The MicroPython image"): written
# into the next OTA app partition (hw.image_slot(), an esp32.Partition) as its blocks arrive,
# each 4096-byte block checked against the signed hash list, and booted only when all are good.
#
#   img = Image(hw.image_slot(), hashes, size)  # hashes: 32 bytes of SHA-256 per 4096-byte block
#   offset = img.resume()                       # after a reset: where the valid blocks end
#   offset = img.write(offset, data)            # in order; returns the next offset to ask for
#   img.finish()                                # every block good: set_boot(); reset to run it
#
# Power cuts: the running image's partition is never written, and the boot record (otadata) is
# changed only by finish(), after every block was read back from flash and matched its hash. A
# cut anywhere leaves the old image booting and a partly written partition that resume() reads
# back block by block. Heap: one 1024-byte read buffer and a SHA-256 state.
import hashlib

from aedgate.compat import const
from aedgate.release import ReleaseError

BLOCK = const(4096)  # esp32.Partition's native block = the flash's erase sector (esp32_partition.c)
_HASH = const(32)
_PIECE = const(1024)  # read-back buffer: a block is re-hashed from flash in four reads
MAX_TRIES = const(3)  # the same block bad this often in a row: the image or its hash list is wrong


class Image:
    def __init__(self, part, hashes, size):
        blocks = (size + BLOCK - 1) // BLOCK
        if size <= 0 or len(hashes) != blocks * _HASH:
            raise ReleaseError("bad_image", "hashes")
        if part.ioctl(5, 0) != BLOCK:  # a Partition made with another block_size
            raise ReleaseError("bad_image", "block size")
        if part.ioctl(4, 0) < blocks:
            raise ReleaseError("no_space", "image")
        self.part = part
        self.hashes = hashes  # bytes-like, 32 B per block: 11.7 KB for a 1.5 MB image
        self.size = size
        self.blocks = blocks
        self._next = 0  # the offset the next chunk must start at
        self._tries = 0  # failed checks of the block at _next in a row
        self._buf = bytearray(_PIECE)

    def _end(self, n):
        # Bytes in block n: 4096, fewer in the image's last block (hashed without padding).
        return min(BLOCK, self.size - n * BLOCK)

    def _good(self, n):
        """Block n as it reads back from flash matches its hash."""
        h = hashlib.sha256()
        buf = self._buf
        end = self._end(n)
        off = 0
        while off < end:
            k = min(_PIECE, end - off)
            if k < _PIECE:
                buf = memoryview(self._buf)[:k]
            self.part.readblocks(n, buf, off)
            h.update(buf)
            off += k
        return h.digest() == self.hashes[n * _HASH:(n + 1) * _HASH]

    def checking(self):
        """resume() in steps: a generator that yields after each block re-checked, so the
        update task can let the loop run between blocks (a whole image is 1.5 MB to re-read).
        When it ends, next_offset() says where to ask from."""
        n = 0
        while n < self.blocks and self._good(n):
            n += 1
            yield n
        self._next = min(n * BLOCK, self.size)
        self._tries = 0

    def resume(self):
        """The offset to ask from after a reset: the end of the blocks that read back good."""
        for _ in self.checking():
            pass
        return self._next

    def next_offset(self):
        return self._next

    def write(self, offset, data):
        """Put the chunk at offset (256..1536 bytes as asked, any alignment) on flash; returns the
        next offset to ask for. A chunk not at the expected offset is ignored (a late duplicate).
        A block whose bytes on flash do not match its hash is dropped: the answer is its start.
        An OSError of the flash itself passes through."""
        if offset != self._next:
            return self._next
        mv = memoryview(data)
        pos = 0
        while pos < len(mv) and self._next < self.size:
            n, off = divmod(self._next, BLOCK)
            end = self._end(n)
            take = min(len(mv) - pos, end - off)
            if off == 0:
                # Erase the sector before its first program (NOR flash only clears bits).
                r = self.part.ioctl(6, n)
                if r:
                    raise OSError(-r)
            self.part.writeblocks(n, mv[pos:pos + take], off)
            pos += take
            self._next += take
            if off + take == end:
                if self._good(n):
                    self._tries = 0
                else:
                    self._next = n * BLOCK
                    self._tries += 1
                    if self._tries >= MAX_TRIES:
                        raise ReleaseError("bad_image", "block %d" % n)
                    break
        return self._next

    def finish(self):
        """Every block written and checked: make the partition the one the bootloader starts at
        the next reset (on trial: the app must mark it valid, hw.image_valid(), or it goes)."""
        if self._next != self.size:
            raise ReleaseError("bad_image", "incomplete")
        try:
            self.part.set_boot()
        except OSError as e:  # -5379 ESP_ERR_OTA_VALIDATE_FAILED: esp_image_verify refused it
            raise ReleaseError("bad_image", "set_boot %s" % (e.args[0],))
