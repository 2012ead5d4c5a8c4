# Bad releases offered to the real App under the MicroPython unix port: each is refused with a
# reason, nothing is installed, and the cabinet keeps running (issue 12, "Done when").
# Usage: micropython -X heapsize=8M bench_refusals.py FIRMWARE_DIR [OUT.json]
# The releases, the App, its publisher and the update server are test_update.py's (a signed
# release built on the device's runtime, served block by block as each get goes out; no broker,
# no network). For each bad release: the reason in update_refused; the slot record (slot, trial)
# and what slot "a" holds afterwards (its version mark, the files the download left); the same
# offer again (refused again with the same reason, and what it fetched); then a good release
# offered to the same app, installed (the app still takes an update); the gets and bytes the
# refusal cost, the heap held beyond what the app held before the offer (sampled after a
# collection at each publish) and the time from the offer to the refusal (median of 3 runs).
# Prints a table and one JSON line; writes the JSON to OUT.json when given.
import gc
import json
import sys

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, sys.argv[1] + "/../tests/firmware")

import hashlib  # noqa: E402

import test_update as tu  # noqa: E402
from aedgate import release, update  # noqa: E402
from edsign import public_key  # noqa: E402
from test_release import SEED, SEED2, signed  # noqa: E402
from aedgate.compat import asyncio, sleep_ms, ticks_diff, ticks_ms  # noqa: E402
from fwtest import temp_flash, wipe  # noqa: E402
from slots import Slots  # noqa: E402

_alloc = getattr(gc, "mem_alloc", lambda: 0)   # MicroPython's; 0 under CPython
_RUNS = 3                                      # each case this often; the time is the median


class Bench(tu.Server):
    """test_update.Server that samples the heap at each publish and counts what was served."""

    base = 0
    peak = 0
    bytes = 0

    async def publish(self, topic, payload, qos=0, retain=False):
        gc.collect()
        self.peak = max(self.peak, _alloc() - self.base)
        if topic.endswith("/update/get"):
            g = json.loads(payload)
            self.bytes += len(self.blobs[g["file"]][g["offset"]:g["offset"] + g["len"]])
        await tu.Server.publish(self, topic, payload, qos, retain)


def _flip(g, data):
    # one bit of app.py's second block changed on the way, every time it is served
    if g["file"] == "aedgate/app.py" and g["offset"] == 256:
        return data[:-1] + bytes([data[-1] ^ 1])
    return data


def _truncated(g, data):
    # the server holds only release.cose's first 100 bytes: then an empty block
    return data[:max(0, 100 - g["offset"])] if g["file"] == "release.cose" else data


def _other_key(files):
    # The manifest test_update._release signs, signed by another key under the configured key's
    # id: the key is found and the whole verification runs before it fails.
    m = {"format": 1, "version": "0.2.0", "board": "esp32", "created": 1795000000,
         "files": [[p, len(d), hashlib.sha256(d).digest()] for p, d in files]}
    return signed(m, seed=SEED2, kid=release.key_id(public_key(SEED)))


def _cases():
    raw, files = tu._release("0.2.0")
    bad = bytearray(raw)
    bad[-1] ^= 0x40    # the signature's top byte: S is no longer below the group order
    return [("tampered block", raw, files, _flip),
            ("truncated release.cose", raw, files, _truncated),
            ("wrongly signed: a bit of S", bytes(bad), files, None),
            ("wrongly signed: another key", _other_key(files), files, None),
            ("downgrade 0.1.0 -> 0.0.9", ) + tu._release("0.0.9") + (None,),
            ("wrong board (esp32s3)", ) + tu._release("0.2.0", board="esp32s3") + (None,)]


async def _idle():
    await sleep_ms(0)


def _offer(app, raw, files, answer, until):
    server = Bench(app, raw, files, answer)
    app.update = None                     # drive() runs the update task afresh
    asyncio.run(_idle())                  # the loop lets go of the last run's tasks
    gc.collect()
    server.base = _alloc()
    t0 = ticks_ms()
    tu.offer(app, raw)
    end = tu.drive(app, server, until)
    return server, end, ticks_diff(ticks_ms(), t0)


def _count(d):
    """Files in folder d and below (a name that reads as nothing is a folder)."""
    n = 0
    for name in d.names():
        n += 1 if d.read(name) is not None else _count(d.sub(name))
    return n


def run_case(name, raw, files, answer, good):
    f = temp_flash()
    tu._root(f)
    app = tu._app(f)
    app.log = lambda m: None
    server, end, ms = _offer(app, raw, files, answer, tu._refused)
    ev = [e for e in server.events if e["type"] == "update_refused"]
    rec = Slots(f).rec
    slot_a = f.sub("a")
    row = {"case": name, "reason": ev[0]["reason"] if ev else None,
           "detail": ev[0].get("detail") if ev else None,
           "installed": rec["slot"] != "" or rec["trial"] != 0 or slot_a.read("version") is not None
           or "update_installed" in server.types() or tu._booted(f) != "0.1.0",
           "slot_a_left": _count(slot_a), "gets": len(server.gets), "bytes": server.bytes,
           "heap": server.peak, "ms": ms, "ended": type(end).__name__ if end else None}
    # The same offer again (the server repeats it until it sees a result).
    again, end, ms2 = _offer(app, raw, files, answer, tu._refused)
    ev2 = [e for e in again.events if e["type"] == "update_refused"]
    row["again"] = ev2[0]["reason"] if ev2 else None
    row["again_gets"] = len(again.gets)
    row["again_ms"] = ms2
    # A good release afterwards: the app still takes an update.
    graw, gfiles = good
    ok, end, ms3 = _offer(app, graw, gfiles, None, lambda s: False)
    row["next_good"] = isinstance(end, update.Restart) and tu._booted(f) == "0.3.0"
    row["next_good_ms"] = ms3
    wipe(f)
    return row


def main():
    good = tu._release("0.3.0")
    run_case("warm-up", *(_cases()[2][1:] + (good,)))   # modules loaded, caches filled: not shown
    rows = []
    for c in _cases():
        runs = [run_case(*(c + (good,))) for _ in range(_RUNS)]
        row = runs[0]
        row["ms_runs"] = sorted(r["ms"] for r in runs)
        row["ms"] = row["ms_runs"][_RUNS // 2]        # the median: the machine is shared
        row["again"] = [r["again"] for r in runs if r["again"] != row["reason"]] or row["again"]
        row["installed"] = True in [r["installed"] for r in runs]
        row["next_good"] = False not in [r["next_good"] for r in runs]
        rows.append(row)
    head = ("case", "reason", "installed", "slot a left", "gets", "bytes", "heap B", "ms",
            "again", "next good")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| %s | %s%s | %s | %d files | %d | %d | %d | %d | %s (%d gets) | %s |" % (
            r["case"], r["reason"], " (%s)" % r["detail"] if r["detail"] else "",
            "yes" if r["installed"] else "no", r["slot_a_left"], r["gets"], r["bytes"], r["heap"],
            r["ms"], r["again"], r["again_gets"], "installed" if r["next_good"] else "NOT installed"))
    out = {"runtime": sys.implementation.name, "block": 256, "cases": rows}
    print(json.dumps(out))
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as fh:
            fh.write(json.dumps(out) + "\n")
    ok = all(r["reason"] and not r["installed"] and r["again"] == r["reason"] and r["next_good"]
             for r in rows)
    if not ok:
        print("FAILED: a bad release was not refused cleanly")
        sys.exit(1)


main()
