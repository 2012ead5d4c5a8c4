# The time floor (docs/security.md rule 2): a Unix time that never goes backwards and is raised only
# by authenticated sources: the firmware build time, the iat of a verified token, signed time
# from the backend. It is a lower bound on the real time. SNTP or an RTC may show a later time
# (now() takes the larger of the two) but never lowers the floor, so an attacker who spoofs
# SNTP backwards cannot make an expired token look fresh.
#
# Persisted in two copies ("<name>.a", "<name>.b"), each 8 bytes big-endian + a 4-byte check.
# raise_to() rewrites both, one after the other, each atomically (Flash.write); at boot the
# largest valid copy wins. A power cut between the two writes, or one corrupted copy, therefore
# loses nothing; with both copies unreadable the floor falls back to the build time, which is
# the best lower bound left.
#
# A token whose iat is far in the future (a dispatch clock gone wrong) would raise the floor
# that far and make every later token look expired. Two guards (docs/protocol.md, "Time and
# clocks"): the gate refuses an iat further than iat_max_future_s ahead of a clock the device
# believes, and a signed cmd/time naming the current floor exactly may lower it (reset_to).
import hashlib

from aedgate.compat import const

# Raise at each release (the build script may rewrite this line): a device never believes it is
# earlier than the day its firmware was built.
BUILD_TIME = const(1795478400)  # 2026-11-24T00:00:00Z
_CHECK_LABEL = b"aedgate/v1 timefloor"


class TimeFloor:
    def __init__(self, flash, build_time=BUILD_TIME, name="timefloor"):
        self._flash = flash
        self._name = name
        best = build_time
        for suffix in (".a", ".b"):
            t = _decode(flash.read(name + suffix))
            if t is not None and t > best:
                best = t
        self._floor = best

    def floor(self):
        """The current floor, Unix seconds."""
        return self._floor

    def raise_to(self, t):
        """Move the floor up to `t` (an authenticated time) and persist it before returning.
        Lower values are ignored. Returns True when the floor moved."""
        t = int(t)
        if t <= self._floor:
            return False
        if t >= 1 << 63:
            raise ValueError("time out of range")
        data = _encode(t)
        self._flash.write(self._name + ".a", data)
        self._flash.write(self._name + ".b", data)
        self._floor = t
        return True

    def reset_to(self, t):
        """Set the floor to `t`, lower than now: only for an authenticated reset (gate.py)."""
        t = int(t)
        if not 0 <= t < 1 << 63:
            raise ValueError("time out of range")
        data = _encode(t)
        # Both copies, as raise_to does; a power cut between the two leaves the higher (old)
        # copy winning at boot: the reset did not happen, and dispatch sends it again.
        self._flash.write(self._name + ".b", data)
        self._flash.write(self._name + ".a", data)
        self._floor = t

    def now(self, clock=None):
        """Time for checking token expiry: the clock (SNTP/RTC, unauthenticated) when it is ahead
        of the floor, else the floor. `clock` None means the device has no clock at all."""
        if clock is None or clock < self._floor:
            return self._floor
        return int(clock)


def _check(body):
    return hashlib.sha256(_CHECK_LABEL + body).digest()[:4]


def _encode(t):
    body = t.to_bytes(8, "big")
    return body + _check(body)


def _decode(data):
    if data is None or len(data) != 12:
        return None
    body = data[:8]
    if _check(body) != data[8:]:
        return None
    return int.from_bytes(body, "big")
