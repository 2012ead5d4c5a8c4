# Single use of mission tokens (docs/security.md rule 3): a persisted set of the cti values of
# accepted tokens, each kept until its exp falls below the time floor. QoS 1 redelivery, a
# retained copy or a captured token presented again all find their cti here.
#
# Caller order:  try: claims = token.verify(raw, device_id, slots, timefloor.now(clock))
#                except TokenError as e: raise the floor to e.args[1].get("iat"), ack e.args[0]
#                if replay.seen(claims["cti"], claims["iat"]): reject "replay"
#                replay.add(claims["cti"], claims["exp"], claims["iat"])   # on flash now
#                timefloor.raise_to(claims["iat"]); actuate; ack
#
# Bounded: at most `capacity` entries (default 64, file < 3.5 KB). When full, the entry with
# the smallest exp is evicted and the new token is ALWAYS stored and accepted: a valid token is
# never blocked for lack of room. The evicted token must still not work twice, so its iat
# raises the "guard": every token with iat <= guard counts as seen. Filling 64 slots within one
# token lifetime takes 64 genuine tokens for this one cabinet, which only dispatch can mint.
#
# Lost state: the file is replaced atomically (Flash.write), so a power cut leaves the old or
# the new set. If the file is missing or corrupt anyway (bit rot, someone deleted it), the set
# starts empty and the guard becomes the time floor given at start-up. Every token this device
# ever accepted had iat <= floor (the caller raises the floor to each accepted iat), so none can
# be replayed; a fresh token (iat after the last accepted one) still opens the cabinet.
#
# File: b"RP1" + guard (8) + count (1) + count * (exp (8), iat (8), len (1), cti) + check (8).
import hashlib

from aedgate.compat import const

_MAGIC = b"RP1"
_CHECK_LEN = const(8)
_MAX_CTI = const(32)


class Replay:
    def __init__(self, flash, floor=0, name="replay", capacity=64):
        self._flash = flash
        self._name = name
        self._capacity = min(capacity, 255)  # the count is one byte in the file
        self._entries = {}  # cti -> (exp, iat)
        self._guard = 0
        self._buf = bytearray(17 + _MAX_CTI)  # one entry at a time, for _encode()
        if not self._load(flash.read(name)):
            self._entries = {}
            self._guard = max(0, int(floor))

    def seen(self, cti, iat=None):
        """True when this token may have been used already: its cti is stored, or its iat is at
        or below the guard (see the module comment)."""
        if cti in self._entries:
            return True
        return iat is not None and iat <= self._guard

    def add(self, cti, exp, iat=0):
        """Record an accepted token and persist the set before returning; actuate only after."""
        if len(cti) > _MAX_CTI or exp < 0 or exp >= 1 << 63 or iat < 0 or iat >= 1 << 63:
            raise ValueError("cti/exp/iat out of range")
        entries = self._entries
        cti = bytes(cti)
        while cti not in entries and len(entries) >= self._capacity:
            oldest = None
            for k in entries:
                if oldest is None or entries[k][0] < entries[oldest][0]:
                    oldest = k
            if entries[oldest][1] > self._guard:
                self._guard = entries[oldest][1]
            del entries[oldest]
        entries[cti] = (exp, iat)
        self._flash.write(self._name, self._encode())

    def prune(self, floor):
        """Forget tokens whose exp is below `floor` (they are refused as expired anyway). Only
        memory changes here; the next add() writes the smaller set."""
        entries = self._entries
        for k in [k for k in entries if entries[k][0] < floor]:
            del entries[k]

    def forget_before(self, t):
        """Every token with iat <= t counts as seen from now on (persisted): after the time
        floor was lowered, tokens forgotten under the old floor cannot come back."""
        if t > self._guard:
            self._guard = int(t)
            self._flash.write(self._name, self._encode())

    def __len__(self):
        return len(self._entries)

    def _encode(self):
        """The file, in parts for Flash.write: one small reused buffer per entry and the check
        computed as they go. Built whole it was ~2.1 KB (twice over, with the join) per accepted
        token: one of the two large temporary blocks that fragmented the heap (docs/benchmarks.md,
        "RAM on the ESP32's word size")."""
        h = hashlib.sha256()
        buf = self._buf
        buf[:3] = _MAGIC
        buf[3:11] = self._guard.to_bytes(8, "big")
        buf[11] = len(self._entries)
        part = memoryview(buf)
        h.update(part[:12])
        yield part[:12]
        for cti, (exp, iat) in self._entries.items():
            n = len(cti)
            buf[:8] = exp.to_bytes(8, "big")
            buf[8:16] = iat.to_bytes(8, "big")
            buf[16] = n
            buf[17:17 + n] = cti
            h.update(part[:17 + n])
            yield part[:17 + n]
        yield h.digest()[:_CHECK_LEN]

    def _load(self, data):
        # True when `data` is a complete, intact file; False for missing or corrupt.
        if data is None or len(data) < 12 + _CHECK_LEN or data[:3] != _MAGIC:
            return False
        body = data[:-_CHECK_LEN]
        if hashlib.sha256(body).digest()[:_CHECK_LEN] != data[-_CHECK_LEN:]:
            return False
        self._guard = int.from_bytes(body[3:11], "big")
        count = body[11]
        pos = 12
        for _ in range(count):
            if pos + 17 > len(body):
                return False
            exp = int.from_bytes(body[pos:pos + 8], "big")
            iat = int.from_bytes(body[pos + 8:pos + 16], "big")
            n = body[pos + 16]
            pos += 17
            if n > _MAX_CTI or pos + n > len(body):
                return False
            self._entries[bytes(body[pos:pos + n])] = (exp, iat)
            pos += n
        return pos == len(body)
