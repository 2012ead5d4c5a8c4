# The board's clock (issue 10 point 1): an ESP32 powers on at 2000-01-01. The app never stamps
# anything below the time floor, sets the clock to the floor at boot, syncs by SNTP once Wi-Fi is
# up (never below the floor), and a signed time command sets the clock. CPython and unix port.
import json

from aedgate.app import App
from aedgate.compat import asyncio, sleep_ms
from aedgate.timefloor import BUILD_TIME
from fwtest import Hardware, temp_flash, wipe
from test_mission import deliver
from test_token import KEY, NOW, claims, make

Y2000 = 946684800


def _app(t, cfg=None):
    f = temp_flash()
    f.write("config.json", json.dumps(cfg or {"device_id": "cab-0001", "keys": [{"kid": "", "key": KEY.hex()}]}))
    hw = Hardware()
    hw.clock.t = t
    return App(hw, f), hw, f


def test_a_board_powered_on_in_2000_stamps_nothing_below_the_floor():
    app, hw, f = _app(Y2000 + 3)
    assert hw.clock.t == BUILD_TIME  # set at boot: certificates, expiry days, ts all need it
    boot = app.outbox.get(app.outbox.pending()[0])
    assert boot["type"] == "boot" and boot["ts"] >= BUILD_TIME
    hw.clock.t = Y2000 + 10  # a clock that fell back (a bad RTC): still never below the floor
    app.emit({"type": "door_opened"})
    assert app.outbox.get(app.outbox.pending()[-1])["ts"] == BUILD_TIME
    assert json.loads(app.state_payload())["ts"] == BUILD_TIME
    assert json.loads(app._status(True))["boot_ts"] >= BUILD_TIME
    wipe(f)


def test_sntp_after_wifi_never_below_the_floor():
    app, hw, f = _app(Y2000 + 3)
    hw.clock.sntp_t = NOW
    app._sntp()
    assert hw.clock.asked == [] and hw.clock.t == BUILD_TIME  # no Wi-Fi yet: not asked
    hw.net.up = True
    app._sntp()
    assert hw.clock.asked == ["pool.ntp.org"] and hw.clock.t == NOW
    app._sntp()
    assert len(hw.clock.asked) == 1  # next one a day later
    # the boot time moved with the clock: uptime stays seconds, not the 26 years of the step
    assert 0 <= json.loads(app.state_payload())["uptime_s"] < 5
    wipe(f)
    # A spoofed answer from before the floor: the clock goes to the floor, not below.
    app, hw, f = _app(Y2000 + 3, {"device_id": "cab-0001", "ntp_host": "time.example.net"})
    hw.net.up = True
    hw.clock.sntp_t = Y2000 + 86400
    app._sntp()
    assert hw.clock.asked == ["time.example.net"] and hw.clock.t == BUILD_TIME
    wipe(f)
    # No answer: tried again later, nothing breaks.
    app, hw, f = _app(Y2000 + 3)
    hw.net.up = True
    hw.clock.sntp_t = OSError(116)
    app._sntp()
    assert hw.clock.t == BUILD_TIME and any("sntp" in ln for ln in hw.lines)
    wipe(f)


def test_a_signed_time_command_sets_the_clock():
    app, hw, f = _app(NOW + 5)
    c = claims(cti=b"\x3d" * 16, iat=NOW + 3600, exp=NOW + 3700)
    del c[-65537]
    del c[-65538]
    deliver(app, "time", make(c))
    assert app._acks[-1]["result"] == "accepted"
    assert hw.clock.t == NOW + 3600  # not only the floor
    wipe(f)


def test_tls_is_not_held_back_when_a_token_raised_the_floor_past_the_clock():
    # The clock runs a little behind dispatch's: an accepted token's iat puts the floor ahead
    # of it. The next TLS attempt must not wait for the daily SNTP: the clock joins the floor.
    app, hw, f = _app(NOW + 5, {"device_id": "cab-0001", "broker_host": "broker.example", "broker_tls": True,
                                "keys": [{"kid": "", "key": KEY.hex()}]})
    app.gate.floor.raise_to(NOW + 100)
    opened = []

    async def wifi_up():
        return None

    def record(host, port):  # the lookup before the TLS connect
        opened.append(host)
        raise OSError(-202)
    hw.net.join = wifi_up
    hw.net.getaddrinfo = record
    hw.tls_context = lambda cfg: None

    async def main():
        task = asyncio.create_task(app._session())
        await sleep_ms(50)
        task.cancel()
        await sleep_ms(10)
    asyncio.run(main())
    assert opened == ["broker.example"] and hw.clock.t == NOW + 100
    wipe(f)
