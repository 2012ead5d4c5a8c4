# Slow sensors as the ESP32 delivers them (docs/twin.md): a noisy ADC read through a divider,
# its linear range, the DS18B20's 85.0 °C power-on value. CPython and the MicroPython unix port.
import json

from aedgate import config
from aedgate.app import App
from aedgate.cabinet import Cabinet
from fwtest import Hardware, temp_flash, wipe


def make(**over):
    cfg, errors = config.validate(over)
    assert errors == []
    events = []
    return Cabinet(cfg, events.append, "test"), events


def test_temp_power_on_value_discarded_once():
    cab, ev = make()
    cab.temp_reading(85.0)  # first reading after boot: the sensor's power-on register
    assert cab.temp_c is None and ev == [] and not cab.alarms
    cab.temp_reading(21.5)
    assert cab.temp_c == 21.5
    cab.temp_reading(85.0)  # not fresh: a real 85 °C
    assert "temp_out_of_range" in cab.alarms


def test_temp_power_on_value_after_a_failure_discarded():
    cab, ev = make()
    cab.temp_reading(20.0)
    cab.temp_failed()  # the sensor went away; it powers up again when it comes back
    cab.temp_reading(85.0)
    assert cab.temp_c is None and not cab.alarms
    cab.temp_reading(85.0)  # twice in a row: believed
    assert cab.temp_c == 85.0 and "temp_out_of_range" in cab.alarms


def test_battery_state_only_for_moves_beyond_the_report_threshold():
    cab, ev = make(battery_report_mv=100)
    cab.battery_reading(12600)
    cab.report_state(0, 0, 0)
    for mv in (12650, 12540, 12699, 12501):
        cab.battery_reading(mv)
        assert not cab.changed, mv
    cab.battery_reading(12700)
    assert cab.changed


def test_battery_over_range_flag_in_state():
    cab, ev = make()
    cab.battery_reading(14700, True)
    st = cab.report_state(0, 0, 0)
    assert st["battery_over_range"] is True and st["battery_mv"] == 14700
    cab.battery_reading(14600, False)
    assert cab.changed and "battery_over_range" not in cab.report_state(0, 0, 0)


class NoisyADC:
    """Conversions around 2.0 V with noise and a spike, in millivolt steps as read_uv gives."""

    def __init__(self, values_mv):
        self.values = values_mv
        self.i = 0

    def read_uv(self):
        v = self.values[self.i % len(self.values)]
        self.i += 1
        return v * 1000


def _app(adc, **cfg):
    f = temp_flash()
    f.write("config.json", json.dumps(dict({"device_id": "cab-adc"}, **cfg)))
    hw = Hardware()
    hw.battery = adc
    return App(hw, f), f


def test_battery_reading_averages_and_drops_spikes():
    # 16 conversions: 2000 mV +- 12 noise, two spikes that a trimmed mean ignores
    mvs = [1988, 2012, 2003, 1995, 2990, 2007, 1991, 2000, 2009, 1997, 150, 2004, 1993, 2006, 2001, 1999]
    app, f = _app(NoisyADC(mvs), battery_samples=16, battery_divider=6.0)
    mv, over = app.read_battery_mv()
    assert app.hw.battery.i == 16 and not over
    assert abs(mv - 12000) <= 12, mv
    wipe(f)


def test_battery_reading_beyond_linear_range_is_clamped_and_flagged():
    app, f = _app(NoisyADC([2700]), battery_divider=5.0)  # 13.5 V through a 5:1 divider
    mv, over = app.read_battery_mv()
    assert over and mv == 12250
    wipe(f)
