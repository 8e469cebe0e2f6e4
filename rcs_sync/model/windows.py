"""Pure planning: which time windows to fetch, and what checkpoint a set of fetches earns.

No I/O here. Everything is a function of the clock, the settings and what the
warehouse says is already done, so it can be tested exhaustively in memory.

Vocabulary
- A *window* is a half-open span `[start, end)` of record timestamps.
- A *fetch* is a completed window with the server time its request was sent: it holds
  every record of the window as the server saw it then.
- The *checkpoint* of a (stream, scope) is a server time `c` such that every change the
  provider made before `c` to a record that could still change is in the warehouse.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Literal

MODIFIED_SINCE_LIMIT = timedelta(hours=48)
"""The API rejects a `modified_since` older than this (server clock)."""

CATCHUP_FRESHNESS = MODIFIED_SINCE_LIMIT / 2
"""A catch-up re-reads every window fetched longer ago than this. Windows read more
recently (e.g. by the same catch-up before it was killed) are kept, and still leave a
checkpoint young enough for `modified_since` afterwards."""

BOUNDARY_PAD = timedelta(seconds=1)
"""Each request starts this much before its window, so neighbours overlap: whether the
server treats `start`/`end` as inclusive or exclusive is undocumented."""

GRID_ANCHOR = datetime(1970, 1, 1, tzinfo=UTC)
"""Windows are cut on a grid anchored here, so different commands produce the same
windows for the same period and recognise each other's completed work."""

INCREMENTAL_LEAD = timedelta(days=1)
"""How much further than full spans an incremental span reaches past our clock. The API
filters on record timestamps and no record is stamped after the server's now, so a late
`end` costs nothing, while `now + clock_skew` would hold back, for a pass, the newest
records of a server whose clock runs further ahead of ours than `clock_skew`."""

JOIN_MOST = 16
"""Windows read as one request at most, however sparse the stretch (`joinable`): where
a sparse stretch turns dense, one response holds at most this many windows of it."""


@dataclass(frozen=True, order=True)
class Window:
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"empty window {self.start} .. {self.end}")

    @property
    def span(self) -> timedelta:
        return self.end - self.start

    def overlaps(self, other: Window) -> bool:
        """Whether the two share an instant (half-open: touching is not overlapping)."""
        return self.end > other.start and self.start < other.end

    def halves(self) -> tuple[Window, Window]:
        middle = self.start + (self.span / 2)
        return Window(self.start, middle), Window(middle, self.end)

    def request_bounds(self) -> tuple[datetime, datetime]:
        """The `start`/`end` to send: padded so no boundary record can fall between windows."""
        return self.start - BOUNDARY_PAD, self.end


@dataclass(frozen=True)
class Fetch:
    window: Window
    fetched_at: datetime
    records: int | None = field(default=None, compare=False)
    """Records the response held, where known: the density later windows are planned by."""


@dataclass(frozen=True)
class Split:
    """A read of `period` was split (truncated, or kept failing) and its halves loaded:
    later full passes read that period in windows no longer than `span`."""

    period: Window
    span: timedelta

    def __post_init__(self) -> None:
        if self.span <= timedelta(0):
            raise ValueError(f"split span must be positive, got {self.span}")


@dataclass(frozen=True)
class SyncPolicy:
    initial_start: datetime
    window: timedelta
    update_horizon: timedelta
    overlap: timedelta
    clock_skew: timedelta


Mode = Literal["backfill", "catchup", "incremental", "replace"]


@dataclass(frozen=True)
class PassPlan:
    """What one pass over a (stream, scope) does.

    `backfill` and `catchup` read `span` in full windows, skipping windows already
    fetched at or after `fresh_after` (any fetch counts when it is None).
    `incremental` makes one request over `span` with `modified_since` (for a stream
    without it, re-reads the cells of `span` that are due, `model/reread.py`).
    `replace` reads a stream without windows whole and replaces its table.
    """

    mode: Mode
    span: Window
    modified_since: datetime | None = None
    fresh_after: datetime | None = None


