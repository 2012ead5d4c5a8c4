# Token verification cost: time per verify and heap allocated by one verify (gc disabled around
# it, so the count is every byte allocated, not the net). Targets: <= 2 ms, <= 4 KB.
# Run from the repository root:  .venv/bin/micropython tests/firmware/bench_token.py
# (CPython works too, without the heap figure.)
import sys

for _p in ("firmware", "tests/firmware"):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import gc
import time

from aedgate import token
from test_token import DEV, NOW, SLOTS, claims, make

try:
    _now_us = time.ticks_us
    _diff = time.ticks_diff
except AttributeError:
    def _now_us():
        return int(time.perf_counter() * 1000000)

    def _diff(a, b):
        return a - b

_N = 500


def _verify(raw):
    try:
        return token.verify(raw, DEV, SLOTS, NOW)
    except token.TokenError as e:
        return e.args[0]


def _measure(name, raw):
    _verify(raw)  # warm up
    t0 = _now_us()
    for _ in range(_N):
        _verify(raw)
    us = _diff(_now_us(), t0) / _N
    heap = "n/a"
    if hasattr(gc, "mem_alloc"):
        gc.collect()
        gc.disable()
        before = gc.mem_alloc()
        result = _verify(raw)
        heap = "%d B" % (gc.mem_alloc() - before)
        gc.enable()
    else:
        result = _verify(raw)
    label = result if isinstance(result, str) else "accepted"
    print("%-22s %4d bytes  %8.1f us/verify  heap %s  -> %s" % (name, len(raw), us, heap, label))


def main():
    print("%s %s" % (sys.implementation.name, ".".join(str(v) for v in sys.implementation.version[:3])))
    good = make()
    _measure("valid (tag 17)", good)
    _measure("valid (61 + 17)", make(cwt=True))
    bad = bytearray(good)
    bad[-1] ^= 1
    _measure("bad_mac", bytes(bad))
    _measure("expired", make(claims(exp=NOW - 1, iat=NOW - 60)))
    _measure("malformed (garbage)", bytes(range(200)))
    _measure("too_large (1 MB)", bytes(1024 * 1024))


main()
