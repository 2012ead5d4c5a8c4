"""The virtual device's flash from the host side: files inside its littlefs image
(`<flash-dir>/vfs.img`, see shims/_vdevflash.py), read and written by MicroPython's own littlefs
in a short-lived unix-port process, so the host never needs a second littlefs implementation.

`FlashImage(path) / "boot.py"` behaves like a small pathlib.Path (read_text, read_bytes,
write_text, write_bytes, exists, is_file), so tests and the harness read the flash as they read
a folder. Write only while the device is off or idle at its REPL: like a second writer on the
chip, the device does not see changes it has cached."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

SHIMS = Path(__file__).resolve().parent / "shims"
BLOCK_SIZE = 4096
IMAGE_NAME = "vfs.img"

_SCRIPT = r"""
import sys, os, json
sys.path.insert(0, %(shims)r)
import _vdevflash as F
req = json.loads(open(%(req)r).read())
bdev = F.BlockDevice(req["image"], req["blocks"])
try:
    F.mount(bdev, "/fl", quiet=True, readonly=req["readonly"])
except OSError as e:
    print(json.dumps({"error": "unformatted"}))
    sys.exit(0)
out = []
for op, name, host in req["ops"]:
    p = "/fl/" + name.lstrip("/")
    try:
        if op == "get":
            with open(p, "rb") as f, open(host, "wb") as g:
                while True:
                    b = f.read(4096)
                    if not b:
                        break
                    g.write(b)
            out.append(True)
        elif op == "put":
            with open(host, "rb") as g, open(p, "wb") as f:
                while True:
                    b = g.read(4096)
                    if not b:
                        break
                    f.write(b)
            out.append(True)
        elif op == "stat":
            out.append(list(os.stat(p)))
        elif op == "ls":
            out.append([list(e) for e in os.ilistdir(p)])
        elif op == "rm":
            os.remove(p)
            out.append(True)
    except OSError as e:
        out.append({"errno": e.errno})
print(json.dumps({"ok": out}))
"""


def micropython() -> str:
    from simulator.vdev.device import find_micropython
    return find_micropython()


class FlashImage:
    def __init__(self, path: str | os.PathLike[str], size: int = 2 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.blocks = size // BLOCK_SIZE

    def __truediv__(self, name: str) -> "FlashPath":
        return FlashPath(self, name)

    def run(self, ops: list, readonly: bool = True) -> list:
        """Run file operations inside the image: ("get"|"put", name, host_path), ("stat", name,
        None), ("ls", dir, None), ("rm", name, None). Each result: True, a list, or {"errno": n}."""
        with tempfile.TemporaryDirectory(prefix="vdevflash-") as tmp:
            req = Path(tmp) / "req.json"
            blocks = self.path.stat().st_size // BLOCK_SIZE if self.path.exists() else self.blocks
            req.write_text(json.dumps({"image": str(self.path), "blocks": blocks,
                                       "readonly": readonly, "ops": ops}))
            script = Path(tmp) / "op.py"
            script.write_text(_SCRIPT % {"shims": str(SHIMS), "req": str(req)})
            r = subprocess.run([micropython(), str(script)], capture_output=True, text=True, timeout=60)
            try:
                answer = json.loads(r.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise RuntimeError("flash image %s: %s" % (self.path, (r.stdout + r.stderr)[-500:]))
            if "error" in answer:
                if not readonly:
                    raise RuntimeError("flash image %s: %s" % (self.path, answer["error"]))
                return [{"errno": 2} for _ in ops]  # nothing on a blank chip
            return answer["ok"]

    def format(self) -> None:
        """A blank chip formatted as inisetup.py does on first boot (with its boot.py)."""
        self.run([], readonly=False)

    def read(self, name: str) -> bytes | None:
        with tempfile.TemporaryDirectory(prefix="vdevflash-") as tmp:
            host = os.path.join(tmp, "f")
            if not self.path.exists() or self.run([("get", name, host)])[0] is not True:
                return None
            return Path(host).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="vdevflash-") as tmp:
            host = os.path.join(tmp, "f")
            Path(host).write_bytes(data)
            res = self.run([("put", name, host)], readonly=False)[0]
            if res is not True:
                raise OSError(res["errno"], "%s on the virtual flash" % name)

    def stat(self, name: str) -> list | None:
        if not self.path.exists():
            return None
        res = self.run([("stat", name, None)])[0]
        return res if isinstance(res, list) else None

    def listdir(self, name: str = "") -> list[str]:
        res = self.run([("ls", name, None)])[0]
        return [e[0] for e in res] if isinstance(res, list) else []


class FlashPath:
    """One file on the virtual flash, with the pathlib.Path methods tests use."""

    def __init__(self, image: FlashImage, name: str) -> None:
        self.image = image
        self.name = name

    def __truediv__(self, name: str) -> "FlashPath":
        return FlashPath(self.image, self.name.rstrip("/") + "/" + name)

    def __repr__(self) -> str:
        return "<%s:%s>" % (self.image.path, self.name)

    def read_bytes(self) -> bytes:
        data = self.image.read(self.name)
        if data is None:
            raise FileNotFoundError(repr(self))
        return data

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        self.image.write(self.name, data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def exists(self) -> bool:
        return self.image.stat(self.name) is not None

    def is_file(self) -> bool:
        st = self.image.stat(self.name)
        return st is not None and st[0] & 0x8000 != 0
