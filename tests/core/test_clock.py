"""Clocks: fixed, accelerated and system time; microsecond conversions."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medtwin.core.clock import AcceleratedClock, Clock, FixedClock, SystemClock, from_us, to_us

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_fixed_clock_stands_still_until_told() -> None:
    clock = FixedClock(T0)
    assert clock.now() == T0
    assert clock.now_us() == to_us(T0)
    assert clock.now_us() == clock.now_us()


def test_fixed_clock_advance() -> None:
    clock = FixedClock(T0)
    clock.advance(90)
    assert clock.now() == T0 + timedelta(seconds=90)
    clock.advance(0.000_001)
    assert clock.now_us() == to_us(T0) + 90_000_001
    clock.advance(-90.000_001)
    assert clock.now() == T0


def test_fixed_clock_set() -> None:
    clock = FixedClock(T0)
    later = datetime(2030, 6, 1, 8, 30, 15, 250_000, tzinfo=UTC)
    clock.set(later)
    assert clock.now() == later
    clock.set(T0)
    assert clock.now() == T0


@pytest.mark.parametrize("clock", [SystemClock(), FixedClock(T0), AcceleratedClock(10)])
def test_every_clock_is_a_clock_in_utc(clock: Clock) -> None:
    assert isinstance(clock, Clock)
    assert clock.now().tzinfo is UTC


def test_system_clock_follows_time_time() -> None:
    clock = SystemClock()
    before = time.time()
    now = clock.now_us() / 1_000_000
    after = time.time()
    assert before - 0.01 <= now <= after + 0.01
    assert abs(clock.now().timestamp() - time.time()) < 0.05


@pytest.mark.parametrize("factor", [0.5, 60.0])
def test_accelerated_clock_runs_factor_times_faster(factor: float) -> None:
    clock = AcceleratedClock(factor)
    real0 = time.monotonic()
    sim0 = clock.now_us()
    time.sleep(0.2)
    sim1 = clock.now_us()
    real1 = time.monotonic()
    real_us = (real1 - real0) * 1_000_000
    assert (sim1 - sim0) / real_us == pytest.approx(factor, rel=0.1)


def test_accelerated_clock_starts_where_told() -> None:
    clock = AcceleratedClock(1000.0, start=T0)
    elapsed = clock.now() - T0
    assert timedelta(0) <= elapsed < timedelta(seconds=60)  # 60 s simulated = 60 ms real


def test_accelerated_clock_starts_now_by_default() -> None:
    clock = AcceleratedClock(2.0)
    assert abs(clock.now_us() - SystemClock().now_us()) < 100_000


@pytest.mark.parametrize("factor", [0, 0.0, -1, -0.5])
def test_accelerated_clock_rejects_factor_not_positive(factor: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        AcceleratedClock(factor)


def test_to_us_known_values() -> None:
    assert to_us(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert to_us(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005
    assert to_us(datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)) == -1_000_000
    assert from_us(-1) == datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)


@given(st.datetimes(timezones=st.just(UTC)))
def test_to_us_from_us_round_trip(moment: datetime) -> None:
    us = to_us(moment)
    back = from_us(us)
    assert back == moment
    assert back.tzinfo is UTC
    assert to_us(back) == us


@given(st.integers(min_value=to_us(datetime(1, 1, 1, tzinfo=UTC)), max_value=2**53))
def test_from_us_to_us_round_trip(us: int) -> None:
    assert to_us(from_us(us)) == us


def test_to_us_of_other_zone_is_the_same_instant() -> None:
    local = datetime(2026, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert to_us(local) == to_us(T0)
