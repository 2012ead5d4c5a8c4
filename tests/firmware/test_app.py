# The whole app, without a broker: real tasks, injected fake hardware, real flash folder.
import json

from aedgate.app import App
from aedgate.compat import asyncio, sleep_ms
from fwtest import Hardware, temp_flash, wipe


def _app(cfg=None):
    f = temp_flash()
    f.write("config.json", json.dumps(cfg or {"device_id": "cab-0007", "debounce_ms": 10, "siren_s": 60}))
    hw = Hardware()
    return App(hw, f), hw, f


def _types(app):
    return [app.outbox.get(s)["type"] for s in app.outbox.pending()]


def test_boot_event_and_config_errors():
    app, hw, f = _app({"device_id": "cab-0007", "heartbeat_s": "often"})
    evs = [app.outbox.get(s) for s in app.outbox.pending()]
    assert evs[0]["type"] == "boot" and evs[0]["cause"] == "power_on" and evs[0]["seq"] == 1
    assert evs[1] == {"type": "config_error", "field": "heartbeat_s", "reason": "bad_type",
                      "v": 1, "ts": hw.clock.t, "seq": 2}
    assert app.topic == "aed/v1/cab-0007/"
    wipe(f)


def test_door_interrupt_debounced_siren_and_events():
    app, hw, f = _app()

    async def main():
        task = asyncio.create_task(app.run())
        await sleep_ms(50)
        # a bouncing contact: several edges within the debounce time count once
        for level in (1, 0, 1, 0, 1):
            hw.door.drive(level)
        await sleep_ms(60)
        assert hw.siren.level == 1
        hw.door.drive(0)
        await sleep_ms(60)
        assert hw.siren.level == 0
        task.cancel()
        await sleep_ms(10)

    asyncio.run(main())
    assert _types(app) == ["boot", "door_opened", "door_alarm", "door_closed"]
    st = json.loads(app.state_payload())
    assert st["door"] == "closed" and st["battery_mv"] == 12500 and st["temp_c"] == 21.0
    assert st["mains"] is True and st["v"] == 1
    assert hw.lock.level == 0
    wipe(f)


def test_retained_command_never_reaches_a_handler():
    app, hw, f = _app()
    calls = []
    app.commands["unlock"] = lambda payload, dup: calls.append(payload)
    app._on_message("aed/v1/cab-0007/cmd/unlock", b"x", True, False)
    app._on_message("aed/v1/cab-0008/cmd/unlock", b"x", False, False)
    app._on_message("aed/v1/cab-0007/cmd/unlock", b"y", False, False)
    assert calls == [b"y"]
    wipe(f)


def test_failing_temperature_sensor_never_stops_the_app():
    app, hw, f = _app()

    class Broken:
        async def read_c(self):
            raise ValueError("CRC error")  # drivers raise more than OSError

    async def main():
        await app.sample()
        assert json.loads(app.state_payload())["temp_c"] == 21.0
        hw.temp = Broken()
        await app.sample()
        assert "temp_c" not in json.loads(app.state_payload())

    asyncio.run(main())
    wipe(f)
