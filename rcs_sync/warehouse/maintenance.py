"""A lake's upkeep: fewer, larger files, old snapshots expired, dead files deleted.

Every commit to a DuckLake writes new Parquet files (or inlines its few rows in the
catalog), and every upsert marks rows deleted in older files, so a daemon committing
every few minutes leaves thousands of small files a reader must open; killed
transactions leave files no snapshot knows (orphans); and time travel keeps every
replaced file. `maintain` runs DuckLake's own functions in the order that lets each
feed the next: flush inlined rows to files, rewrite files heavy with deletes, merge
adjacent small files, expire snapshots older than `expire_snapshots_after`, then delete
the files nothing references and the orphans, once `remove_files_after` old (a reader
may still be scanning a file just replaced, another writer writing one not yet
committed).

It is bounded by `budget`: work is cut into calls of bounded size (per table, a few
merges per call, a chunk of snapshots per expiry) and no call starts once the budget is
spent or a stop was asked; the report says which step was left undone, and an
incomplete run is due again at the next pass. Each run is recorded in the lake
(`lake_maintenance`), which is how a pass knows whether one is due.

A DuckDB file needs none of this: its own checkpoints reclaim space as it goes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import duckdb

from rcs_sync.config import MaintenanceSettings
from rcs_sync.model.errors import WarehouseUnavailable

TABLE = "lake_maintenance"
DDL = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} (started_at TIMESTAMPTZ NOT NULL, "
    "seconds DOUBLE NOT NULL, complete BOOLEAN NOT NULL, report VARCHAR NOT NULL)"
)
MERGES_PER_CALL = 8
"""`max_compacted_files`: output files one merge call writes per table (each from as many
small inputs as fit DuckLake's target file size), so one call's memory stays bounded."""
SNAPSHOTS_PER_CALL = 500
"""Snapshots one expiry call removes."""
DELETE_THRESHOLD = 0.5
"""A file is rewritten once half its rows are deleted (DuckLake's default, 0.95, lets an
upserted table's reads skip nearly twice the rows they return)."""

Kind = Literal["ducklake", "duckdb"]


@dataclass
class Report:
    """What one run did, for the log line, `rcs-sync maintain` and `lake_maintenance`."""

    kind: Kind
    started_at: str
    seconds: float = 0.0
    data_files_before: int = 0
    data_files_after: int = 0
    delete_files_before: int = 0
    delete_files_after: int = 0
    tables_flushed: int = 0
    files_rewritten: int = 0
    files_merged: int = 0
    snapshots_expired: int = 0
    old_files_removed: int = 0
    orphans_removed: int = 0
    calls: int = 0
    stopped_before: str | None = None
    """The step the budget (or a stop) left undone; None when the run completed."""
    stop_reason: str | None = None

    @property
    def complete(self) -> bool:
        return self.stopped_before is None

    def figures(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


class _OutOfTime(Exception):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(step)
        self.step = step
        self.reason = reason


def kind(con: duckdb.DuckDBPyConnection) -> Kind:
    """The kind of the connection's current database (a `Lake` connection USEs its lake)."""
    row = con.execute(
        "SELECT type FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    return "ducklake" if row is not None and row[0] == "ducklake" else "duckdb"


def due(con: duckdb.DuckDBPyConnection, settings: MaintenanceSettings, now: datetime) -> bool:
    """Whether a pass should maintain this warehouse now: a lake, maintenance enabled,
    whose last run started `every` ago or more, or did not complete (none yet: due)."""
    if not settings.enabled or kind(con) != "ducklake":
        return False
    con.execute(DDL)
    row = con.execute(
        f"SELECT started_at, complete FROM {TABLE} ORDER BY started_at DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return True
    started, complete = row
    return not complete or now - started.astimezone(UTC) >= settings.every


def maintain(
    con: duckdb.DuckDBPyConnection,
    settings: MaintenanceSettings,
    *,
    stop: threading.Event | None = None,
    now: datetime | None = None,
) -> Report:
    """Run every step on the connection's current database, within `settings.budget`,
    and record the run; a DuckDB file gets a CHECKPOINT only. `now`: when the run
    starts, which snapshots' ages are measured from (default: the clock's)."""
    started = now or datetime.now(UTC)
    began = time.monotonic()
    report = Report(kind=kind(con), started_at=started.isoformat())
    if report.kind == "duckdb":
        con.execute("CHECKPOINT")
        report.seconds = round(time.monotonic() - began, 3)
        return report
    con.execute(DDL)
    alias = _current(con)
    report.data_files_before, report.delete_files_before = _live_files(con, alias)
    run = _Calls(con, began + settings.budget.total_seconds(), stop, report)
    try:
        _steps(run, alias, settings, started)
    except _OutOfTime as out:
        report.stopped_before = out.step
        report.stop_reason = out.reason
    report.data_files_after, report.delete_files_after = _live_files(con, alias)
    report.seconds = round(time.monotonic() - began, 3)
    con.execute(
        f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?)",
        [started, report.seconds, report.complete, json.dumps(report.figures())],
    )
    return report


class _Calls:
    """DuckLake calls within the budget: each after the first checks the deadline and
    the stop first, so any run makes progress and none outlives its budget by more than
    one call."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        deadline: float,
        stop: threading.Event | None,
        report: Report,
    ) -> None:
        self.con = con
        self.deadline = deadline
        self.stop = stop
        self.report = report

    def __call__(self, step: str, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        if self.stop is not None and self.stop.is_set():
            raise _OutOfTime(step, "stop requested")
        if self.report.calls and time.monotonic() >= self.deadline:
            raise _OutOfTime(step, "budget spent")
        self.report.calls += 1
        try:
            return self.con.execute(sql, list(params)).fetchall()
        except duckdb.InterruptException:
            raise
        except duckdb.Error as exc:
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WarehouseUnavailable(f"lake maintenance: {step} failed: {first_line}") from None


def _steps(run: _Calls, alias: str, settings: MaintenanceSettings, started: datetime) -> None:
    """Flush, rewrite and merge table by table, then expire and delete catalog-wide."""
    report = run.report
    lake = _text(alias)
    tables = [
        (_text(schema), _text(table))
        for schema, table in run.con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? "
            "ORDER BY schema_name, table_name",
            [alias],
        ).fetchall()
    ]
    for schema, table in tables:
        run(
            "flush",
            f"CALL ducklake_flush_inlined_data({lake}, table_name => {table}, "
            f"schema_name => {schema})",
        )
        report.tables_flushed += 1
    for schema, table in tables:
        report.files_rewritten += _processed(
            run(
                "rewrite",
                f"SELECT files_processed FROM ducklake_rewrite_data_files({lake}, {table}, "
                f"schema => {schema}, delete_threshold => ?)",
                [DELETE_THRESHOLD],
            )
        )
    for schema, table in tables:
        while True:
            rows = run(
                "merge",
                f"SELECT files_processed FROM ducklake_merge_adjacent_files({lake}, {table}, "
                f"schema => {schema}, max_compacted_files => ?)",
                [MERGES_PER_CALL],
            )
            merged = _processed(rows)
            report.files_merged += merged
            # Fewer outputs than the cap, or no file saved: nothing left worth a call.
            if len(rows) < MERGES_PER_CALL or merged <= len(rows):
                break
    expired = [
        int(version)
        for (version,) in run.con.execute(
            f"SELECT snapshot_id FROM ducklake_snapshots({lake}) WHERE snapshot_time < ? "
            f"AND snapshot_id < (SELECT max(snapshot_id) FROM ducklake_snapshots({lake})) "
            "ORDER BY snapshot_id",
            [started - settings.expire_snapshots_after],
        ).fetchall()
    ]
    for first in range(0, len(expired), SNAPSHOTS_PER_CALL):
        chunk = expired[first : first + SNAPSHOTS_PER_CALL]
        report.snapshots_expired += len(
            run("expire", f"CALL ducklake_expire_snapshots({lake}, versions => ?)", [chunk])
        )
    # Measured when called: the files this run just replaced count from now.
    report.old_files_removed = len(
        run(
            "cleanup",
            f"CALL ducklake_cleanup_old_files({lake}, older_than => ?)",
            [datetime.now(UTC) - settings.remove_files_after],
        )
    )
    report.orphans_removed = len(
        run(
            "orphans",
            f"CALL ducklake_delete_orphaned_files({lake}, older_than => ?)",
            [datetime.now(UTC) - settings.remove_files_after],
        )
    )


def _processed(rows: list[tuple[Any, ...]]) -> int:
    return sum(int(r[0]) for r in rows)


def _current(con: duckdb.DuckDBPyConnection) -> str:
    row = con.execute("SELECT current_database()").fetchone()
    assert row is not None
    return str(row[0])


def _text(value: str) -> str:
    """A SQL string literal (DuckLake's functions take the catalog's name as a constant)."""
    return "'" + value.replace("'", "''") + "'"


def _live_files(con: duckdb.DuckDBPyConnection, alias: str) -> tuple[int, int]:
    """Data and delete files the current snapshot reads."""
    row = con.execute(
        "SELECT coalesce(sum(file_count), 0), coalesce(sum(delete_file_count), 0) "
        f"FROM ducklake_table_info({_text(alias)})"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def render(report: Report) -> str:
    """`rcs-sync maintain` on a terminal."""
    if report.kind == "duckdb":
        return (
            f"a DuckDB file needs no maintenance: checkpointed in {report.seconds}s "
            "(compaction, snapshots and old files are a lake's)"
        )
    state = (
        "complete"
        if report.complete
        else f"stopped before {report.stopped_before} ({report.stop_reason}); "
        "the next pass continues"
    )
    return (
        f"lake maintained in {report.seconds}s, {state}: data files "
        f"{report.data_files_before} -> {report.data_files_after}, delete files "
        f"{report.delete_files_before} -> {report.delete_files_after}; "
        f"{report.files_rewritten} rewritten, {report.files_merged} merged, "
        f"{report.snapshots_expired} snapshots expired, {report.old_files_removed} old files "
        f"and {report.orphans_removed} orphans removed"
    )
