"""What every backend does the same way: migrate and ensure, run records, checkpoints,
windows, splits, and a window's load with its bookkeeping in one transaction.

A backend (`duckdb_file.Warehouse`, `lake.Lake`) subclasses `Bookkeeping` with how it
connects and what its SQL differs in (its `Dialect`); this class implements the
engine's `Store` Protocol and what `session.py` and `status.py` need on top of it.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import structlog

from rcs_sync.logs import redact
from rcs_sync.model.commits import Commit, LoadResult
from rcs_sync.model.errors import (
    Stopped,
    WarehouseDamaged,
    WarehouseLocked,
    WarehouseUnavailable,
    error_kind,
)
from rcs_sync.model.responses import Spool
from rcs_sync.model.streams import RCS_RECORDS, Stream
from rcs_sync.model.windows import Fetch, Split, Window
from rcs_sync.warehouse import ledger
from rcs_sync.warehouse.channels import views_sql
from rcs_sync.warehouse.dialect import Dialect
from rcs_sync.warehouse.loader import load
from rcs_sync.warehouse.migrations import MIGRATIONS, VIEWS_ONLY
from rcs_sync.warehouse.privacy import PLAIN, Privacy
from rcs_sync.warehouse.tables import (
    BOOKKEEPING,
    SCHEMA_MIGRATIONS,
    SCHEMA_STREAMS,
    SYNC_CHECKPOINTS,
    SYNC_SPLITS,
    ensure,
    table_names,
)

log = structlog.get_logger(__name__)

FILE_MODE = 0o640
_CHECKPOINT = {"checkpoint": "{new}.checkpoint", "updated_at": "{new}.updated_at"}
_SPLIT = {
    "span": "least({old}.span, {new}.span)",
    "reason": "{new}.reason",
    "recorded_at": "{new}.recorded_at",
}


class Bookkeeping(ABC):
    dialect: Dialect
    streams: tuple[Stream, ...]
    """The streams whose tables `migrate` provides (the session passes `[sync] streams`)."""

    def __init__(self, streams: Sequence[Stream] | None) -> None:
        self.streams = tuple((RCS_RECORDS,) if streams is None else streams)
        self._active: duckdb.DuckDBPyConnection | None = None
        self._holding = False
        self._held: duckdb.DuckDBPyConnection | None = None

    @property
    @abstractmethod
    def location(self) -> str:
        """The warehouse as messages name it (a path, a lake's redacted catalog)."""

    @property
    @abstractmethod
    def deferred_dir(self) -> Path:
        """Where run records wait that could not be written when they were made."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether a sync has created the warehouse yet."""

    @abstractmethod
    def _open_connection(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """A new connection whose current database is the warehouse."""

    @abstractmethod
    def _failure(self, exc: duckdb.Error) -> Exception:
        """What a DuckDB error on a connection means for the operator (or `exc` itself)."""

    @abstractmethod
    def release(self) -> None:
        """Let go of what readers would wait for, while the pass waits on the network."""

    def interrupt(self) -> None:
        """Abort the statement running on the open connection, if any (for shutdown):
        its transaction rolls back and the caller sees `Stopped`. Called from another
        thread (`stop_signals.py`), it may find the connection closed meanwhile: then no
        statement is left to abort."""
        con = self._active
        if con is not None:
            with suppress(duckdb.ConnectionException):
                con.interrupt()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Within the block (a pass), calls share one connection instead of opening their
        own; `release` may let go of it earlier."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            self._drop_held()

    def _drop_held(self) -> None:
        con, self._held = self._held, None
        if con is not None:
            con.close()

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection whose current database is the warehouse (or the one `held`
        keeps); a DuckDB error on it is raised as `_failure` words it."""
        con = self._held or self._open_connection(read_only)
        if self._holding and not read_only:
            self._held = con
        self._active = con
        try:
            yield con
        except duckdb.InterruptException:
            self._discard(con)
            raise Stopped("stop requested: the running statement was interrupted") from None
        except duckdb.Error as exc:
            self._discard(con)
            raise self._failure(exc) from None
        except BaseException:
            self._discard(con)
            raise
        finally:
            self._active = None
            if con is not self._held:
                con.close()

    def _discard(self, con: duckdb.DuckDBPyConnection) -> None:
        """After a failure a connection is not shared any further: it is closed."""
        if con is self._held:
            self._held = None

    @abstractmethod
    def verify(self, con: duckdb.DuckDBPyConnection) -> None:
        """Check the stored data before a pass writes into it (damage is refused)."""

    def migrate(self, *, verify: bool = True) -> list[int]:
        """Apply pending migrations, each in its own transaction, then provide the tables
        of streams not yet recorded (`tables.ensure`); return the migrations applied.
        First, with `verify`, the stored data is checked (`verify`): a damaged warehouse
        is never written into. A backend whose dialect creates new schemas from the
        declarations creates one at the current version, in one transaction."""
        applied: list[int] = []
        with self.connect() as con:
            if verify:
                self.verify(con)
            if self.dialect.from_declarations and SCHEMA_MIGRATIONS.name not in table_names(con):
                applied = self._create(con)
            con.execute(SCHEMA_MIGRATIONS.ddl(if_not_exists=True))
            done = {
                int(r[0]) for r in con.execute("SELECT version FROM schema_migrations").fetchall()
            }
            for version, name, sql in MIGRATIONS:
                if version in done:
                    continue
                try:
                    with self.transaction(con):
                        con.execute(sql)
                        self._applied(con, version, name)
                except duckdb.Error as exc:
                    raise WarehouseUnavailable(f"migration {version} failed: {exc}") from None
                applied.append(version)
                log.info("migration_applied", version=version, name=name)
            self._ensure_streams(con)
            self._write_deferred(con)
        return applied

    def _create(self, con: duckdb.DuckDBPyConnection) -> list[int]:
        """The schema at the current version from the declarations: the bookkeeping and
        RCS tables (those migrations 1-3 and 5 made), the views as the migrations that
        only make views left them, every migration recorded as applied."""
        constraints = self.dialect.constraints
        try:
            with self.transaction(con):
                for table in (SCHEMA_MIGRATIONS, SCHEMA_STREAMS, *BOOKKEEPING):
                    con.execute(table.ddl(constraints=constraints))
                ensure(con, RCS_RECORDS, datetime.now(UTC), constraints=constraints)
                for version, name, sql in MIGRATIONS:
                    if version in VIEWS_ONLY:
                        con.execute(sql)
                    self._applied(con, version, name)
        except duckdb.Error as exc:
            raise WarehouseUnavailable(f"creating the warehouse's tables failed: {exc}") from None
        log.info("schema_created", version=MIGRATIONS[-1][0], backend=self.dialect.name)
        return [version for version, _name, _sql in MIGRATIONS]

    @staticmethod
    def _applied(con: duckdb.DuckDBPyConnection, version: int, name: str) -> None:
        con.execute(
            "INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, datetime.now(UTC)]
        )

    def _ensure_streams(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(SCHEMA_STREAMS.ddl(constraints=self.dialect.constraints, if_not_exists=True))
        done = {str(r[0]) for r in con.execute("SELECT stream FROM schema_streams").fetchall()}
        for stream in self.streams:
            if stream.name in done:
                continue
            try:
                with self.transaction(con):
                    ensure(con, stream, datetime.now(UTC), constraints=self.dialect.constraints)
                    # The views across channels cover the record tables now present.
                    for sql in views_sql(table_names(con)):
                        con.execute(sql)
            except duckdb.Error as exc:
                raise WarehouseUnavailable(
                    f"creating the tables of stream {stream.name} failed: {exc}"
                ) from None

    @contextmanager
    def transaction(self, con: duckdb.DuckDBPyConnection) -> Iterator[None]:
        """Committed on success, rolled back on any failure (a kill -9 is a rollback too)."""
        con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            con.execute("ROLLBACK")
            raise
        try:
            con.execute("COMMIT")
        except duckdb.Error as exc:
            raise WarehouseUnavailable(f"commit to {self.location} failed: {exc}") from None

    def _insert_run(
        self,
        con: duckdb.DuckDBPyConnection,
        values: Sequence[Any],
        where: str = "",
        params: Sequence[Any] = (),
    ) -> int:
        """Insert a `sync_runs` row (`values` of `RUN_COLUMNS`, unless `where`, with
        `params`, excludes it) under the next run id; return the id. The caller holds a
        transaction: the id is read, then used."""
        row = con.execute(self.dialect.next_run_id).fetchone()
        assert row is not None
        run_id = int(row[0])
        con.execute(
            f"INSERT INTO sync_runs (run_id, {', '.join(RUN_COLUMNS)}) "
            f"SELECT ?, {', '.join('?' for _ in RUN_COLUMNS)} {where}",
            [run_id, *values, *params],
        )
        return run_id

    def start_run(self, stream: Stream, scope: str, command: str, mode: str) -> int:
        """A `running` row in `sync_runs`. If the warehouse cannot be written, the failed
        run is kept beside it (`defer_run`) before the error is raised."""
        started = datetime.now(UTC)
        try:
            with self.connect() as con, self.transaction(con):
                values = [stream.name, scope, command, mode, os.getpid(), started]
                return self._insert_run(con, [*values, None, "running", None, None])
        except (WarehouseLocked, WarehouseUnavailable) as exc:
            self.defer_run(failed_run(stream.name, scope, command, exc, started, mode=mode))
            raise

    def finish_run(self, run_id: int, error: BaseException | None) -> None:
        """Close the run's row; if the warehouse cannot be written now, its outcome is
        kept beside it and written by the next opening (`defer_run`) rather than raised
        over the error that ended the run."""
        status = "ok" if error is None else "stopped" if isinstance(error, Stopped) else "failed"
        message = None if error is None else redact(str(error) or type(error).__name__)
        kind = None if error is None else error_kind(error)
        finished = datetime.now(UTC)
        try:
            with self.connect() as con:
                con.execute(
                    "UPDATE sync_runs SET finished_at = ?, status = ?, error = ?, error_kind = ? "
                    "WHERE run_id = ?",
                    [finished, status, message, kind, run_id],
                )
        except (WarehouseLocked, WarehouseUnavailable) as exc:
            if isinstance(exc, WarehouseDamaged):
                raise
            log.warning("run_record_deferred", run_id=run_id, error=str(exc))
            self.defer_run(
                {
                    "run_id": run_id,
                    "finished_at": finished.isoformat(),
                    "status": status,
                    "error": message,
                    "error_kind": kind,
                }
            )

    def defer_run(self, record: Mapping[str, Any]) -> None:
        """Keep a run record (a new failed run, or the outcome of run `run_id`) that could
        not be written because the warehouse was locked or unwritable: a small JSON file
        in `deferred_dir`, moved into `sync_runs` by the next opening that can write
        (`migrate`, which every pass starts with). Written under a temporary name,
        fsynced, then renamed: a crash leaves it whole or absent, and writing it twice is
        harmless (`_write_deferred` skips a row it already holds)."""
        directory = self.deferred_dir
        if not directory.parent.is_dir():
            return  # no place for a warehouse at all: nothing will ever read it
        name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.json"
        try:
            directory.mkdir(mode=0o750, exist_ok=True)
            temporary = directory / f".{name}.tmp"
            with open(temporary, "w", encoding="utf-8") as out:
                json.dump(dict(record), out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, FILE_MODE)
            os.replace(temporary, directory / name)
        except OSError as exc:
            log.warning("run_record_lost", directory=str(directory), error=str(exc))

    def deferred_runs(self) -> list[dict[str, Any]]:
        """The run records waiting in `deferred_dir`, oldest first."""
        return [record for _path, record in self._deferred()]

    def _deferred(self) -> list[tuple[Path, dict[str, Any]]]:
        try:
            paths = sorted(self.deferred_dir.glob("*.json"))
        except OSError:
            return []
        found = []
        for path in paths:
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(record, dict):
                found.append((path, record))
        return found

    def _write_deferred(self, con: duckdb.DuckDBPyConnection) -> None:
        """Move the deferred run records into `sync_runs` (one transaction), then delete
        their files. A crash between the two writes nothing twice: a new run is skipped
        if a row of the same stream, scope, process and start exists, an outcome applies
        only to a row still `running`."""
        deferred = self._deferred()
        if not deferred:
            return
        with self.transaction(con):
            for _path, r in deferred:
                finished = _instant(r.get("finished_at"))
                if r.get("run_id") is not None:
                    con.execute(
                        "UPDATE sync_runs SET finished_at = ?, status = ?, error = ?, "
                        "error_kind = ? WHERE run_id = ? AND status = 'running'",
                        [
                            finished,
                            r.get("status"),
                            r.get("error"),
                            r.get("error_kind"),
                            r["run_id"],
                        ],
                    )
                    continue
                started = _instant(r.get("started_at")) or finished or datetime.now(UTC)
                self._insert_run(
                    con,
                    [
                        r.get("stream"),
                        r.get("scope"),
                        r.get("command") or "sync",
                        r.get("mode"),
                        r.get("pid"),
                        started,
                        finished,
                        r.get("status") or "failed",
                        r.get("error"),
                        r.get("error_kind"),
                    ],
                    "WHERE NOT EXISTS (SELECT 1 FROM sync_runs WHERE stream = ? AND scope = ? "
                    "AND pid IS NOT DISTINCT FROM ? AND started_at = ?)",
                    [r.get("stream"), r.get("scope"), r.get("pid"), started],
                )
        for path, _record in deferred:
            path.unlink(missing_ok=True)
        log.info("deferred_runs_recorded", count=len(deferred))

    def checkpoint(self, stream: Stream, scope: str) -> datetime | None:
        with self.connect() as con:
            row = con.execute(
                "SELECT checkpoint FROM sync_checkpoints WHERE stream = ? AND scope = ?",
                [stream.name, scope],
            ).fetchone()
        return _utc(row[0]) if row else None

    def set_checkpoint(self, stream: Stream, scope: str, checkpoint: datetime, run_id: int) -> None:
        """Record a checkpoint earned without loading anything (all windows were read)."""
        with self.connect() as con, self.transaction(con):
            self._write_checkpoint(con, stream, scope, checkpoint, datetime.now(UTC))
            con.execute(
                "UPDATE sync_runs SET checkpoint = ? WHERE run_id = ?", [checkpoint, run_id]
            )

    def fetches(self, stream: Stream, scope: str) -> list[Fetch]:
        with self.connect() as con:
            rows = con.execute(
                "SELECT window_start, window_end, fetched_at, records FROM sync_windows "
                "WHERE stream = ? AND scope = ?",
                [stream.name, scope],
            ).fetchall()
        return [Fetch(Window(_utc(a), _utc(b)), _utc(f), int(n)) for a, b, f, n in rows]

    def splits(self, stream: Stream, scope: str) -> list[Split]:
        with self.connect() as con:
            rows = con.execute(
                "SELECT period_start, period_end, span FROM sync_splits "
                "WHERE stream = ? AND scope = ?",
                [stream.name, scope],
            ).fetchall()
        return [Split(Window(_utc(a), _utc(b)), span) for a, b, span in rows]

    def record_splits(
        self, stream: Stream, scope: str, splits: Sequence[tuple[Split, str]]
    ) -> None:
        """Remember periods that needed smaller windows, each with why; a period split
        again keeps the smaller span. A planning hint only: losing it to a crash costs
        one oversized request, never data."""
        now = datetime.now(UTC)
        with self.connect() as con, self.transaction(con):
            con.executemany(
                self.dialect.upsert(SYNC_SPLITS, _SPLIT),
                [
                    [stream.name, scope, split.period.start, split.period.end, split.span, why, now]
                    for split, why in splits
                ],
            )

    def commit_batch(
        self,
        body: Spool,
        commit: Commit,
        *,
        include_optional: bool,
        server_limit: int | None,
        privacy: Privacy = PLAIN,
    ) -> LoadResult:
        """Load one response and its bookkeeping in ONE transaction: after a crash at any
        instant either both are in the warehouse or neither is."""
        with self.connect() as con:
            return load(
                con,
                commit.stream,
                body,
                server_limit=server_limit,
                privacy=privacy,
                run_id=commit.run_id,
                observed_at=commit.fetched_at,
                include_optional=include_optional,
                transaction=partial(self.transaction, con),
                record=partial(self._record, con, commit),
            )

    def _record(
        self, con: duckdb.DuckDBPyConnection, commit: Commit, result: LoadResult, now: datetime
    ) -> None:
        ledger.record(con, commit, result.received, now)
        if commit.checkpoint is not None:
            self._write_checkpoint(con, commit.stream, commit.scope, commit.checkpoint, now)
        con.execute(
            "UPDATE sync_runs SET windows = windows + 1, received = received + ?, "
            "inserted = inserted + ?, updated = updated + ?, quarantined = quarantined + ?, "
            "checkpoint = coalesce(?, checkpoint) WHERE run_id = ?",
            [
                result.received,
                result.inserted,
                result.updated,
                result.quarantined,
                commit.checkpoint,
                commit.run_id,
            ],
        )

    def _write_checkpoint(
        self,
        con: duckdb.DuckDBPyConnection,
        stream: Stream,
        scope: str,
        checkpoint: datetime,
        now: datetime,
    ) -> None:
        con.execute(
            self.dialect.upsert(SYNC_CHECKPOINTS, _CHECKPOINT),
            [stream.name, scope, checkpoint, now],
        )

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """A read-only query for status and reports."""
        with self.connect(read_only=True) as con:
            return con.execute(sql, params or []).fetchall()


RUN_COLUMNS = (
    "stream",
    "scope",
    "command",
    "mode",
    "pid",
    "started_at",
    "finished_at",
    "status",
    "error",
    "error_kind",
)
"""What a new run record holds besides its `run_id` (`start_run`, `defer_run`)."""


def failed_run(
    stream: str,
    scope: str,
    command: str,
    error: BaseException,
    started: datetime,
    *,
    mode: str | None = None,
) -> dict[str, Any]:
    """A deferred record (`Bookkeeping.defer_run`) of a run that failed before it had a row."""
    return {
        "stream": stream,
        "scope": scope,
        "command": command,
        "mode": mode,
        "pid": os.getpid(),
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "status": "stopped" if isinstance(error, Stopped) else "failed",
        "error": redact(str(error) or type(error).__name__),
        "error_kind": error_kind(error),
    }


def _instant(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
