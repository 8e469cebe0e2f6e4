"""The backfill progress bar: the share of the span read, windows and records, elapsed
and ETA, on a terminal.

It measures the span, not windows: the planner cuts a window where the density seen
says it would hold too many records, and a window the server chokes on is read in
halves, so a pass may load many more windows than it planned (28 of 6 planned, for four
dense days), while the windows it loads always cover exactly the span it planned.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rcs_sync.engine.sync import Listener
from rcs_sync.logs import configure_logging
from rcs_sync.model import events
from rcs_sync.model.durations import parse_instant

COLUMNS = (
    TextColumn("[bold]{task.description}"),
    BarColumn(),
    TaskProgressColumn(),
    TextColumn("{task.fields[windows]:,} windows · {task.fields[records]:,} records"),
    TimeElapsedColumn(),
    TimeRemainingColumn(),
)


@dataclass
class Bars:
    """One bar per scope on `progress`, driven by a pass's events."""

    progress: Progress
    label: str
    tasks: dict[str, TaskID] = field(default_factory=dict)

    def listen(self, event: events.Progress) -> None:
        scope = event["scope"]
        if event["event"] == "planned":
            self.tasks[scope] = self.progress.add_task(
                f"{self.label} {scope}", total=event["seconds"], windows=0, records=0
            )
        elif scope in self.tasks:
            task = self.progress.tasks[self.tasks[scope]]
            read = parse_instant(event["window_end"]) - parse_instant(event["window_start"])
            self.progress.update(
                self.tasks[scope],
                advance=read.total_seconds(),
                windows=int(task.fields["windows"]) + 1,
                records=int(task.fields["records"]) + event["received"],
            )


@contextmanager
def progress_bar(label: str) -> Iterator[Listener]:
    """A listener for `Syncer` that draws one bar per scope. Info logs are muted while
    it draws (they would tear the bar); warnings and errors still show."""
    with Progress(*COLUMNS) as progress:
        configure_logging(json=False, level="warning")
        yield Bars(progress, label).listen
