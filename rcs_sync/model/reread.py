"""Pure planning of tiered re-reads, for streams whose endpoint takes no `modified_since`.

Such an endpoint cannot say what changed, so the update horizon `[now - update_horizon,
now + clock_skew)` is re-read in cells of `cell` (default 1 hour, on the epoch grid),
recent cells often and older ones rarely. No I/O here: the plan is a function of the
clock, the tiers and the completed-window ledger (`Fetch`es).

Tiers. A tier `(age, every)` applies to cells whose age is under `age`; tiers are sorted
by age, their `every` never decreases with age, and the last one reaches the horizon
(older cells are not re-read: their records are final). A cell's age is how long before
a moment its end lies (0 for the cell in progress).

When a cell is due. Let `f` be the time the cell was last fetched (the oldest of the
latest fetches covering its parts; never fetched: due at once), and `e` the `every` of
the tier the cell was in *at* `f` (its age then, `f - cell.end`, the youngest it will
ever be again). The cell is due at `now` when `e` is 0, or when a point of its own
grid of step `e` (offset by a phase derived from the cell's start, so the cells of one
tier come due on different passes rather than all together) lies in `(f, now]`.

The bound. A change made at `t` to a record of age `a` is in the warehouse at the end
of the first pass after `t + every(tier of a)`: the record's cell is no older than the
record, so at `f ≤ t` its tier's `every` was at most `every(tier of a)`, and the
cell's grid has a point in `(t, t + every]`; the first pass after that point re-reads
it. With passes every `interval`, the delay is at most `every(tier of a) + interval`
(plus the pass's own duration), as long as the record is still within the horizon
then (`a + every + interval < update_horizon`). A change to a record that leaves the
horizon before its cell is due again may never be seen (for `modified_since` streams
the limit is a change more than `update_horizon` after the record's time; here it is
that much less the last tier's `every`); `backfill --force` repairs it.

The checkpoint. The checkpoint of such a stream is the oldest fetch among the cells of
the horizon (`checkpoint_after_full_pass` over the horizon): every change made before
it to a record that can still change is in. It trails the clock by about the last
tier's `every`; the bound above is the sharper statement for recent records.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from rcs_sync.model.windows import GRID_ANCHOR, Fetch, Window, cut, freshness, gaps


@dataclass(frozen=True)
class Tier:
    """Cells younger than `age` are re-read once per `every` (0: on every pass)."""

    age: timedelta
    every: timedelta


DEFAULT_CELL = timedelta(hours=1)


def default_tiers(update_horizon: timedelta) -> tuple[Tier, ...]:
    """The last hour on every pass, the last day hourly, the whole horizon daily."""
    tiers = [Tier(timedelta(hours=1), timedelta(0)), Tier(timedelta(days=1), timedelta(hours=1))]
    kept = [t for t in tiers if t.age < update_horizon]
    return (*kept, Tier(update_horizon, timedelta(days=1)))


def check_tiers(tiers: Sequence[Tier], update_horizon: timedelta) -> str | None:
    """Why `tiers` cannot plan re-reads of `update_horizon`, if they cannot."""
    if not tiers:
        return "needs at least one tier"
    for a, b in itertools.pairwise(tiers):
        if b.age <= a.age:
            return "tier ages must increase"
        if b.every < a.every:
            return "a tier's every must not be shorter than a younger tier's"
    if any(t.every < timedelta(0) or t.age <= timedelta(0) for t in tiers):
        return "ages must be positive and every not negative"
    if tiers[-1].age < update_horizon:
        return f"the last tier's age must reach the update horizon ({update_horizon})"
    return None


def every_at(tiers: Sequence[Tier], age: timedelta) -> timedelta | None:
    """The `every` of the tier a cell of `age` is in; None beyond the last tier."""
    for tier in tiers:
        if age < tier.age:
            return tier.every
    return None


def _phase(cell: Window, every: timedelta) -> timedelta:
    """A fixed offset in `[0, every)` for the cell's re-read grid, spread by its start."""
    digest = hashlib.blake2b(cell.start.isoformat().encode(), digest_size=8).digest()
    micros = every // timedelta(microseconds=1)
    return timedelta(microseconds=int.from_bytes(digest) % micros)


def grid_point_between(cell: Window, every: timedelta, after: datetime, until: datetime) -> bool:
    """Whether the cell's re-read grid (step `every`, its own phase) has a point in
    `(after, until]`."""
    if every <= timedelta(0):
        return True
    origin = GRID_ANCHOR + _phase(cell, every)
    return (until - origin) // every > (after - origin) // every


def last_fetch(cell: Window, fetches: Sequence[Fetch]) -> datetime | None:
    """When the whole cell was last read: the oldest of the latest fetches covering its
    parts; None if some part of it was never read."""
    if gaps(cell, [f.window for f in fetches]):
        return None
    return min(seg.fetched_at for seg in freshness(cell, fetches))


def horizon_span(now: datetime, end: datetime, update_horizon: timedelta) -> Window:
    """The records that can still change: `[now - update_horizon, end)`."""
    return Window(now - update_horizon, end)


def plan_reread(
    now: datetime,
    end: datetime,
    update_horizon: timedelta,
    *,
    tiers: Sequence[Tier],
    fetches: Sequence[Fetch],
    cell: timedelta = DEFAULT_CELL,
) -> list[Window]:
    """The cells of the horizon due for a re-read at `now` (server time), oldest first.

    `end` is where full reads stop (`now + clock_skew`); the cell in progress is cut there.
    """
    span = horizon_span(now, end, update_horizon)
    latest: dict[Window, Fetch] = {}
    for f in fetches:
        if f.window.end > span.start and f.window.start < span.end:
            known = latest.get(f.window)
            if known is None or f.fetched_at > known.fetched_at:
                latest[f.window] = f
    # Ledger rows sorted by start: each cell looks only at the rows that reach into it.
    rows = sorted(latest.values(), key=lambda f: f.window.start)
    due: list[Window] = []
    for window in cut(span, cell):
        fetched = last_fetch(
            window, [f for f in rows if f.window.start < window.end and f.window.end > window.start]
        )
        if fetched is None:
            due.append(window)
            continue
        every = every_at(tiers, max(fetched - window.end, timedelta(0)))
        if every is None:
            continue  # final when it was last read
        if grid_point_between(window, every, fetched, now):
            due.append(window)
    return due
