"""The CPython fleet's flash: MemoryFlash's capacity in littlefs blocks and ENOSPC, FaultyFlash's
torn appends and its "full" fault, and the world key that sets it."""
import pytest

from simulator.world.faults import FaultyFlash, PowerCut
from simulator.world.flash import MemoryFlash


def test_memory_flash_counts_whole_blocks_and_raises_enospc_when_full():
    f = MemoryFlash(capacity=8 * 4096)            # 8 blocks: 2 for the root's metadata pair
    f.write("small", b"x" * 100)                  # inline in littlefs metadata: no block
    assert f.used() == 2 * 4096
    f.write("a", b"x" * 4097)                     # two blocks
    assert f.used() == 4 * 4096
    sub = f.sub("ob")                             # a folder: its own metadata pair
    sub.append("1", b"y" * 4000)
    assert f.used() == 7 * 4096
    with pytest.raises(OSError) as e:
        sub.append("2", b"z" * 4097)              # two blocks; one is left
    assert e.value.args[0] == 28
    f.remove("a")                                 # removing frees room, as on littlefs
    sub.append("2", b"z" * 4097)
    assert sub.read("2") == b"z" * 4097 and sorted(f.names()) == ["ob", "small"]
    # the running total every change keeps equals a count file by file
    sub.move("2", f)                              # into the root, as a rename does
    f.write("small", b"x" * 4000)                 # grows from inline to a block: all 8 used
    f.remove("nothing")
    assert f.used() == f.walk() == 8 * 4096


def test_zero_files_cost_no_ram_but_read_back_the_same():
    f = MemoryFlash()
    f.write("spare", bytes(8192))
    assert f.files["spare"] == 8192 and f.read("spare") == bytes(8192)


def test_faulty_flash_full_and_torn_appends():
    cuts = []
    f = FaultyFlash(MemoryFlash(), on_cut=lambda: cuts.append(1))
    ob = f.sub("ob")
    ob.append("1", b"abc")
    f.set_full(True)
    for op in (lambda: ob.append("1", b"d"), lambda: f.write("x", b"1")):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.args[0] == 28
    ob.remove("1")                                 # removing still works
    f.set_full(False)
    ob.append("1", b"record-one")
    f.cut_after(1)                                 # counted across folders
    with pytest.raises(PowerCut):
        ob.append("1", b"record-two")
    data = ob.read("1")
    assert data.startswith(b"record-one") and len(data) < len(b"record-onerecord-two")  # torn tail
    assert cuts == [1] and not f.powered


def test_world_key_flash_full_reaches_the_cabinets_flash():
    from simulator.world.hardware import CabinetWorld
    seen = []

    class W(CabinetWorld):
        def __init__(self):  # only the control part is needed here
            self.on_flash_full = seen.append
    w = W()
    assert w.apply({"flash": "full"}) == [] and seen == [True]
    assert w.apply({"flash": "ok"}) == [] and seen == [True, False]
    assert w.apply({"flash": "melted"}) != []


def test_factory_package_is_on_every_cabinets_flash_shared_counted_and_read_only(tmp_path):
    # Provisioning leaves the package at a board's root; an update copies the files a release
    # did not change from there (firmware/aedgate/update.py). The fleet shares one copy.
    import json

    from host_tools.firmware import FIRMWARE
    from simulator.world.flash import factory_install
    from slots import Slots
    a, b = MemoryFlash(capacity=2 * 1024 * 1024), MemoryFlash(capacity=2 * 1024 * 1024)
    before = a.used()
    factory_install(a)
    factory_install(b)
    urls = json.loads((FIRMWARE / "package.json").read_text())["urls"]
    for dest, src in urls:
        d, name = Slots(a).running(dest)           # where update.py looks: the running slot ""
        assert d.read(name) == (FIRMWARE / src).read_bytes(), dest
    assert a.sub("aedgate") is b.sub("aedgate")    # one copy per simulator process
    assert a.used() - before >= sum((FIRMWARE / src).stat().st_size for _, src in urls) // 2
    with pytest.raises(OSError) as e:
        a.sub("aedgate").write("app.py", b"a cabinet's own change")
    assert e.value.args[0] == 30                   # EROFS: it would change every cabinet
    assert Slots(a).running("nothere/x.py") is None and "nothere" not in a.names()
    disk = tmp_path / "cab"                        # a small fleet's folder per cabinet: real files
    from aedgate.storage import Flash
    factory_install(Flash(str(disk)))
    assert (disk / "aedgate" / "app.py").read_bytes() == (FIRMWARE / "aedgate" / "app.py").read_bytes()


def test_capacity_check_counts_the_same_blocks_as_used_through_every_operation():
    # The capacity check keeps a running count instead of walking every folder at each append
    # (a firmware download appends once per block); it must never drift from used().
    import random
    rng = random.Random(7)
    f = MemoryFlash(capacity=64 * 4096)
    folders = [f, f.sub("a"), f.sub("ob"), f.sub("a").sub("lib")]
    for _ in range(600):
        d = rng.choice(folders)
        name = rng.choice("xyz")
        op = rng.randrange(5)
        try:
            if op == 0:
                d.write(name, bytes(rng.choice((0, 100, 129, 4096, 4097, 9000))))
            elif op == 1:
                d.write(name, b"q" * rng.choice((10, 128, 129, 5000)))
            elif op == 2:
                d.append(name, b"a" * rng.choice((1, 1024, 1536)))
            elif op == 3:
                d.remove(name)
            elif name in d.files:
                d.move(name, rng.choice(folders))
        except OSError as e:
            assert e.args[0] == 28
        assert f.used() == f.walk() <= 64 * 4096
