"""The analysts' read-only snapshot of the warehouse, published after every successful pass.

DuckDB lets one process write a file or many read it, never both, so analysts do not
open the live file: they open the snapshot, which `publish` replaces atomically. A
reader keeps the file it opened until it reconnects, and the daemon never waits for it.

How. The snapshot is a hard link to a *generation*: a complete DuckDB file kept in the
hidden directory `.<snapshot name>.d/` beside it. `publish` brings the *spare*
generation (the one published before the current one) up to date in place, reading the
warehouse through a read-only connection (or the pass's own, which keeps other writers
out as well), then points the snapshot at it with `os.replace`. Only rows the spare
lacks are written, in one transaction:

- a table with a primary key and an `updated_at` column (the record tables: every
  insert and change sets `updated_at`) gives the rows changed since the spare's
  previous refresh (`snapshot_info.as_of` minus `OVERLAP`) without reading the rest;
- the bookkeeping tables and the logs (keyless, only ever appended to, like a stream's
  history table, which grows with every record) are read likewise through a condition
  their changed rows meet (`CHANGED`, and for the warehouse's streams their quarantine
  and history tables); a log whose row count is unchanged has nothing new;
- the window ledger, small and pruned in place, is copied whole (`REPLACED`);
- any other table is compared with the spare's copy in full.

A *full* refresh, a byte copy of the warehouse file (and its WAL), replaces the spare
when there is none, when a reader still holds it (DuckDB's own file lock tells us), when
the schema or the storage version differs (a migration ran), when the clock went
backwards, or when row counts differ afterwards (a row deleted from the warehouse, which
deletes only ledger rows, copied whole anyway, or a change whose `updated_at` lies
before the watermark).

Why not copy the file every time. On 10M records (a 294 MB file, 2 cores, see
`bench/snapshot_bench.py`) a byte copy to a new file with fsync takes ~0.9 s and writes
294 MB every pass, more than the ~0.25 s pass itself, and grows with the warehouse; the
incremental refresh takes ~0.15-0.2 s and writes ~4 MB, and grows with the pass. A
logical copy (`COPY FROM DATABASE`) takes ~6.5 s. The price: two generations on disk
(plus any older one a connected reader still holds, freed when it disconnects), and
trust in `updated_at`, which the loader sets while holding the write lock.

Crash safety: a generation is written only while the snapshot does not point at it and
no reader holds it; new files are built under temporary names; the swap is a rename. A
crash at any instant leaves the previous snapshot intact, and the next publish clears
the leftovers.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import duckdb
import structlog

from rcs_sync.model.errors import WarehouseUnavailable
from rcs_sync.model.streams import Stream
from rcs_sync.warehouse import files
from rcs_sync.warehouse.duckdb_file import Warehouse
from rcs_sync.warehouse.storage import storage_version
from rcs_sync.warehouse.validation import quote

log = structlog.get_logger(__name__)

FILE_MODE = 0o640
INFO_TABLE = "snapshot_info"
"""One row, `as_of`: every change committed to the warehouse before it is in the snapshot."""
OVERLAP = timedelta(minutes=5)
"""Rows changed this long before the previous refresh are copied again, in case a
writer's clock lagged a little; copying a row twice is harmless."""
TRACKED = "updated_at"
CHANGED: Mapping[str, str] = MappingProxyType(
    {
        "sync_splits": "recorded_at >= $since",
        "sync_runs": "started_at >= $since OR finished_at IS NULL OR finished_at >= $since",
        "schema_streams": "applied_at >= $since",
    }
)
"""For tables without `updated_at`, a condition every row added or changed since
`$since` meets (our clock stamps them; a run's row changes only while it runs). Each
stream's quarantine table has one (`QUARANTINED`), and so has its history table: its
rows are written with their record's upsert, which sets the record's `updated_at`. A
row a refresh misses leaves the row counts different, which forces a full copy."""
QUARANTINED = "quarantined_at >= $since"
REPLACED = frozenset({"sync_windows"})
"""Small tables the warehouse prunes in place (the window ledger, `ledger.py`): copied
whole, so the rows it deleted leave the copy too."""
SNAP = "_rcs_snapshot"
"""Alias of the generation attached to the connection reading the warehouse."""


