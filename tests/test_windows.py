"""Window and checkpoint planning: pure functions, no network, no database."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcs_sync.model.windows import (
    BOUNDARY_PAD,
    CATCHUP_FRESHNESS,
    GRID_ANCHOR,
    INCREMENTAL_LEAD,
    JOIN_MOST,
    MODIFIED_SINCE_LIMIT,
    Fetch,
    Split,
    SyncPolicy,
    Window,
    checkpoint_after_full_pass,
    checkpoint_after_incremental,
    cut,
    freshness,
    gaps,
    joinable,
    merge,
    nested_size,
    plan_pass,
    plan_windows,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
POLICY = SyncPolicy(
    initial_start=datetime(2026, 1, 1, tzinfo=UTC),
    window=DAY,
    update_horizon=7 * DAY,
    overlap=timedelta(minutes=2),
    clock_skew=timedelta(minutes=5),
)


def w(start_h: float, end_h: float) -> Window:
    return Window(T0 + start_h * HOUR, T0 + end_h * HOUR)


def test_empty_window_is_rejected() -> None:
    with pytest.raises(ValueError, match="empty window"):
        Window(T0, T0)


def test_request_bounds_overlap_the_previous_window() -> None:
    start, end = w(24, 48).request_bounds()
    assert start == T0 + DAY - BOUNDARY_PAD
    assert end == T0 + 2 * DAY


def test_cut_aligns_inner_windows_to_the_grid() -> None:
    span = Window(T0 + 6 * HOUR, T0 + 2 * DAY + 3 * HOUR)
    assert cut(span, DAY) == [
        Window(T0 + 6 * HOUR, T0 + DAY),
        Window(T0 + DAY, T0 + 2 * DAY),
        Window(T0 + 2 * DAY, T0 + 2 * DAY + 3 * HOUR),
    ]


def test_merge_joins_touching_and_overlapping_windows() -> None:
    assert merge([w(5, 6), w(0, 2), w(2, 3), w(1, 2.5)]) == [w(0, 3), w(5, 6)]


def test_gaps_are_what_the_covered_windows_miss() -> None:
    assert gaps(w(0, 10), [w(1, 2), w(2, 4), w(6, 12)]) == [w(0, 1), w(4, 6)]
    assert gaps(w(0, 10), []) == [w(0, 10)]
    assert gaps(w(0, 10), [w(-1, 11)]) == []


def test_plan_windows_skips_completed_windows_and_fills_gaps() -> None:
    span = Window(T0, T0 + 5 * DAY)
    done = [Fetch(Window(T0 + DAY, T0 + 3 * DAY), T0)]
    assert plan_windows(span, done, DAY, None) == [
        Window(T0, T0 + DAY),
        Window(T0 + 3 * DAY, T0 + 4 * DAY),
        Window(T0 + 4 * DAY, T0 + 5 * DAY),
    ]


def test_plan_windows_ignores_fetches_older_than_fresh_after() -> None:
    span = Window(T0, T0 + 2 * DAY)
    done = [Fetch(Window(T0, T0 + DAY), T0), Fetch(Window(T0 + DAY, T0 + 2 * DAY), T0 + HOUR)]
    assert plan_windows(span, done, DAY, fresh_after=T0 + HOUR) == [Window(T0, T0 + DAY)]


def test_nested_size_halves_the_window_until_it_fits() -> None:
    assert nested_size(DAY, DAY) == DAY
    assert nested_size(DAY, 2 * DAY) == DAY
    assert nested_size(DAY, 12 * HOUR) == 12 * HOUR
    assert nested_size(DAY, 7 * HOUR) == 6 * HOUR


def test_plan_windows_reads_split_periods_in_smaller_grid_cells() -> None:
    span = Window(T0, T0 + 3 * DAY)
    day_two = Window(T0 + DAY, T0 + 2 * DAY)
    splits = [Split(day_two, 12 * HOUR), Split(Window(T0 + DAY, T0 + 36 * HOUR), 6 * HOUR)]
    assert plan_windows(span, [], DAY, None, splits) == [
        Window(T0, T0 + DAY),
        Window(T0 + DAY, T0 + 30 * HOUR),
        Window(T0 + 30 * HOUR, T0 + 36 * HOUR),
        Window(T0 + 36 * HOUR, T0 + 2 * DAY),
        Window(T0 + 2 * DAY, T0 + 3 * DAY),
    ]


def test_a_split_of_a_partial_window_keeps_the_grid() -> None:
    """The last window of a backfill ends at an odd instant: its split period is read in
    cells of the nested grid, not in halves of that odd length."""
    tail = Window(T0, T0 + 10 * HOUR)
    assert plan_windows(tail, [], DAY, None, [Split(tail, 5 * HOUR)]) == [
        Window(T0, T0 + 3 * HOUR),
        Window(T0 + 3 * HOUR, T0 + 6 * HOUR),
        Window(T0 + 6 * HOUR, T0 + 9 * HOUR),
        Window(T0 + 9 * HOUR, T0 + 10 * HOUR),
    ]


def test_split_span_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Split(w(0, 1), timedelta(0))


def test_first_pass_is_a_backfill_from_initial_start() -> None:
    plan = plan_pass(None, T0, POLICY)
    assert plan.mode == "backfill"
    assert plan.span == Window(POLICY.initial_start, T0 + POLICY.clock_skew)
    assert plan.modified_since is None


def test_recent_checkpoint_gives_an_incremental_pass() -> None:
    checkpoint = T0 - timedelta(minutes=5)
    plan = plan_pass(checkpoint, T0, POLICY)
    since = checkpoint - POLICY.overlap
    assert plan.mode == "incremental"
    assert plan.modified_since == since
    # The span reaches back a full horizon before modified_since, not before now:
    # a record created just before that can still change after the checkpoint.
    assert plan.span.start == since - POLICY.update_horizon
    assert plan.span.end == T0 + POLICY.clock_skew + INCREMENTAL_LEAD


@pytest.mark.parametrize("ahead", [timedelta(minutes=15), timedelta(hours=12)])
def test_incremental_span_holds_the_newest_records_of_a_server_clock_ahead(
    ahead: timedelta,
) -> None:
    """Further ahead than `clock_skew`: the server's newest records (stamped at its now)
    are asked for, and the checkpoint is the server's time of the request."""
    plan = plan_pass(T0 - timedelta(minutes=5), T0, POLICY)
    server_now = T0 + ahead
    assert plan.span.start < server_now < plan.span.end
    piece = Fetch(plan.span, server_now)
    assert checkpoint_after_incremental(plan.span, [piece]) == server_now


