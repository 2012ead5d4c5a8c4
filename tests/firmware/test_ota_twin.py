# The twin's esp32.Partition is as strict as the chip where an image update depends on it
# (docs/twin.md "OTA partitions"; ESP-IDF partition_target.c, esp_ota_ops.c).
import otatwin


def _raises(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return e.args
    raise AssertionError("no OSError")


def test_the_erasing_writeblocks_takes_whole_sectors_only():
    esp32 = otatwin.new_chip()
    n = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    n.writeblocks(0, b"\x00" * 4096)
    # esp_partition_erase_range(offset, 1000): ESP_ERR_INVALID_SIZE, and nothing changes
    assert _raises(n.writeblocks, 0, b"\xe9" * 1000) == (-0x104, "ESP_ERR_INVALID_SIZE")
    assert otatwin.content("ota_1", 8) == b"\x00" * 8
    # the 3-argument form programs any length, without erasing: bits only clear
    n.writeblocks(1, b"\x0f" * 10, 5)
    n.writeblocks(1, b"\xf1" * 10, 5)
    buf = bytearray(16)
    n.readblocks(1, buf)
    assert bytes(buf) == b"\xff" * 5 + b"\x01" * 10 + b"\xff"


def test_out_of_range_is_invalid_arg_past_the_end_and_invalid_size_across_it():
    esp32 = otatwin.new_chip()
    n = esp32.Partition("ota_1")
    blocks = n.ioctl(4, 0)
    assert _raises(n.readblocks, blocks + 1, bytearray(16)) == (-0x102, "ESP_ERR_INVALID_ARG")
    assert _raises(n.writeblocks, blocks - 1, b"\x00" * 16, 4090) == (-0x104, "ESP_ERR_INVALID_SIZE")


def test_marking_valid_after_set_boot_confirms_the_new_untried_image():
    # ESP-IDF marks the ACTIVE otadata entry, which after set_boot() names the new image: it then
    # boots without a trial. (A firmware that marks valid between set_boot and the reset loses
    # the rollback: board.Hardware.image_valid() checks for that.)
    esp32 = otatwin.new_chip()
    assert _raises(esp32.Partition.mark_app_valid_cancel_rollback) == (1, "ESP_FAIL")  # blank otadata
    n = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
    n.writeblocks(0, otatwin.O.image("2.0.0") + b"\xff" * (4096 - 7))
    n.set_boot()
    assert esp32.Partition(esp32.Partition.BOOT).info()[4] == "ota_1"
    assert esp32.Partition(esp32.Partition.RUNNING).info()[4] == "ota_0"
    esp32.Partition.mark_app_valid_cancel_rollback()
    assert otatwin.reset() == ("ota_1", "2.0.0")
    assert otatwin.reset() == ("ota_1", "2.0.0")  # no trial: it was VALID before it ever ran


def test_next_update_from_a_partition_that_is_no_ota_app_is_the_first_ota_app():
    esp32 = otatwin.new_chip()
    assert esp32.Partition("vfs").get_next_update().info()[4] == "ota_0"
    assert esp32.Partition("ota_1").get_next_update().info()[4] == "ota_0"
