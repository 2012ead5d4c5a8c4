# Events wait here, on flash, until the broker has acknowledged them (QoS 1 PUBACK). Each event
# gets the next `seq` and is on flash before anything tries to send it, so a power cut or an
# outage loses nothing; `seq` keeps growing by one across reboots (docs/design.md "Nothing lost").
#
# Layout (docs/design.md explains why, with the figures in docs/benchmarks.md):
# - Segments: files named by the seq of their first record, each at most one flash block
#   (4096 bytes), records appended one after the other. The open segment is alone in the folder
#   "obo", full ones move to "ob". On littlefs an append rewrites only the file's last block and
#   searches only "obo", so an emit costs the same whatever the depth (one file per event in "/"
#   cost a directory search per write that grew with the depth).
#   Records of a segment have consecutive seqs: record i of segment F is seq F + i.
# - Record: magic (2 bytes), payload length (2), seq (4), CRC-32 of length+seq+payload (4), then
#   the event's JSON. A record that is complete but fails its check is rot (reported as
#   events_dropped, reason corrupt); a shorter tail is a write cut by a power loss, whose event
#   was never handed out (its seq is used again; nothing was sent with it).
# - "done": which events are finished (acknowledged, dropped, or found corrupt): every seq up to
#   `upto`, plus the few above it that finished out of order. One small checked file, replaced
#   atomically (storage.Flash); when it is unreadable everything in the segments is sent again
#   (duplicates, never loss). A segment whose events are all done is deleted, except the newest:
#   its name and length keep `seq` when the outbox is empty.
# - "spare": two blocks kept free for the day the filesystem fills up (ENOSPC): released then, so
#   alarms and the boot event still reach flash. Routine events are dropped first, and counted.
import json
from array import array
from binascii import crc32

from aedgate.compat import const

_DIR = "ob"
_OPEN = "obo"               # the open segment alone: appends search a one-name folder
_STATE = "obs"              # "done" and "spare"
_DONE = "done"
_SPARE = "spare"
_MAGIC = b"\xae\xd1"
_HEAD = const(12)
_SEG_BYTES = const(4096)    # one littlefs block
_SPARE_BYTES = const(8192)
_ENOSPC = const(28)
_RAM_MAX = const(64)        # events held in RAM while the flash is full (heap is small)
# Routine events may be dropped to make room when the outbox is full; alarms and mission events
# never are (the registry must learn of those, however long the outage).
ROUTINE = ("door_opened", "door_closed", "battery_ok", "temp_ok", "mains_restored")
_LIVE = const(1)            # flag: on flash, not yet acknowledged
_ROUTINE = const(2)         # flag: may be dropped when full
_ROT = const(0xFFFF)        # offset of a record lost to rot
_ROUTINE_BIT = const(0x8000)  # in a record's length field: a routine event


def _u(b, i, n):
    return int.from_bytes(b[i:i + n], "big")


def _record(seq, payload, routine):
    body = (len(payload) | (_ROUTINE_BIT if routine else 0)).to_bytes(2, "big") + seq.to_bytes(4, "big")
    return _MAGIC + body + (crc32(body + payload) & 0xFFFFFFFF).to_bytes(4, "big") + payload


def _check(data, i):
    """The seq of the sound record at offset i, or None."""
    if data[i:i + 2] != _MAGIC or i + _HEAD > len(data):
        return None
    end = i + _HEAD + _len(data, i)
    if end > len(data) or crc32(data[i + 2:i + 8] + data[i + _HEAD:end]) & 0xFFFFFFFF != _u(data, i + 8, 4):
        return None
    return _u(data, i + 4, 4)


def _len(data, i):
    return ((data[i + 2] & 0x7F) << 8) | data[i + 3]


def _is_routine(ev):
    return ev.get("type") in ROUTINE and "mission" not in ev


class _Segment:
    __slots__ = ("first", "offs", "flags", "size", "sealed", "home")

    def __init__(self, first, home):
        self.first = first
        self.home = home        # the folder it is in: "obo" while open, "ob" once sealed
        self.offs = array("H")  # byte offset of each record (_ROT: unreadable)
        self.flags = bytearray()
        self.size = 0
        self.sealed = False     # no more appends (full, or ends in a torn write)


