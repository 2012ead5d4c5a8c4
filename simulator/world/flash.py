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


def _size(data) -> int:
    return data if isinstance(data, int) else len(data)


def _blocks(n: int) -> int:
    return 0 if n <= _INLINE else (n + _BLOCK - 1) // _BLOCK


def _zeros(data: bytes) -> bool:
    # count() runs in C: any(data) walked 8 KB of spare block as Python ints, ~30 µs a boot
    return data.count(0) == len(data)


class MemoryFlash:
    __slots__ = ("files", "subs", "capacity", "_top", "_held")

    def __init__(self, capacity: int | None = None, top: "MemoryFlash | None" = None) -> None:
        self.files: dict[str, bytes | int] = {}
        self.subs: dict[str, MemoryFlash] | None = None
        self.capacity = capacity      # bytes; None: unlimited
        self._top = top               # the flash a sub-folder's blocks count against
        # The top's blocks in use, kept as files change: the capacity check runs at every
        # append (each block of a firmware download), and walking every folder's files each
        # time cost more than the append. used() still counts from scratch (tests compare).
        self._held = 2
        if top is not None:
            top._held += 2            # a new folder's metadata pair

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
        self._room(name, len(data))
        self.files[name] = len(data) if len(data) > _INLINE and _zeros(data) else data

    def append(self, name: str, data: bytes) -> None:
        old = self.read(name) or b""
        self._room(name, len(old) + len(data))
        self.files[name] = old + bytes(data)

    def remove(self, name: str) -> None:
        old = self.files.pop(name, None)
        if old is not None:
            (self._top or self)._held -= _blocks(_size(old))

    def move(self, name: str, dest: "MemoryFlash") -> None:
        data = self.files.pop(name)
        n = _blocks(_size(data))
        (self._top or self)._held -= n
        old = dest.files.get(name)
        (dest._top or dest)._held += n - (_blocks(_size(old)) if old is not None else 0)
        dest.files[name] = data

    def names(self) -> list[str]:
        return list(self.files) + list(self.subs or ())

    def sub(self, name: str) -> "MemoryFlash":
        if self.subs is None:
            self.subs = {}
        if name not in self.subs:
            self.subs[name] = MemoryFlash(top=self._top or self)
        return self.subs[name]

    # -- capacity --------------------------------------------------------------------------
    def used(self) -> int:
        """Bytes in use, counted in whole blocks as littlefs allocates them."""
        total = 2 * _BLOCK  # this folder's metadata pair
        for data in self.files.values():
            total += _blocks(data if isinstance(data, int) else len(data)) * _BLOCK
        for sub in (self.subs or {}).values():
            total += sub.used()
        return total

    def _room(self, name: str, size: int) -> None:
        """Raises ENOSPC when `name` cannot become `size` bytes; else counts its blocks."""
        top = self._top or self
        old = self.files.get(name)
        delta = _blocks(size) - (_blocks(_size(old)) if old is not None else 0)
        if top.capacity is not None and (top._held + delta) * _BLOCK > top.capacity:
            raise OSError(_ENOSPC, "ENOSPC")
        top._held += delta
