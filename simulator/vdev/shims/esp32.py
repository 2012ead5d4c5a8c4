# `esp32` for the virtual device: the few calls a health check may make, and Partition over the
# ESP32_GENERIC-OTA table (shims/_vdevota.py; docs/twin.md "OTA partitions"). Imported before
# the host filesystem is unmounted (_vdevrt.boot), so the app partitions' files open here.
import os

import _vdevota as O


def mcu_temperature():
    return 45


def raw_temperature():
    return 113


_files = {}
if os.getenv("VDEV_FLASH"):  # in the vdev: the harness made the files next to the vfs image
    _folder = os.getenv("VDEV_FLASH").rsplit("/", 1)[0] or "."
    for _n in O.APPS + ("otadata",):
        _files[_n] = open(_folder + "/" + (O.OTADATA if _n == "otadata" else _n + ".img"), "r+b")
_RUNNING = os.getenv("VDEV_OTA_RUNNING") or "ota_0"  # chosen by the harness's bootloader


def _err(code, name):
    # mphalport.c check_esp_err(): OSError(-code, esp_err_to_name())
    return OSError(-code, name)


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=4096):
        if isinstance(id, int):
            if id == Partition.BOOT:
                label = _boot_label()
            elif id == Partition.RUNNING:
                label = _RUNNING
            else:
                raise ValueError
        else:
            label = None
            for want in (0, 1):  # an app partition of that name first, then data
                if id in O.TABLE and O.TABLE[id][0] == want:
                    label = id
                    break
            if label is None:
                raise OSError(2)  # MP_ENOENT
        self._label = label
        self._bs = block_size

    def __repr__(self):
        t = O.TABLE[self._label]
        return "<Partition type=%u, subtype=%u, address=%u, size=%u, label=%s, encrypted=0>" % (
            t[0], t[1], t[2], self._size(), self._label)

    @staticmethod
    def find(type=0, subtype=0xFF, label=None, block_size=4096):
        out = []
        for name in sorted(O.TABLE, key=lambda n: O.TABLE[n][2]):
            t = O.TABLE[name]
            if t[0] == type and subtype in (0xFF, t[1]) and label in (None, name):
                out.append(Partition(name, block_size))
        return out

    def info(self):
        t = O.TABLE[self._label]
        return (t[0], t[1], t[2], self._size(), self._label, False)

    def _size(self):
        dev = self._dev()  # the vfs is as big as the vdev's --flash-size (960 KiB on this board)
        return dev.block_count * dev.block_size if dev else O.TABLE[self._label][3]

    # -- block device -----------------------------------------------------------------------
    def _dev(self):
        if self._label == "vfs":
            import _vdevrt
            return _vdevrt.flash
        return None

    def _file(self):
        f = _files.get(self._label)
        if f is None:
            raise _err(0x102, "ESP_ERR_INVALID_ARG")  # nvs/phy_init are not modelled
        return f

    def _range(self, off, n):
        # esp_partition_read/write/erase_range (ESP-IDF partition_target.c): a start past the
        # end is INVALID_ARG, a range running past it INVALID_SIZE
        if off < 0 or off > self._size():
            raise _err(0x102, "ESP_ERR_INVALID_ARG")
        if off + n > self._size():
            raise _err(0x104, "ESP_ERR_INVALID_SIZE")

    def _guard(self):
        # ESP-IDF esp_flash_api.c CHECK_WRITE_ADDRESS: a program or erase landing in the running
        # app's partition calls abort() (CONFIG_SPI_FLASH_DANGEROUS_WRITE_ABORTS, the default;
        # MicroPython's sdkconfig.base keeps it): a panic, and the chip resets.
        if self._label == _RUNNING:
            print("vdev: write to the running app partition %s: abort()" % self._label)
            import _vdevrt
            _vdevrt.halt("hard")

    def readblocks(self, block, buf, off=0):
        dev = self._dev()
        if dev:
            return dev.readblocks(block * self._bs // 4096, buf, block * self._bs % 4096 + off)
        pos = block * self._bs + off
        self._range(pos, len(buf))
        f = self._file()
        f.seek(pos)
        buf[:] = f.read(len(buf))

    def writeblocks(self, block, buf, off=None):
        dev = self._dev()
        if dev:
            if off is None and self._bs == 4096:
                return dev.writeblocks(block, buf)
            return dev.writeblocks(block * self._bs // 4096, buf, block * self._bs % 4096 + (off or 0))
        pos = block * self._bs + (off or 0)
        self._range(pos, len(buf))
        f = self._file()
        self._guard()
        if off is None and self._bs >= O.SECTOR and len(buf) % O.SECTOR:
            # esp32_partition_writeblocks: esp_partition_erase_range(offset, len(buf)), which
            # takes whole 4 KiB sectors only (partition_target.c): nothing is erased or written
            raise _err(0x104, "ESP_ERR_INVALID_SIZE")
        if off is None:  # the simple form erases the 4 KiB sectors it covers first, keeping the rest
            first, end = pos // O.SECTOR * O.SECTOR, (pos + len(buf) + O.SECTOR - 1) // O.SECTOR * O.SECTOR
            f.seek(first)
            old = f.read(end - first)
            keep = bytearray(b"\xff" * (end - first))
            if self._bs < O.SECTOR:  # esp32_partition.c: small blocks keep their sector's other bytes
                keep[:pos - first] = old[:pos - first]
                tail = pos + len(buf) - first
                keep[tail:] = old[tail:]
            f.seek(first)
            f.write(keep)
        f.seek(pos)
        old = f.read(len(buf))
        f.seek(pos)
        f.write(bytes(a & b for a, b in zip(old, bytes(buf))))  # NOR: programming only clears bits
        f.flush()

    def ioctl(self, op, arg):
        if op in (1, 2, 3):
            return 0
        if op == 4:
            return self._size() // self._bs
        if op == 5:
            return self._bs
        if op == 6:
            if self._bs != 4096:
                return -22  # -MP_EINVAL
            dev = self._dev()
            if dev:
                return dev.ioctl(6, arg)
            self._range(arg * 4096, 4096)
            f = self._file()
            self._guard()
            f.seek(arg * 4096)
            f.write(b"\xff" * 4096)
            f.flush()
            return 0
        return None

    # -- OTA ----------------------------------------------------------------------------------
    def set_boot(self):
        if self._label not in O.APPS or not _files:
            raise _err(0x102, "ESP_ERR_INVALID_ARG")
        head = bytearray(64)
        self.readblocks(0, head)
        if O.image_version(head) is None:
            raise _err(0x1503, "ESP_ERR_OTA_VALIDATE_FAILED")
        f = _files["otadata"]
        entries = O.read_entries(f)
        i = O.active(entries)
        seq = 0 if i is None else entries[i][0]
        want = O.APPS.index(self._label)
        seq += 1
        while (seq - 1) % 2 != want:
            seq += 1
        slot = 0 if i is None else 1 - i  # the entry not in use (esp_rewrite_ota_data)
        O.write_entry(f, slot, seq, O.NEW)

    def get_next_update(self):
        # esp_ota_get_next_update_partition(): the OTA app after this one, else the first OTA
        # app (also from a partition that is no OTA app); none in the table -> NULL -> ENOENT
        if self._label not in O.APPS:
            return Partition(O.APPS[0])
        return Partition(O.APPS[1 - O.APPS.index(self._label)])

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        # esp_ota_ops.c esp_ota_current_ota_is_workable(true): the ACTIVE otadata entry becomes
        # VALID, whichever app it names (after set_boot() that is the new, untried one); no
        # active entry (otadata blank, as esptool leaves it) -> ESP_FAIL -> OSError(1, "ESP_FAIL")
        f = _files.get("otadata")
        if f is None:
            return
        entries = O.read_entries(f)
        i = O.active(entries)
        if i is None:
            raise _err(-1, "ESP_FAIL")
        if entries[i][1] != O.VALID:
            O.write_entry(f, i, entries[i][0], O.VALID)


def _boot_label():
    if not _files:
        return "ota_0"
    entries = O.read_entries(_files["otadata"])
    i = O.active(entries)
    return "ota_0" if i is None else O.app_of(entries[i])
