# The virtual device's flash: a host directory mounted as "/" through a Python VFS object, with
# a size limit so a full flash raises OSError(ENOSPC) like littlefs on the ESP32.
# (VfsPosix("dir") mounted directly would do, but its rename() of two absolute paths is broken
# in this unix port: both paths share one buffer. So every call goes through one VfsPosix()
# with real host paths.)
import io
import vfs

_ENOSPC = 28
_BLOCK = 4096


class _Writer(io.IOBase):
    def __init__(self, fs, f):
        self._fs = fs
        self._f = f

    def write(self, b):
        n = len(b)
        if self._fs.free() < n:
            raise OSError(_ENOSPC)
        self._fs._used += n
        return self._f.write(b)

    def readinto(self, b):
        return self._f.readinto(b)

    def read(self, n=-1):
        return self._f.read(n)

    def seek(self, *a):
        return self._f.seek(*a)

    def tell(self):
        return self._f.tell()

    def flush(self):
        return self._f.flush()

    def close(self):
        self._f.close()

    def ioctl(self, req, arg):
        return 0

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


class FlashFS:
    def __init__(self, root, size):
        self._root = root.rstrip("/")
        self._size = size
        self._v = vfs.VfsPosix()
        self._cwd = "/"
        self._used = None

    def __repr__(self):
        return "<FlashFS>"

    # -- helpers ----------------------------------------------------------------------------
    def _norm(self, path):
        if not path.startswith("/"):
            path = self._cwd.rstrip("/") + "/" + path
        parts = []
        for p in path.split("/"):
            if p in ("", "."):
                continue
            if p == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(p)
        return "/" + "/".join(parts)

    def _host(self, path):
        return self._root + self._norm(path).rstrip("/") if self._norm(path) != "/" else self._root

    def _du(self, host):
        total = 0
        for entry in self._v.ilistdir(host):
            name, kind = entry[0], entry[1]
            p = host + "/" + name
            if kind == 0x4000:
                total += _BLOCK + self._du(p)
            else:
                total += (self._v.stat(p)[6] + _BLOCK - 1) // _BLOCK * _BLOCK
        return total

    def free(self):
        if self._used is None:
            self._used = self._du(self._root)
        return self._size - self._used

    # -- VFS protocol -----------------------------------------------------------------------
    def mount(self, readonly, mkfs):
        pass

    def umount(self):
        pass

    def open(self, path, mode):
        f = self._v.open(self._host(path), mode)
        if "w" in mode or "a" in mode or "+" in mode:
            self._used = None  # recount: a rewrite frees the old content
            if self.free() <= 0:
                f.close()
                raise OSError(_ENOSPC)
            return _Writer(self, f)
        return f

    def ilistdir(self, path):
        host = self._host(path)
        for entry in self._v.ilistdir(host):
            size = 0 if entry[1] == 0x4000 else self._v.stat(host + "/" + entry[0])[6]
            yield (entry[0], entry[1], 0, size)  # littlefs gives the size too

    def stat(self, path):
        try:
            return self._v.stat(self._host(path))
        except KeyboardInterrupt:
            # This Python code also runs under the import machinery, which takes any exception
            # from a VFS's stat() for "no such file": a Ctrl-C landing here would vanish, where
            # a board's native VFS would keep it pending. Ask the harness to press it again
            # once this call has returned.
            import _vdevrt
            _vdevrt.send({"intr": 1})
            return self._v.stat(self._host(path))

    def statvfs(self, path):
        free = max(0, self.free()) // _BLOCK
        blocks = self._size // _BLOCK
        return (_BLOCK, _BLOCK, blocks, free, free, 0, 0, 0, 0, 255)

    def mkdir(self, path):
        self._used = None
        return self._v.mkdir(self._host(path))

    def rmdir(self, path):
        self._used = None
        return self._v.rmdir(self._host(path))

    def remove(self, path):
        self._used = None
        return self._v.remove(self._host(path))

    def rename(self, old, new):
        self._used = None
        return self._v.rename(self._host(old), self._host(new))

    def chdir(self, path):
        p = self._norm(path)
        self._v.stat(self._host(p))  # raises ENOENT like a real chdir
        self._cwd = p

    def getcwd(self):
        return self._cwd
