# `esp32` for the virtual device: the few calls a health check may make.
def mcu_temperature():
    return 45


def raw_temperature():
    return 113
