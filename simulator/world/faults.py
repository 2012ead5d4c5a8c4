"""Fault injection: power cuts at any instant, including in the middle of a flash write.

FaultyFlash wraps a cabinet's flash (a folder or memory) with the same interface and, when told
to, cuts the power at a write: the data written so far lands in the temporary file (torn: a
random prefix), the rename never happens, and PowerCut is raised out of the firmware's call
stack. That is exactly what littlefs promises — the old file or the new one, never a mix — so
what the firmware must survive is losing the write in progress and everything after it.
`rot()` models what atomic replace cannot prevent (bit rot, a foreign tool): it damages a file
in place. An append cut by the power leaves a torn prefix of its data at the end of the file —
stricter than littlefs, which syncs an append whole or not at all.
`full` makes every write and append fail with OSError(ENOSPC), as a filesystem filled by
something else does (littlefs raises it at write, close or rename); removing still works.
"""
from __future__ import annotations

import random

from simulator.world.flash import joined

_RNG = random.Random()  # shared: one Random per cabinet would cost ~2.5 KB each at fleet scale


class PowerCut(BaseException):
    """The board lost power. A BaseException, so the firmware's `except Exception` handlers
    cannot swallow it: nothing more runs on a board without power."""


class FaultyFlash:
    __slots__ = ("inner", "rng", "writes", "cut_at", "cut_chance", "cuts", "powered", "on_cut",
                 "full")

    def __init__(self, inner, rng: random.Random | None = None, on_cut=None):
        self.inner = inner
        self.rng = rng or _RNG
        self.writes = 0
        self.cut_at: int | None = None      # cut at this write number (counted from now on)
        self.cut_chance = 0.0               # or at random, with this chance per write
        self.cuts = 0
        self.powered = True                 # after a cut nothing reaches flash until power-on
        self.on_cut = on_cut                # the cabinet's power-off, called at the cut
        self.full = False                   # the filesystem is full: writes fail with ENOSPC

    # -- the flash interface -----------------------------------------------------------------
    def read(self, name):
        return self.inner.read(name)

    def read_at(self, name, start, size):
        return self.inner.read_at(name, start, size)

    def names(self):
        return self.inner.names()

    def remove(self, name):
        self._remove(self.inner, name)

    def write(self, name, data):
        self._write(self.inner, name, data, False)

    def append(self, name, data):
        self._write(self.inner, name, data, True)

    def sub(self, name):
        return _SubFlash(self, self.inner.sub(name))

    def move(self, name, dest):
        self._move(self.inner, name, dest)

    def _move(self, inner, name, dest):
        if not self.powered:
            raise PowerCut("no power")
        inner.move(name, getattr(dest, "inner", dest))  # a rename: atomic on littlefs

    def _remove(self, inner, name):
        if not self.powered:
            raise PowerCut("no power")
        inner.remove(name)

    def _write(self, inner, name, data, append):
        if not self.powered:
            raise PowerCut("no power")  # a task still unwinding after the cut changes nothing
        if self.full:
            raise OSError(28, "ENOSPC")
        self.writes += 1
        due = self.cut_at is not None and self.writes >= self.cut_at
        if due or (self.cut_chance and self.rng.random() < self.cut_chance):
            self.cut_at = None
            self.cuts += 1
            self.powered = False
            data = joined(data)  # all its parts: a random prefix of them lands
            torn = data[: self.rng.randint(0, max(0, len(data) - 1))]
            if append:
                inner.append(name, torn)        # a torn record at the end
            else:
                inner.write(name + ".tmp", torn)  # the rename never happens
            if self.on_cut:
                self.on_cut()
            raise PowerCut("power cut while writing %s" % name)
        if append:
            inner.append(name, data)
        else:
            inner.write(name, data)

    # -- controls ------------------------------------------------------------------------------
    def set_full(self, full: bool) -> None:
        """World fault: the filesystem is full (ENOSPC) or has room again."""
        self.full = bool(full)

    def cut_after(self, n: int) -> None:
        """Cut the power at the n-th write from now (1 = the next one)."""
        self.cut_at = self.writes + n

    def rot(self, name: str) -> bool:
        """Flip a byte of `name` in place (what atomic replace cannot protect against)."""
        data = self.inner.read(name)
        if not data:
            return False
        i = self.rng.randrange(len(data))
        self.inner.write(name, data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
        return True


class _SubFlash:
    """A folder inside a FaultyFlash: its writes count, cut and fail with the parent's."""
    __slots__ = ("top", "inner")

    def __init__(self, top: FaultyFlash, inner) -> None:
        self.top = top
        self.inner = inner

    def read(self, name):
        return self.inner.read(name)

    def read_at(self, name, start, size):
        return self.inner.read_at(name, start, size)

    def names(self):
        return self.inner.names()

    def remove(self, name):
        self.top._remove(self.inner, name)

    def write(self, name, data):
        self.top._write(self.inner, name, data, False)

    def append(self, name, data):
        self.top._write(self.inner, name, data, True)

    def sub(self, name):
        return _SubFlash(self.top, self.inner.sub(name))

    def move(self, name, dest):
        self.top._move(self.inner, name, dest)
