# Events wait here, on flash, until the broker has acknowledged them (QoS 1 PUBACK). Each event
# gets the next `seq` and is written to its own file before anything tries to send it, so a
# power cut or an outage loses nothing; `seq` keeps growing by one across reboots.
import json


_SEQ_FILE = "seq"
_PREFIX = "ev."
# Routine events may be dropped to make room when the outbox is full; alarms and mission events
# never are (the registry must learn of those, however long the outage).
ROUTINE = ("door_opened", "door_closed", "battery_ok", "temp_ok", "mains_restored", "boot")


class Outbox:
    def __init__(self, flash, limit=200):
        self._flash = flash
        self._limit = limit
        self.dropped = 0  # routine events dropped since the last events_dropped report
        self._pending = []  # seq numbers on flash, ascending
        seq = 0
        raw = flash.read(_SEQ_FILE)
        if raw:
            try:
                seq = int(raw)
            except ValueError:
                seq = 0  # recovered below from the event files themselves
        for name in flash.names():
            if name.startswith(_PREFIX):
                try:
                    n = int(name[len(_PREFIX):])
                except ValueError:
                    continue
                if flash.read(name) is None:
                    continue
                self._pending.append(n)
                if n > seq:
                    seq = n
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
        self._flash.write(_SEQ_FILE, str(self.seq))
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
            return json.loads(raw)
        except ValueError:
            return None

    def payload(self, seq):
        return self._flash.read(_PREFIX + str(seq))

    def remove(self, seq):
        self._flash.remove(_PREFIX + str(seq))
        if seq in self._pending:
            self._pending.remove(seq)
