# Signed service commands (aedgate.service) over MQTT and over USB, on a real flash folder.
# Runs under CPython and the MicroPython unix port.
import json

from aedgate import service
from aedgate.app import App
from aedgate.compat import asyncio, sleep_ms
from fwtest import Hardware, temp_flash, wipe
from test_token import DEV, KEY, NOW, claims, make

CFG = {"device_id": DEV, "keys": [{"kid": "", "key": KEY.hex()}], "broker_host": "broker.example",
       "broker_user": DEV, "broker_password": "s3cret"}


def service_token(n, action, value=None, iat=None):
    c = claims(cti=bytes([n]) * 16)
    del c[-65538]
    del c[-65537]
    c[-65539] = action
    if value is not None:
        c[-65540] = value
    if iat is not None:
        c[6] = iat
        c[4] = iat + 120
    return make(c)


def _corrupt_flash():
    """A flash whose config.json rotted after it had loaded cleanly once (config.good exists)."""
    f = temp_flash()
    f.write("config.json", json.dumps(CFG))
    App(Hardware(), f)  # a clean load copies config.json to config.good
    assert f.read("config.good") is not None
    f.write("config.json", b'{"device_id": "cab-0001", "keys": [')  # torn / rotten
    return f


def test_service_on_corrupt_config_keeps_the_good_config_over_mqtt():
    f = _corrupt_flash()
    hw = Hardware()
    hw.clock.t = NOW + 5
    app = App(hw, f)
    assert app.cfg["broker_host"] == "broker.example"  # loaded from config.good

    async def main():
        app._on_message("aed/v1/%s/cmd/service" % DEV, service_token(60, "set_pads_expiry", "2030-01-31"),
                        False, False)
        await sleep_ms(5)
    asyncio.run(main())
    assert app._acks[-1]["result"] == "accepted"
    stored = json.loads(f.read("config.json"))
    assert stored["pads_expiry"] == "2030-01-31"
    for k in ("device_id", "keys", "broker_host", "broker_user", "broker_password"):
        assert stored[k] == CFG[k], k
    # and the next boot loads the whole configuration, with the new date
    app2 = App(Hardware(), f)
    assert app2.cfg["broker_password"] == "s3cret" and app2.cfg["pads_expiry"] == "2030-01-31"
    assert json.loads(f.read("config.good"))["broker_host"] == "broker.example"
    wipe(f)


def test_service_on_corrupt_config_keeps_the_good_config_over_usb():
    f = _corrupt_flash()
    # the serial path reads the clock of the host running it (unix_time), so mint for now
    from aedgate.compat import unix_time
    result = service.apply_serial(service_token(61, "set_aed_battery_expiry", "2031-06-30",
                                                iat=unix_time()), f.root)
    assert result["result"] == "accepted", result
    stored = json.loads(f.read("config.json"))
    assert stored["aed_battery_expiry"] == "2031-06-30"
    for k in ("device_id", "keys", "broker_host", "broker_password"):
        assert stored[k] == CFG[k], k
    wipe(f)
