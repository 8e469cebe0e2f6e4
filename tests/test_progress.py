"""The backfill progress bar measures the span read, so windows planned smaller or split
still end it at 100 % (it once showed "28/6 windows")."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.progress import Progress

from rcs_sync.model import events
from rcs_sync.model.durations import format_instant
from rcs_sync.model.windows import Window, cut
from rcs_sync.progress import COLUMNS, Bars
from tests.conftest import Site

SiteFactory = Callable[..., Site]
T0 = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def loaded(scope: str, window: Window, received: int) -> events.WindowLoaded:
    return events.WindowLoaded(
        event="window",
        scope=scope,
        window_start=format_instant(window.start),
        window_end=format_instant(window.end),
        received=received,
        inserted=received,
        updated=0,
        quarantined=0,
    )


def test_a_bar_ends_full_however_many_windows_the_planned_ones_became() -> None:
    out = io.StringIO()
    progress = Progress(*COLUMNS, console=Console(file=out, force_terminal=True, width=120))
    with progress:  # drawn on `out`, as on a terminal
        bars = Bars(progress, "backfill")
        planned = [Window(T0, T0 + DAY), Window(T0 + DAY, T0 + 2 * DAY)]
        for scope in ("all", "team-2"):
            bars.listen(
                events.Planned(
                    event="planned", scope=scope, windows=2, seconds=2 * DAY.total_seconds()
                )
            )
        pieces = [*cut(planned[0], DAY / 4), *planned[1].halves()]  # planned smaller; split
        for piece in pieces[:-1]:
            bars.listen(loaded("all", piece, 10))
        (first, second) = progress.tasks
        assert first.completed < 2 * DAY.total_seconds() == first.total
        bars.listen(loaded("all", pieces[-1], 10))
        assert first.completed == first.total == 2 * DAY.total_seconds()
        assert first.fields == {"windows": 6, "records": 60}
        assert (second.completed, second.fields) == (0, {"windows": 0, "records": 0})
    assert "100%" in out.getvalue() and "6 windows · 60 records" in out.getvalue()


def test_the_windows_a_backfill_loads_cover_the_span_it_planned(site: SiteFactory) -> None:
    # Dense days, a small target, one request at a time: every day after the first is
    # planned in pieces.
    s = site(
        records=20_000,
        days=4,
        sync={"target_records_per_request": 1_000},
        api={"concurrency": 1},
    )
    done = s.ok("sync", "--events")
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    (planned,) = [e for e in lines if e["event"] == "planned"]
    windows = [e for e in lines if e["event"] == "window"]
    assert len(windows) > planned["windows"]
    read = sum(
        (
            datetime.fromisoformat(e["window_end"]) - datetime.fromisoformat(e["window_start"])
            for e in windows
        ),
        timedelta(),
    )
    assert abs(read.total_seconds() - planned["seconds"]) < 0.001 * len(windows)
