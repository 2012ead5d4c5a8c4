"""A MicroPython image written by the firmware's own aedgate/image.py into the virtual device's
next OTA partition (board.Hardware.image_slot(), the twin's esp32.Partition): a power cycle in
the middle resumes at the last good block, the finished image boots after a reset on trial, and
is rolled back at the next reset when it is not marked valid — also when the app marked "valid"
between set_boot() and the reset (docs/updates-install.md, docs/twin.md "OTA partitions")."""
import hashlib

from tests.integration.test_vdev import copy_firmware, mpremote, reset, vdev_factory  # noqa: F401 (fixture)
from tests.integration.test_vdev_ota import _power_cycle, _show

BLOCK = 4096
SIZE = 10 * BLOCK + 777


def _image():
    head = b"\xe94.0.0\x00" + bytes(16)  # the twin's image header (shims/_vdevota.py image())
    return head + hashlib.shake_256(b"image").digest(SIZE - len(head))


# Run on the board: the update task's part, fed from files on the board's flash instead of
# MQTT blocks; chunks of 1000 bytes (not 4 KB-aligned), stopping after `stop` chunks.
WRITE = """
import os, board
from aedgate.image import Image
hw, flash = board.setup()
hw.all_off()
part = hw.image_slot()
img = Image(part, open('img.sha', 'rb').read(), os.stat('img.bin')[6])
off = img.resume()
print('RESUME', off, part.info()[4])
f = open('img.bin', 'rb')
n = 0
while off < img.size and n < %d:
    f.seek(off)
    off = img.write(off, f.read(1000))
    n += 1
print('AT', off)
if off == img.size:
    img.finish()
    hw.image_valid()  # the app reconnecting before the reset: must not confirm the untried image
    print('FINISHED')
"""


def _run(v, stop):
    r = mpremote(v.path, "exec", WRITE % stop, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    words = r.stdout.split()
    return int(words[words.index("RESUME") + 1]), int(words[words.index("AT") + 1]), r.stdout


def test_an_image_written_by_image_py_resumes_boots_on_trial_and_is_rolled_back(vdev_factory, tmp_path):  # noqa: F811
    v = vdev_factory()
    data = _image()
    (tmp_path / "img.bin").write_bytes(data)
    (tmp_path / "img.sha").write_bytes(b"".join(hashlib.sha256(data[i:i + BLOCK]).digest()
                                                for i in range(0, SIZE, BLOCK)))
    r = copy_firmware(v.path, "board.py")
    assert r.returncode == 0, r.stdout + r.stderr
    r = mpremote(v.path, "cp", str(tmp_path / "img.bin"), ":img.bin", "+",
                 "cp", str(tmp_path / "img.sha"), ":img.sha")
    assert r.returncode == 0, r.stderr
    # 25 chunks = 25,000 bytes: blocks 0-5 complete, block 6 half written.
    start, at, out = _run(v, 25)
    assert (start, at) == (0, 25000) and "ota_1" in out, out
    _power_cycle(v)
    assert _show(v.path) == ("ota_0", "ota_0", "MicroPython")  # the old image runs
    start, at, out = _run(v, 1000)
    assert start == 6 * BLOCK and at == SIZE and "FINISHED" in out, out
    assert (v.dir / "ota_1.img").read_bytes()[:SIZE] == data
    assert _show(v.path) == ("ota_0", "ota_1", "MicroPython")  # set to boot, not yet running
    # The reset starts it on trial; nothing marks it valid; the next reset rolls it back.
    reset(v)
    assert _show(v.path, resume=True) == ("ota_1", "ota_1", "4.0.0")
    reset(v)
    assert _show(v.path, resume=True) == ("ota_0", "ota_0", "MicroPython")
    # The image is still there and good: finish again, reset, and this time the app (running
    # the new image, healthy) marks it valid: it stays through a reset and a power cycle.
    start, at, out = _run(v, 1000)
    assert start == SIZE and "FINISHED" in out, out
    reset(v)
    r = mpremote(v.path, "resume", "exec", "import board\nhw, flash = board.setup()\nhw.all_off()\n"
                 "hw.image_valid()\nprint('OK')")
    assert "OK" in r.stdout, r.stdout + r.stderr
    reset(v)
    assert _show(v.path, resume=True) == ("ota_1", "ota_1", "4.0.0")
    _power_cycle(v)
    assert _show(v.path) == ("ota_1", "ota_1", "4.0.0")
