# A full filesystem (littlefs raises OSError(ENOSPC) at write, close or rename) must never stop
# the cabinet: before the fix, the boot event's write raised out of App() and the board
# crash-looped. Routine events are dropped first and reported; alarms are kept.
import json

from aedgate.app import App
from fwtest import FullFlash, Hardware, temp_flash, wipe


def _full_app(room=0, cfg=None):
    f = temp_flash()
    f.write("config.json", json.dumps(cfg or {"device_id": "cab-0007", "debounce_ms": 10}))
    full = FullFlash(f, room=room)
    return App(Hardware(), full), full, f


def test_boot_on_a_full_flash_does_not_crash_and_reboots_again():
    for boot in range(3):                      # a crash loop would raise here, every boot
        f = temp_flash() if boot == 0 else f
        f.write("config.json", json.dumps({"device_id": "cab-0007", "debounce_ms": 10}))
        full = FullFlash(f, room=0)
        app = App(Hardware(), full)
        types = [app.outbox.get(s)["type"] for s in app.outbox.pending()]
        assert "boot" in types
        assert full.refused >= 1               # the flash really was full
    wipe(f)


def test_full_flash_drops_routine_events_reports_them_and_keeps_alarms():
    app, full, f = _full_app(room=0)
    full.room = 0                              # the spare blocks are gone too
    app.emit({"type": "door_opened"})          # routine: dropped
    app.emit({"type": "door_closed", "open_s": 3})
    app.emit({"type": "door_alarm"})           # kept
    evs = [app.outbox.get(s) for s in app.outbox.pending()]
    types = [e["type"] for e in evs]
    assert "door_alarm" in types and "door_opened" not in types
    dropped = [e for e in evs if e["type"] == "events_dropped"]
    assert sum(e["count"] for e in dropped) == 2
    seqs = [e["seq"] for e in evs]
    assert seqs == list(range(1, len(seqs) + 1))   # nothing else lost, no gap
    wipe(f)