@dataclass(frozen=True)
class SnapshotResult:
    path: Path
    seconds: float
    bytes: int
    mode: str
    """"incremental" (the spare generation was brought up to date) or "full" (a copy)."""


def publish(
    main: Path, snapshot: Path, *, memory_limit: str = "300MB", threads: int = 2
) -> SnapshotResult:
    """Bring the snapshot up to date with the warehouse file `main`: `publish_from`."""
    return publish_from(Warehouse(main, memory_limit=memory_limit, threads=threads), snapshot)


def publish_from(warehouse: Warehouse, snapshot: Path) -> SnapshotResult:
    """Bring the snapshot up to date with the warehouse and swap it in atomically.

    Reads the warehouse through a read-only connection, waiting like any rcs-sync
    connection while a writer holds it; or, in a pass holding its own (`held`), through
    that one, which keeps other writers out just as well and saves opening the file.
    Do not call it from a process that holds a connection to the snapshot: DuckDB's file
    lock protects only other processes' readers from the in-place refresh.
    """
    began = time.perf_counter()
    main = warehouse.path
    if snapshot.resolve() == main.resolve():
        raise WarehouseUnavailable(f"the snapshot path {snapshot} is the warehouse itself")
    store = _Generations(snapshot)
    with store.locked(), warehouse.connect(read_only=True) as con:
        as_of = datetime.now(UTC)
        current = store.current()
        generation = None
        for spare in store.spares(current):
            reason = _refresh(con, spare, as_of, warehouse.streams)
            if reason is None:
                generation = spare
                break
            log.info("snapshot_spare_unusable", generation=spare.name, reason=reason)
        mode = "incremental"
        if generation is None:
            generation, mode = _copy(con, main, store, as_of), "full"
        store.point_at(generation)
        store.discard(keep=(generation, current))
    return SnapshotResult(snapshot, time.perf_counter() - began, snapshot.stat().st_size, mode)


