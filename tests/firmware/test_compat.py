from aedgate import compat
from aedgate.compat import TICKS_PERIOD, civil_from_days, parse_date, ticks_add, ticks_diff


def test_ticks_wrap_at_2_pow_30():
    near = TICKS_PERIOD - 100
    later = ticks_add(near, 250)
    assert later == 150  # wrapped
    assert ticks_diff(later, near) == 250
    assert ticks_diff(near, later) == -250


def test_ticks_start_near_wrap_crosses_it():
    compat.set_ticks_start(TICKS_PERIOD - 5)
    t0 = compat.ticks_ms()
    assert t0 >= TICKS_PERIOD - 10 or t0 < 100
    deadline = ticks_add(t0, 1000)
    assert ticks_diff(deadline, t0) == 1000
    assert deadline < t0  # the deadline sits past the wrap, maths still right
    compat.set_ticks_start(0)


def test_dates_round_trip():
    assert parse_date("1970-01-01") == 0
    assert parse_date("2000-01-01") == 10957
    assert parse_date("2028-02-29") == parse_date("2028-02-28") + 1
    assert civil_from_days(parse_date("2026-11-24")) == (2026, 11, 24)


def test_bad_dates_rejected():
    for bad in ("2026-02-30", "2026-13-01", "2026-1-01", "20261101", "", None, 20261101, "2026-00-10", "abcd-ef-gh"):
        assert parse_date(bad) is None, bad


def test_unix_time_is_1970_based():
    assert compat.unix_time() > 1700000000
