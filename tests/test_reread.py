"""Tiered re-read planning (streams without `modified_since`): pure, no network, no DB."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from rcs_sync.model.reread import (
    DEFAULT_CELL,
    Tier,
    check_tiers,
    default_tiers,
    every_at,
    plan_reread,
)
from rcs_sync.model.windows import Fetch, Window, checkpoint_after_full_pass

T0 = datetime(2026, 3, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
HORIZON = 3 * DAY
MINUTE = timedelta(minutes=1)


def run_passes(
    tiers: tuple[Tier, ...], start: datetime, passes: int, interval: timedelta
) -> tuple[list[Fetch], list[tuple[datetime, list[Window]]]]:
    """A backfill at `start` in day windows, then `passes` re-read passes."""
    latest = {
        w: Fetch(w, start)
        for w in (Window(start - (10 - i) * DAY, start - (9 - i) * DAY) for i in range(10))
    }
    log: list[tuple[datetime, list[Window]]] = []
    for n in range(1, passes + 1):
        now = start + n * interval
        due = plan_reread(now, now, HORIZON, tiers=tiers, fetches=list(latest.values()))
        latest.update((w, Fetch(w, now)) for w in due)
        log.append((now, due))
    return list(latest.values()), log


@functools.cache
def cached_passes(
    tiers: tuple[Tier, ...], passes: int, interval: timedelta
) -> tuple[list[Fetch], list[tuple[datetime, list[Window]]]]:
    return run_passes(tiers, T0, passes, interval)


def test_default_tiers_and_their_checks() -> None:
    tiers = default_tiers(HORIZON)
    assert tiers == (Tier(HOUR, timedelta(0)), Tier(DAY, HOUR), Tier(HORIZON, DAY))
    assert check_tiers(tiers, HORIZON) is None
    assert default_tiers(2 * HOUR) == (Tier(HOUR, timedelta(0)), Tier(2 * HOUR, DAY))
    assert check_tiers([Tier(DAY, HOUR), Tier(HOUR, DAY)], HORIZON) == "tier ages must increase"
    assert "younger" in (check_tiers([Tier(HOUR, DAY), Tier(HORIZON, HOUR)], HORIZON) or "")
    assert "horizon" in (check_tiers([Tier(DAY, HOUR)], HORIZON) or "")
    assert every_at(tiers, 30 * MINUTE) == timedelta(0)
    assert every_at(tiers, 2 * HOUR) == HOUR
    assert every_at(tiers, HORIZON) is None


def test_a_cell_never_read_is_due_and_older_than_the_horizon_is_never_read() -> None:
    now = T0 + 15 * MINUTE
    due = plan_reread(now, now, HORIZON, tiers=default_tiers(HORIZON), fetches=[])
    assert due[0].start == now - HORIZON and due[-1].end == now
    assert sum((w.span for w in due), timedelta(0)) == HORIZON


def test_steady_passes_read_a_small_fraction_of_the_horizon() -> None:
    """After a backfill, 5-minute passes over a day: the current hour every pass, each
    cell of the last day about hourly, the rest about daily, spread over the passes."""
    _, log = run_passes(default_tiers(HORIZON), T0, 288 * 2, 5 * MINUTE)
    later = [sum((w.span for w in due), timedelta(0)) / HORIZON for _, due in log[288:]]
    assert max(later) <= 0.15, max(later)
    assert sum(later) / len(later) <= 0.06


@settings(max_examples=8, deadline=None)
@given(
    first=st.sampled_from([timedelta(0), 5 * MINUTE, 15 * MINUTE]),
    second=st.sampled_from([HOUR, 2 * HOUR]),
    third=st.sampled_from([6 * HOUR, DAY]),
    interval_min=st.sampled_from([5, 13]),
    changes=st.lists(
        st.tuples(st.integers(0, 30 * 60), st.integers(0, 3 * 24 * 60 - 1)),
        min_size=1,
        max_size=40,
    ),
)
def test_a_change_is_seen_within_its_tiers_every_plus_one_interval(
    first: timedelta,
    second: timedelta,
    third: timedelta,
    interval_min: int,
    changes: list[tuple[int, int]],
) -> None:
    """A change at t to a record of age a (timestamp t - a, with a + every + interval
    within the horizon) is re-read by a pass no later than t + every(tier of a) +
    interval."""
    tiers = (Tier(HOUR, first), Tier(DAY, second), Tier(HORIZON, third))
    interval = timedelta(minutes=interval_min)
    passes = int((30 * HOUR + DAY + 2 * interval) / interval) + 2
    _, log = cached_passes(tiers, passes, interval)
    for change_min, age_min in changes:
        t = T0 + timedelta(minutes=change_min) + timedelta(seconds=7)
        age = timedelta(minutes=age_min)
        stamp = t - age
        every = every_at(tiers, age)
        assert every is not None
        if age + every + interval >= HORIZON:
            continue  # the record may leave the horizon first: the documented limit
        seen = next(
            now for now, due in log if now >= t and any(w.start <= stamp < w.end for w in due)
        )
        assert seen <= t + every + interval, (seen - t, every, interval)


def test_the_checkpoint_trails_by_about_the_last_tiers_every() -> None:
    fetches, log = run_passes(default_tiers(HORIZON), T0, 288 * 3, 5 * MINUTE)
    now = log[-1][0]
    checkpoint = checkpoint_after_full_pass(Window(now - HORIZON, now), fetches, HORIZON)
    assert now - DAY - 5 * MINUTE <= checkpoint <= now
    assert DEFAULT_CELL == HOUR
