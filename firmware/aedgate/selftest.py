# The cabinet's hardware checklist, run on the board by a technician (`aedgate selftest`, or at
# the REPL: `import aedgate.selftest as t; t.main()`), with the cabinet app stopped. Each check
# prints one JSON line {"check", "status", "detail"}; status is pass, fail, warn (works but
# cannot be confirmed, or needs a look) or skip (not fitted). It pulses the lock: a technician
# is at the cabinet.
import json

from aedgate import config
from aedgate.compat import asyncio, sleep_ms, ticks_diff, ticks_ms, unix_time

_PASS = "pass"
_FAIL = "fail"
_WARN = "warn"
_SKIP = "skip"


def _config(flash):
    cfg, errors = config.load(flash, "")
    if errors:
        return cfg, (_FAIL, "problems: " + ", ".join("%s %s" % e for e in errors))
    if not cfg["keys"]:
        return cfg, (_FAIL, "no token key: run aedgate provision")
    return cfg, (_PASS, "device_id %s, %d key slot(s)" % (cfg["device_id"], len(cfg["keys"])))


def _provisioned(flash):
    if flash.read("provisioning") is not None:
        return _FAIL, "provisioning did not finish: run aedgate provision again"
    return _PASS, "complete"


def _door(hw, cfg):
    if hw.door is None:
        return _FAIL, "no door input configured"
    level = hw.door.value()
    return _PASS, "%s (pin level %d)" % ("open" if level == cfg["door_open_level"] else "closed", level)


async def _lock(hw, cfg):
    if hw.lock is None:
        return _FAIL, "no lock output configured"
    from aedgate import lock
    drv = lock.make(cfg, hw.lock, hw.lock_sense, getattr(hw, "lock_timer", None))
    try:
        # A fresh driver assumes a hot coil: the pulse may wait up to 3 x lock_pulse_ms.
        fault = await drv.release(40000)
        if cfg["lock_type"] == "hold":
            fault = fault or await drv.secure()
    finally:
        if cfg["lock_type"] != "hold":
            drv.off()
    if hw.lock_sense is None:
        return _WARN, "pulsed; not confirmable (no lock_sense input): check the bolt moved"
    if fault:
        return _FAIL, "lock_sense did not follow the output: jammed or miswired"
    return _PASS, "pulsed, lock_sense confirmed the bolt moved"


async def _siren(hw):
    if hw.siren is None:
        return _SKIP, "no siren output configured"
    try:
        hw.siren.value(1)
        await sleep_ms(200)
    finally:
        hw.siren.value(0)
    return _WARN, "chirped 0.2 s; not confirmable electrically: listen for it"


def _battery(hw, cfg):
    if hw.battery is None:
        return _SKIP, "no battery ADC configured"
    from aedgate.cabinet import battery_mv
    mv, over = battery_mv([hw.battery.read_uv() for _ in range(cfg["battery_samples"])], cfg)
    if over:
        return _WARN, "%d mV or more: beyond the ADC's linear range, check battery_divider" % mv
    if mv < 1000:
        return _FAIL, "%d mV: battery disconnected or ADC miswired" % mv
    if mv <= cfg["battery_critical_mv"]:
        return _FAIL, "%d mV: below critical (%d mV)" % (mv, cfg["battery_critical_mv"])
    if mv <= cfg["battery_low_mv"]:
        return _WARN, "%d mV: low (%d mV)" % (mv, cfg["battery_low_mv"])
    return _PASS, "%d mV" % mv


def _mains(hw):
    if hw.mains is None:
        return _SKIP, "no mains sense input configured"
    if hw.mains.value():
        return _PASS, "present"
    return _WARN, "absent: running on the backup battery"


async def _temp(hw, cfg):
    if hw.temp is None:
        return _SKIP, "no temperature sensor configured"
    try:
        t = await hw.temp.read_c()
        if t == 85.0:  # the DS18B20's power-on value, not a reading: ask again once
            t = await hw.temp.read_c()
    except Exception as e:  # OSError, a bus error: both mean no usable reading
        return _FAIL, "no reading: %s" % e
    if not cfg["temp_min_c"] <= t <= cfg["temp_max_c"]:
        return _WARN, "%.1f C: outside %.0f..%.0f C" % (t, cfg["temp_min_c"], cfg["temp_max_c"])
    return _PASS, "%.1f C" % t


async def _wifi(hw, cfg):
    wlan = hw.net.wlan
    if not wlan.isconnected():
        if not cfg["wifi_ssid"]:
            return _FAIL, "not connected and no wifi_ssid configured"
        # board.WiFi.join: connect() only if the driver is not already at it (a second one
        # raises "Wifi Internal Error" on the ESP32), then waits.
        try:
            await hw.net.join()
        except OSError as e:
            return _FAIL, "cannot join %r (%s)" % (cfg["wifi_ssid"], e)
    return _PASS, "%s, address %s" % (cfg["wifi_ssid"] or "connected", wlan.ifconfig()[0])


def _broker(cfg):
    if not cfg["broker_host"]:
        return _FAIL, "no broker configured"
    import socket
    s = socket.socket()
    try:
        addr = socket.getaddrinfo(cfg["broker_host"], cfg["broker_port"])[0][-1]
        s.settimeout(5)
        t0 = ticks_ms()
        s.connect(addr)
        ms = ticks_diff(ticks_ms(), t0)
    except OSError as e:
        return _FAIL, "%s:%d unreachable (%s)" % (cfg["broker_host"], cfg["broker_port"], e)
    finally:
        s.close()
    return _PASS, "%s:%d TCP connect in %d ms" % (cfg["broker_host"], cfg["broker_port"], ms)


def _timefloor(flash):
    from aedgate.compat import civil_from_days
    from aedgate.timefloor import TimeFloor
    floor = TimeFloor(flash).floor()
    now = unix_time()
    day = "%04d-%02d-%02d" % civil_from_days(floor // 86400)
    if now < floor:
        return _WARN, "floor %s; the clock is behind it (not set yet): tokens are checked against the floor" % day
    return _PASS, "floor %s, clock %d s ahead" % (day, now - floor)


def _outbox(flash):
    from aedgate.outbox import Outbox
    n = len(Outbox(flash))
    if n > 50:
        return _WARN, "%d events waiting to be sent: check the broker link" % n
    return _PASS, "%d event(s) waiting" % n


def _report(name, result):
    print(json.dumps({"check": name, "status": result[0], "detail": result[1]}))
    return result[0] == _FAIL


async def run(hw, flash):
    """Run every check, print one JSON line each; returns the number of failures."""
    cfg, cfg_result = _config(flash)
    fails = _report("config", cfg_result)
    fails += _report("provisioning", _provisioned(flash))
    fails += _report("door", _door(hw, cfg))
    fails += _report("lock", await _lock(hw, cfg))
    fails += _report("siren", await _siren(hw))
    fails += _report("battery", _battery(hw, cfg))
    fails += _report("mains", _mains(hw))
    fails += _report("temperature", await _temp(hw, cfg))
    fails += _report("wifi", await _wifi(hw, cfg))
    fails += _report("broker", _broker(cfg))
    fails += _report("time_floor", _timefloor(flash))
    fails += _report("outbox", _outbox(flash))
    return fails


def main():
    import board
    hw, flash = board.setup()
    try:
        return asyncio.run(run(hw, flash))
    finally:
        hw.all_off()
