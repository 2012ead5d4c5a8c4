from aedgate import config
from aedgate.cabinet import Cabinet
from aedgate.compat import parse_date

DAY = 86400


def make(**over):
    cfg, errors = config.validate(over)
    assert errors == []
    events = []
    return Cabinet(cfg, events.append, "test"), events


def types(events):
    return [e["type"] for e in events]


def test_door_opened_without_mission_is_an_alarm():
    cab, ev = make()
    assert cab.door_changed(True, 1000) is True  # siren
    assert types(ev) == ["door_opened", "door_alarm"]
    assert "door_alarm" in cab.alarms
    cab.door_changed(False, 1042)
    assert ev[-1] == {"type": "door_closed", "open_s": 42}
    assert "door_alarm" not in cab.alarms


def test_door_opened_during_mission_is_not_an_alarm():
    cab, ev = make()
    cab.mission = "M-1"
    assert cab.door_changed(True, 1000) is False
    assert ev == [{"type": "door_opened", "mission": "M-1"}]
    assert not cab.alarms


def test_repeated_reading_is_not_an_event():
    cab, ev = make()
    cab.door_changed(False, 1)
    assert ev == []


def test_door_left_open_repeats_while_open():
    cab, ev = make()
    cab.door_changed(True, 1000)
    cab.door_still_open(1300)
    cab.door_still_open(3100)
    assert [e["open_s"] for e in ev if e["type"] == "door_left_open"] == [300, 2100]
    cab.door_changed(False, 3200)
    cab.door_still_open(3300)  # a timer that fires late after closing reports nothing
    assert types(ev).count("door_left_open") == 2 and "door_left_open" not in cab.alarms


def test_battery_hysteresis_no_flapping():
    cab, ev = make()  # low 11900, critical 11400, hysteresis 200
    for mv in (12500, 11900, 11950, 11880, 12000, 12050, 11890):
        cab.battery_reading(mv)
    assert types(ev) == ["battery_low"]
    cab.battery_reading(12100)
    assert types(ev) == ["battery_low", "battery_ok"]
    cab.battery_reading(11400)  # straight from ok to critical
    assert types(ev)[-1] == "battery_critical"
    assert cab.alarms == {"battery_critical"}  # the bands exclude each other
    cab.battery_reading(11550)  # above critical, inside hysteresis: still critical
    assert cab.alarms == {"battery_critical"}
    cab.battery_reading(11600)  # back to low: the alarm changes, no event
    assert cab.alarms == {"battery_low"} and types(ev)[-1] == "battery_critical"
    cab.battery_reading(11300)
    assert types(ev)[-1] == "battery_critical" and types(ev).count("battery_critical") == 2
    cab.battery_reading(12200)
    assert types(ev)[-1] == "battery_ok" and not cab.alarms


def test_battery_pct_clamped():
    cab, ev = make()
    cab.battery_reading(13500)
    assert cab.battery_pct() == 100
    cab.battery_reading(10000)
    assert cab.battery_pct() == 0
    cab.battery_reading(11850)
    assert cab.battery_pct() == 50


def test_mains_lost_and_restored():
    cab, ev = make()
    cab.mains_changed(True)   # first reading at boot: no event
    cab.mains_changed(False)
    cab.mains_changed(True)
    assert types(ev) == ["mains_lost", "mains_restored"]


def test_mains_absent_at_boot_is_reported():
    cab, ev = make()
    cab.mains_changed(False)
    assert types(ev) == ["mains_lost"]


def test_temperature_range_with_hysteresis():
    cab, ev = make()
    for c in (20, -0.5, -3, 0.5, 50.5, 1.2):
        cab.temp_reading(c)
    assert types(ev) == ["temp_out_of_range", "temp_ok"]
    assert ev[0]["temp_c"] == -0.5


def test_expiry_thresholds_fire_once_each():
    today = parse_date("2026-11-24")
    cab, ev = make(pads_expiry="2026-12-31", expiry_warn_days=[30, 7])
    for d in range(0, 45):
        cab.check_expiry((today + d) * DAY + 3600)
    got = [(e["type"], e["days_left"]) for e in ev]
    assert got == [("pads_expiring", 30), ("pads_expiring", 7), ("pads_expired", -1)]
    assert "pads_expired" in cab.alarms and "pads_expiring" not in cab.alarms


def test_expiry_reports_survive_a_reboot():
    today = parse_date("2026-11-24")
    cab, ev = make(pads_expiry="2026-12-01")
    assert cab.check_expiry(today * DAY) is True
    saved = cab.dump_expiry()
    cab2, ev2 = make(pads_expiry="2026-12-01")
    cab2.load_expiry(saved)
    assert "pads_expiring" in cab2.alarms
    assert cab2.check_expiry(today * DAY) is False and ev2 == []
    cab3, ev3 = make(pads_expiry="2027-12-01")  # a new date re-arms the warnings
    cab3.load_expiry(saved)
    assert not cab3.alarms
    cab3.load_expiry(b"{corrupt")
    assert not cab3.alarms


def test_expiry_cleared_by_new_date():
    today = parse_date("2026-11-24")
    cab, ev = make(aed_battery_expiry="2026-11-30")
    cab.check_expiry(today * DAY)
    assert "aed_battery_expiring" in cab.alarms
    cab.cfg["aed_battery_expiry"] = "2030-01-01"
    cab.check_expiry(today * DAY)
    assert not cab.alarms


def test_state_has_fixed_fields():
    cab, ev = make(pads_expiry="2027-01-01")
    cab.battery_reading(12200)
    cab.temp_reading(21.04)
    s = cab.report_state(parse_date("2026-12-31") * DAY, 5, 0)
    for k in ("door", "lock", "battery_mv", "battery_pct", "pads_expiry", "pads_days_left",
              "aed_battery_expiry", "aed_battery_days_left", "alarms", "fw", "uptime_s"):
        assert k in s, k
    assert s["pads_days_left"] == 1 and s["temp_c"] == 21.0 and s["alarms"] == []
    assert cab.changed is False
    cab.battery_reading(12220)  # ADC noise: not a state change
    assert cab.changed is False
    cab.battery_reading(12100)
    assert cab.changed is True
