"""A rollout's plan: who gets the release when, how fast, and when to stop by itself.

- **Canary**: the first `canary` cabinets (in the order given: a --devices file, else sorted ids)
  form wave 0. Nothing else starts before the canary wave has finished.
- **Waves** by cumulative percentage of the rollout's cabinets: `1,10,50,100` means the fleet
  reaches 1 %, then 10 %, then 50 %, then all of it, each wave starting when the one before
  has finished (every started cabinet done or failed). Waves that the canary already covers
  are empty and skipped. The last wave must be 100.
- **Rate**: at most `rate` cabinets *started* (sent their first offer) per minute, a token
  bucket that allows a burst of one second's worth (at least one).
- **Halt**: failures (refused, rolled back, timed out) counted over the whole rollout;
  `halt_at` is a count (halt when failed >= N) or a percentage of the cabinets started so far
  (halt when failed * 100 >= PCT * started, with at least one failure).
- **Wave timeout**: a started cabinet that shows no progress (a get, an update event, a state
  with the new version) for this long while online has failed (`timeout`).
- **Offer repeat**: offers go again every `offer_every` seconds to a started, online cabinet
  without a result (the cabinet ignores an offer while busy; the brief: repeated until a result).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field


class PlanError(ValueError):
    """A plan that makes no sense; str() is one line for the CLI."""


def parse_waves(text: str) -> list[float]:
    try:
        waves = [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise PlanError("--waves %r: comma-separated percentages, e.g. 1,10,50,100" % text) from None
    check_waves(waves)
    return waves


def check_waves(waves) -> None:
    if not waves or any(not 0 < w <= 100 for w in waves) or any(
            b <= a for a, b in zip(waves, waves[1:])) or waves[-1] != 100:
        raise PlanError("waves %s: increasing percentages in (0, 100], the last one 100"
                        % ",".join("%g" % w for w in waves))


def parse_halt(text: str) -> tuple[str, float]:
    """'5%' -> ('pct', 5.0); '3' -> ('count', 3)."""
    t = text.strip()
    try:
        if t.endswith("%"):
            v = float(t[:-1])
            if not 0 < v <= 100:
                raise ValueError
            return ("pct", v)
        v = int(t)
        if v < 1:
            raise ValueError
        return ("count", v)
    except ValueError:
        raise PlanError("--halt-at %r: a count of failures (e.g. 3) or a percentage of the "
                        "cabinets started (e.g. 5%%)" % text) from None


def parse_rate(text: str) -> float:
    t = text.strip().lower()
    for suffix in ("/min", "/m", "per min"):
        if t.endswith(suffix):
            t = t[:-len(suffix)].strip()
    try:
        v = float(t)
    except ValueError:
        v = -1
    if v <= 0:
        raise PlanError("--rate %r: cabinets started per minute, e.g. 600/min" % text)
    return v


@dataclass
class Plan:
    canary: int = 10
    waves: list = field(default_factory=lambda: [1.0, 10.0, 50.0, 100.0])
    rate: float = 600.0               # cabinets started per minute
    halt_at: tuple = ("pct", 5.0)     # ("pct", P) or ("count", N)
    wave_timeout: float = 1800.0      # s without progress -> failed
    offer_every: float = 60.0         # s between offers to a started cabinet without a result

    def __post_init__(self):
        self.waves = [float(w) for w in self.waves]
        self.halt_at = tuple(self.halt_at)
        check_waves(self.waves)
        if self.canary < 0:
            raise PlanError("--canary must be 0 or more")
        if self.rate <= 0 or self.wave_timeout <= 0 or self.offer_every <= 0:
            raise PlanError("rate, wave timeout and offer interval must be positive")
        if self.halt_at[0] not in ("pct", "count"):
            raise PlanError("halt_at must be ('pct', P) or ('count', N)")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls(**json.loads(text))

    def halt_text(self) -> str:
        kind, v = self.halt_at
        return ("%g%% of started failed" % v) if kind == "pct" else ("%d failed" % v)

    def describe(self) -> str:
        return "canary %d, waves %s %%, %g/min, halt at %s, wave timeout %gs" % (
            self.canary, ",".join("%g" % w for w in self.waves), self.rate, self.halt_text(),
            self.wave_timeout)

    # -- who is in which wave ------------------------------------------------------------
    def assign(self, devices: list[str]) -> list[list[str]]:
        """Waves in order (wave 0 = canary); each device in exactly one; empty waves dropped,
        so wave numbers run 0..k-1 without holes."""
        n = len(devices)
        cut = [min(self.canary, n)]
        for w in self.waves:
            cut.append(max(cut[-1], min(n, math.ceil(n * w / 100.0))))
        out, start = [], 0
        for end in cut:
            if end > start:
                out.append(devices[start:end])
                start = end
        return out

    # -- when to stop --------------------------------------------------------------------
    def should_halt(self, started: int, failed: int) -> bool:
        kind, v = self.halt_at
        if failed <= 0:
            return False
        if kind == "count":
            return failed >= v
        return failed * 100.0 >= v * max(started, 1)


class RateLimiter:
    """Token bucket: `rate_per_min` starts a minute, a burst of one second's worth (>= 1)."""

    def __init__(self, rate_per_min: float, now: float):
        self.per_s = rate_per_min / 60.0
        self.burst = max(1.0, self.per_s)
        self.tokens = self.burst
        self.t = now

    def take(self, now: float, want: int) -> int:
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.per_s)
        self.t = now
        n = min(want, int(self.tokens))
        self.tokens -= n
        return n
