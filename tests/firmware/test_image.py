# The MicroPython image written into the next OTA partition (firmware/aedgate/image.py), on the
# twin's esp32.Partition (tests/firmware/otatwin.py): blocks checked against the hash list,
# resumable after a reset, and a power cut at any flash change never leaves a board that boots
# neither image. Runs on CPython and the MicroPython unix port.
import hashlib

import otatwin
from aedgate.image import BLOCK, MAX_TRIES, Image
from aedgate.release import ReleaseError
from otatwin import CutPartition, PowerCut

CHUNKS = (256, 1536, 700, 1024, 333, 1500, 1111)  # what `get` asks (256..1536), never 4 KB-aligned
SIZE = 3 * BLOCK + 1234  # a short last block


def _image(ver="2.0.0", size=SIZE):
    head = otatwin.O.image(ver)
    body = bytearray(size - len(head))
    x = 12345
    for i in range(len(body)):  # a fixed pseudo-random body: every block different
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        body[i] = x >> 16 & 0xFF
    return head + bytes(body)


def _hashes(img):
    return b"".join(hashlib.sha256(img[i:i + BLOCK]).digest() for i in range(0, len(img), BLOCK))


def _next_part():
    esp32 = otatwin.esp32
    return esp32.Partition(esp32.Partition.RUNNING).get_next_update()


def _download(img, data, start=0, corrupt=None):
    """What the update task does: ask from `start`, chunk after chunk, until the end. `corrupt`:
    an offset whose byte arrives flipped once. Returns the offsets asked, in order."""
    asked = []
    off = start
    k = 0
    while off < len(data):
        n = CHUNKS[k % len(CHUNKS)]
        k += 1
        asked.append(off)
        chunk = data[off:off + n]
        if corrupt is not None and off <= corrupt < off + len(chunk):
            b = bytearray(chunk)
            b[corrupt - off] ^= 0x40
            chunk = bytes(b)
            corrupt = None
        off = img.write(off, chunk)
    return asked


def test_an_image_written_in_odd_chunks_boots_on_trial_and_is_rolled_back_unless_valid():
    otatwin.new_chip()
    data = _image()
    img = Image(_next_part(), _hashes(data), len(data))
    assert img.resume() == 0  # an erased partition: nothing good yet
    _download(img, data)
    assert otatwin.content("ota_1", len(data)) == data
    assert otatwin.reset() == ("ota_0", otatwin.O.FACTORY)  # written, not yet set to boot
    img = Image(_next_part(), _hashes(data), len(data))
    assert img.resume() == len(data)
    img.finish()
    assert otatwin.reset() == ("ota_1", "2.0.0")  # on trial (PENDING_VERIFY)
    assert otatwin.reset() == ("ota_0", otatwin.O.FACTORY)  # never marked valid: rolled back
    # Again, marked valid this time: it stays.
    img = Image(_next_part(), _hashes(data), len(data))
    assert img.resume() == len(data)
    img.finish()
    assert otatwin.reset() == ("ota_1", "2.0.0")
    otatwin.esp32.Partition.mark_app_valid_cancel_rollback()
    assert otatwin.reset() == ("ota_1", "2.0.0")


def test_a_corrupt_block_is_dropped_and_asked_again_from_its_start():
    otatwin.new_chip()
    data = _image()
    img = Image(_next_part(), _hashes(data), len(data))
    asked = _download(img, data, corrupt=BLOCK + 5)
    # The chunk that completes block 1 (it ends at 8192) is answered with 4096: the download
    # goes back to block 1's start, once; blocks 0, 2 and 3 are asked once each.
    backs = [(asked[j], asked[j + 1]) for j in range(len(asked) - 1) if asked[j + 1] <= asked[j]]
    assert len(backs) == 1 and backs[0][1] == BLOCK and backs[0][0] < 2 * BLOCK <= backs[0][0] + 1536, backs
    assert otatwin.content("ota_1", len(data)) == data
    img.finish()
    assert otatwin.reset() == ("ota_1", "2.0.0")


