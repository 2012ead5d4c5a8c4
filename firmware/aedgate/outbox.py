# Events wait here, on flash, until the broker has acknowledged them (QoS 1 PUBACK). Each event
# gets the next `seq` and is written to its own file before anything tries to send it, so a
# power cut or an outage loses nothing; `seq` keeps growing by one across reboots.
#
# Files: "ev.<seq>" (the event's JSON), and the counter in two copies "seq.a"/"seq.b" (the
# larger valid one wins), so one torn or rotten copy never makes a seq be handed out twice.
# Every write is an atomic replace (storage.Flash), so a power cut leaves the old or the new
# file; what is checked at start-up is only what atomic replace cannot promise (bit rot, an
# older firmware's half-written file): an unreadable event is set aside and reported.
import json

_PREFIX = "ev."
_SEQ = ("seq.a", "seq.b")
# Routine events may be dropped to make room when the outbox is full; alarms and mission events
# never are (the registry must learn of those, however long the outage).
ROUTINE = ("door_opened", "door_closed", "battery_ok", "temp_ok", "mains_restored")


def _seq_encode(n):
    return "%d:%d" % (n, n ^ 0x5A5A5A5A)


def _seq_decode(raw):
    try:
        a, b = raw.decode().split(":")
        n = int(a)
        return n if int(b) == n ^ 0x5A5A5A5A else None
    except (ValueError, AttributeError, UnicodeError):
        return None


class Outbox:
    def __init__(self, flash, limit=200):
        self._flash = flash
        self._limit = limit
        self.dropped = 0   # routine events dropped since the last events_dropped report
        self.corrupt = 0   # unreadable event files found at start-up (set aside, reported)
        self._pending = []  # seq numbers on flash, ascending
        seq = 0
        for name in _SEQ + ("seq",):  # "seq": the single-copy file of firmware 0.1.0
            raw = flash.read(name)
            n = _seq_decode(raw) if raw and b":" in raw else _plain_int(raw)
            if n is not None and n > seq:
                seq = n
        for name in flash.names():
            if not name.startswith(_PREFIX):
                continue
            n = _plain_int(name[len(_PREFIX):].encode())
            if n is None:
                continue
            if n > seq:
                seq = n
            if self.get(n) is None:
                flash.remove(name)
                self.corrupt += 1
                continue
            self._pending.append(n)
        self._pending.sort()
        self.seq = seq

    def __len__(self):
        return len(self._pending)

    def add(self, event):
        """Give the event its seq, persist it, and return it. `event` has at least type and ts."""
        if len(self._pending) >= self._limit:
            self._make_room()
        self.seq += 1
        event["seq"] = self.seq
        # The event file first, then the counter: after a cut between the two, the counter is
        # recovered from the file name, so a seq is never handed out twice.
        self._flash.write(_PREFIX + str(self.seq), json.dumps(event))
        for name in _SEQ:
            self._flash.write(name, _seq_encode(self.seq))
        self._pending.append(self.seq)
        return event

    def _make_room(self):
        for seq in self._pending:
            ev = self.get(seq)
            if ev is None or (ev.get("type") in ROUTINE and "mission" not in ev):
                self.remove(seq)
                self.dropped += 1
                return
        # Only alarms and mission events left: keep them all and grow past the limit.

    def oldest(self):
        return self._pending[0] if self._pending else None

    def get(self, seq):
        raw = self._flash.read(_PREFIX + str(seq))
        if raw is None:
            return None
        try:
            ev = json.loads(raw)
        except (ValueError, UnicodeError):
            return None
        if not isinstance(ev, dict) or ev.get("seq") != seq or "type" not in ev:
            return None  # valid JSON, but not this event: rot, or a stray file
        return ev

    def payload(self, seq):
        """The bytes to publish, or None when the file went bad since start-up."""
        return self._flash.read(_PREFIX + str(seq)) if self.get(seq) is not None else None

    def remove(self, seq):
        self._flash.remove(_PREFIX + str(seq))
        if seq in self._pending:
            self._pending.remove(seq)


def _plain_int(raw):
    try:
        return int(raw) if raw else None
    except ValueError:
        return None
