# Two app slots for the firmware package (docs/updates-install.md): the folders "a" and "b" each
# hold a whole `aedgate` package; the files at the root (the factory install) stay as the last
# resort. ONE small record says which slot runs, in two checked copies ("slot.0", "slot.1": a
# CRC-32 then JSON, each replaced atomically by storage.Flash.write), the newer by `seq` wins, so
# a power cut while switching leaves the old record or the new one, and a rotten copy the other.
#
# This module lives at the root, outside the slots, like a bootloader: boot.py asks it which slot
# to put first on sys.path before anything imports `aedgate`, so it imports nothing of aedgate.
#
# A new slot boots on trial: boot() counts its hard boots, and past MAX_TRIAL_BOOTS (a crash
# loop) goes back to the previous slot; the app confirms it once online and healthy, or gives it
# up when update_trial_s runs out (expire). Events the boot cannot emit (there is no outbox yet)
# wait in the record's "notes" until the app has put them in the outbox (then cleared: a cut in
# between sends one twice, never loses one).
import json
from binascii import crc32

_REC = "slot."
_MARK = "version"         # written last into a slot: the slot is complete
MAX_TRIAL_BOOTS = 3        # hard boots a release on trial gets before it counts as a crash loop


def version(text):
    """'MAJOR.MINOR.PATCH' as a tuple of ints, or None."""
    try:
        v = tuple(int(p) for p in text.split("."))
    except (ValueError, AttributeError):
        return None
    return v if len(v) == 3 and min(v) >= 0 else None


def _encode(rec):
    body = json.dumps(rec).encode()
    return (crc32(body) & 0xFFFFFFFF).to_bytes(4, "big") + body


def _decode(data):
    if not data or len(data) < 5:
        return None
    body = data[4:]
    if crc32(body) & 0xFFFFFFFF != int.from_bytes(data[:4], "big"):
        return None
    try:
        rec = json.loads(body)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("seq"), int) else None


