"""Slot boot for simulated cabinets: what firmware/boot.py and main.py do on a board, for many
cabinets in one process (docs/updates-install.md, "Install, switch, trial").

A board's boot.py asks `Slots(flash).boot(hard)` which app slot runs and puts that slot's folder
first on sys.path, so main.py imports the SLOT's `aedgate` package from flash. A simulator process
imported `aedgate` once (the root's package, firmware/) and runs thousands of cabinets on it, so
the slot's package cannot go on sys.path. Instead each slot's files are read from the cabinet's
own flash and executed as a private package: its modules get a builtins dict whose `__import__`
resolves `aedgate` and `aedgate.x` to the slot's own modules (also the imports the firmware makes
inside functions, at run time), and everything else (`json`, `slots`, `asyncio` …) as usual.
`slots` stays the root's, as on the board: boot.py imported it before the slot went on sys.path,
and boot.py forgets only `board` and `aedgate*`.

Packages are cached per content digest: 30,000 cabinets that installed the same release share one
set of module objects per process. CPython cannot run .mpy: a slot holding .mpy files fails to
import (a release for the simulator is built with `aedgate release build --source`).
"""
from __future__ import annotations

import builtins
import hashlib
import types

PACKAGE = "aedgate"
_cache: dict[bytes, "SlotPackage"] = {}
_digests: dict[tuple, tuple[list, bytes]] = {}  # (name, id(data)) ... -> (the data, digest)


class SlotImportError(ImportError):
    """A slot's package cannot be imported (missing module, .mpy only, …)."""


class SlotPackage:
    """One slot's `aedgate` package, imported privately (never through sys.modules)."""

    def __init__(self, sources: dict[str, bytes], tag: str):
        self.sources = sources            # module name ("aedgate", "aedgate.app") -> source
        self.tag = tag
        self.modules: dict[str, types.ModuleType] = {}
        self.builtins = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import

    # -- the import the slot's code sees ------------------------------------------------------
    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        if level:
            pkg = (globals or {}).get("__package__") or ""
            base = pkg.rsplit(".", level - 1)[0] if level > 1 else pkg
            name = base + ("." + name if name else "")
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            return builtins.__import__(name, globals, locals, fromlist, 0)
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            self.load(".".join(parts[:i]))
        mod = self.modules[name]
        if not fromlist:
            return self.modules[PACKAGE]
        for item in fromlist:
            sub = name + "." + item
            if item != "*" and not hasattr(mod, item) and sub in self.sources:
                self.load(sub)
        return mod

    def load(self, name: str) -> types.ModuleType:
        mod = self.modules.get(name)
        if mod is not None:
            return mod
        src = self.sources.get(name)
        if src is None:
            raise SlotImportError("no module named %r in slot %s" % (name, self.tag), name=name)
        mod = types.ModuleType(name)
        path = name.replace(".", "/") + ("/__init__.py" if name == PACKAGE else ".py")
        mod.__file__ = "<slot %s>/%s" % (self.tag, path)
        mod.__builtins__ = self.builtins
        mod.__package__ = name if name == PACKAGE else name.rpartition(".")[0]
        if name == PACKAGE:
            mod.__path__ = []
        self.modules[name] = mod  # before running it: circular imports see the partial module
        try:
            exec(compile(src, mod.__file__, "exec"), mod.__dict__)
        except BaseException:
            del self.modules[name]
            raise
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(self.modules[parent], child, mod)
        return mod

    def app_class(self):
        """The slot's App (what main.py imports: `from aedgate.app import App`)."""
        return self._import(PACKAGE + ".app", fromlist=("App",)).App

    @property
    def version(self) -> str:
        return self.load(PACKAGE).VERSION


def read_package(slot) -> dict[str, bytes]:
    """The slot folder's `aedgate` package files (a storage.Flash-like folder) by module name.
    Raises SlotImportError when there is none, or when it holds compiled .mpy files only."""
    folder = slot.sub(PACKAGE)
    sources: dict[str, bytes] = {}
    compiled = []
    for fname in folder.names():
        data = folder.read(fname)
        if data is None:
            continue  # a sub-folder: the firmware has none
        if fname.endswith(".py"):
            mod = fname[:-3]
            sources[PACKAGE if mod == "__init__" else PACKAGE + "." + mod] = data
        elif fname.endswith(".mpy"):
            compiled.append(fname)
    if PACKAGE not in sources:
        if compiled:
            raise SlotImportError("slot holds .mpy files (%s …): CPython cannot run them; build "
                                  "simulator releases with `aedgate release build --source`"
                                  % compiled[0])
        raise SlotImportError("slot has no %s package" % PACKAGE)
    return sources


def digest(sources: dict[str, bytes]) -> bytes:
    # Memo by the identity of the bytes objects: cabinets whose flash shares the file contents
    # (MemoryFlash interns program files) hash them once, not at every one of 30,000 boots.
    key = tuple(sorted((name, id(data)) for name, data in sources.items()))
    hit = _digests.get(key)
    if hit is not None:
        return hit[1]
    h = hashlib.sha256()
    for name in sorted(sources):
        data = sources[name]
        h.update(b"%s\0%d\0" % (name.encode(), len(data)))
        h.update(data)
    d = h.digest()
    if len(_digests) > 64:
        _digests.clear()
    _digests[key] = (list(sources.values()), d)  # keeps the objects (and so their ids) alive
    return d


def package(slot) -> SlotPackage:
    """The slot's package, shared by every cabinet of this process with the same files."""
    sources = read_package(slot)
    d = digest(sources)
    pkg = _cache.get(d)
    if pkg is None:
        pkg = _cache[d] = SlotPackage(sources, d.hex()[:12])
    else:
        _share(slot, pkg)
    return pkg


def _share(slot, pkg: SlotPackage) -> None:
    """Memory only (what the firmware reads is unchanged): a cabinet whose flash is in RAM
    (MemoryFlash) keeps its own copy of every file it downloaded; once its slot matched a
    cached package, its file entries point at the package's bytes, so 30,000 cabinets on one
    release hold its ~200 KB once, not 30,000 times."""
    folder = slot.sub(PACKAGE)
    folder = getattr(folder, "inner", folder)  # FaultyFlash's folder -> MemoryFlash
    files = getattr(folder, "files", None)
    if not isinstance(files, dict):
        return  # a folder on disk: nothing to share
    for name, shared in pkg.sources.items():
        fname = ("__init__" if name == PACKAGE else name[len(PACKAGE) + 1:]) + ".py"
        mine = files.get(fname)
        if mine is not None and mine is not shared and mine == shared:
            files[fname] = shared
