"""The window ledger's pruning (`warehouse/ledger.py`), in a real warehouse file, over
days of tiered re-read passes with a moved clock: the table stays bounded, and every
plan made from it is the one the unpruned ledger gives."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rcs_sync.model.commits import Commit
from rcs_sync.model.reread import default_tiers, plan_reread
from rcs_sync.model.streams import named
from rcs_sync.model.windows import (
    CATCHUP_FRESHNESS,
    Fetch,
    Window,
    checkpoint_after_full_pass,
    plan_windows,
)
from rcs_sync.warehouse import ledger
from rcs_sync.warehouse.duckdb_file import Warehouse

T0 = datetime(2026, 3, 1, 0, 2, 30, tzinfo=UTC)
DAY, MINUTE = timedelta(days=1), timedelta(minutes=1)
HORIZON, SKEW, INTERVAL = 2 * DAY, 5 * MINUTE, 30 * MINUTE
PER_DAY = DAY // INTERVAL
SMS = named("text_records")
HISTORY = Window(T0 - 10 * DAY, T0)


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    wh = Warehouse(tmp_path / "rcs.duckdb", lock_timeout=5.0)
    with wh.held():
        wh.migrate()
        yield wh


def commit(wh: Warehouse, windows: list[Window], at: datetime) -> None:
    """One pass's reads, in one transaction; the last completes the pass."""
    with wh.connect() as con:
        con.execute("BEGIN TRANSACTION")
        for n, window in enumerate(windows, 1):
            done = at if n == len(windows) else None
            read = Commit(SMS, "all", 1, at, window, checkpoint=done, horizon=HORIZON + SKEW)
            ledger.record(con, read, 0, at)
        con.execute("COMMIT")


def rows(wh: Warehouse) -> int:
    [(n,)] = wh.query("SELECT count(*) FROM sync_windows")
    return int(n)


def test_the_ledger_stays_bounded_and_every_plan_is_the_unpruned_ones(
    warehouse: Warehouse,
) -> None:
    every: list[Fetch] = []  # what the ledger held before pruning
    for start in range(10):
        day = Window(HISTORY.start + start * DAY, HISTORY.start + (start + 1) * DAY)
        commit(warehouse, [day], T0)
        every.append(Fetch(day, T0))
    tiers = default_tiers(HORIZON)
    sizes = []
    for n in range(1, 5 * PER_DAY + 1):  # five days of 30-minute passes
        now = T0 + n * INTERVAL
        kept = warehouse.fetches(SMS, "all")
        span = Window(now - HORIZON, now + SKEW)
        due = plan_reread(now, span.end, HORIZON, tiers=tiers, fetches=kept)
        assert due == plan_reread(now, span.end, HORIZON, tiers=tiers, fetches=every), now
        assert checkpoint_after_full_pass(span, kept, HORIZON) == checkpoint_after_full_pass(
            span, every, HORIZON
        )
        # A backfill resumed over all of it skips the same windows; so does a catch-up.
        whole = Window(HISTORY.start, span.end)
        for fresh in (None, now - CATCHUP_FRESHNESS):
            assert plan_windows(whole, kept, DAY, fresh) == plan_windows(whole, every, DAY, fresh)
        commit(warehouse, due, now)
        every += [Fetch(window, now) for window in due]
        sizes.append(rows(warehouse))
    # Unpruned, the ledger grows by the cells each pass reads; pruned, it levels off.
    assert len(every) > 600
    # What stays: the 10 backfill windows, a row per cell of the horizon, the cells that
    # left it but were read too recently to merge (up to a day's), a row a day before.
    assert max(sizes[-PER_DAY:]) <= max(sizes[2 * PER_DAY : 3 * PER_DAY]) + 2, sizes[::PER_DAY]
    assert sizes[-1] <= 10 + 49 + 25 + 5, sizes[::PER_DAY]


def test_a_window_read_again_keeps_one_row_and_an_older_read_is_not_written(
    warehouse: Warehouse,
) -> None:
    cell = Window(T0, T0 + timedelta(hours=1))
    commit(warehouse, [cell, cell], T0 + 2 * timedelta(hours=1))  # the same read, twice
    commit(warehouse, [Window(T0, T0 + 30 * MINUTE)], T0 + timedelta(hours=1))  # older, inside
    assert warehouse.fetches(SMS, "all") == [Fetch(cell, T0 + 2 * timedelta(hours=1), 0)]
    # A later read of a larger window supersedes it; other streams' rows stay.
    day = Window(T0, T0 + DAY)
    with warehouse.connect() as con:
        ledger.record(con, Commit(named("call_records"), "all", 1, T0, cell), 0, T0)
    commit(warehouse, [day], T0 + DAY)
    assert warehouse.fetches(SMS, "all") == [Fetch(day, T0 + DAY, 0)]
    assert len(warehouse.fetches(named("call_records"), "all")) == 1