class _Generations:
    """The generations of one snapshot, in a hidden directory beside it."""

    def __init__(self, snapshot: Path) -> None:
        self.snapshot = snapshot
        self.dir = snapshot.with_name(f".{snapshot.name}.d")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One publisher at a time; it first clears what a crashed one left behind."""
        self.dir.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for leftover in self.dir.glob("tmp-*"):
                leftover.unlink()
            yield
        finally:
            os.close(fd)

    def all(self) -> list[Path]:
        return list(self.dir.glob("gen-*.duckdb"))

    def temporary(self) -> Path:
        return self.dir / f"tmp-{secrets.token_hex(8)}.duckdb"

    def current(self) -> Path | None:
        """The generation the snapshot points at, if any."""
        if not self.snapshot.exists():
            return None
        return next((g for g in self.all() if os.path.samefile(g, self.snapshot)), None)

    def spares(self, current: Path | None) -> list[Path]:
        """The other generations, most recently refreshed first."""
        others = [g for g in self.all() if g != current]
        return sorted(others, key=lambda g: g.stat().st_mtime, reverse=True)

    def point_at(self, generation: Path) -> None:
        link = self.temporary()
        os.link(generation, link)
        os.replace(link, self.snapshot)
        files.fsync(self.snapshot.parent)

    def discard(self, keep: tuple[Path | None, ...]) -> None:
        """Delete all but `keep`; a reader still holding a deleted one keeps reading it."""
        for generation in self.all():
            if generation not in keep:
                files.wal(generation).unlink(missing_ok=True)
                generation.unlink()


def _refresh(
    con: duckdb.DuckDBPyConnection, generation: Path, as_of: datetime, streams: tuple[Stream, ...]
) -> str | None:
    """Bring a spare generation up to date in place; else say why it cannot be."""
    try:
        con.execute(f"ATTACH ? AS {SNAP} (READ_WRITE)", [str(generation)])
    except duckdb.Error as exc:
        return f"cannot open it (held by a reader?): {exc}"
    try:
        reason = _update(con, as_of, streams)
        if reason is None:
            con.execute(f"CHECKPOINT {SNAP}")
    finally:
        con.execute(f"DETACH {SNAP}")
    if reason is None:
        files.fsync(generation)
    return reason


def _update(
    con: duckdb.DuckDBPyConnection, as_of: datetime, streams: tuple[Stream, ...]
) -> str | None:
    """Refresh the attached spare in one transaction; else say why only a copy will do."""
    source = files.one(con, "SELECT current_database()")
    if storage_version(con, source) != storage_version(con, SNAP):
        # A generation keeps its format; a copy of the rewritten warehouse takes its new one.
        return "the warehouse storage version changed"
    if not _same_schema(con, source):
        return "the warehouse schema changed"
    since: datetime = files.one(con, f"SELECT as_of FROM {SNAP}.main.{INFO_TABLE}")
    if since > as_of:
        return "the clock went backwards"
    tables = _tables(con, source, streams)
    con.execute("BEGIN TRANSACTION")
    try:
        for table in tables:
            table.refresh(con, source, since - OVERLAP)
        differ = [
            t.name
            for t in tables
            if not files.one(con, f"SELECT ({t.count(source)}) = ({t.count(SNAP)})")
        ]
        if not differ:
            con.execute(f"UPDATE {SNAP}.main.{INFO_TABLE} SET as_of = ?", [as_of])
    except BaseException:
        con.execute("ROLLBACK")
        raise
    if differ:
        con.execute("ROLLBACK")
        return f"row counts differ after the refresh: {', '.join(differ)}"
    con.execute("COMMIT")
    return None


def _copy(con: duckdb.DuckDBPyConnection, main: Path, store: _Generations, as_of: datetime) -> Path:
    """A new generation, byte for byte the warehouse (which `con` keeps from changing)."""
    log.info("snapshot_full_copy", bytes=main.stat().st_size)
    building = store.temporary()
    shutil.copyfile(main, building)
    os.chmod(building, FILE_MODE)
    if files.wal(main).exists():
        shutil.copyfile(files.wal(main), files.wal(building))
    con.execute(f"ATTACH ? AS {SNAP} (READ_WRITE)", [str(building)])
    try:
        con.execute(f"CREATE TABLE {SNAP}.main.{INFO_TABLE} (as_of TIMESTAMPTZ NOT NULL)")
        con.execute(f"INSERT INTO {SNAP}.main.{INFO_TABLE} VALUES (?)", [as_of])
        con.execute(f"CHECKPOINT {SNAP}")
    finally:
        con.execute(f"DETACH {SNAP}")
    files.fsync(building)
    generation = store.dir / f"gen-{secrets.token_hex(8)}.duckdb"
    os.replace(building, generation)
    files.fsync(store.dir)
    return generation


@dataclass(frozen=True)
class _Table:
    """One table of the warehouse, and how the spare's copy of it is refreshed."""

    schema: str
    name: str
    key: tuple[str, ...]
    recent: str | None
    """A condition (on `$since`) every row added or changed since then meets, if known."""

    def ref(self, database: str) -> str:
        return f"{quote(database)}.{quote(self.schema)}.{quote(self.name)}"

    def count(self, database: str) -> str:
        return f"SELECT count(*) FROM {self.ref(database)}"

    def refresh(self, con: duckdb.DuckDBPyConnection, source: str, since: datetime) -> None:
        """Write the warehouse's rows that are new or changed since the spare's copy.

        They are found among the `recent` rows without reading the rest of the table;
        a keyless table (a log, only appended to) is compared with the spare's copy
        on those rows only, or not at all if both hold as many rows. A table with no
        `recent` condition is compared in full. Rows deleted from the warehouse are
        not removed: the row counts then differ.
        """
        target, origin = self.ref(SNAP), self.ref(source)
        if self.name in REPLACED:
            con.execute(f"DELETE FROM {target}")
            con.execute(f"INSERT INTO {target} FROM {origin}")
            return
        if self.recent is None:
            diff = "EXCEPT" if self.key else "EXCEPT ALL"
            con.execute(f"CREATE OR REPLACE TEMP TABLE _new AS FROM {origin} {diff} FROM {target}")
        elif self.key:
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE _new AS FROM {origin} WHERE {self.recent}",
                {"since": since},
            )
        else:
            if files.one(con, f"SELECT ({self.count(source)}) = ({self.count(SNAP)})"):
                return
            recent = f"WHERE {self.recent}"
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE _new AS"
                f" (FROM {origin} {recent}) EXCEPT ALL (FROM {target} {recent})",
                {"since": since},
            )
        if not files.one(con, "SELECT count(*) FROM _new"):
            return
        if self.key:
            match = " AND ".join(f"t.{quote(k)} = n.{quote(k)}" for k in self.key)
            con.execute(f"DELETE FROM {target} AS t USING _new AS n WHERE {match}")
        con.execute(f"INSERT INTO {target} FROM _new")


