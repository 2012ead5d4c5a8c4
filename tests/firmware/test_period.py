# Periodic tasks (heartbeat, sensor readings) wait `period_ms`: never longer than configured (the
# promise is "at least every heartbeat_s"), up to a tenth shorter, drawn afresh each time, so
# cabinets that booted in the same moment drift apart instead of bursting together each period
# (docs/benchmarks.md "Steady stalls"); in aedgate/mqtt.py beside the reconnect backoff.
from aedgate.mqtt import period_ms


def test_within_a_tenth_below_and_different_each_time():
    for ms in (1000, 60000, 900000, 86400000):
        got = [period_ms(ms) for _ in range(50)]
        assert min(got) >= ms - ms // 10 and max(got) <= ms, (ms, min(got), max(got))
        assert len(set(got)) > 10, ms


def test_spreads_a_group_that_started_together():
    # 200 cabinets booted in one loop turn: after one period their next readings span seconds
    starts = [period_ms(60000) for _ in range(200)]
    assert max(starts) - min(starts) > 3000
