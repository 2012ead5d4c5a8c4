"""An in-memory flash for big fleets: the interface of firmware/aedgate/storage.py's Flash
(read, write, remove, names) over a dict, so 30,000 cabinets need no 30,000 folders and no file
system calls per event. A simulated power cut keeps it (the object outlives the App), like flash.
Per-cabinet folders (storage.Flash) stay the default for small fleets: a person can look in."""
from __future__ import annotations


class MemoryFlash:
    __slots__ = ("files",)

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def read(self, name: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        return self.files.get(name)

    def write(self, name: str, data) -> None:
        """Replace `name` with `data` in one step (atomic, like the rename on littlefs)."""
        if isinstance(data, str):
            data = data.encode()
        self.files[name] = bytes(data)

    def remove(self, name: str) -> None:
        self.files.pop(name, None)

    def names(self) -> list[str]:
        return list(self.files)
