# aedgate.replay and aedgate.timefloor on a real Flash folder: what survives a reboot (a fresh
# instance on the same folder), pruning, eviction and corrupt files. CPython and MicroPython.
import os
from binascii import hexlify

from aedgate.replay import Replay
from aedgate.storage import Flash
from aedgate.timefloor import BUILD_TIME, TimeFloor

T = 1800000000


_made = []


def _flash():
    # No tempfile on MicroPython: a fresh folder under /tmp with a random name.
    root = "/tmp/aedtest-" + hexlify(os.urandom(6)).decode()
    _made.append(root)
    return Flash(root)


def _cleaned(fn):
    # Removes the test's flash folders afterwards (mprun.py has no fixtures).
    def run():
        try:
            fn()
        finally:
            while _made:
                root = _made.pop()
                for name in os.listdir(root):
                    os.remove(root + "/" + name)
                os.rmdir(root)
    return run


def _cti(i):
    return bytes((i,)) * 16


@_cleaned
def test_replay_survives_reboot():
    flash = _flash()
    r = Replay(flash, floor=T - 1000)
    assert not r.seen(_cti(1), T)
    r.add(_cti(1), T + 120, T)
    assert r.seen(_cti(1))
    assert r.seen(_cti(1), T)
    assert not r.seen(_cti(2), T + 1)
    r2 = Replay(flash, floor=T)  # reboot
    assert r2.seen(_cti(1))
    assert not r2.seen(_cti(2), T + 1)
    assert len(r2) == 1


@_cleaned
def test_add_persists_before_returning():
    flash = _flash()
    r = Replay(flash)
    for i in range(5):
        r.add(_cti(i), T + 100 + i, T + i)
        assert Replay(flash).seen(_cti(i))  # already on flash when add() returns


@_cleaned
def test_prune_drops_expired_only():
    flash = _flash()
    r = Replay(flash)
    r.add(_cti(1), T + 10, T)
    r.add(_cti(2), T + 20, T)
    r.prune(T + 15)
    assert not r.seen(_cti(1))
    assert r.seen(_cti(2))
    r.prune(T + 20)  # exp == floor: kept ("until its exp is below the floor")
    assert r.seen(_cti(2))
    r.add(_cti(3), T + 30, T)
    assert len(Replay(flash)) == 2


@_cleaned
def test_full_store_evicts_soonest_expiry_and_still_accepts():
    flash = _flash()
    r = Replay(flash, capacity=4)
    for i in range(4):
        r.add(_cti(i), T + 100 + i, T + i)
    # A new token, even one expiring before every stored one, is stored: never blocked.
    r.add(_cti(9), T + 50, T + 9)
    assert len(r) == 4
    assert r.seen(_cti(9))
    # cti 0 (smallest exp) was evicted, yet it cannot be replayed: its iat is now the guard.
    assert r.seen(_cti(0), T) and not r.seen(_cti(11), T + 1)  # the guard is exactly T
    assert not r.seen(_cti(10), T + 10)
    r.add(_cti(10), T + 200, T + 10)
    assert not r.seen(_cti(9)) and r.seen(_cti(9), T + 9)  # evicted next (exp T+50)
    r2 = Replay(flash, capacity=4)
    assert r2.seen(_cti(11), T + 9) and not r2.seen(_cti(11), T + 11)  # guard T + 9, from flash
    assert r2.seen(_cti(10)) and r2.seen(_cti(3))


@_cleaned
def test_corrupt_or_missing_file_keeps_old_tokens_out():
    for damage in ("flip", "truncate", "garbage", "empty", "delete"):
        flash = _flash()
        r = Replay(flash)
        r.add(_cti(1), T + 120, T)
        data = flash.read("replay")
        if damage == "flip":
            b = bytearray(data)
            b[len(b) // 2] ^= 0x01
            flash.write("replay", bytes(b))
        elif damage == "truncate":
            flash.write("replay", data[:-3])
        elif damage == "garbage":
            flash.write("replay", os.urandom(60))
        elif damage == "empty":
            flash.write("replay", b"")
        else:
            flash.remove("replay")
        # At start-up the caller passes the time floor, raised to every accepted iat.
        r2 = Replay(flash, floor=T)
        assert len(r2) == 0, damage
        assert r2.seen(_cti(1), T), damage  # the old token: refused
        assert not r2.seen(_cti(2), T + 1), damage  # a fresh token: accepted
        r2.add(_cti(2), T + 121, T + 1)
        r3 = Replay(flash, floor=0)
        assert r3.seen(_cti(1), T) and r3.seen(_cti(2)), damage
        assert not r3.seen(_cti(3), T + 1), damage  # the guard is T (from the file), not 0


@_cleaned
def test_add_rejects_values_it_cannot_store():
    r = Replay(_flash())
    for cti, exp, iat in ((b"x" * 33, T, T), (_cti(1), -1, T), (_cti(1), 1 << 63, T), (_cti(1), T, -5)):
        try:
            r.add(cti, exp, iat)
            assert False, (cti, exp, iat)
        except ValueError:
            pass


@_cleaned
def test_timefloor_starts_at_build_time_and_never_goes_back():
    flash = _flash()
    tf = TimeFloor(flash)
    assert tf.floor() == BUILD_TIME
    assert tf.raise_to(T)
    assert not tf.raise_to(T - 10)
    assert tf.floor() == T
    assert TimeFloor(flash).floor() == T  # reboot
    assert TimeFloor(flash, build_time=T + 5).floor() == T + 5  # newer firmware


@_cleaned
def test_timefloor_now_uses_clock_only_forward():
    tf = TimeFloor(_flash(), build_time=T)
    assert tf.now(None) == T
    assert tf.now(T - 86400) == T  # SNTP rolled back: ignored
    assert tf.now(T + 50) == T + 50  # clock ahead: used for expiry ...
    assert tf.floor() == T  # ... but never raises the floor


@_cleaned
def test_timefloor_survives_one_bad_copy():
    flash = _flash()
    tf = TimeFloor(flash, build_time=T)
    tf.raise_to(T + 100)
    flash.write("timefloor.a", b"\x00" * 12)  # bit rot in one copy
    assert TimeFloor(flash, build_time=T).floor() == T + 100
    # Power cut between the two writes: the copies differ, the larger valid one wins.
    good = flash.read("timefloor.b")
    tf2 = TimeFloor(flash, build_time=T)
    tf2.raise_to(T + 200)
    flash.write("timefloor.b", good)
    assert TimeFloor(flash, build_time=T).floor() == T + 200
    flash.write("timefloor.a", b"junk")
    flash.write("timefloor.b", b"")
    assert TimeFloor(flash, build_time=T).floor() == T  # both lost: build time


@_cleaned
def test_the_file_is_written_in_pieces_of_one_entry():
    # A full set is ~2.1 KB; built whole on every accepted token it was the large temporary
    # block that fragmented the heap (docs/benchmarks.md, "RAM on the ESP32's word size").
    from fwtest import Recorder
    f = Recorder(_flash())
    r = Replay(f, floor=T)
    for i in range(70):  # past the capacity: evictions too
        r.add(_cti(i) * 2, T + 600 + i, T + i)
    assert f.largest_part <= 17 + 32, f.largest_part
    again = Replay(f.inner, floor=0)   # what a reboot reads back: complete and checked
    assert len(again) == 64
    assert again.seen(_cti(69) * 2) and not again.seen(_cti(5) * 2)
    assert again.seen(b"evicted", T + 5)   # the guard came back too
