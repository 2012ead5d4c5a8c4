# App slots and trial (firmware/slots.py): a power cut at every flash write of install, switch
# and trial leaves a cabinet that boots the old or the new version, never neither.
from fwtest import CutFlash, PowerCut, temp_flash, wipe
from slots import MAX_TRIAL_BOOTS, Slots


def _release(ver):
    """A release's files: the package says its version, as aedgate/__init__.py does."""
    files = [("aedgate/__init__.py", b"VERSION = %r\n" % ver),
             ("aedgate/app.py", b"# app " + ver.encode() + b"\n" + b"x" * 300)]
    return {"version": ver}, files


def _root(f, ver="1.0.0"):
    f.sub("aedgate").write("__init__.py", b"VERSION = %r\n" % ver)
    f.sub("aedgate").write("app.py", b"# app " + ver.encode() + b"\n" + b"x" * 300)


def _booted(f):
    """Boot as boot.py does (a hard reset); the version whose every file is there, or None."""
    slot = Slots(f).boot(True)
    d = f.sub(slot) if slot else f
    init = d.sub("aedgate").read("__init__.py")
    app = d.sub("aedgate").read("app.py")
    if init is None or app is None:
        return None
    ver = init.decode().split("'")[1]
    if app != b"# app " + ver.encode() + b"\n" + b"x" * 300:
        return None
    return ver


def _story(f):
    """Install 1.1.0 over the root's 1.0.0, boot it on trial, report, confirm; install 1.2.0,
    let it crash at every boot until it is rolled back; install 1.3.0 over the slot 1.2.0 left
    (its files removed first), boot and confirm it."""
    s = Slots(f, "1.0.0")
    assert s.install(*_release("1.1.0")) is None
    s = Slots(f, "1.0.0")
    assert s.boot(True) == "a"
    s.clear_notes()
    assert s.confirm()
    s.clear_notes()
    assert s.install(*_release("1.2.0")) is None
    for _ in range(MAX_TRIAL_BOOTS + 1):
        Slots(f).boot(True)
    s = Slots(f)
    s.clear_notes()
    assert s.rec["slot"] == "a"
    assert s.install(*_release("1.3.0")) is None
    s = Slots(f)
    assert s.boot(True) == "b"
    s.clear_notes()
    s.confirm()


def test_install_trial_confirm_and_events():
    f = temp_flash()
    _root(f)
    s = Slots(f, "1.0.0")
    assert s.install(*_release("1.1.0")) is None
    assert [n["type"] for n in s.notes()] == ["update_installed"]
    assert _booted(f) == "1.1.0"
    s = Slots(f, "1.0.0")
    assert s.rec["trial"] and s.rec["boots"] == 1 and s.rec["slot"] == "a"
    assert [n["type"] for n in s.notes()] == ["update_installed", "update_trial"]
    s.clear_notes()
    assert s.confirm()
    assert s.notes() == [{"type": "update_confirmed", "version": "1.1.0", "slot": "a"}]
    for _ in range(MAX_TRIAL_BOOTS + 2):  # confirmed: resets no longer count
        assert _booted(f) == "1.1.0"
    assert Slots(f).rec["floor"] == "1.1.0"
    wipe(f)


def test_soft_reboots_do_not_count_as_trial_boots():
    f = temp_flash()
    _root(f)
    Slots(f, "1.0.0").install(*_release("1.1.0"))
    for _ in range(10):  # every mpremote command soft-reboots
        assert Slots(f).boot(False) == "a"
    assert Slots(f).rec["boots"] == 0
    wipe(f)


def test_crash_loop_reverts():
    f = temp_flash()
    _root(f)
    Slots(f, "1.0.0").install(*_release("1.1.0"))
    for _ in range(MAX_TRIAL_BOOTS):
        assert _booted(f) == "1.1.0"
    assert _booted(f) == "1.0.0"      # one boot too many on trial: back to the root
    s = Slots(f)
    back = [n for n in s.notes() if n["type"] == "update_rolled_back"]
    assert back == [{"type": "update_rolled_back", "version": "1.1.0", "to": "1.0.0", "reason": "crash_loop"}]
    assert not s.rec["trial"] and _booted(f) == "1.0.0"
    wipe(f)


def test_trial_that_never_comes_online_reverts():
    f = temp_flash()
    _root(f)
    Slots(f, "1.0.0").install(*_release("1.1.0"))
    assert _booted(f) == "1.1.0"
    s = Slots(f)
    s.expire("trial_timeout")        # the app's _trial(): update_trial_s passed, not confirmed
    assert _booted(f) == "1.0.0"
    assert Slots(f).notes()[-1]["reason"] == "trial_timeout"
    assert not Slots(f).confirm()    # nothing on trial any more
    wipe(f)


