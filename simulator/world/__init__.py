"""The cabinet's simulated world: the hardware the firmware sees (pins, clock, sensors, watchdog), its Wi-Fi link and flash, faults and scenario files."""
