"""Tiered re-read planning (streams without `modified_since`): pure, no network, no DB."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcs_sync.model.reread import (
    DEFAULT_BUDGET,
    DEFAULT_CELL,
    Tier,
    budget_cells,
    check_tiers,
    default_tiers,
    due_cells,
    every_at,
    last_fetch,
    latest_reads,
    plan_reread,
)
from rcs_sync.model.windows import Fetch, Window, checkpoint_after_full_pass, freshness, gaps

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


def test_latest_reads_keeps_the_newest_read_of_each_window_reaching_into_the_span() -> None:
    span = Window(T0, T0 + DAY)
    inside, across = Window(T0, T0 + HOUR), Window(T0 - HOUR, T0 + HOUR)
    before, after = Window(T0 - HOUR, T0), Window(T0 + DAY, T0 + DAY + HOUR)
    fetches = [
        Fetch(inside, T0 + 2 * HOUR),
        Fetch(inside, T0 + 5 * HOUR),
        Fetch(inside, T0 + 3 * HOUR),
        Fetch(across, T0 + HOUR),
        Fetch(before, T0 + 9 * HOUR),  # ends where the span starts: half-open, not in it
        Fetch(after, T0 + 9 * HOUR),
    ]
    assert sorted(latest_reads(fetches, span), key=lambda f: f.window.start) == [
        Fetch(across, T0 + HOUR),
        Fetch(inside, T0 + 5 * HOUR),
    ]
    assert latest_reads([], span) == []


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


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(1, 6), st.integers(0, 5)), max_size=8))
def test_a_cells_last_fetch_is_the_oldest_of_the_latest_fetches_over_its_parts(
    spans: list[tuple[int, int, int]],
) -> None:
    """The planner's sweep against the definition, written with `gaps` and `freshness`."""
    cell = Window(T0 + 4 * MINUTE, T0 + 10 * MINUTE)
    fetches = [
        Fetch(Window(T0 + a * MINUTE, T0 + (a + n) * MINUTE), T0 + DAY + t * HOUR)
        for a, n, t in spans
    ]
    reaching = [f for f in fetches if f.window.start < cell.end and f.window.end > cell.start]
    expected = (
        None
        if gaps(cell, [f.window for f in reaching])
        else min(seg.fetched_at for seg in freshness(cell, reaching))
    )
    assert last_fetch(cell, reaching) == expected


def test_the_checkpoint_trails_by_about_the_last_tiers_every() -> None:
    fetches, log = run_passes(default_tiers(HORIZON), T0, 288 * 3, 5 * MINUTE)
    now = log[-1][0]
    checkpoint = checkpoint_after_full_pass(Window(now - HORIZON, now), fetches, HORIZON)
    assert now - DAY - 5 * MINUTE <= checkpoint <= now
    assert DEFAULT_CELL == HOUR


@dataclass(frozen=True)
class Pass:
    now: datetime
    read: list[Window]
    must: int
    """Cells read regardless of the budget."""
    queue: list[Window]
    """Other cells due at the pass, before the budget took its share."""


def gapped_passes(
    tiers: tuple[Tier, ...], passes: int, interval: timedelta, gap: tuple[int, int]
) -> list[Pass]:
    """Like run_passes, with budgeted plans and no pass at the indexes in `[gap)`."""
    latest = {
        w: Fetch(w, T0)
        for w in (Window(T0 - (10 - i) * DAY, T0 - (9 - i) * DAY) for i in range(10))
    }
    log = []
    for n in range(1, passes + 1):
        if gap[0] <= n < gap[1]:
            continue
        now = T0 + n * interval
        due = due_cells(now, now, HORIZON, tiers=tiers, fetches=list(latest.values()))
        read = due.read(BUDGET)
        latest.update((w, Fetch(w, now)) for w in read)
        log.append(Pass(now, read, len(due.must), due.overdue))
    return log


BUDGET = budget_cells(HORIZON, DEFAULT_CELL, DEFAULT_BUDGET)


@pytest.mark.parametrize("gap_hours", [1, 3, 30])
def test_after_a_gap_a_pass_reads_its_budget_and_the_backlog_drains(gap_hours: int) -> None:
    """After a day of 5-minute passes, none for `gap_hours`: the next passes read their
    must-reads and at most BUDGET more cells each, until the backlog is gone."""
    first = 288 + 1
    log = gapped_passes(
        default_tiers(HORIZON),
        288 * 2 + 12 * gap_hours,
        5 * MINUTE,
        (first, first + 12 * gap_hours),
    )
    assert all(len(p.read) <= p.must + BUDGET for p in log)
    resumed = next(
        i for i, p in enumerate(log) if p.now >= T0 + (first + 12 * gap_hours) * 5 * MINUTE
    )
    backlog = log[resumed].queue
    assert len(backlog) > BUDGET, "the gap left no backlog: nothing was tested"
    # Unbudgeted, the first pass would have read the whole backlog at once.
    assert len(log[resumed].read) == log[resumed].must + BUDGET
    # The backlog goes first: each of its cells read within ceil(N / BUDGET) passes.
    within = log[resumed : resumed - (-len(backlog) // BUDGET)]
    # (By their end: the horizon's oldest cell is cut shorter as the clock moves on.)
    assert {w.end for w in backlog} <= {w.end for p in within for w in p.read}
    assert len(log[-1].queue) <= BUDGET, "the passes never caught up"


@settings(max_examples=8, deadline=None)
@given(
    gap=st.sampled_from([0, 12, 36, 12 * 8]),
    changes=st.lists(
        st.tuples(st.integers(0, 30 * 60), st.integers(0, 3 * 24 * 60 - 1)),
        min_size=1,
        max_size=40,
    ),
)
def test_a_change_is_seen_within_every_and_the_passes_its_backlog_takes(
    gap: int, changes: list[tuple[int, int]]
) -> None:
    """The bound with the budget: a change at t to a record of age a is read by the
    ceil(N / BUDGET)-th pass from the first at or after t + every(tier of a), N the
    largest queue of due cells from t on (no more than BUDGET between regular passes,
    so then the bound is every + interval)."""
    tiers, interval = default_tiers(HORIZON), 5 * MINUTE
    passes = int((30 * HOUR + DAY) / interval) + 24
    log = cached_gapped(tiers, passes, interval, (100, 100 + gap))
    if gap == 0:
        assert max(len(p.queue) for p in log) <= BUDGET
    for change_min, age_min in changes:
        t = T0 + timedelta(minutes=change_min) + timedelta(seconds=7)
        age = timedelta(minutes=age_min)
        stamp = t - age
        every = every_at(tiers, age)
        assert every is not None
        after = [p for p in log if p.now >= t]
        backlog = max(len(p.queue) for p in after)
        waits = -(-max(backlog, 1) // BUDGET)
        first = next(i for i, p in enumerate(after) if p.now >= t + every)
        if after[first + waits - 1].now - stamp >= HORIZON:
            continue  # the record may leave the horizon first: the documented limit
        seen = next(p.now for p in after if any(w.start <= stamp < w.end for w in p.read))
        assert seen <= after[first + waits - 1].now, (seen - t, every, backlog)


@functools.cache
def cached_gapped(
    tiers: tuple[Tier, ...], passes: int, interval: timedelta, gap: tuple[int, int]
) -> list[Pass]:
    return gapped_passes(tiers, passes, interval, gap)