def _tables(
    con: duckdb.DuckDBPyConnection, database: str, streams: tuple[Stream, ...]
) -> list[_Table]:
    rows = con.execute(
        """
        SELECT schema_name, table_name, coalesce(k.constraint_column_names, []),
               c.column_name IS NOT NULL
        FROM (SELECT * FROM duckdb_tables() WHERE database_name = $db)
        LEFT JOIN (SELECT schema_name, table_name, constraint_column_names
                   FROM duckdb_constraints()
                   WHERE database_name = $db AND constraint_type = 'PRIMARY KEY') AS k
            USING (schema_name, table_name)
        LEFT JOIN (SELECT schema_name, table_name, column_name FROM duckdb_columns()
                   WHERE database_name = $db AND column_name = $tracked) AS c
            USING (schema_name, table_name)
        ORDER BY ALL
        """,
        {"db": database, "tracked": TRACKED},
    ).fetchall()
    return [
        _Table(
            schema,
            name,
            tuple(key),
            f"{TRACKED} >= $since" if key and tracked else _changed_since(name, database, streams),
        )
        for schema, name, key, tracked in rows
    ]


def _changed_since(table: str, database: str, streams: tuple[Stream, ...]) -> str | None:
    """The `recent` condition of a table without `updated_at`, if it has one; about
    either copy (a history table's refers to the warehouse `database`'s records)."""
    if table in CHANGED:
        return CHANGED[table]
    for stream in streams:
        if stream.quarantine_table == table:
            return QUARANTINED
        if stream.history is not None and stream.history.table == table:
            key = quote(stream.key)
            records = f"{quote(database)}.main.{quote(stream.table)}"
            return f"{key} IN (SELECT {key} FROM {records} WHERE {TRACKED} >= $since)"
    return None


def _same_schema(con: duckdb.DuckDBPyConnection, source: str) -> bool:
    """Whether the attached spare defines exactly what the warehouse does (but for the
    snapshot's own table)."""
    rows = con.execute(
        """
        SELECT database_name, 'table', schema_name, table_name, sql FROM duckdb_tables()
        WHERE NOT (database_name = $snap AND schema_name = 'main' AND table_name = $info)
        UNION ALL SELECT database_name, 'view', schema_name, view_name, sql FROM duckdb_views()
        WHERE NOT internal
        UNION ALL SELECT database_name, 'index', schema_name, index_name, sql
        FROM duckdb_indexes()
        UNION ALL SELECT database_name, 'macro', schema_name, function_name, macro_definition
        FROM duckdb_functions() WHERE NOT internal
        UNION ALL SELECT database_name, 'type', schema_name, type_name,
                         concat(logical_type, labels::VARCHAR)
        FROM duckdb_types() WHERE NOT internal
        """,
        {"snap": SNAP, "info": INFO_TABLE},
    ).fetchall()
    definitions: dict[str, Counter[tuple[Any, ...]]] = {source: Counter(), SNAP: Counter()}
    for database, *definition in rows:
        if database in definitions:
            definitions[database][tuple(definition)] += 1
    return definitions[source] == definitions[SNAP]
