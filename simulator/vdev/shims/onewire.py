# `onewire` for the virtual device: the 1-Wire bus with at most one DS18B20 on it, as
# micropython-lib's driver (micropython/drivers/bus/onewire/onewire.py) sees it:
# - reset(required=True) raises OneWireError when no device answers the reset pulse;
# - scan() lists the ROM codes present (none while the world's temp_c is null: the sensor is
#   unplugged or its wire is cut);
# - a sensor that appears (power-up, re-plugged, swapped: the world's temp_rom) starts with its
#   scratchpad at the DS18B20's power-on value, +85.0 °C (DS18B20 datasheet, "the power-on reset
#   value of the temperature register is +85°C"), and the twin loses its first conversion, as a
#   sensor on parasitic power or a marginal supply does, so the first read shows 85.0.
import time

import _vdevrt

_ROM = "28aa1b420500009c"
_CONVERSION_MS = 750  # 12-bit resolution (datasheet: tCONV max 750 ms)
_present = None       # the _Sensor on the bus, or None


class OneWireError(Exception):
    pass


class _Sensor:
    def __init__(self, rom):
        self.rom = rom
        self.reg = 85.0         # the temperature register's power-on value
        self.conversions = 0
        self.started = None     # ticks of the conversion in progress
        self.target = None

    def convert(self, temp_c):
        self.conversions += 1
        if self.conversions == 1:
            return  # the first conversion after power-up is lost: the register keeps 85.0
        self.started = time.ticks_ms()
        self.target = temp_c

    def read(self):
        # Until a conversion has had its time the register keeps its previous value.
        if self.started is not None and time.ticks_diff(time.ticks_ms(), self.started) >= _CONVERSION_MS:
            self.reg = round(self.target * 16) / 16  # 1/16 °C steps at 12 bits
            self.started = None
        return self.reg


def sensor():
    """The DS18B20 on the bus now (a new one after it was absent or swapped), or None."""
    global _present
    _vdevrt.drain()
    if _vdevrt.state.get("temp_c") is None:
        _present = None
        return None
    rom = bytes.fromhex(_vdevrt.state.get("temp_rom") or _ROM)
    if _present is None or _present.rom != rom:
        _present = _Sensor(rom)
    return _present


class OneWire:
    SEARCH_ROM = 0xF0
    MATCH_ROM = 0x55
    SKIP_ROM = 0xCC

    def __init__(self, pin):
        self.pin = pin

    def reset(self, required=False):
        ok = sensor() is not None
        if required and not ok:
            raise OneWireError
        return ok

    def scan(self):
        s = sensor()
        return [] if s is None else [bytearray(s.rom)]

    def crc8(self, data):
        crc = 0
        for b in data:
            for _ in range(8):
                mix = (crc ^ b) & 1
                crc >>= 1
                if mix:
                    crc ^= 0x8C
                b >>= 1
        return crc
