# aedgate.storage.Flash: atomic replace, written in parts (issue 10: no caller needs one big
# block of heap for a whole file). CPython and MicroPython.
import os

from fwtest import temp_flash, wipe


def test_write_takes_parts_written_in_order():
    f = temp_flash()
    f.write("a", [b"head", "text", bytearray(b"-ba-"), memoryview(b"xmvx")[1:3]])
    assert f.read("a") == b"headtext-ba-mv"
    f.write("a", b"whole")
    assert f.read("a") == b"whole"
    f.write("a", "str")
    assert f.read("a") == b"str"
    wipe(f)


def test_a_part_may_be_one_buffer_reused():
    # Each part reaches the file before the next is asked for: the caller may refill one buffer.
    f = temp_flash()
    buf = bytearray(4)

    def parts():
        for i in range(5):
            for k in range(4):
                buf[k] = 48 + i
            yield buf
    f.write("a", parts())
    assert f.read("a") == b"00001111222233334444"
    wipe(f)


def test_a_write_failing_midway_keeps_the_old_file():
    f = temp_flash()
    f.write("a", b"old")

    def parts():
        yield b"new, "
        raise OSError(28, "ENOSPC")  # littlefs full after the first part
    try:
        f.write("a", parts())
        raise AssertionError("no OSError")
    except OSError as e:
        assert e.args[0] == 28
    assert f.read("a") == b"old"
    assert os.listdir(f.root) == ["a"]   # no temporary file left behind
    wipe(f)


def test_read_at_reads_a_range():
    f = temp_flash()
    f.write("a", b"0123456789")
    assert f.read_at("a", 3, 4) == b"3456"
    assert f.read_at("a", 8, 10) == b"89"
    assert f.read_at("missing", 0, 4) is None
    wipe(f)
