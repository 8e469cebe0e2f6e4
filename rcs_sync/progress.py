"""The backfill progress bar: windows done, records, elapsed and ETA, on a terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rcs_sync.engine.sync import Listener
from rcs_sync.logs import configure_logging
from rcs_sync.model import events


@contextmanager
def progress_bar(label: str) -> Iterator[Listener]:
    """A listener for `Syncer` that draws one bar per scope. Info logs are muted while
    it draws (they would tear the bar); warnings and errors still show."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("windows · {task.fields[records]:,} records"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as progress:
        tasks: dict[str, TaskID] = {}

        def listener(event: events.Progress) -> None:
            scope = event["scope"]
            if event["event"] == "planned":
                tasks[scope] = progress.add_task(
                    f"{label} {scope}", total=event["windows"], records=0
                )
            elif scope in tasks:
                task = progress.tasks[tasks[scope]]
                progress.update(
                    tasks[scope],
                    advance=1,
                    records=int(task.fields["records"]) + event["received"],
                )

        configure_logging(json=False, level="warning")
        yield listener