def test_checkpoint_too_old_for_modified_since_gives_a_catchup() -> None:
    checkpoint = T0 - MODIFIED_SINCE_LIMIT
    plan = plan_pass(checkpoint, T0, POLICY)
    assert plan.mode == "catchup"
    assert plan.modified_since is None
    # Windows read before the checkpoint, or so long ago that the checkpoint they earn
    # would be too old again, are read anew.
    assert plan.fresh_after == T0 - CATCHUP_FRESHNESS
    assert T0 - (MODIFIED_SINCE_LIMIT - 2 * POLICY.clock_skew) < plan.fresh_after < T0
    assert plan.span.start == checkpoint - POLICY.update_horizon


def test_catchup_starts_before_the_api_would_refuse() -> None:
    margin = POLICY.clock_skew + POLICY.overlap
    young = T0 - (MODIFIED_SINCE_LIMIT - margin - POLICY.overlap - timedelta(seconds=1))
    old = T0 - (MODIFIED_SINCE_LIMIT - margin - POLICY.overlap + timedelta(seconds=1))
    assert plan_pass(young, T0, POLICY).mode == "incremental"
    assert plan_pass(old, T0, POLICY).mode == "catchup"


def test_freshness_takes_the_latest_fetch_per_segment() -> None:
    fetches = [Fetch(w(0, 10), T0 + 100 * HOUR), Fetch(w(4, 6), T0 + 200 * HOUR)]
    assert freshness(w(0, 10), fetches) == [
        Fetch(w(0, 4), T0 + 100 * HOUR),
        Fetch(w(4, 6), T0 + 200 * HOUR),
        Fetch(w(6, 10), T0 + 100 * HOUR),
    ]