class Slots:
    def __init__(self, flash, running="0.0.0"):
        """`flash`: a storage.Flash (or anything with read/write/remove/names/sub) on the root;
        `running`: the version of the root's package, used when there is no record yet."""
        self.flash = flash
        self._at = 1                      # the copy holding self.rec (the next write goes to the other)
        rec = None
        for i in (0, 1):
            r = _decode(flash.read(_REC + str(i)))
            if r is not None and (rec is None or r["seq"] > rec["seq"]):
                rec, self._at = r, i
        self.rec = rec or {"seq": 0, "slot": "", "ver": running, "prev": "", "pver": running,
                           "trial": 0, "boots": 0, "floor": running, "notes": []}

    def _save(self, rec):
        rec["seq"] = self.rec["seq"] + 1
        at = 1 - self._at
        self.flash.write(_REC + str(at), _encode(rec))
        self.rec, self._at = rec, at

    def _back(self, rec, reason):
        """`rec` turned back to the slot it replaced, with the event that says why."""
        rec["notes"].append({"type": "update_rolled_back", "version": rec["ver"], "to": rec["pver"],
                             "reason": reason})
        rec["slot"], rec["prev"] = rec["prev"], rec["slot"]
        rec["ver"], rec["pver"] = rec["pver"], rec["ver"]
        rec["trial"] = rec["boots"] = 0
        return rec

    def _complete(self, slot, ver):
        return slot == "" or self.flash.sub(slot).read(_MARK) == ver.encode()

    # -- at boot (boot.py) ---------------------------------------------------------------
    def boot(self, hard):
        """The slot to run ("" = the root). `hard`: a chip reset (power on, reset, watchdog), not
        a soft reboot (those happen at every mpremote command and prove nothing)."""
        rec = dict(self.rec)
        rec["notes"] = list(rec["notes"])
        if rec["trial"] and hard:
            rec["boots"] += 1
            if rec["boots"] > MAX_TRIAL_BOOTS:
                self._back(rec, "crash_loop")
            elif rec["boots"] == 1:
                rec["notes"].append({"type": "update_trial", "version": rec["ver"], "slot": rec["slot"]})
            self._save(rec)
        if not self._complete(self.rec["slot"], self.rec["ver"]):  # rot, or a technician's hand: never boot nothing
            rec = dict(self.rec)
            rec["notes"] = list(rec["notes"])
            if rec["trial"] and self._complete(rec["prev"], rec["pver"]):
                self._save(self._back(rec, "slot_missing"))
            else:
                return ""
        return self.rec["slot"]

    # -- in the app ----------------------------------------------------------------------
    def check(self, manifest):
        """Why a release with this manifest (the signed one: version, min_version, may_replace)
        may not be installed, or None (reason codes: docs/updates-install.md)."""
        rec = self.rec
        if rec["trial"]:
            return "on_trial"
        v = version(manifest.get("version"))
        if v is None:
            return "bad_version"
        running = version(rec["ver"]) or (0, 0, 0)
        need = manifest.get("min_version")
        if need is not None and (version(need) is None or running < version(need)):
            return "needs_version"
        # Rollback protection: never below the newest version this cabinet ever confirmed,
        # unless the release is a sanctioned downgrade over it.
        newest = max(running, version(rec["floor"]) or (0, 0, 0))
        if v <= newest:
            may = version(manifest.get("may_replace") or "")
            if may is None or may < newest:
                return "not_newer"
        return None

    def install(self, manifest, files):
        """Write `files` ((path, bytes) pairs, already verified) into the slot not running, then
        switch the record to it, on trial. Returns None (the caller resets the board) or the
        reason for refusing (nothing written)."""
        why = self.begin(manifest)
        if why:
            return why
        for path, data in files:
            d, name = self.place(path)
            d.write(name, data)
        return self.commit(manifest)

    # An install in three steps, so that a download can stream files block by block (update.py):
    # begin (the free slot emptied, its version mark first) -> place/append each file -> commit
    # (the mark, then the record). A power cut anywhere before commit's record leaves the
    # record on the running slot; a slot without its mark is never booted.
    def target(self):
        """The slot an install writes into: the one not running."""
        return "b" if self.rec["slot"] == "a" else "a"

    def begin(self, manifest):
        """Empty the free slot for `manifest`'s files; the reason to refuse it, or None."""
        why = self.check(manifest)
        if why:
            return why
        slot = self.flash.sub(self.target())
        slot.remove(_MARK)                # first: a half-written slot is never taken as complete
        _clear(slot)
        return None

    def place(self, path):
        """(folder, name) of the manifest path `path` in the free slot, folders made."""
        d = self.flash.sub(self.target())
        parts = path.split("/")
        for part in parts[:-1]:
            d = d.sub(part)
        return d, parts[-1]

    def running(self, path):
        """(folder, name) of the manifest path `path` in the slot that runs ("" = the root's
        package), or None when it has no such folder: nothing is created to look (an empty
        `aedgate` folder at the root would hide a frozen build's package)."""
        d = self.flash
        parts = path.split("/")
        if self.rec["slot"]:
            parts.insert(0, self.rec["slot"])
        for part in parts[:-1]:
            if part not in d.names():
                return None
            d = d.sub(part)
        return d, parts[-1]

    def commit(self, manifest):
        """Every file is in the free slot: mark it complete and switch the record to it, on
        trial. The reason to refuse (nothing switched), or None."""
        why = self.check(manifest)
        if why:
            return why
        target = self.target()
        ver = manifest["version"]
        self.flash.sub(target).write(_MARK, ver)
        rec = self.rec
        self._save({"slot": target, "ver": ver, "prev": rec["slot"], "pver": rec["ver"], "trial": 1,
                    "boots": 0, "floor": rec["floor"],
                    "notes": rec["notes"] + [{"type": "update_installed", "version": ver, "slot": target}]})
        return None

    def confirm(self):
        """The release on trial came online and passed its checks: it stays."""
        rec = dict(self.rec)
        if not rec["trial"]:
            return False
        rec["trial"] = rec["boots"] = 0
        if (version(rec["ver"]) or ()) > (version(rec["floor"]) or ()):
            rec["floor"] = rec["ver"]
        rec["notes"] = rec["notes"] + [{"type": "update_confirmed", "version": rec["ver"], "slot": rec["slot"]}]
        self._save(rec)
        return True

    def expire(self, reason):
        """Give the release on trial up (it did not come online in time): the next boot runs
        the previous slot."""
        rec = dict(self.rec)
        rec["notes"] = list(rec["notes"])
        if rec["trial"]:
            self._save(self._back(rec, reason))

    def notes(self):
        return self.rec["notes"]

    def clear_notes(self):
        if self.rec["notes"]:
            rec = dict(self.rec)
            rec["notes"] = []
            self._save(rec)


def _clear(d):
    for name in d.names():
        if d.read(name) is None:          # a folder (reads as nothing): empty it first
            _clear(d.sub(name))
        d.remove(name)
