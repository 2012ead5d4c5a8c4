"""Simulated cabinets boot like boards (simulator/fleet/slotboot.py): the slot slots.py picks runs
ITS code, read from the cabinet's flash, shared per content by every cabinet of the process; a
release that crashes at boot is rolled back by the crash-loop count (docs/updates-install.md)."""
import sys

import aedgate.app as root_app
import aedgate.lock as root_lock
import pytest
from aedgate.storage import Flash
from slots import MAX_TRIAL_BOOTS, Slots

from simulator.fleet import releases, slotboot
from simulator.world.flash import MemoryFlash
from tests.fixtures import schema_validator


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("releases")
    key, _ = releases.make_key(d)
    for version, kind in (("0.2.0", "good"), ("0.3.0", "crash")):
        releases.build(d / kind, version, kind, key, d)
    return d


def _installed(built, kind, flash=None):
    flash = flash or MemoryFlash()
    assert Slots(flash, "0.1.0").install(*releases.install_files(built / kind)) is None
    return flash


def test_slot_package_is_its_own_and_shared_per_content(built):
    a, b = _installed(built, "good"), _installed(built, "good")
    pa, pb = slotboot.package(a.sub("a")), slotboot.package(b.sub("a"))
    assert pa is pb  # same files: one set of module objects per process
    assert pa.version == "0.2.0" and sys.modules["aedgate"].VERSION == "0.1.0"
    App = pa.app_class()
    app_mod = pa.modules["aedgate.app"]
    assert App is app_mod.App and app_mod is not root_app
    # imports made later, inside functions (selftest.py, service.py do), resolve to the slot too
    lock = app_mod.__builtins__["__import__"]("aedgate", None, None, ("lock",), 0).lock
    assert lock is pa.modules["aedgate.lock"] and lock is not root_lock
    # `slots` stays the root's, as on a board (boot.py imported it before the slot's path)
    assert app_mod.Slots is Slots
    assert slotboot.package(_installed(built, "crash").sub("a")) is not pa


def test_a_slot_of_mpy_files_cannot_run_on_cpython():
    f = MemoryFlash()
    f.sub("a").sub("aedgate").write("app.mpy", b"M\x06\x00\x1f")
    with pytest.raises(slotboot.SlotImportError, match="release build --source"):
        slotboot.package(f.sub("a"))


def _ev(did, kind):
    return lambda t, o: t == "aed/v1/%s/event" % did and isinstance(o, dict) and o.get("type") == kind


def test_release_crashing_at_boot_rolls_back_to_the_previous_one(mosquitto, backend, sim_factory,
                                                                 built, tmp_path):
    f = _installed(built, "crash", Flash(str(tmp_path / "cab-0001")))
    sim = sim_factory(count=1, broker_url=mosquitto.url, flash_root=tmp_path)
    ev = backend.wait_for(_ev("cab-0001", "update_rolled_back"), timeout=30)[1]
    assert (ev["version"], ev["to"], ev["reason"]) == ("0.3.0", "0.1.0", "crash_loop")
    assert list(schema_validator("event").iter_errors(ev)) == []
    st = backend.wait_for(lambda t, o: t == "aed/v1/cab-0001/state" and o.get("fw") == "0.1.0")[1]
    assert st["fw_slot"] == "root" and st["fw_trial"] is False
    cab = sim.fleet["cab-0001"]
    # the first boot and MAX_TRIAL_BOOTS resets crashed; the next hard boot rolled back
    assert cab.crashes == MAX_TRIAL_BOOTS and cab.slot == ""
    assert Slots(f).rec["slot"] == "" and Slots(f).rec["floor"] == "0.1.0"


def test_cabinets_on_one_release_share_its_file_contents_in_ram(built):
    a, b = _installed(built, "good"), _installed(built, "good")
    assert a.sub("a").sub("aedgate").read("app.py") is not b.sub("a").sub("aedgate").read("app.py")
    slotboot.package(a.sub("a")), slotboot.package(b.sub("a"))
    assert a.sub("a").sub("aedgate").read("app.py") is b.sub("a").sub("aedgate").read("app.py")


def test_slot_whose_package_fails_to_import_is_rolled_back(mosquitto, backend, sim_factory,
                                                           built, tmp_path):
    """main.py imports the app inside its try: an import error resets like a crash, so the
    crash-loop count rolls the release back (before, a board stopped at the REPL for good)."""
    m, files = releases.install_files(built / "good")
    m = dict(m, version="0.4.0")
    files = [(p, b"raise ImportError('release fixture: broken at import')\n" + d
              if p == "aedgate/app.py" else d) for p, d in files]
    f = Flash(str(tmp_path / "cab-0001"))
    assert Slots(f, "0.1.0").install(m, files) is None
    sim = sim_factory(count=1, broker_url=mosquitto.url, flash_root=tmp_path)
    ev = backend.wait_for(_ev("cab-0001", "update_rolled_back"), timeout=30)[1]
    assert (ev["version"], ev["to"], ev["reason"]) == ("0.4.0", "0.1.0", "crash_loop")
    assert sim.fleet["cab-0001"].crashes == MAX_TRIAL_BOOTS and sim.fleet["cab-0001"].slot == ""