class Outbox:
    def __init__(self, flash, limit=200):
        self._top = flash
        self._flash = flash.sub(_DIR)
        self._state = flash.sub(_STATE)
        self._open = flash.sub(_OPEN)
        self._limit = limit
        self.dropped = 0   # routine events dropped since the last events_dropped report
        self.corrupt = 0   # rotten records found at start-up (reported, then marked done)
        self._segs = []
        self._count = 0
        self._ram = []     # (seq, payload) that found no room on a full flash (sent from RAM)
        self._upto, self._holes = self._load_done()
        firsts = []
        for home in (self._flash, self._open):
            for name in home.names():
                n = _plain_int(name.encode())
                if n is not None and n > 0:
                    firsts.append((n, home))
        firsts.sort(key=lambda f: f[0])
        seq = self._upto
        end = None
        for first, home in firsts:
            if end is not None and first - end <= _SEG_BYTES // _HEAD:
                for lost in range(end, first):  # a segment's tail lost to rot
                    self._lost(lost)
            seg = self._scan(first, home)
            self._segs.append(seg)
            end = first + len(seg.offs)
            seq = max(seq, end - 1)
        legacy_seq, self._legacy = self._load_legacy(flash)
        self.seq = max(seq, legacy_seq)
        if self.corrupt:
            self._save_done()
        self._tidy()
        if _SPARE not in self._state.names():
            try:
                # in 512-byte pieces: one 8 KB block of zeros was the first boot's peak
                self._state.write(_SPARE, (bytes(_SPARE_BYTES // 16),) * 16)
            except OSError:
                pass  # no room for the spare now; the next boot tries again

    # -- start-up ---------------------------------------------------------------------------
    def _load_done(self):
        raw = self._state.read(_DONE)
        try:
            text, crc = raw.decode().rsplit("|", 1)
            if int(crc) != crc32(text.encode()) & 0xFFFFFFFF:
                raise ValueError
            nums = [int(x) for x in text.split()]
            return nums[0], nums[1:]
        except (AttributeError, ValueError, IndexError, UnicodeError):
            return 0, []   # none yet, or rotten: everything on flash is sent (again)

    def _load_legacy(self, flash):
        """What firmware before the segment log left: its counter ("seq.a"/"seq.b", "seq"),
        so no number is handed out twice, and its events ("ev.<seq>", one file each), sent
        from there and removed when acknowledged."""
        seq = 0
        for name in ("seq.a", "seq.b", "seq"):
            raw = flash.read(name)
            try:
                a = raw.decode().split(":")
                n = int(a[0])
                if len(a) == 1 or int(a[1]) == n ^ 0x5A5A5A5A:
                    seq = max(seq, n)
            except (AttributeError, ValueError, UnicodeError):
                pass
        events = []
        for name in flash.names():
            n = _plain_int(name[3:].encode()) if name.startswith("ev.") else None
            if n is None:
                continue
            seq = max(seq, n)
            if _legacy_event(flash.read(name), n):
                events.append(n)
            else:
                flash.remove(name)
                self.corrupt += 1
        events.sort()
        return seq, events

    def _scan(self, first, home):
        seg = _Segment(first, home)
        data = home.read(str(first)) or b""
        seg.size = len(data)
        i = 0
        while i + _HEAD <= len(data):
            seq = first + len(seg.offs)
            got = _check(data, i)
            if got == seq:
                self._keep(seg, seq, i, data[i + 2] & 0x80)
                i += _HEAD + _len(data, i)
                continue
            if got is not None and seq < got <= seq + _SEG_BYTES // _HEAD:
                self._rotten(seg, seq)      # records lost to rot before this one
                continue
            nxt = data.find(_MAGIC, i + 1)
            while nxt >= 0 and _check(data, nxt) is None:
                nxt = data.find(_MAGIC, nxt + 1)
            if nxt < 0:
                if data[i:i + 2] == _MAGIC and i + _HEAD + _len(data, i) == len(data):
                    self._rotten(seg, seq)  # complete, but fails its check: rot
                break                       # else a write cut short: never handed out
            i = nxt                         # rot: go on with the next sound record
        if i < len(data) or seg.size >= _SEG_BYTES - _HEAD:
            seg.sealed = True
        return seg

    def _keep(self, seg, seq, off, routine):
        flags = 0
        if seq > self._upto and seq not in self._holes:
            flags = _LIVE | (_ROUTINE if routine else 0)
            self._count += 1
        seg.offs.append(off)
        seg.flags.append(flags)

    def _rotten(self, seg, seq):
        seg.offs.append(_ROT)
        seg.flags.append(0)
        self._lost(seq)

    def _lost(self, seq):
        if seq > self._upto and seq not in self._holes:
            self.corrupt += 1
            self._holes.append(seq)

    # -- the interface --------------------------------------------------------------------
    def __len__(self):
        return self._count + len(self._ram) + len(self._legacy)

    def add(self, event):
        """Give the event its seq, persist it, and return it. `event` has at least type and ts.
        On a full flash a routine event is dropped instead (counted in `dropped`, no seq);
        any other event is kept in RAM and sent from there (at most _RAM_MAX of them)."""
        if self._count >= self._limit:
            self._make_room()
        routine = _is_routine(event)
        seq = self.seq + 1
        event["seq"] = seq
        payload = json.dumps(event).encode()
        if self._append(seq, payload, routine):
            self.seq = seq
            return event
        if routine or len(self._ram) >= _RAM_MAX:  # flash full: routine events go first
            del event["seq"]
            # An events_dropped that finds no room keeps its count for the next one.
            self.dropped += event.get("count", 1) if event["type"] == "events_dropped" else 1
            return event
        self.seq = seq
        self._ram.append((seq, payload))
        return event

    def pending(self):
        """The seqs waiting to be sent, oldest first."""
        out = []
        for seg in self._segs:
            for i in range(len(seg.flags)):
                if seg.flags[i] & _LIVE:
                    out.append(seg.first + i)
        if self._ram:
            out += [s for s, _ in self._ram]
            out.sort()
        return self._legacy + out

    def oldest(self):
        if self._legacy:
            return self._legacy[0]
        ram = self._ram[0][0] if self._ram else None
        for seg in self._segs:
            for i in range(len(seg.flags)):
                if seg.flags[i] & _LIVE:
                    return seg.first + i if ram is None or ram > seg.first + i else ram
        return ram

    def get(self, seq):
        raw = self.payload(seq)
        return json.loads(raw) if raw is not None else None

    def payload(self, seq):
        """The bytes to publish, or None when the record went bad since start-up."""
        for s, p in self._ram:
            if s == seq:
                return p
        if seq in self._legacy:
            raw = self._top.read("ev.%d" % seq)
            return raw if _legacy_event(raw, seq) else None
        seg = self._find(seq)
        if seg is None:
            return None
        off = seg.offs[seq - seg.first]
        if off == _ROT:
            return None
        i = seq - seg.first + 1
        while i < len(seg.offs) and seg.offs[i] == _ROT:
            i += 1
        end = seg.offs[i] if i < len(seg.offs) else seg.size
        # This record only: a whole segment (up to 4 KB, read again after every append) was a
        # large temporary block on each publish, one of the two that fragmented the heap.
        data = seg.home.read_at(str(seg.first), off, end - off) or b""
        if _check(data, 0) != seq:
            return None
        return data[_HEAD:_HEAD + _len(data, 0)]

    def remove(self, seq):
        """The event is done (acknowledged, or dropped): it is never sent again."""
        for i in range(len(self._ram)):
            if self._ram[i][0] == seq:
                self._ram.pop(i)
                self._finish(seq)
                return
        if seq in self._legacy:
            self._top.remove("ev.%d" % seq)
            self._legacy.remove(seq)
            return
        seg = self._find(seq)
        if seg is None or not seg.flags[seq - seg.first] & _LIVE:
            return
        seg.flags[seq - seg.first] = 0
        self._count -= 1
        self._finish(seq)

    # -- inside ---------------------------------------------------------------------------
    def _find(self, seq):
        for seg in self._segs:
            if seg.first <= seq < seg.first + len(seg.flags):
                return seg
        return None

    def _finish(self, seq):
        self._holes.append(seq)
        self._settle()

    def _settle(self):
        """Move the done mark up to the oldest event still waiting, then persist and tidy."""
        oldest = self.oldest()
        self._upto = max(self._upto, (oldest - 1) if oldest is not None else self.seq)
        self._holes = [h for h in self._holes if h > self._upto]
        self._save_done()
        self._tidy()

    def _save_done(self):
        text = " ".join([str(self._upto)] + [str(h) for h in self._holes])
        try:
            self._state.write(_DONE, "%s|%d" % (text, crc32(text.encode()) & 0xFFFFFFFF))
        except OSError:
            pass  # full flash: these events may be sent once more after a reboot (duplicates)

    def _tidy(self):
        """Delete segments whose events are all done (never the newest: it keeps `seq`)."""
        i = 0
        while i < len(self._segs) - 1:
            seg = self._segs[i]
            if any(f & _LIVE for f in seg.flags):
                i += 1
                continue
            seg.home.remove(str(seg.first))
            self._segs.pop(i)

    def _append(self, seq, payload, routine):
        rec = _record(seq, payload, routine)
        seg = self._segs[-1] if self._segs else None
        if seg is None or seg.sealed or seg.first + len(seg.offs) != seq or seg.size + len(rec) > _SEG_BYTES:
            if seg is not None:
                self._seal(seg)
                if seg.first == seq:  # only a torn first record: start the file afresh
                    seg.home.remove(str(seq))
                    self._segs.pop()
            seg = _Segment(seq, self._open)
            new = True
        else:
            new = False
        for attempt in range(3):
            try:
                seg.home.append(str(seg.first), rec)
                break
            except OSError as e:
                if e.args[0] != _ENOSPC or not self._free_space(attempt):
                    if not new:
                        seg.sealed = True   # its tail is unknown now: start afresh next time
                    return False
        else:
            return False
        if new:
            self._segs.append(seg)
        seg.offs.append(seg.size)
        seg.flags.append(_LIVE | (_ROUTINE if routine else 0))
        seg.size += len(rec)
        self._count += 1
        return True

    def _seal(self, seg):
        """No more appends to `seg`: it joins the others in "ob". The open segment lives alone in
        "obo", so an append never searches the folder of all segments (littlefs reads a folder's
        whole metadata log to find a name: that grew with the depth)."""
        seg.sealed = True
        if seg.home is self._open:
            try:
                self._open.move(str(seg.first), self._flash)
                seg.home = self._flash
            except OSError:
                pass  # a full flash: it stays where it is, sealed (both folders are read)

    def _free_space(self, attempt):
        """ENOSPC: first give up the spare blocks, then drop the oldest routine events until a
        segment empties. Returns whether anything was freed."""
        if attempt == 0 and _SPARE in self._state.names():
            self._state.remove(_SPARE)
            return True
        for seg in self._segs[:-1]:
            if any(f & _LIVE and not f & _ROUTINE for f in seg.flags):
                continue
            for i in range(len(seg.flags)):
                if seg.flags[i] & _LIVE:
                    seg.flags[i] = 0
                    self._count -= 1
                    self.dropped += 1
                    self._holes.append(seg.first + i)
            self._settle()
            return True
        return False

    def _make_room(self):
        for seg in self._segs:
            for i in range(len(seg.flags)):
                f = seg.flags[i]
                if f & _LIVE and f & _ROUTINE:
                    self.remove(seg.first + i)
                    self.dropped += 1
                    return
        # Only alarms and mission events left: keep them all and grow past the limit.


def _legacy_event(raw, seq):
    try:
        ev = json.loads(raw)
    except (TypeError, ValueError, UnicodeError):
        return False
    return isinstance(ev, dict) and ev.get("seq") == seq and "type" in ev


def _plain_int(raw):
    try:
        return int(raw) if raw else None
    except ValueError:
        return None
