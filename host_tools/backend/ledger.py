"""Exact event bookkeeping per cabinet. A cabinet numbers its events 1, 2, 3, … across reboots
(docs/protocol.md); delivery is at least once (QoS 1), so the same (device, seq) may arrive
twice and must count once, and a seq never received is a gap. When a cabinet's outbox is full
it drops its oldest events and says so in an `events_dropped` event (`count`); since that event
is itself deduplicated by its seq, a redelivered report cannot count twice and cannot cancel a
real gap.

`unexplained(device) = missing(device) - dropped(device)`, floored at 0 per device, so one
cabinet's reported drops never hide another's loss. Events still in a cabinet's outbox look
missing until they arrive: compare after the fleet has drained (the soak does).

One limit of the protocol: an `events_dropped` count also includes routine events dropped on a
full flash before they got a seq (docs/reliability.md); those leave no gap, so on such a cabinet
the count exceeds its gaps and `unexplained` is a lower bound."""
from __future__ import annotations


class _Seqs:
    """Seqs seen from one cabinet, compact: every seq in low..floor is seen; `above` holds the
    seen seqs > floor + 1, `below` those < low (older events arriving after newer ones)."""

    __slots__ = ("low", "floor", "above", "below", "high", "dropped")

    def __init__(self, first: int):
        self.low = first
        self.floor = first - 1
        self.above: set[int] = set()
        self.below: set[int] = set()
        self.high = first - 1
        self.dropped = 0

    def add(self, seq: int) -> bool:
        if self.low <= seq <= self.floor or seq in self.above or seq in self.below:
            return False
        if seq < self.low:
            self.below.add(seq)
        elif seq == self.floor + 1:
            self.floor = seq
            above = self.above
            while self.floor + 1 in above:
                self.floor += 1
                above.discard(self.floor)
        else:
            self.above.add(seq)
        if seq > self.high:
            self.high = seq
        return True

    def start(self) -> int:
        return min(self.below) if self.below else self.low

    def seen(self) -> int:
        return self.floor - self.low + 1 + len(self.above) + len(self.below)

    def missing_count(self, base: int | None) -> int:
        lo = self.start() if base is None else min(base, self.start())
        return self.high - lo + 1 - self.seen()

    def missing(self, base: int | None) -> list[int]:
        lo = self.start() if base is None else min(base, self.start())
        seen_below = self.below
        return [s for s in range(lo, self.high + 1)
                if not (self.low <= s <= self.floor or s in self.above or s in seen_below)]


class EventLedger:
    """(device, seq) bookkeeping. `base=1` counts gaps from each cabinet's first event (a
    registry that has been subscribed since the fleet began); `base=None` counts from the first
    seq this ledger saw (a monitor joining a running fleet)."""

    def __init__(self, base: int | None = 1):
        self.base = base
        self._dev: dict[str, _Seqs] = {}
        self.received = 0        # event messages, redeliveries included
        self.duplicates = 0      # (device, seq) already seen
        self.dropped_reported = 0  # sum of `count` over distinct events_dropped events

    def add(self, device: str, event: dict) -> bool:
        """Record one event; True when it is new, False for a redelivery."""
        seq = event["seq"]
        self.received += 1
        d = self._dev.get(device)
        if d is None:
            d = self._dev[device] = _Seqs(seq)
            new = d.add(seq)
        else:
            new = d.add(seq)
        if not new:
            self.duplicates += 1
            return False
        if event.get("type") == "events_dropped":
            n = int(event.get("count", 0) or 0)
            d.dropped += n
            self.dropped_reported += n
        return True

    def devices(self) -> list[str]:
        return list(self._dev)

    def last_seq(self, device: str) -> int | None:
        d = self._dev.get(device)
        return d.high if d else None

    def seen(self, device: str, seq: int) -> bool:
        d = self._dev.get(device)
        return bool(d) and (d.low <= seq <= d.floor or seq in d.above or seq in d.below)

    def unique(self) -> int:
        return sum(d.seen() for d in self._dev.values())

    def missing(self, device: str) -> list[int]:
        """Seqs not (yet) received between the base and the highest seq seen."""
        d = self._dev.get(device)
        return d.missing(self.base) if d else []

    def missing_count(self, device: str | None = None) -> int:
        if device is not None:
            d = self._dev.get(device)
            return d.missing_count(self.base) if d else 0
        return sum(d.missing_count(self.base) for d in self._dev.values())

    def dropped(self, device: str) -> int:
        d = self._dev.get(device)
        return d.dropped if d else 0

    def unexplained(self, device: str | None = None, still_queued=None) -> int:
        """Missing seqs that no events_dropped report accounts for: loss. `still_queued(device)`
        may give the seqs still waiting in that cabinet's outbox (not lost, not yet sent)."""
        devices = [device] if device is not None else list(self._dev)
        total = 0
        for did in devices:
            d = self._dev.get(did)
            if d is None:
                continue
            if still_queued is not None:
                waiting = set(still_queued(did) or ())
                miss = sum(1 for s in d.missing(self.base) if s not in waiting)
            else:
                miss = d.missing_count(self.base)
            total += max(0, miss - d.dropped)
        return total

    def account(self, created: dict[str, int], waiting: dict | None = None) -> dict:
        """Reconcile with what the cabinets say they created (device -> highest seq, e.g. from
        their own counters) and what still waits in their outboxes (device -> seqs): every seq
        1..created that never arrived and is not waiting is missing; the missing a cabinet's own
        distinct events_dropped reports do not explain are `gaps` (loss). Per cabinet, so one
        cabinet's drops never hide another's loss."""
        waiting = waiting or {}
        missing = still = gaps = 0
        for did, top in created.items():
            d = self._dev.get(did)
            queued = set(waiting.get(did, ()))
            lost = 0
            for seq in range(1, top + 1):
                if d is not None and (d.low <= seq <= d.floor or seq in d.above or seq in d.below):
                    continue
                if seq in queued:
                    still += 1
                else:
                    lost += 1
            missing += lost
            gaps += max(0, lost - (d.dropped if d else 0))
        return {"missing_seqs": missing, "still_in_outboxes": still, "gaps": gaps}

    def summary(self) -> dict:
        return {"received": self.received, "unique": self.unique(), "duplicates": self.duplicates,
                "missing": self.missing_count(), "dropped_reported": self.dropped_reported,
                "unexplained_gaps": self.unexplained(), "devices": len(self._dev)}
