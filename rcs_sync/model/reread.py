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
latest fetches covering its parts), and `e` the `every` of the tier the cell was in *at*
`f` (its age then, `f - cell.end`, the youngest it will ever be again). A cell never
(entirely) read, or with `e` 0, is a must-read of every pass. Otherwise it comes due at
the first point after `f` of its own grid of step `e` (offset by a phase derived from the
cell's start, so the cells of one tier come due on different passes rather than all
together).

The budget. A pass reads its must-reads and at most `B = budget_cells` of the other due
cells (`DEFAULT_BUDGET`: 10 % of the horizon's cells, at least one), those that came due
first; the rest stay due and lead the next pass. So a pass's cost is bounded even after a
gap (no pass for an hour: every cell of the hourly tier due at once), and a due cell
waits only behind cells that came due no later than it: if at the first pass after it
came due `N` cells are due beyond the must-reads, it is read within `ceil(N / B)` passes.
Between regular passes fewer than `B` cells come due (default tiers, 7-day horizon,
5-minute passes: at most 10 cells a pass, must-reads included, against 16 allowed),
so the budget defers nothing.

The bound. A change made at `t` to a record of age `a` is in the warehouse after the
`ceil(N / B)`-th pass from the first pass after `t + every(tier of a)`: with passes every
`interval`, within `every(tier of a) + ceil(N / B) * interval` (plus a pass's own
duration), which is `every(tier of a) + interval` whenever `N ≤ B` (regular passes);
after a gap, from the first pass after it, `N` being the backlog the gap left, drained
`B` cells a pass. Why: the record's cell is no older than
the record, so at `f ≤ t` its tier's `every` was at most `every(tier of a)`, its grid has
a point in `(t, t + every]`, and from the first pass after that point it is read within
`ceil(N / B)` passes. This holds as long as the record is still within the horizon then;
a change to a record that leaves the horizon before its cell is read again may never be
seen (for `modified_since` streams the limit is a change more than `update_horizon`
after the record's time; here it is that much less the last tier's `every` and any
wait behind a backlog); `backfill --force` repairs it.

The checkpoint. The checkpoint of such a stream is the oldest fetch among the cells of
the horizon (`checkpoint_after_full_pass` over the horizon): every change made before
it to a record that can still change is in. It trails the clock by about the last
tier's `every`; the bound above is the sharper statement for recent records.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from rcs_sync.model.windows import GRID_ANCHOR, Fetch, Window, cut, newest_over_pieces


@dataclass(frozen=True)
class Tier:
    """Cells younger than `age` are re-read once per `every` (0: on every pass)."""

    age: timedelta
    every: timedelta


ZERO = timedelta(0)
DEFAULT_CELL = timedelta(hours=1)
DEFAULT_BUDGET = 0.1
"""The share of the horizon's cells a pass re-reads at most, beyond its must-reads."""


def default_tiers(update_horizon: timedelta) -> tuple[Tier, ...]:
    """The last hour on every pass, the last day hourly, the whole horizon daily."""
    tiers = [Tier(timedelta(hours=1), timedelta(0)), Tier(timedelta(days=1), timedelta(hours=1))]
    kept = [t for t in tiers if t.age < update_horizon]
    return (*kept, Tier(update_horizon, timedelta(days=1)))


def stream_tiers(
    configured: Mapping[str, tuple[Tier, ...]], name: str, update_horizon: timedelta
) -> tuple[Tier, ...]:
    """A stream's tiers: `[streams.NAME] reread`, else the defaults for the horizon."""
    return configured.get(name) or default_tiers(update_horizon)


def checkpoint_lag_bound(tiers: Sequence[Tier]) -> timedelta:
    """How far the checkpoint of a stream re-read in `tiers` trails the clock by design
    (passes and their backlog aside): its cells of the last tier are read once per its
    `every`, and the checkpoint is the oldest read among the horizon's cells."""
    return tiers[-1].every


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


@functools.lru_cache(maxsize=4096)
def _phase(cell: Window, every: timedelta) -> timedelta:
    """A fixed offset in `[0, every)` for the cell's re-read grid, spread by its start
    (cached: every pass asks it again for each cell of the horizon)."""
    digest = hashlib.blake2b(cell.start.isoformat().encode(), digest_size=8).digest()
    micros = every // timedelta(microseconds=1)
    return timedelta(microseconds=int.from_bytes(digest) % micros)


def next_grid_point(cell: Window, size: timedelta, every: timedelta, after: datetime) -> datetime:
    """The first point of the cell's re-read grid (step `every` > 0, its own phase) after
    `after`: when a cell last read at `after` comes due. The phase is that of the whole
    grid cell, so the horizon's oldest cell, cut short, keeps its place as the clock moves."""
    whole = Window(GRID_ANCHOR + (cell.start - GRID_ANCHOR) // size * size, cell.end)
    origin = GRID_ANCHOR + _phase(whole, every)
    return origin + ((after - origin) // every + 1) * every


def last_fetch(cell: Window, fetches: Sequence[Fetch]) -> datetime | None:
    """When the whole cell was last read: the oldest of the latest fetches covering its
    parts; None if some part of it was never read."""
    oldest: datetime | None = None
    for _lo, _hi, newest in newest_over_pieces(cell, fetches):
        if newest is None:
            return None
        if oldest is None or newest < oldest:
            oldest = newest
    return oldest


def horizon_span(now: datetime, end: datetime, update_horizon: timedelta) -> Window:
    """The records that can still change: `[now - update_horizon, end)`."""
    return Window(now - update_horizon, end)


def budget_cells(update_horizon: timedelta, cell: timedelta, budget: float) -> int:
    """How many due cells a pass re-reads beyond its must-reads: `budget` of the
    horizon's cells, at least one."""
    return max(1, int(budget * (update_horizon / cell)))


@dataclass(frozen=True)
class Due:
    """The cells of the horizon due at a moment: those a pass always reads, and the
    others, in the order they came due (the budget takes them from the front)."""

    must: list[Window]
    """Never (entirely) read, or in an every-0 tier."""
    overdue: list[Window]

    def read(self, budget: int | None) -> list[Window]:
        """What a pass reads, oldest first: the must-reads and at most `budget` of the
        others (None: all), those that came due first."""
        taken = self.overdue if budget is None else self.overdue[:budget]
        return sorted([*self.must, *taken], key=lambda w: w.start)


def latest_reads(fetches: Sequence[Fetch], span: Window) -> list[Fetch]:
    """The latest read of each window reaching into `span`. The ledger holds a row per
    read of a cell; only the newest says how fresh the cell is."""
    latest: dict[Window, Fetch] = {}
    for f in fetches:
        if f.window.overlaps(span):
            known = latest.get(f.window)
            if known is None or f.fetched_at > known.fetched_at:
                latest[f.window] = f
    return list(latest.values())


def due_cells(
    now: datetime,
    end: datetime,
    update_horizon: timedelta,
    *,
    tiers: Sequence[Tier],
    fetches: Sequence[Fetch],
    cell: timedelta = DEFAULT_CELL,
) -> Due:
    """Every cell of the horizon due at `now` (server time), before any budget."""
    span = horizon_span(now, end, update_horizon)
    # One sweep over the ledger rows sorted by start, keeping those that reach into the
    # cell at hand: each cell looks only at its own rows (a pass plans in linear time).
    rows = sorted(latest_reads(fetches, span), key=lambda f: f.window.start)
    must: list[Window] = []
    overdue: list[tuple[datetime, Window]] = []
    reaching: list[Fetch] = []
    following = 0
    for window in cut(span, cell):
        while following < len(rows) and rows[following].window.start < window.end:
            reaching.append(rows[following])
            following += 1
        reaching = [f for f in reaching if f.window.end > window.start]
        fetched = last_fetch(window, reaching)
        every = None if fetched is None else every_at(tiers, max(fetched - window.end, ZERO))
        if fetched is None or every == ZERO:
            must.append(window)
        elif every is not None:  # None: final when it was last read
            came_due = next_grid_point(window, cell, every, fetched)
            if came_due <= now:
                overdue.append((came_due, window))
    overdue.sort(key=lambda item: (item[0], item[1].start))
    return Due(must, [window for _, window in overdue])


def plan_reread(
    now: datetime,
    end: datetime,
    update_horizon: timedelta,
    *,
    tiers: Sequence[Tier],
    fetches: Sequence[Fetch],
    cell: timedelta = DEFAULT_CELL,
    budget: float | None = DEFAULT_BUDGET,
) -> list[Window]:
    """The cells a pass at `now` (server time) re-reads, oldest first: its must-reads and
    at most `budget_cells` of the others due (None: all), those that came due first.

    `end` is where full reads stop (`now + clock_skew`); the cell in progress is cut there.
    """
    due = due_cells(now, end, update_horizon, tiers=tiers, fetches=fetches, cell=cell)
    return due.read(None if budget is None else budget_cells(update_horizon, cell, budget))
