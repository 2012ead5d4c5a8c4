# A strict, minimal CBOR (RFC 8949) decoder: exactly what the mission token profile needs and
# nothing more, because every byte it reads comes from the network before any MAC is checked.
#
# Accepted: unsigned and negative integers (shortest encoding only, at most 64-bit arguments),
# byte strings, text strings (strictly valid UTF-8), arrays and maps (definite length only).
# Map keys must be integers or text, and a key may appear only once.
# Floats, true/false/null and the other simple values are well-formed CBOR the profile never
# uses: they decode to the marker OTHER (their value is not read), so a caller's type checks
# refuse them with the reason that fits where they sit (an alg of 5.0 is a bad alg).
# Rejected: indefinite lengths, tags (the token module strips the tags 61/17 it allows in front
# of the message itself), non-shortest integer and length encodings, trailing bytes, nesting
# deeper than `max_depth`, more than 16 items in a container, map keys other than int or text.
# Every length is checked against the bytes that remain BEFORE anything is allocated, and the
# recursion depth is bounded by `max_depth`, so 10,000 nested arrays fail after a few levels.
from aedgate.compat import const

_MAX_ITEMS = const(16)  # the profile's largest container is the claims map (8 keys)
_DEFAULT_DEPTH = const(4)


class CBORError(Exception):
    """Input that is not strict profile CBOR; args[0] is a short reason."""


class _Other:
    def __repr__(self):
        return "<float or simple value>"


OTHER = _Other()


def decode(data, max_depth=_DEFAULT_DEPTH, start=0, max_items=_MAX_ITEMS):
    """Decode exactly one CBOR item filling data[start:] (bytes, bytearray or memoryview).
    Byte strings come back as bytes, text as str, arrays as lists, maps as dicts.
    max_items: the largest container accepted (a release manifest lists more files than 16)."""
    r = _Reader(data, start)
    r.max_items = max_items
    value = r.item(max_depth)
    if r.pos != len(data):
        raise CBORError("trailing bytes")
    return value


class _Reader:
    # Position kept on the object, not passed around in (value, pos) tuples: on MicroPython
    # every tuple is a heap allocation, and a token is decoded on every message.
    def __init__(self, data, pos):
        self.data = data
        self.pos = pos
        self.major = 0
        self.max_items = _MAX_ITEMS

    def head(self):
        # One initial byte and its argument: sets self.major, returns the argument.
        data = self.data
        pos = self.pos
        n = len(data)
        if pos >= n:
            raise CBORError("truncated")
        ib = data[pos]
        self.major = ib >> 5
        info = ib & 0x1F
        pos += 1
        if info < 24:
            self.pos = pos
            return info
        if info > 27:
            raise CBORError("indefinite length" if info == 31 else "reserved value")
        size = 1 << (info - 24)  # 1, 2, 4 or 8 bytes
        if size > n - pos:
            raise CBORError("truncated")
        arg = 0
        end = pos + size
        while pos < end:
            arg = (arg << 8) | data[pos]
            pos += 1
        # Shortest form only: one value, one encoding (an attacker cannot vary bytes freely).
        if arg < (24 if size == 1 else 1 << (4 * size)):
            raise CBORError("non-shortest integer")
        self.pos = pos
        return arg

    def take(self, length):
        # The next `length` bytes as a bytes object, checked against what remains first.
        pos = self.pos
        if length > len(self.data) - pos:
            raise CBORError("truncated")
        self.pos = pos + length
        out = self.data[pos:pos + length]
        return out if type(out) is bytes else bytes(out)

    def item(self, depth):
        data = self.data
        if self.pos < len(data) and data[self.pos] >= 0xE0:
            return self.other()
        arg = self.head()
        major = self.major
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return self.take(arg)
        if major == 3:
            raw = self.take(arg)
            _check_utf8(raw, 0, arg)
            return str(raw, "utf-8")
        if major == 4 or major == 5:
            if depth <= 0:
                raise CBORError("too deep")
            # Each item takes at least one byte: check the count against what remains first.
            if arg > self.max_items or (arg << (major - 4)) > len(data) - self.pos:
                raise CBORError("too many items")
            depth -= 1
            if major == 4:
                out = []
                for _ in range(arg):
                    out.append(self.item(depth))
                return out
            out = {}
            for _ in range(arg):
                k = self.item(0)  # depth 0: a key can never be a container
                if type(k) is not int and type(k) is not str:
                    raise CBORError("bad map key")
                if k in out:
                    raise CBORError("duplicate map key")
                out[k] = self.item(depth)
            return out
        raise CBORError("tag not allowed")  # major 6; major 7 went to other()

    def other(self):
        # Major type 7: skip a float or simple value, checking only that it is well-formed.
        data = self.data
        pos = self.pos
        info = data[pos] & 0x1F
        if info < 24:
            self.pos = pos + 1
            return OTHER
        if info > 27:
            raise CBORError("break or reserved value")
        size = 1 << (info - 24)
        if size > len(data) - pos - 1:
            raise CBORError("truncated")
        if info == 24 and data[pos + 1] < 32:
            raise CBORError("bad simple value")
        self.pos = pos + 1 + size
        return OTHER


def _check_utf8(buf, i, end):
    # RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF. MicroPython's own
    # decoder accepts all three, so the check is done here for both runtimes.
    while i < end:
        c = buf[i]
        if c < 0x80:
            i += 1
            continue
        lo, hi = 0x80, 0xBF
        if 0xC2 <= c <= 0xDF:
            n = 1
        elif 0xE0 <= c <= 0xEF:
            n = 2
            if c == 0xE0:
                lo = 0xA0
            elif c == 0xED:
                hi = 0x9F
        elif 0xF0 <= c <= 0xF4:
            n = 3
            if c == 0xF0:
                lo = 0x90
            elif c == 0xF4:
                hi = 0x8F
        else:
            raise CBORError("bad utf-8")
        if i + n >= end:
            raise CBORError("bad utf-8")
        b = buf[i + 1]
        if b < lo or b > hi:
            raise CBORError("bad utf-8")
        for j in range(i + 2, i + n + 1):
            if buf[j] & 0xC0 != 0x80:
                raise CBORError("bad utf-8")
        i += n + 1