def test_chunks_not_at_the_expected_offset_are_ignored():
    otatwin.new_chip()
    data = _image()
    img = Image(_next_part(), _hashes(data), len(data))
    assert img.write(0, data[:1000]) == 1000
    assert img.write(0, data[:1000]) == 1000  # a late duplicate
    assert img.write(3000, data[3000:4000]) == 1000  # ahead of time
    assert img.write(1000, data[1000:2000]) == 2000
    try:
        img.finish()
        raise AssertionError("finished an incomplete image")
    except ReleaseError as e:
        assert e.args[0] == "bad_image" and e.args[1] == "incomplete"
    assert otatwin.reset() == ("ota_0", otatwin.O.FACTORY)


def test_a_wrong_hash_list_is_bad_image_after_a_few_tries_and_nothing_boots_it():
    otatwin.new_chip()
    data = _image()
    img = Image(_next_part(), _hashes(_image("2.0.1")), len(data))
    tries = 0
    try:
        for _ in range(10):
            assert img.write(0, data[:BLOCK]) == 0
            tries += 1
        raise AssertionError("never gave up")
    except ReleaseError as e:
        assert e.args == ("bad_image", "block 0")
    assert tries == MAX_TRIES - 1
    assert otatwin.reset() == ("ota_0", otatwin.O.FACTORY)


def test_an_image_the_bootloader_would_not_start_is_bad_image_at_finish():
    # Hash list and image agree, but the image has no valid header: esp_ota_set_boot_partition
    # refuses it with OSError(-5379); the otadata is untouched.
    otatwin.new_chip()
    data = b"\x00" + _image()[1:]
    img = Image(_next_part(), _hashes(data), len(data))
    _download(img, data)
    try:
        img.finish()
        raise AssertionError("set_boot accepted a bad image")
    except ReleaseError as e:
        assert e.args == ("bad_image", "set_boot -5379"), e.args
    assert otatwin.reset() == ("ota_0", otatwin.O.FACTORY)


def test_hash_list_and_size_are_checked_before_anything_is_written():
    otatwin.new_chip()
    data = _image()
    part = _next_part()
    for hashes, size, reason in ((_hashes(data)[:-1], len(data), "bad_image"),
                                 (_hashes(data) + bytes(32), len(data), "bad_image"),
                                 (b"", 0, "bad_image"),
                                 (bytes(32 * 385), 385 * BLOCK, "no_space")):  # 384 blocks
        try:
            Image(part, hashes, size)
            raise AssertionError("accepted %d hashes for %d bytes" % (len(hashes), size))
        except ReleaseError as e:
            assert e.args[0] == reason, (e.args, reason)
    assert otatwin.content("ota_1", 16) == b"\xff" * 16


def _cut_story(limit, torn):
    """Write and boot the image with the power cut at flash change `limit`; then boot (the old
    image must run), resume, write the rest, finish, boot the new one. Returns False when the
    story ended without a cut (limit past the last change)."""
    otatwin.new_chip()
    data = _image()
    hashes = _hashes(data)
    part = CutPartition(_next_part(), limit, torn)
    cut = False
    try:
        img = Image(part, hashes, len(data))
        _download(img, data, img.resume())
        img.finish()
    except PowerCut:
        cut = True
    label, ver = otatwin.reset()
    if not cut:
        assert (label, ver) == ("ota_1", "2.0.0")
        return False
    if part.changes < limit or ver != "2.0.0":  # cut before set_boot completed: the old one
        assert (label, ver) == ("ota_0", otatwin.O.FACTORY), (limit, torn, label, ver)
        img = Image(_next_part(), hashes, len(data))
        _download(img, data, img.resume())
        img.finish()
        label, ver = otatwin.reset()
    assert (label, ver) == ("ota_1", "2.0.0"), (limit, torn, label, ver)
    assert otatwin.content("ota_1", len(data)) == data
    return True


def test_power_cut_at_every_flash_change_boots_the_old_image_then_the_new_one():
    cuts = 0
    for torn in (False, True):
        limit = 0
        while _cut_story(limit, torn):
            limit += 1
            cuts += 1
    # 24 flash changes (4 erases, 19 programs: 13 chunks, 6 of them split at a block's end,
    # set_boot), each cut before it and halfway through it.
    assert cuts == 2 * 24, cuts


def test_a_hash_list_in_a_bytearray_works_as_bytes():
    # The update task may keep the list it fetched in a bytearray (or a memoryview of one).
    otatwin.new_chip()
    data = _image()
    img = Image(_next_part(), memoryview(bytearray(_hashes(data))), len(data))
    _download(img, data)
    img.finish()
    assert otatwin.reset() == ("ota_1", "2.0.0")
