"""The rollout plan: waves, the halt threshold, the rate cap and the operator's input."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from host_tools.rollout.plan import (Plan, PlanError, RateLimiter, parse_halt, parse_rate,
                                     parse_waves)

waves_st = st.lists(st.integers(1, 99), max_size=5, unique=True).map(lambda w: sorted(w) + [100])


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 3000), canary=st.integers(0, 50), waves=waves_st)
def test_every_cabinet_in_exactly_one_wave_in_order(n, canary, waves):
    devices = ["cab-%05d" % i for i in range(n)]
    out = Plan(canary=canary, waves=waves).assign(devices)
    assert [d for w in out for d in w] == devices          # order kept, nobody twice or lost
    assert all(out)                                        # no empty wave
    if n:
        assert len(out[0]) == (min(canary, n) or len(out[0]))
    # each wave ends where its percentage says (or where the canary already reached)
    ends = set()
    total = 0
    for w in out:
        total += len(w)
        ends.add(total)
    want = {max(min(canary, n), min(n, math.ceil(n * p / 100.0))) for p in waves} | (
        {min(canary, n)} if canary else set())
    assert ends == {e for e in want if e > 0}


def test_canary_then_percentages_example():
    out = Plan(canary=10, waves=[1, 10, 50, 100]).assign(["c%d" % i for i in range(1000)])
    assert [len(w) for w in out] == [10, 90, 400, 500]     # 1 % = 10 is covered by the canary


@settings(max_examples=300, deadline=None)
@given(started=st.integers(0, 10000), failed=st.integers(0, 10000), pct=st.floats(0.01, 100),
       n=st.integers(1, 500))
def test_halt_threshold(started, failed, pct, n):
    failed = min(failed, started)
    p = Plan(halt_at=("pct", pct))
    assert p.should_halt(started, failed) == (failed > 0 and failed * 100 >= pct * max(started, 1))
    assert not p.should_halt(started, 0)
    if p.should_halt(started, failed) and failed < started:
        assert p.should_halt(started, failed + 1)          # more failures never un-halt
    c = Plan(halt_at=("count", n))
    assert c.should_halt(started, failed) == (failed >= n)


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(1, 100000), gaps=st.lists(st.floats(0, 5), min_size=1, max_size=200),
       want=st.integers(0, 1000))
def test_rate_cap_is_never_exceeded(rate, gaps, want):
    lim = RateLimiter(rate, 0.0)
    t, total = 0.0, 0
    for g in gaps:
        t += g
        got = lim.take(t, want)
        assert 0 <= got <= want
        total += got
    assert total <= max(1.0, rate / 60.0) + rate / 60.0 * t + 1e-6


def test_rate_cap_example():
    lim = RateLimiter(60, 0.0)                 # one a second, burst one
    assert lim.take(0.0, 10) == 1
    assert lim.take(0.5, 10) == 0
    assert lim.take(1.0, 10) == 1
    assert lim.take(11.0, 10) == 1             # idle time does not pile up into a burst


@pytest.mark.parametrize("text", ["10,5,100", "1,50", "0,100", "abc", "", "50,100,100"])
def test_bad_waves(text):
    with pytest.raises(PlanError):
        parse_waves(text)


def test_parsers():
    assert parse_waves("1,10,50,100") == [1, 10, 50, 100]
    assert parse_halt("5%") == ("pct", 5.0) and parse_halt("3") == ("count", 3)
    assert parse_rate("600/min") == 600 and parse_rate("30") == 30
    for bad in ("0", "-1", "abc", "150%", "0%", "1.5"):
        with pytest.raises(PlanError):
            parse_halt(bad)
    for bad in ("0", "x/min", "-5/min"):
        with pytest.raises(PlanError):
            parse_rate(bad)


def test_plan_round_trips_through_json():
    p = Plan(canary=3, waves=[5, 100], rate=12.5, halt_at=("count", 2), wave_timeout=90, offer_every=7)
    assert Plan.from_json(p.to_json()) == p
