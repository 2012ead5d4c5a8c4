# `time` for the virtual device, as on the ESP32 (docs/twin.md):
# - the epoch is 2000-01-01 (py/mpconfig.h MICROPY_EPOCH_IS_2000 default; ports/esp32/modtime.c),
#   so time.time() counts from 2000 and gmtime(0)[0] == 2000; localtime is gmtime (no TZ);
# - the clock is ESP-IDF's system time: 2000-01-01 00:00:00 at power-on, kept across soft and
#   software resets, set through machine.RTC().datetime(), and it drifts. The harness keeps the
#   clock between interpreters and hands it over in $VDEV_CLOCK: "host_s,device_s,drift_ppm"
#   (the device read device_s, seconds since 2000, when the host's clock read host_s);
# - sleeping runs scheduled callbacks (Timer, Pin.irq), as the ESP32's sleep does.
# Everything else is the unix port's own time module (ticks_* for asyncio included).
import os

import utime as _t
from utime import *  # noqa: F401,F403  ticks_ms, ticks_diff, ticks_add, ticks_us, ticks_cpu, sleep_us

_EPOCH_2000 = 946684800
_anchor = [0.0, 0.0, 0.0]  # host seconds, device seconds, drift ppm


def _load():
    text = os.getenv("VDEV_CLOCK")
    if text:
        parts = text.split(",")
        _anchor[:] = [float(parts[0]), float(parts[1]), float(parts[2])]
    else:  # not under the harness: a board just powered on
        _anchor[:] = [_t.time_ns() / 1e9, 0.0, 0.0]


def _host():
    return _t.time_ns() / 1e9


def _now():
    """Seconds since 2000-01-01 on the device's clock (float)."""
    h, d, ppm = _anchor
    el = _host() - h
    return d + el + el * ppm / 1e6


def _set(device_s):
    """machine.RTC().datetime(...) sets the clock here (and tells the harness)."""
    _anchor[0] = _host()
    _anchor[1] = float(device_s)
    return _anchor[0], _anchor[1]


def time():
    return int(_now())


def time_ns():
    return int(_now() * 1000000) * 1000


def gmtime(secs=None):
    if secs is None:
        secs = int(_now())
    return _t.gmtime(int(secs) + _EPOCH_2000)


localtime = gmtime


def _days(y, m, d):
    # days since 2000-01-01 (shared/timeutils/timeutils.c timeutils_seconds_since_2000 semantics)
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468 - 10957


def mktime(tm):
    y, mo, d, h, mi, s = tm[0], tm[1], tm[2], tm[3], tm[4], tm[5]
    # timeutils_mktime normalises out-of-range months the same way
    y += (mo - 1) // 12
    mo = (mo - 1) % 12 + 1
    return _days(y, mo, d) * 86400 + h * 3600 + mi * 60 + s


def sleep_ms(ms):
    # In short steps: bytecode runs between them, so scheduled callbacks do too (the ESP32's
    # mp_hal_delay_ms runs MICROPY_EVENT_POLL_HOOK while it waits).
    end = _t.ticks_add(_t.ticks_ms(), int(ms))
    while True:
        left = _t.ticks_diff(end, _t.ticks_ms())
        if left <= 0:
            return
        _t.sleep_ms(left if left < 20 else 20)


def sleep(s):
    sleep_ms(int(s * 1000))


_load()
