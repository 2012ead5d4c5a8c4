"""An in-memory flash for big fleets: the interface of firmware/aedgate/storage.py's Flash
(read, read_at, write, append, remove, move, names, sub) over a dict, so 30,000 cabinets need
no 30,000 folders and no file system calls per event. A simulated power cut keeps it (the object
outlives the App), like flash. Per-cabinet folders (storage.Flash) stay the default for small fleets: a
person can look in.

Capacity: optional, in 4096-byte blocks as on the ESP32's littlefs (a file takes whole blocks;
one of up to 128 bytes lives in its folder's metadata and takes none; every folder takes two
blocks for its metadata pair). Past it a write raises OSError(ENOSPC) as littlefs does. Files of
zeros (the outbox's spare blocks) are kept as their length, so they cost no RAM here."""
from __future__ import annotations

_ENOSPC = 28
ESP32_VFS_BYTES = 2 * 1024 * 1024   # ESP32_GENERIC's "vfs" partition (docs/twin.md)
_BLOCK = 4096
_INLINE = 128


def joined(data) -> bytes:
    """What storage.Flash.write writes: `data` itself (bytes or str), or its parts one after the
    other (each copied as it comes: the firmware may reuse one buffer for the next part)."""
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    return b"".join(p.encode() if isinstance(p, str) else bytes(p) for p in data)


def _blocks(n: int) -> int:
    return 0 if n <= _INLINE else (n + _BLOCK - 1) // _BLOCK


def _zeros(data: bytes) -> bool:
    # count() runs in C: any(data) walked 8 KB of spare block as Python ints, ~30 µs a boot
    return data.count(0) == len(data)


class MemoryFlash:
    __slots__ = ("files", "subs", "capacity", "_top", "_total")

    def __init__(self, capacity: int | None = None, top: "MemoryFlash | None" = None) -> None:
        self.files: dict[str, bytes | int] = {}
        self.subs: dict[str, MemoryFlash] | None = None
        self.capacity = capacity      # bytes; None: unlimited
        self._top = top               # the flash a sub-folder's blocks count against
        # Bytes in use in the whole flash, kept up to date on the top folder by every change (a
        # fleet writes on every event: a walk over all files per write cost 7 % of a worker)
        self._total = 2 * _BLOCK      # this folder's metadata pair
        if top is not None:
            top._total += self._total

    def read(self, name: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        data = self.files.get(name)
        return bytes(data) if isinstance(data, int) else data

    def read_at(self, name: str, start: int, size: int) -> bytes | None:
        data = self.read(name)
        return None if data is None else data[start:start + size]

    def write(self, name: str, data) -> None:
        """Replace `name` with `data` (bytes, str, or an iterable of parts, as storage.Flash
        takes) in one step (atomic, like the rename on littlefs)."""
        data = joined(data)
        grow = self._room(name, len(data))
        self.files[name] = len(data) if len(data) > _INLINE and _zeros(data) else data
        (self._top or self)._total += grow

    def append(self, name: str, data: bytes) -> None:
        old = self.read(name) or b""
        grow = self._room(name, len(old) + len(data))
        self.files[name] = old + bytes(data)
        (self._top or self)._total += grow

    def remove(self, name: str) -> None:
        old = self.files.pop(name, None)
        if old is not None:
            (self._top or self)._total -= _size(old)

    def move(self, name: str, dest: "MemoryFlash") -> None:
        data = self.files.pop(name)
        if name in dest.files:            # replaced, as a rename over a file does
            dest.remove(name)
        dest.files[name] = data
        (self._top or self)._total -= _size(data)
        (dest._top or dest)._total += _size(data)

    def names(self) -> list[str]:
        return list(self.files) + list(self.subs or ())

    def sub(self, name: str) -> "MemoryFlash":
        if self.subs is None:
            self.subs = {}
        if name not in self.subs:
            self.subs[name] = MemoryFlash(top=self._top or self)
        return self.subs[name]

    def attach(self, name: str, folder: "MemoryFlash") -> None:
        """Put an existing folder (a SharedFolder) here as sub-folder `name`."""
        if self.subs is None:
            self.subs = {}
        self.subs[name] = folder
        (self._top or self)._total += folder.used()

    # -- capacity --------------------------------------------------------------------------
    def used(self) -> int:
        """Bytes in use, counted in whole blocks as littlefs allocates them (for a sub-folder:
        its own and its sub-folders')."""
        return self._total if self._top is None else self.walk()

    def walk(self) -> int:
        """used(), counted file by file."""
        total = 2 * _BLOCK  # this folder's metadata pair
        for data in self.files.values():
            total += _size(data)
        for sub in (self.subs or {}).values():
            total += sub.used() if isinstance(sub, SharedFolder) else sub.walk()
        return total

    def _room(self, name: str, size: int) -> int:
        """How many bytes of blocks writing `size` bytes as `name` adds; ENOSPC past capacity."""
        top = self._top or self
        old = self.files.get(name)
        grow = _blocks(size) * _BLOCK - (_size(old) if old is not None else 0)
        if top.capacity is not None and top._total + grow > top.capacity:
            raise OSError(_ENOSPC, "ENOSPC")
        return grow


def _size(data) -> int:
    """The blocks a stored file takes, in bytes."""
    return _blocks(data if isinstance(data, int) else len(data)) * _BLOCK


class SharedFolder(MemoryFlash):
    """A folder that every cabinet of a simulator process holds and none writes: the factory
    package's `aedgate/` (see factory_install). Its blocks count against each cabinet's
    capacity, as the files do on a board; a write raises EROFS, since on a board it would
    change only that cabinet."""
    __slots__ = ("_used",)

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__()
        self.files = dict(files)
        self._used = MemoryFlash.walk(self)

    def used(self) -> int:
        return self._used

    def _readonly(self, *_args) -> None:
        raise OSError(30, "EROFS: the factory package is shared by the simulated fleet")

    _room = remove = move = sub = _readonly


_factory: tuple[dict[str, bytes], dict[str, bytes]] | None = None


def factory_files() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The firmware package as `aedgate provision` copies it to a board's root (package.json's
    files, as .py): ({top-level name: bytes}, {name in aedgate/: bytes}), read once."""
    global _factory
    if _factory is None:
        import json as _json
        from host_tools.firmware import FIRMWARE
        top: dict[str, bytes] = {}
        pkg: dict[str, bytes] = {}
        for dest, src in _json.loads((FIRMWARE / "package.json").read_text())["urls"]:
            data = (FIRMWARE / src).read_bytes()
            if "/" in dest:
                folder, name = dest.split("/", 1)
                if folder != "aedgate" or "/" in name:
                    raise ValueError("package.json: %s is not in aedgate/" % dest)
                pkg[name] = data
            else:
                top[dest] = data
        _factory = (top, pkg)
    return _factory


_shared_pkg: SharedFolder | None = None


def factory_install(flash) -> None:
    """Put the root's package on a simulated cabinet's flash, as provisioning leaves it on a
    board: an update then copies the files a release did not change from it instead of
    downloading them (firmware/aedgate/update.py). A MemoryFlash gets one SharedFolder for
    `aedgate/` (no copy per cabinet); a folder on disk (storage.Flash) gets real files."""
    global _shared_pkg
    top, pkg = factory_files()
    for name, data in top.items():
        flash.write(name, data)
    if isinstance(flash, MemoryFlash):
        if _shared_pkg is None:
            _shared_pkg = SharedFolder(pkg)
        flash.attach("aedgate", _shared_pkg)
    else:
        d = flash.sub("aedgate")
        for name, data in pkg.items():
            d.write(name, data)