def test_full_pass_checkpoint_is_held_back_by_live_windows_only() -> None:
    horizon = 7 * DAY
    span = Window(T0 - 30 * DAY, T0)
    old_final = Fetch(Window(T0 - 30 * DAY, T0 - 20 * DAY), T0 - 5 * DAY)  # final when read
    old_live = Fetch(Window(T0 - 20 * DAY, T0 - 2 * DAY), T0 - HOUR)
    newest = Fetch(Window(T0 - 2 * DAY, T0), T0 + HOUR)
    assert checkpoint_after_full_pass(span, [old_final, old_live, newest], horizon) == T0 - HOUR


def test_full_pass_checkpoint_never_passes_the_span_end() -> None:
    span = Window(T0 - DAY, T0)
    fetched_late = Fetch(span, T0 + HOUR)  # server clock ahead of ours
    assert checkpoint_after_full_pass(span, [fetched_late], 7 * DAY) == T0


def test_incremental_checkpoint_is_the_earliest_piece() -> None:
    span = w(0, 10)
    pieces = [Fetch(w(0, 5), T0 + 12 * HOUR), Fetch(w(5, 10), T0 + 11 * HOUR)]
    assert checkpoint_after_incremental(span, pieces) == T0 + 10 * HOUR
    assert checkpoint_after_incremental(w(0, 20), pieces) == T0 + 11 * HOUR


instants = st.integers(min_value=0, max_value=10_000).map(lambda m: T0 + timedelta(minutes=m))


@st.composite
def windows(draw: st.DrawFn) -> Window:
    start = draw(instants)
    length = draw(st.integers(min_value=1, max_value=3_000))
    return Window(start, start + timedelta(minutes=length))


@settings(max_examples=300, deadline=None)
@given(span=windows(), done=st.lists(windows(), max_size=8), size_min=st.integers(1, 2_000))
def test_planned_windows_cover_exactly_the_gaps(
    span: Window, done: list[Window], size_min: int
) -> None:
    size = timedelta(minutes=size_min)
    planned = plan_windows(span, [Fetch(d, T0) for d in done], size, None)
    # Nothing missing: planned plus done covers the span.
    assert gaps(span, planned + done) == []
    # Nothing redundant: planned windows never overlap each other or completed work.
    for a, b in itertools.pairwise(planned):
        assert a.end <= b.start
    for p in planned:
        assert all(p.end <= d.start or p.start >= d.end for d in done)
        assert span.start <= p.start and p.end <= span.end
        assert p.span <= size


@settings(max_examples=300, deadline=None)
@given(
    span=windows(),
    done=st.lists(windows(), max_size=6),
    recorded=st.lists(st.tuples(windows(), st.integers(1, 3_000)), max_size=6),
    size_min=st.integers(1, 2_000),
)
def test_planned_windows_respect_recorded_splits(
    span: Window, done: list[Window], recorded: list[tuple[Window, int]], size_min: int
) -> None:
    size = timedelta(minutes=size_min)
    splits = [Split(period, timedelta(minutes=m)) for period, m in recorded]
    planned = plan_windows(span, [Fetch(d, T0) for d in done], size, None, splits)
    boundaries = {span.start, span.end} | {t for d in done for t in (d.start, d.end)}
    boundaries |= {t for s in splits for t in (s.period.start, s.period.end)}
    # No gap, no overlap, nothing outside the span.
    assert gaps(span, planned + done) == []
    for a, b in itertools.pairwise(planned):
        assert a.end <= b.start
    for p in planned:
        assert span.start <= p.start and p.end <= span.end
        limits = [s.span for s in splits if s.period.start < p.end and p.start < s.period.end]
        # Inside a recorded split period, never longer than its recorded span.
        assert all(p.span <= limit for limit in limits)
        assert p.span <= size
        # Cut on the epoch-anchored grid of the size it needs, or at a boundary given.
        grid = nested_size(size, min(limits)) if limits else size
        assert p.start in boundaries or (p.start - GRID_ANCHOR) % grid == timedelta(0)


