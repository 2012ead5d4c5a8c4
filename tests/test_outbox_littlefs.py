"""The outbox on the ESP32 twin's flash: MicroPython's littlefs (vfs.VfsLfs2) on a block device
with the board's geometry (simulator/vdev/shims/_vdevflash.py), under the MicroPython unix port.

Before the segment log (ce36ac6: one file per event, three atomic writes per emit, all in "/"),
the same measurement gave: emit ~8,000 block reads at depth 0 and ~16,000 at depth 1,000; boot
scan ~645,000 block reads (19 s at the stated SPI costs) at depth 1,000 — a WDT reset in waiting
(docs/benchmarks.md)."""
import json
import subprocess

from tests.fixtures import ROOT

WDT_BUDGET_MS = 30000      # firmware/board.py's machine.WDT timeout
OUTBOX_LIMIT_MAX = 2000    # config.py's upper bound for outbox_limit


def _bench(micropython, tmp_path, depths):
    out = tmp_path / "flash.json"
    proc = subprocess.run([micropython, "-X", "heapsize=8M", str(ROOT / "tests" / "firmware" / "bench_outbox_flash.py"),
                           str(ROOT / "firmware"), str(ROOT / "simulator" / "vdev" / "shims"), str(out),
                           *map(str, depths)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {r["depth"]: r for r in json.loads(out.read_text())}


def test_emit_cost_does_not_grow_with_depth_and_boot_scan_fits_the_watchdog(micropython, tmp_path):
    rows = _bench(micropython, tmp_path, [0, 1000, OUTBOX_LIMIT_MAX])
    for r in rows.values():
        assert "error" not in r, r
    e0, e1000 = rows[0]["emit"], rows[1000]["emit"]
    print("emit: %.0f reads / %.1f ms at depth 0, %.0f reads / %.1f ms at depth 1000; boot scan at %d: "
          "%d reads / %.0f ms" % (e0["reads"], e0["ms"], e1000["reads"], e1000["ms"], OUTBOX_LIMIT_MAX,
                                  rows[OUTBOX_LIMIT_MAX]["boot_scan"]["reads"], rows[OUTBOX_LIMIT_MAX]["boot_scan"]["ms"]))
    # One emit: one block erased and rewritten, whatever is waiting (the old outbox: 2x the time
    # and ~16,000 reads at depth 1000).
    assert e1000["ms"] <= 1.5 * e0["ms"], (e0, e1000)
    assert e1000["reads"] <= 1000 and e1000["erases"] <= 1.5, e1000
    # The boot scan at the largest outbox_limit: a small part of the watchdog's 30 s.
    assert rows[OUTBOX_LIMIT_MAX]["boot_scan"]["ms"] <= WDT_BUDGET_MS / 20, rows[OUTBOX_LIMIT_MAX]
    # A PUBACK's bookkeeping does not grow with the depth either.
    assert rows[1000]["publish"]["ms"] <= 3 * rows[0]["publish"]["ms"] + 20, rows
    # 2000 events fit in a fraction of the 2 MiB partition.
    assert rows[OUTBOX_LIMIT_MAX]["blocks_used"] <= 128, rows[OUTBOX_LIMIT_MAX]


def test_full_littlefs_no_crash_loop_alarms_kept_drops_reported(micropython):
    # Before the fix (ce36ac6) the first boot on the full flash raised OSError(28) out of App():
    # on the board, a reset every ~10 s.
    proc = subprocess.run([micropython, "-X", "heapsize=8M", str(ROOT / "tests" / "firmware" / "bench_flash_full.py"),
                           str(ROOT / "firmware"), str(ROOT / "simulator" / "vdev" / "shims"),
                           str(ROOT / "tests" / "firmware")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print("full littlefs:", r)
    assert r["errors"] == [] and r["boots"] == 3, r
    assert r["filled"] > 1900000 and r["free_blocks"] <= 1, r      # it really was full
    assert r["alarms_kept"], r                                       # every alarm waits to be sent
    assert r["dropped"] > 0, r                                       # routine ones went first...
    assert r["routine_kept"] + r["dropped"] == r["routine_emitted"], r  # ...and were all reported
    assert r["missing_seqs"] <= r["dropped"], r                     # no gap that is not a reported drop
    assert r["after_unfill_seq"] > 0, r