def test_downgrade_refused_unless_the_manifest_allows_it():
    f = temp_flash()
    _root(f, "1.0.0")
    s = Slots(f, "1.0.0")
    assert s.install({"version": "0.9.0"}, []) == "not_newer"
    assert s.install({"version": "1.0.0"}, []) == "not_newer"   # the same again: a downgrade
    assert s.install({"version": "1.0.1", "min_version": "1.0.5"}, []) == "needs_version"
    assert s.install({"version": "x"}, []) == "bad_version"
    assert f.sub("a").names() == []                              # nothing written
    assert s.install(*_release("1.2.0")) is None
    _booted(f)
    s = Slots(f)
    assert s.install({"version": "1.3.0"}, []) == "on_trial"
    s.confirm()
    # 1.2.0 confirmed: 1.1.0 is refused, even after the root's 1.0.0 ran again
    assert Slots(f).install({"version": "1.1.0"}, []) == "not_newer"
    m, files = _release("1.1.0")
    m["may_replace"] = "1.1.9"
    assert Slots(f).install(m, files) == "not_newer"   # may replace only up to 1.1.9
    m["may_replace"] = "1.2.0"
    assert Slots(f).install(m, files) is None          # a sanctioned downgrade
    assert _booted(f) == "1.1.0"
    wipe(f)


def test_rotten_copy_of_the_record_falls_back_to_the_other():
    f = temp_flash()
    _root(f)
    s = Slots(f, "1.0.0")
    s.install(*_release("1.1.0"))
    s = Slots(f)
    s.boot(True)
    s.confirm()
    newest = "slot.%d" % Slots(f)._at
    f.write(newest, b"\x00\x00\x00\x00rot")
    s = Slots(f)
    assert s.rec["slot"] == "a" and s.rec["trial"]   # the older copy: before the confirmation
    assert _booted(f) == "1.1.0"
    wipe(f)


def test_missing_slot_boots_the_previous_one():
    f = temp_flash()
    _root(f)
    Slots(f, "1.0.0").install(*_release("1.1.0"))
    f.sub("a").remove("version")       # a technician's hand, or rot
    assert _booted(f) == "1.0.0"
    assert Slots(f).notes()[-1]["reason"] == "slot_missing"
    wipe(f)


def test_power_cut_at_every_flash_write_boots_old_or_new_never_neither():
    # Count the changes the whole story makes, then cut the power before each one in turn and
    # boot twice (each boot may write too) from what is on flash.
    f = temp_flash()
    _root(f)
    cf = CutFlash(f)
    _story(cf)
    total = cf.count[0]
    wipe(f)
    bad = []
    for n in range(total):
        f = temp_flash()
        _root(f)
        try:
            _story(CutFlash(f, limit=n))
            bad.append((n, "no cut"))
        except PowerCut:
            pass
        for _ in range(2):
            v = _booted(f)
            if v not in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
                bad.append((n, v))
        wipe(f)
    print("slots: power cut at each of %d flash writes, %d boot neither version" % (total, len(bad)))
    assert total >= 28  # every step of the story writes
    assert bad == []


def test_app_reports_the_update_events_and_gives_up_a_trial_that_never_comes_online():
    import json

    from aedgate.app import App
    from aedgate.compat import asyncio
    from fwtest import Hardware
    f = temp_flash()
    f.write("config.json", json.dumps({"device_id": "cab-0007"}))
    app = App(Hardware(), f)
    assert app.install({"version": "0.0.9"}, []) == "not_newer"
    ev = app.outbox.get(app.outbox.pending()[-1])
    assert ev["type"] == "update_refused" and ev["reason"] == "not_newer" and ev["version"] == "0.0.9"
    assert app.install(*_release("9.0.0")) is None
    assert app.outbox.get(app.outbox.pending()[-1])["type"] == "update_installed"
    assert Slots(f).boot(True) == "a"                 # boot.py, after the reset
    app = App(Hardware(), f)
    types = [app.outbox.get(s)["type"] for s in app.outbox.pending()]
    assert types[-1:] == ["update_trial"]
    assert Slots(f).notes() == []                      # in the outbox now, cleared from the record
    st = json.loads(app.state_payload())
    assert st["fw_slot"] == "a" and st["fw_trial"] is True
    app.cfg["update_trial_s"] = 0                      # (600 s by default) no broker in this test
    from aedgate.update import Restart
    try:
        asyncio.run(app._trial())
        raised = None
    except Restart as e:   # not a crash (a RuntimeError before: main.py's traceback, 10 s pause)
        raised = str(e)
    assert raised and "9.0.0" in raised                # main.py resets the board at once
    assert Slots(f).boot(True) == ""                   # back on the root's package
    app = App(Hardware(), f)
    ev = app.outbox.get(app.outbox.pending()[-1])
    assert ev["type"] == "update_rolled_back" and ev["reason"] == "trial_timeout" and ev["version"] == "9.0.0"
    assert json.loads(app.state_payload())["fw_slot"] == "root"
    wipe(f)
