# `ds18x20` for the virtual device: one DS18B20 whose reading is the world's temperature; no
# sensor on the bus while the world says temp_c is null.
import _vdevrt

_ROM = b"\x28\xaa\x1b\x42\x05\x00\x00\x9c"


def _roms():
    _vdevrt.drain()
    return [] if _vdevrt.state.get("temp_c") is None else [bytearray(_ROM)]


class DS18X20:
    def __init__(self, onewire):
        self.ow = onewire

    def scan(self):
        return _roms()

    def convert_temp(self):
        pass

    def read_temp(self, rom):
        _vdevrt.drain()
        t = _vdevrt.state.get("temp_c")
        if t is None:
            from onewire import OneWireError
            raise OneWireError("no answer")
        return t