@settings(max_examples=300, deadline=None)
@given(
    span=windows(),
    fetches=st.lists(st.tuples(windows(), instants), min_size=1, max_size=8),
    horizon_min=st.integers(0, 5_000),
)
def test_full_pass_checkpoint_never_passes_an_uncommitted_change(
    span: Window, fetches: list[tuple[Window, datetime]], horizon_min: int
) -> None:
    """For every point of the span, the checkpoint is no later than the freshest fetch
    covering it, unless that point was already beyond its update horizon then."""
    horizon = timedelta(minutes=horizon_min)
    done = [Fetch(win, at) for win, at in fetches]
    if gaps(span, [f.window for f in done]):
        return
    checkpoint = checkpoint_after_full_pass(span, done, horizon)
    assert checkpoint <= span.end
    for segment in freshness(span, done):
        if segment.window.end + horizon > segment.fetched_at:
            assert checkpoint <= segment.fetched_at


def days(first: int, count: int) -> list[Window]:
    return [Window(T0 + (first + i) * DAY, T0 + (first + i + 1) * DAY) for i in range(count)]


def test_sparse_windows_are_joined_while_they_hold_fewer_records_than_asked() -> None:
    window, *following = days(0, 40)
    seen = [Fetch(Window(T0 - DAY, T0), T0, records=100)]  # 100 records a day
    assert joinable(window, following, seen, 1_000) == 8  # 9 days: 900; 10 hold 1,000
    assert joinable(window, following, seen, 1_001) == 9
    assert joinable(window, following, seen, 1_000_000) == JOIN_MOST - 1
    empty = [Fetch(Window(T0 - DAY, T0), T0, records=0)]
    assert joinable(window, following, empty, 1) == JOIN_MOST - 1
    # Not without an observation, nor when turned off, nor past a dense day seen nearer.
    assert joinable(window, following, [], 1_000) == 0
    assert joinable(window, following, seen, 0) == 0
    dense = [*seen, Fetch(Window(T0, T0 + HOUR), T0, records=10_000)]
    assert joinable(window, following, dense, 1_000) == 0


def test_only_whole_windows_in_a_row_outside_recorded_splits_are_joined() -> None:
    window, *following = days(0, 10)
    seen = [Fetch(Window(T0 - DAY, T0), T0, records=0)]
    gap = [*following[:3], *following[4:]]
    assert joinable(window, gap, seen, 1_000) == 3
    short = [*following[:2], Window(following[2].start, following[2].start + HOUR)]
    assert joinable(window, short, seen, 1_000) == 2
    split = [Split(following[4], HOUR)]
    assert joinable(window, following, seen, 1_000, split) == 4
    assert joinable(following[4], following[5:], seen, 1_000, split) == 0


def test_windows_overlap_when_they_share_an_instant_not_when_they_touch() -> None:
    assert w(0, 2).overlaps(w(1, 3)) and w(1, 3).overlaps(w(0, 2))
    assert w(0, 4).overlaps(w(1, 2)) and w(1, 2).overlaps(w(0, 4))
    assert not w(0, 1).overlaps(w(1, 2)) and not w(1, 2).overlaps(w(0, 1))
