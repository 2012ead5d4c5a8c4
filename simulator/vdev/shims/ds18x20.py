# `ds18x20` for the virtual device: micropython-lib's driver API
# (micropython/drivers/sensor/ds18x20/ds18x20.py) over the simulated bus in onewire.py.
# As with the real driver: convert_temp() and read_temp() raise OneWireError when no device
# answers the reset; reading a ROM that is not on the bus (a swapped sensor) reads all ones and
# raises Exception("CRC error"); the value is the sensor's temperature register (85.0 after
# power-up until a conversion completes, 750 ms after convert_temp()).
import _vdevrt
import onewire


class DS18X20:
    def __init__(self, ow):
        self.ow = ow

    def scan(self):
        return [rom for rom in self.ow.scan() if rom[0] in (0x10, 0x22, 0x28)]

    def convert_temp(self):
        self.ow.reset(True)
        onewire.sensor().convert(_vdevrt.state.get("temp_c"))

    def read_temp(self, rom):
        self.ow.reset(True)
        s = onewire.sensor()
        if s is None or bytes(rom) != s.rom:
            raise Exception("CRC error")  # nobody drove the bus: nine 0xFF bytes
        return s.read()
