# Issue 11.6: one genuine token with a future iat (a dispatch clock spoofed a year ahead) used to
# raise the time floor that far and make every later token `expired`, across reboots. Now: a
# bound on the iat while the clock is believable, and a signed reset that names the floor.
# Runs under CPython and the MicroPython unix port.
import json

from aedgate.app import App
from aedgate.compat import asyncio, sleep_ms
from fwtest import Hardware, temp_flash, wipe
from test_token import DEV, KEY, NOW, claims, make

YEAR = 365 * 86400
CFG = {"device_id": DEV, "keys": [{"kid": "", "key": KEY.hex()}], "lock_pulse_ms": 100}


def _app(flash=None, clock=NOW + 5):
    f = flash or temp_flash()
    if flash is None:
        f.write("config.json", json.dumps(CFG))
    hw = Hardware()
    hw.clock.t = clock
    return App(hw, f), f


def deliver(app, cmd, raw):
    async def main():
        app._on_message("aed/v1/%s/cmd/%s" % (DEV, cmd), raw, False, False)
        await sleep_ms(5)
        if app.window.task:
            app.window.task.cancel()
            await sleep_ms(5)
    asyncio.run(main())
    return app._acks[-1]


def unlock(n, iat):
    return make(claims(cti=bytes([n]) * 16, iat=iat, exp=iat + 120))


def time_cmd(n, iat, floor=None):
    c = claims(cti=bytes([n]) * 16, iat=iat, exp=iat + 120)
    del c[-65537]
    del c[-65538]
    if floor is not None:
        c[-65541] = floor
    return make(c)


def test_future_iat_is_refused_against_a_known_clock_and_leaves_the_floor():
    app, f = _app()
    floor = app.gate.floor.floor()
    ack = deliver(app, "unlock", unlock(1, NOW + YEAR))
    assert ack["result"] == "rejected" and ack["reason"] == "not_yet_valid"
    assert app.gate.floor.floor() == floor  # not moved by the year-ahead iat
    assert deliver(app, "unlock", unlock(2, NOW))["result"] == "accepted"
    # within the bound (default 1 h) a dispatch clock a little ahead is fine
    assert deliver(app, "unlock", unlock(3, NOW + 3000))["result"] == "accepted"
    app2, _ = _app(flash=f)  # and after a reboot
    assert deliver(app2, "unlock", unlock(4, NOW + 3010))["result"] == "accepted"
    wipe(f)


def test_signed_reset_lowers_a_floor_raised_by_a_future_iat():
    app, f = _app(clock=946684800 + 30)  # the clock was lost: no bound, the token opens
    assert deliver(app, "unlock", unlock(10, NOW + YEAR))["result"] == "accepted"
    high = app.gate.floor.floor()
    assert high == NOW + YEAR
    app, _ = _app(flash=f, clock=946684800 + 60)  # rebooted: still stuck
    ack = deliver(app, "unlock", unlock(11, NOW))
    assert ack["reason"] == "expired" and ack["floor"] == high  # dispatch learns the floor
    # A reset naming another floor is refused, and its cti stays unspent.
    ack = deliver(app, "time", time_cmd(12, NOW + 10, floor=high - 1))
    assert ack["result"] == "rejected" and ack["reason"] == "bad_claims"
    assert app.gate.floor.floor() == high
    reset = time_cmd(13, NOW + 10, floor=high)
    ack = deliver(app, "time", reset)
    assert ack["result"] == "accepted" and ack["floor"] == NOW + 10
    assert app.gate.floor.floor() == NOW + 10
    assert deliver(app, "unlock", unlock(14, NOW + 20))["result"] == "accepted"
    # The reset cannot be replayed, and a token minted before it counts as used.
    assert deliver(app, "time", reset)["result"] == "rejected"
    assert deliver(app, "unlock", unlock(15, NOW + 5))["reason"] == "replay"
    app2, _ = _app(flash=f, clock=946684800 + 90)  # the lower floor is on flash
    assert app2.gate.floor.floor() == NOW + 20
    assert deliver(app2, "unlock", unlock(16, NOW + 30))["result"] == "accepted"
    wipe(f)


def test_a_reset_cannot_raise_the_floor_nor_ride_on_other_commands():
    app, f = _app()
    assert deliver(app, "unlock", unlock(19, NOW))["result"] == "accepted"
    floor = app.gate.floor.floor()
    assert floor == NOW
    ack = deliver(app, "time", time_cmd(20, floor + 100, floor=floor))
    assert ack["reason"] == "bad_claims"  # a reset only lowers; a plain cmd/time raises
    c = claims(cti=b"\x15" * 16)
    c[-65541] = floor
    assert deliver(app, "unlock", make(c))["reason"] == "bad_claims"
    assert app.gate.floor.floor() == floor
    wipe(f)


def test_power_on_without_sntp_still_opens_for_a_token_months_after_the_floor():
    # An ESP32 powers on at 2000-01-01; the app moves its clock up to the floor, but that clock
    # is not believed: a genuine token minted months later (no SNTP in reach) must still open.
    from aedgate.timefloor import BUILD_TIME
    app, f = _app(clock=946684800 + 3)
    assert app.clock.time() == BUILD_TIME and not app.clock_known
    later = max(NOW, BUILD_TIME) + 200 * 86400
    assert deliver(app, "unlock", unlock(30, later))["result"] == "accepted"
    wipe(f)
