# The virtual device's OTA partitions: the ESP32_GENERIC-OTA partition table (two app slots and
# the otadata record), the otadata format and the bootloader's choice at a chip reset with app
# rollback enabled. Runs in the interpreter (shims/esp32.py: Partition) and in the harness
# (simulator/vdev/device.py: the bootloader at each chip reset). Sources, v1.28.0 unless said
# (docs/twin.md "OTA partitions"):
# - Table: ports/esp32/partitions-4MiB-ota.csv (boards/ESP32_GENERIC/sdkconfig.ota); "vfs" is
#   added at run time after the last partition, data/fat (main.c). Here each app partition is a
#   host file (ota_0.img, ota_1.img) in the flash directory; the vfs is the vdev's littlefs image.
# - otadata: two 4 KiB sectors, each starting with an esp_ota_select_entry_t (ESP-IDF
#   esp_flash_partitions.h): ota_seq u32, seq_label[20], ota_state u32, crc u32 (little-endian;
#   crc = esp_rom_crc32_le(UINT32_MAX, &ota_seq, 4)). The entry with the highest valid seq wins
#   and boots app ota_[(seq - 1) % 2]; a blank otadata boots ota_0.
# - Rollback (CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE=y, boards/sdkconfig.base): set_boot() writes
#   the new entry in state NEW; the bootloader turns NEW into PENDING_VERIFY and boots it; at the
#   next chip reset a PENDING_VERIFY entry becomes ABORTED and the previous entry boots.
#   mark_app_valid_cancel_rollback() turns PENDING_VERIFY into VALID.
# - An image: the vdev cannot boot another MicroPython, so an image is its first byte 0xE9
#   (ESP_IMAGE_HEADER_MAGIC, which esp_image_verify checks first) and an opaque version text.
import struct
from binascii import crc32

SECTOR = 4096
APP_SIZE = 0x180000
NEW, PENDING_VERIFY, VALID, INVALID, ABORTED, UNDEFINED = 0, 1, 2, 3, 4, 0xFFFFFFFF
# label: (type, subtype, address, size); type 0 = app, 1 = data
TABLE = {"nvs": (1, 0x02, 0x9000, 0x4000), "otadata": (1, 0x00, 0xD000, 0x2000),
         "phy_init": (1, 0x01, 0xF000, 0x1000), "ota_0": (0, 0x10, 0x10000, APP_SIZE),
         "ota_1": (0, 0x11, 0x190000, APP_SIZE), "vfs": (1, 0x81, 0x310000, 0xF0000)}
APPS = ("ota_0", "ota_1")
OTADATA = "otadata.img"
MAGIC = 0xE9
FACTORY = "MicroPython v1.28.0 ESP32_GENERIC-OTA"  # what esptool wrote to ota_0


def image(version):
    """The bytes of an app image that says `version` (its first block)."""
    return bytes([MAGIC]) + version.encode() + b"\x00"


def image_version(head):
    """The version text of an image's first bytes, or None when it is no image."""
    if not head or head[0] != MAGIC:
        return None
    end = head.find(b"\x00")
    return bytes(head[1:end if end > 0 else 64]).decode()


def _crc(seq):
    return crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


def entry(seq, state):
    return struct.pack("<I", seq) + b"\xff" * 20 + struct.pack("<II", state, _crc(seq))


def parse(raw):
    """(seq, state) of an entry, or None when it is blank or its CRC fails."""
    seq, = struct.unpack("<I", raw[:4])
    state, crc = struct.unpack("<II", raw[24:32])
    if seq == 0xFFFFFFFF or crc != _crc(seq):
        return None
    return seq, state


def _usable(e):
    return e is not None and e[1] not in (INVALID, ABORTED)


def active(entries):
    """Index (0/1) of the otadata entry that selects the boot app, or None (blank)."""
    best = None
    for i in (0, 1):
        if _usable(entries[i]) and (best is None or entries[i][0] > entries[best][0]):
            best = i
    return best


def app_of(e):
    return APPS[(e[0] - 1) % 2]


def make(folder):
    """A new chip as esptool leaves it: ota_0 holds the factory image, ota_1 and otadata erased."""
    for name in APPS:
        with open(folder + "/" + name + ".img", "wb") as f:
            first = image(FACTORY) if name == "ota_0" else b""
            f.write(first + b"\xff" * (SECTOR - len(first)))
            for _ in range(APP_SIZE // SECTOR - 1):
                f.write(b"\xff" * SECTOR)
    with open(folder + "/" + OTADATA, "wb") as f:
        f.write(b"\xff" * (2 * SECTOR))


def read_entries(f):
    out = []
    for i in (0, 1):
        f.seek(i * SECTOR)
        out.append(parse(f.read(32)))
    return out


def write_entry(f, i, seq, state):
    """Erase the sector, then program the entry (a cut in between leaves it blank)."""
    f.seek(i * SECTOR)
    f.write(b"\xff" * SECTOR)
    f.flush()
    f.seek(i * SECTOR)
    f.write(entry(seq, state))
    f.flush()


def bootloader(folder):
    """A chip reset: the app the bootloader starts, after the rollback step. Returns its label."""
    with open(folder + "/" + OTADATA, "r+b") as f:
        return choose(f)


def choose(f):
    """The bootloader's step on an open otadata (a file, or an in-memory one in unit tests)."""
    while True:
        entries = read_entries(f)
        i = active(entries)
        if i is None:
            return "ota_0"
        seq, state = entries[i]
        if state == NEW:
            write_entry(f, i, seq, PENDING_VERIFY)
        elif state == PENDING_VERIFY:  # never confirmed before this reset: roll back
            write_entry(f, i, seq, ABORTED)
            continue
        return app_of(entries[i])
