"""The cabinet's slow sensors under the CPython twin (SimADC, SimTemp: ESP32 ADC noise and range,
the DS18B20's 85.0 °C power-on value, a sensor lost and found) with the real App (issue 10,
point 10). The same behaviours under the virtual device's shims: tests/integration/test_twin_net.py."""
import asyncio
import json

from aedgate.app import App
from aedgate.storage import Flash
from simulator.world.hardware import CabinetWorld, SimClock, SimHardware
from simulator.world.net import SimNet


def cabinet(tmp_path, cfg=None):
    flash = Flash(str(tmp_path / "flash"))
    flash.write("config.json", json.dumps(dict({"device_id": "cab-sense"}, **(cfg or {}))))
    world = CabinetWorld("cab-sense", SimClock(speed=1000.0), SimNet())
    return App(SimHardware(world, "power_on"), flash), world


def events(app, kind):
    return [s for s in app.outbox.pending() if app.outbox.get(s)["type"] == kind]


def test_quiet_cabinet_with_adc_noise_sends_few_states(tmp_path):
    """An hour of samples (sample_s 60) of a battery that does not move: before the fix one
    read_uv() x 5 carried the ADC's noise past the 50 mV "changed" threshold most samples."""
    app, world = cabinet(tmp_path)

    async def hour():
        states = 0
        app.cabinet.report_state(0, 0, 0)
        for _ in range(60):
            await app.sample()
            if app.cabinet.changed:
                states += 1
                app.cabinet.report_state(0, 0, 0)  # what the publisher does with a state
        return states

    states = asyncio.run(hour())
    assert states <= 3, "%d state messages in an hour of a quiet cabinet" % states


def test_battery_beyond_the_adc_linear_range_is_flagged(tmp_path):
    app, world = cabinet(tmp_path)
    # a charger fault, far above what the divider maps into the linear range (on battery, so
    # the world's charger model does not cap it)
    world.apply({"mains": False, "battery_mv": 16500})
    asyncio.run(app.sample())
    st = app.cabinet.report_state(0, 0, 0)
    assert st.get("battery_over_range") is True, st
    world.apply({"battery_mv": 12700})
    asyncio.run(app.sample())
    assert "battery_over_range" not in app.cabinet.report_state(0, 0, 0)


def test_ds18b20_power_on_value_raises_no_alarm(tmp_path):
    app, world = cabinet(tmp_path)
    asyncio.run(app.sample())  # the sensor just powered up: it reads 85.0
    assert not events(app, "temp_out_of_range") and "temp_out_of_range" not in app.cabinet.alarms
    asyncio.run(app.sample())
    assert abs(app.cabinet.temp_c - 21.0) <= 0.2
    world.apply({"temp_c": 85})  # a real 85 °C later is an alarm
    asyncio.run(app.sample())
    assert events(app, "temp_out_of_range")


def test_lost_sensor_found_again(tmp_path):
    app, world = cabinet(tmp_path)
    asyncio.run(app.sample())
    asyncio.run(app.sample())
    assert app.cabinet.temp_c is not None
    world.apply({"sensor": "lost"})
    asyncio.run(app.sample())
    assert app.cabinet.temp_c is None
    world.apply({"sensor": "ok"})
    for _ in range(2):  # power-up again: 85.0 first, discarded
        asyncio.run(app.sample())
    assert abs(app.cabinet.temp_c - 21.0) <= 0.2
    assert not events(app, "temp_out_of_range")
