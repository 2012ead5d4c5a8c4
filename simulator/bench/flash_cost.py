"""Flash cost of the outbox on the ESP32 twin's littlefs, before and after the segment log.

Runs tests/firmware/bench_outbox_flash.py under the MicroPython unix port (real vfs.VfsLfs2 on
the twin's block device: 512 blocks of 4096 bytes, VfsLfs2 defaults) for the firmware in this
tree and for the outbox of an older commit (`--before`, default ce36ac6: one file per event),
prints a table and writes JSON.

    python -m simulator.bench.flash_cost [--depths 0,100,1000] [--before ce36ac6] [--json FILE]

Milliseconds are priced with the SPI-flash costs in simulator/vdev/shims/_vdevflash.py
(COST_US; sources in docs/twin.md)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "firmware" / "bench_outbox_flash.py"
SHIMS = ROOT / "simulator" / "vdev" / "shims"


def run(firmware: Path, depths: list[int], micropython: str | None = None) -> list[dict]:
    from simulator.vdev.device import find_micropython
    with tempfile.TemporaryDirectory(prefix="flashcost-") as tmp:
        out = Path(tmp) / "out.json"
        r = subprocess.run([micropython or find_micropython(), "-X", "heapsize=8M", str(SCRIPT),
                            str(firmware), str(SHIMS), str(out), *map(str, depths)],
                           capture_output=True, text=True, timeout=3600)
        if r.returncode != 0 or not out.exists():
            raise RuntimeError("bench failed: %s" % (r.stdout + r.stderr)[-2000:])
        return json.loads(out.read_text())


def old_firmware(commit: str, dest: Path) -> Path:
    """The firmware of `commit` with this tree's storage.py (the old outbox needs only read,
    write, remove and names, which it keeps)."""
    fw = dest / "firmware" / "aedgate"
    fw.mkdir(parents=True)
    for name in ("__init__.py", "outbox.py"):
        src = subprocess.run(["git", "show", "%s:firmware/aedgate/%s" % (commit, name)], cwd=ROOT,
                             capture_output=True, check=True).stdout
        (fw / name).write_bytes(src)
    (fw / "storage.py").write_bytes((ROOT / "firmware" / "aedgate" / "storage.py").read_bytes())
    return dest / "firmware"


def table(label: str, rows: list[dict]) -> str:
    out = []
    for r in rows:
        if "error" in r:
            out.append("| %s | %d | %s | | | %d | |" % (label, r["depth"], r["error"], r["blocks_used"]))
            continue
        e, s = r["emit"], r["boot_scan"]
        out.append("| %s | %d | %.0f reads, %.1f progs, %.2f erases = %.1f ms | %d reads = %.0f ms | "
                   "%d reads = %.1f ms | %d | %.1f KB |"
                   % (label, r["depth"], e["reads"], e["progs"], e["erases"], e["ms"], s["reads"], s["ms"],
                      r["publish"]["reads"], r["publish"]["ms"], r["blocks_used"], r["heap_bytes"] / 1024))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", default="0,100,1000")
    p.add_argument("--before", default="ce36ac6", help="commit whose outbox is 'before'")
    p.add_argument("--json", default="flash_cost.json", metavar="FILE")
    a = p.parse_args(argv)
    depths = [int(d) for d in a.depths.split(",")]
    with tempfile.TemporaryDirectory(prefix="flashcost-old-") as tmp:
        before = run(old_firmware(a.before, Path(tmp)), depths)
    after = run(ROOT / "firmware", depths)
    print("| outbox | depth | one emit (mean of 60) | boot scan | publish (payload + remove) | blocks used of 512 | outbox RAM |")
    print("|---|---|---|---|---|---|---|")
    print(table("before (%s)" % a.before, before))
    print(table("after", after))
    Path(a.json).write_text(json.dumps({"before": before, "after": after, "before_commit": a.before,
                                        "depths": depths}, indent=1))
    print("JSON: %s" % a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