def merge(windows: Iterable[Window]) -> list[Window]:
    """The union of windows as sorted, disjoint, non-touching windows."""
    merged: list[Window] = []
    for w in sorted(windows):
        if merged and w.start <= merged[-1].end:
            if w.end > merged[-1].end:
                merged[-1] = Window(merged[-1].start, w.end)
        else:
            merged.append(w)
    return merged


def gaps(want: Window, covered: Iterable[Window]) -> list[Window]:
    """The parts of `want` that no covered window touches."""
    result: list[Window] = []
    cursor = want.start
    for w in merge(covered):
        if w.end <= cursor:
            continue
        if w.start >= want.end:
            break
        if w.start > cursor:
            result.append(Window(cursor, w.start))
        cursor = max(cursor, w.end)
        if cursor >= want.end:
            break
    if cursor < want.end:
        result.append(Window(cursor, want.end))
    return result


def cut(span: Window, size: timedelta) -> list[Window]:
    """Cut a span on the grid of `size`: inner windows are exactly grid cells."""
    if size <= timedelta(0):
        raise ValueError("window size must be positive")
    result: list[Window] = []
    cursor = span.start
    while cursor < span.end:
        cell = (cursor - GRID_ANCHOR) // size
        boundary = GRID_ANCHOR + (cell + 1) * size
        end = min(boundary, span.end)
        result.append(Window(cursor, end))
        cursor = end
    return result


def nested_size(size: timedelta, limit: timedelta) -> timedelta:
    """The longest `size / 2**k` within `limit`: cells of that grid nest in the cells of
    `size`, so the small windows of a split period line up with the windows around it."""
    while size > limit:
        size /= 2
    return size


def sizes(span: Window, size: timedelta, splits: Iterable[Split]) -> list[tuple[Window, timedelta]]:
    """Split `span` into segments, each with the window size it needs: `size`, or less
    where a recorded split covers it (the smallest, on the nested grid)."""
    relevant = [s for s in splits if s.period.overlaps(span)]
    points = sorted(
        {span.start, span.end}
        | {max(span.start, s.period.start) for s in relevant}
        | {min(span.end, s.period.end) for s in relevant}
    )
    segments: list[tuple[Window, timedelta]] = []
    for lo, hi in pairwise(points):
        limits = [s.span for s in relevant if s.period.start <= lo and s.period.end >= hi]
        need = nested_size(size, min(limits)) if limits else size
        if segments and segments[-1][1] == need:
            segments[-1] = (Window(segments[-1][0].start, hi), need)
        else:
            segments.append((Window(lo, hi), need))
    return segments


def plan_windows(
    span: Window,
    fetches: Iterable[Fetch],
    size: timedelta,
    fresh_after: datetime | None,
    splits: Iterable[Split] = (),
) -> list[Window]:
    """The windows still to fetch: the grid cells of `span` not covered by a fresh fetch,
    no longer than any recorded split of their period asks."""
    covered = [f.window for f in fetches if fresh_after is None or f.fetched_at >= fresh_after]
    splits = list(splits)
    return [
        w
        for gap in gaps(span, covered)
        for segment, segment_size in sizes(gap, size, splits)
        for w in cut(segment, segment_size)
    ]


def _density(window: Window, observed: Sequence[Fetch]) -> float | None:
    """Records per second of the observed fetch nearest to `window`, if any."""
    known = [f for f in observed if f.records is not None]
    if not known:
        return None
    middle = window.start + window.span / 2

    def distance(f: Fetch) -> timedelta:
        return abs(f.window.start + f.window.span / 2 - middle)

    nearest = min(known, key=distance)
    return (nearest.records or 0) / nearest.window.span.total_seconds()


def density_size(window: Window, observed: Sequence[Fetch], target: int) -> timedelta:
    """The window size (`window.span / 2**k`) that should hold at most about `target`
    records, judging by the density of the observed fetch nearest to `window`.

    The estimate is a plan, not evidence: a response above the target is loaded anyway.
    Without an observation (or below the target) the window stays whole."""
    per_second = _density(window, observed)
    if per_second is None:
        return window.span
    expected = per_second * window.span.total_seconds()
    if expected <= target:
        return window.span
    return nested_size(window.span, window.span * (target / expected))


