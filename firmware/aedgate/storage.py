# Flash storage behind one small interface: read a file, replace it atomically, append to it,
# list, remove, move it to another folder, and a sub-folder as its own Flash.
# On the device `root` is a folder of the littlefs filesystem; the simulator gives every cabinet
# its own folder (or its own Flash subclass that injects power cuts mid-write).
import os


class Flash:
    def __init__(self, root):
        self.root = root.rstrip("/") if root != "/" else ""
        try:
            os.mkdir(root)
        except OSError:
            pass  # already there

    def _path(self, name):
        return self.root + "/" + name

    def read(self, name):
        """The file's bytes, or None when it does not exist."""
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except OSError:
            return None

    def read_at(self, name, start, size):
        """Up to `size` bytes of `name` from offset `start` (fewer at its end), or None when it
        does not exist: a record without reading its whole file into the heap."""
        try:
            with open(self._path(name), "rb") as f:
                f.seek(start)
                return f.read(size)
        except OSError:
            return None

    def write(self, name, data):
        """Replace `name` with `data` so that a power cut leaves the old or the new file, never a
        mix: write a temporary file, then rename it over the old one (atomic on littlefs and
        POSIX). `data` is bytes or str, or an iterable of such parts written one after the
        other, so a caller never builds a big file in one piece of heap (a large temporary
        block fragments the small, non-moving heap: docs/design.md "Memory on the device").
        Each part is written before the next is asked for: a part may be a buffer the caller
        reuses for the next one."""
        tmp = self._path(name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                if isinstance(data, (bytes, bytearray, memoryview, str)):
                    data = (data,)
                for part in data:
                    f.write(part.encode() if isinstance(part, str) else part)
            os.rename(tmp, self._path(name))
        except OSError:
            self.remove(name + ".tmp")  # a full flash (ENOSPC): give back what the try took
            raise

    def append(self, name, data):
        """Add `data` at the end of `name` (created if missing). On littlefs the file is synced
        on close, so a power cut leaves it with or without `data`, never half of it."""
        with open(self._path(name), "ab") as f:
            f.write(data)

    def move(self, name, dest):
        """Move `name` into the folder `dest` (another Flash of this filesystem), atomically."""
        os.rename(self._path(name), dest._path(name))

    def sub(self, name):
        """The folder `name` inside this one, as its own Flash."""
        return Flash(self._path(name))

    def remove(self, name):
        try:
            os.remove(self._path(name))
        except OSError:
            pass

    def names(self):
        return [n for n in os.listdir(self.root or "/") if not n.endswith(".tmp")]
