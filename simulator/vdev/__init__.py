"""The virtual serial device (`aedsim vdev`): the MicroPython unix port behind a pty, with ESP32 shims for machine, network, esp32 and the flash."""