def joinable(
    window: Window,
    following: Sequence[Window],
    observed: Sequence[Fetch],
    fewest: int,
    splits: Sequence[Split] = (),
) -> int:
    """How many of the windows `following` `window` to read with it, as one request:
    windows of its size, each starting where the last ends, no recorded split over any
    of them, at most `JOIN_MOST` in all, while the density of the observed fetch
    nearest to `window` says they hold fewer than `fewest` records together.

    A sparse stretch then costs a request per `JOIN_MOST` windows rather than per
    window. Like `density_size`, a plan: a response above it is loaded anyway."""
    per_second = _density(window, observed)
    if per_second is None or fewest <= 0:
        return 0

    def split_over(w: Window) -> bool:
        return any(s.period.overlaps(w) for s in splits)

    if split_over(window):
        return 0
    joined, end = 0, window.end
    for w in following[: JOIN_MOST - 1]:
        if w.start != end or w.span != window.span or split_over(w):
            break
        if per_second * (w.end - window.start).total_seconds() >= fewest:
            break
        joined, end = joined + 1, w.end
    return joined


def plan_pass(checkpoint: datetime | None, now: datetime, policy: SyncPolicy) -> PassPlan:
    """Choose the pass for a scope from its checkpoint and the local clock.

    Full spans end at `now + clock_skew`: their windows are recorded as read up to that
    end. The incremental span reaches `INCREMENTAL_LEAD` further, so the newest records of
    a server clock running ahead of ours arrive in the same pass. It starts
    `update_horizon` before the `modified_since` it sends, not before now: a record
    created just before that horizon can still change between the checkpoint and now.
    """
    end = now + policy.clock_skew
    if checkpoint is None:
        return PassPlan("backfill", Window(policy.initial_start, end))
    since = checkpoint - policy.overlap
    if now - since > MODIFIED_SINCE_LIMIT - policy.clock_skew - policy.overlap:
        return PassPlan(
            "catchup",
            Window(checkpoint - policy.update_horizon, end),
            fresh_after=now - CATCHUP_FRESHNESS,
        )
    return PassPlan(
        "incremental",
        Window(since - policy.update_horizon, end + INCREMENTAL_LEAD),
        modified_since=since,
    )


def newest_over_pieces(
    span: Window, fetches: Iterable[Fetch]
) -> Iterator[tuple[datetime, datetime, datetime | None]]:
    """The pieces of `span` between the fetches' bounds, in order, each with the latest
    fetch time covering it (None: no fetch does). A fetch covers a piece whole or not at
    all."""
    relevant = [f for f in fetches if f.window.overlaps(span)]
    points = sorted(
        {span.start, span.end}
        | {max(span.start, f.window.start) for f in relevant}
        | {min(span.end, f.window.end) for f in relevant}
    )
    for lo, hi in pairwise(points):
        times = [f.fetched_at for f in relevant if f.window.start <= lo and f.window.end >= hi]
        yield lo, hi, max(times, default=None)


def freshness(span: Window, fetches: Iterable[Fetch]) -> list[Fetch]:
    """Split `span` into segments, each with the latest fetch time covering it.

    Parts of `span` no fetch covers are left out; callers check coverage with `gaps`.
    """
    return [
        Fetch(Window(lo, hi), newest)
        for lo, hi, newest in newest_over_pieces(span, fetches)
        if newest is not None
    ]


def checkpoint_after_full_pass(
    span: Window, fetches: Sequence[Fetch], update_horizon: timedelta
) -> datetime:
    """The checkpoint earned once every window of `span` is fetched.

    A segment whose records could still change when it was fetched
    (`end + update_horizon > fetched_at`) holds only the changes made before that
    fetch, so the checkpoint can be no later than its fetch time. Segments that were
    already final when fetched do not hold the checkpoint back. Records created after
    `span.end` were never asked for, so the checkpoint never passes it either.
    """
    live = [
        seg.fetched_at
        for seg in freshness(span, fetches)
        if seg.window.end + update_horizon > seg.fetched_at
    ]
    return min([*live, span.end])


def checkpoint_after_incremental(span: Window, pieces: Sequence[Fetch]) -> datetime:
    """An incremental read holds the changes made before each of its requests reached
    the server, to records whose timestamp lies inside the requested span."""
    return min([*(p.fetched_at for p in pieces), span.end])
