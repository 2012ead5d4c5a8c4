import json

from aedgate import config
from fwtest import temp_flash, wipe


def test_defaults_when_missing():
    f = temp_flash()
    cfg, errors = config.load(f, "aed-00ff")
    assert cfg["device_id"] == "aed-00ff"
    assert cfg["heartbeat_s"] == 900
    assert errors == [("config", "missing")]
    wipe(f)


def test_bad_values_fall_back_one_by_one():
    cfg, errors = config.validate({"device_id": "cab+1", "heartbeat_s": 5, "siren_s": "60",
                                   "broker_port": 1884, "pads_expiry": "2027-02-30",
                                   "temp_min_c": 2.5, "colour": "red"})
    reasons = dict(errors)
    assert reasons["device_id"] == "bad_value"
    assert reasons["heartbeat_s"] == "out_of_range"
    assert reasons["siren_s"] == "bad_type"
    assert reasons["pads_expiry"] == "bad_value"
    assert reasons["colour"] == "unknown_key"
    assert cfg["heartbeat_s"] == 900 and cfg["siren_s"] == 60 and cfg["pads_expiry"] is None
    assert cfg["broker_port"] == 1884 and cfg["temp_min_c"] == 2.5  # good values kept


def test_bool_is_not_an_int():
    cfg, errors = config.validate({"heartbeat_s": True, "broker_tls": 1})
    assert dict(errors) == {"heartbeat_s": "bad_type", "broker_tls": "bad_type"}


def test_contradicting_thresholds_reset_together():
    cfg, errors = config.validate({"battery_low_mv": 11000, "battery_critical_mv": 11500})
    assert ("battery_low_mv", "out_of_range") in errors
    assert cfg["battery_low_mv"] > cfg["battery_critical_mv"]


def test_pins_and_keys_checked():
    cfg, errors = config.validate({"pins": {"door": 4, "lazer": 3}, "keys": [{"kid": "01", "key": "zz"}]})
    assert dict(errors) == {"pins.lazer": "unknown_key", "keys": "bad_value"}
    assert cfg["pins"] == {"door": 4}  # the good entries are kept
    cfg, errors = config.validate({"pins": {"door": 4, "temp": None}, "keys": [{"kid": "", "key": "ab" * 32}]})
    assert errors == []


def test_pins_the_esp32_refuses_fall_back_one_by_one_naming_the_pin():
    # machine.Pin raises for these on the board (ports/esp32/machine_pin.c; docs/twin.md): a
    # bad lock pin must never reach Pin() in boot.py. Each falls back to its default wiring.
    cfg, errors = config.validate({"pins": {
        "lock": 40, "siren": 34, "door": 36, "button": 0, "led": 24, "temp": 7, "mains": 39,
        "lock_sense": "5", "battery_adc": 35}})
    assert dict(errors) == {"pins.lock": "invalid_pin", "pins.siren": "input_only",
                            "pins.door": "input_only", "pins.button": "strapping_pin",
                            "pins.led": "invalid_pin", "pins.temp": "flash_bus",
                            "pins.lock_sense": "bad_type"}
    assert cfg["pins"] == {"mains": 39, "battery_adc": 35}
    cfg, errors = config.validate({"pins": {"lock": 5}})  # pulled up at reset: fires the lock
    assert errors == [("pins.lock", "strapping_pin")]
    cfg, errors = config.validate({"pins": {"lock": 26, "led": 2, "mains": None}})
    assert errors == [] and cfg["pins"] == {"lock": 26, "led": 2, "mains": None}
    cfg, errors = config.validate({"pins": [4]})
    assert errors == [("pins", "bad_type")] and cfg["pins"] == {}


def test_ntp_host_is_checked():
    cfg, errors = config.validate({})
    assert cfg["ntp_host"] == "pool.ntp.org"
    cfg, errors = config.validate({"ntp_host": "x" * 254})
    assert errors == [("ntp_host", "out_of_range")] and cfg["ntp_host"] == "pool.ntp.org"
    cfg, errors = config.validate({"ntp_host": ""})  # no SNTP: the clock follows signed time only
    assert errors == [] and cfg["ntp_host"] == ""


def test_corrupt_file_uses_last_good_copy():
    f = temp_flash()
    f.write("config.json", json.dumps({"device_id": "cab-0042", "heartbeat_s": 600}))
    cfg, errors = config.load(f, "x")
    assert errors == [] and cfg["heartbeat_s"] == 600
    f.write("config.json", b'{"device_id": "cab-0042", "heartb')  # torn write
    cfg, errors = config.load(f, "x")
    assert errors == [("config", "corrupt_file")]
    assert cfg["device_id"] == "cab-0042" and cfg["heartbeat_s"] == 600
    wipe(f)


def test_not_an_object():
    for raw in ([], "x", 3, None):
        cfg, errors = config.validate(raw)
        assert errors and errors[0] == ("config", "bad_type")
