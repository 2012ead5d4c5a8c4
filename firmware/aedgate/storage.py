# Flash storage behind one small interface: read a file, replace it atomically, append to it,
# list, remove, and a sub-folder as its own Flash.
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

    def write(self, name, data):
        """Replace `name` with `data` so that a power cut leaves the old or the new file, never a
        mix: write a temporary file, then rename it over the old one (atomic on littlefs and
        POSIX)."""
        if isinstance(data, str):
            data = data.encode()
        tmp = self._path(name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, self._path(name))
        except OSError:
            self.remove(name + ".tmp")  # a full flash (ENOSPC): give back what the try took
            raise

    def append(self, name, data):
        """Add `data` at the end of `name` (created if missing). On littlefs the file is synced
        on close, so a power cut leaves it with or without `data`, never half of it."""
        with open(self._path(name), "ab") as f:
            f.write(data)

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
