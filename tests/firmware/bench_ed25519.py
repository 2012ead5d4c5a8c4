# Release verification cost on this runtime: Ed25519 verify time, SHA-512 speed, a whole signed
# release (25-file manifest, like `aedgate release build`), the longest step between two yields
# (how long the asyncio loop can be held), the lag of a 10 ms ticker while a release verifies,
# and heap: module code and bytes allocated per verify (gc off: the churn the gc has to clear).
# The smallest heap a verification fits in is measured by tests/test_release_heap.py.
# Run from the repository root:
#   .venv/bin/micropython -X heapsize=8M tests/firmware/bench_ed25519.py [out.json]
# (CPython works too, without the heap figures.) Prints figures and writes JSON.
import sys

for _p in ("firmware", "tests/firmware"):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import gc
import json
import time

try:
    _now_us = time.ticks_us
    _diff = time.ticks_diff
except AttributeError:
    def _now_us():
        return int(time.perf_counter() * 1000000)

    def _diff(a, b):
        return a - b

_HEAP = hasattr(gc, "mem_alloc")


def _alloc():
    return gc.mem_alloc() if _HEAP else 0


from aedgate import cbor, compat, token  # noqa: E402,F401  (loaded on a cabinet anyway)
from aedgate.compat import asyncio, sleep_ms, ticks_diff, ticks_ms  # noqa: E402

gc.collect()
_before = _alloc()
from aedgate import ed25519, release  # noqa: E402  (imported here to weigh the new modules)
from aedgate.sha512 import sha512  # noqa: E402

gc.collect()
_modules = _alloc() - _before
_t0 = _now_us()
sha512(b"")  # computes the round constants, once
_constants_ms = _diff(_now_us(), _t0) / 1000
gc.collect()
_constants = _alloc() - _before - _modules

from ed25519_vectors import RFC8032  # noqa: E402
from edsign import verify  # noqa: E402
from test_release import KEYS, manifest, signed  # noqa: E402

H = bytes.fromhex
RESULTS = {"runtime": "%s %s" % (sys.implementation.name,
                                 ".".join(str(v) for v in sys.implementation.version[:3])),
           "module_heap_bytes": _modules if _HEAP else None,
           "sha512_constants_heap_bytes": _constants if _HEAP else None,
           "sha512_constants_ms": _constants_ms}


def _time_ms(fn, n):
    # Best of n runs: the machine is shared, and the best run is the one least disturbed.
    fn()
    best = None
    for _ in range(n):
        t0 = _now_us()
        fn()
        dt = _diff(_now_us(), t0)
        best = dt if best is None or dt < best else best
    return best / 1000


def _cpu_s():
    # This process's CPU time (user + system) from /proc (Linux), in seconds; None elsewhere.
    # Unlike wall time it does not grow when other processes share the machine.
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in USER_HZ = 100
    except (OSError, ValueError, IndexError):
        return None


def _cpu_ms(fn, seconds=2.0):
    # CPU ms per call, over enough calls to fill `seconds` of CPU (the clock ticks at 10 ms).
    c0 = _cpu_s()
    if c0 is None:
        return None
    n = 0
    while _cpu_s() - c0 < seconds:
        fn()
        n += 1
    return (_cpu_s() - c0) * 1000 / n


def _steps_profile(pub, sig, parts, runs=7):
    # Longest stretch between two yields (ms), gc collections included (they happen inside
    # steps on a busy heap, as on the board), and the number of steps. Each step's time is its
    # best over `runs` verifications (a shared machine preempts us at random steps).
    best = []
    for _ in range(runs):
        g = ed25519.steps(pub, sig, parts)
        i = 0
        while True:
            t0 = _now_us()
            try:
                r = next(g)
            except StopIteration:
                break
            dt = _diff(_now_us(), t0)
            if i == len(best):
                best.append(dt)
            elif dt < best[i]:
                best[i] = dt
            i += 1
    return max(best) / 1000, len(best), r


def _allocated(fn):
    if not _HEAP:
        return None
    gc.collect()
    gc.disable()
    b = _alloc()
    fn()
    n = _alloc() - b
    gc.enable()
    return n


async def _lag_while(coro_fn):
    # A 10 ms ticker (like the lock window's) runs while coro_fn() verifies: its worst lateness.
    worst = [0]
    done = [False]

    async def ticker():
        while not done[0]:
            t = ticks_ms()
            await sleep_ms(10)
            late = ticks_diff(ticks_ms(), t) - 10
            if late > worst[0]:
                worst[0] = late

    t = asyncio.create_task(ticker())
    await sleep_ms(0)
    await coro_fn()
    done[0] = True
    await t
    return worst[0]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else None
    print(RESULTS["runtime"])
    name, _sk, pk, msg, sig = RFC8032[0]
    pub, sig, parts = H(pk), H(sig), (H(msg),)
    ms = _time_ms(lambda: verify(pub, sig, parts), 20)
    RESULTS["verify_ms"] = ms
    print("Ed25519 verify (RFC 8032 TEST 1)  %8.2f ms" % ms)
    cpu = _cpu_ms(lambda: verify(pub, sig, parts))
    RESULTS["verify_cpu_ms"] = cpu
    if cpu is not None:
        print("  same, CPU time per verify       %8.2f ms" % cpu)
    data = bytes(4096)
    ms = _time_ms(lambda: sha512(data).digest(), 5)
    RESULTS["sha512_ms_per_kb"] = ms / 4
    print("SHA-512 (pure Python)             %8.2f ms/KB" % (ms / 4))

    files = [["aedgate/m%02d.mpy" % i, 2000 + i, bytes(range(i, i + 32))] for i in range(25)]
    raw = signed(manifest(files=files))
    RESULTS["release_bytes"] = len(raw)

    def whole():
        return asyncio.run(release.verify(raw, KEYS))

    ms = _time_ms(whole, 10)
    RESULTS["release_verify_ms"] = ms
    print("signed release, %d B, 25 files    %8.2f ms" % (len(raw), ms))
    cpu = _cpu_ms(whole)
    RESULTS["release_verify_cpu_ms"] = cpu
    if cpu is not None:
        print("  same, CPU time per release      %8.2f ms" % cpu)
    name, _sk, pk1k, msg1k, sig1k = RFC8032[3]
    longest, n, ok = _steps_profile(H(pk1k), H(sig1k), (H(msg1k),))
    assert ok is True
    RESULTS["longest_step_ms"] = longest
    RESULTS["steps"] = n
    print("longest step between yields       %8.2f ms (TEST 1024, %d steps; first use of SHA-512: %.2f ms)"
          % (longest, n, _constants_ms))
    lag = asyncio.run(_lag_while(lambda: release.verify(raw, KEYS)))
    RESULTS["ticker_10ms_worst_lateness_ms"] = lag
    print("10 ms ticker, worst lateness      %8d ms (while a release verifies)" % lag)
    if _HEAP:
        RESULTS["verify_allocated_bytes"] = _allocated(lambda: verify(pub, sig, parts))
        RESULTS["release_allocated_bytes"] = _allocated(whole)
        print("new module code on the heap       %8d B (ed25519, sha512, release; + %d B constants)"
              % (_modules, _constants))
        print("allocated by one verify (gc off)  %8d B (garbage, collected as it goes)"
              % RESULTS["verify_allocated_bytes"])
        print("allocated by one release verify   %8d B" % RESULTS["release_allocated_bytes"])
    if out:
        with open(out, "w") as f:
            json.dump(RESULTS, f)
        print("wrote " + out)


main()
