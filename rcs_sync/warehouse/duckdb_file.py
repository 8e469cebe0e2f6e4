"""The DuckDB file: connections with lock retries, migrations, and the sync bookkeeping.

DuckDB lets one process write or many read, never both, so a connection is opened per
transaction and closed straight after: a reader (or another rcs-sync) delays us, and
we delay it, only for the length of one commit.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import structlog
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from rcs_sync.logs import redact
from rcs_sync.model.commits import Commit, LoadResult
from rcs_sync.model.errors import Stopped, WarehouseLocked, WarehouseUnavailable, error_kind
from rcs_sync.model.responses import Spool
from rcs_sync.model.streams import Stream, registered
from rcs_sync.model.windows import Fetch, Split, Window
from rcs_sync.warehouse.loader import apply, stage
from rcs_sync.warehouse.migrations import MIGRATIONS
from rcs_sync.warehouse.privacy import PLAIN, Privacy
from rcs_sync.warehouse.tables import REGISTRY_DDL, ensure

log = structlog.get_logger(__name__)

FILE_MODE = 0o640
STORAGE_VERSION = "v1.1.0"
"""The DuckDB release new files are written for (`[warehouse] storage_version`): the
oldest whose format holds what the schema uses, so every 1.1+ client reads them (README,
"Querying the data"). An existing file keeps the version it was created with until
`rcs-sync migrate` rewrites it (`warehouse/storage.py`)."""
LOCK_PID = re.compile(r"\(PID (\d+)\)")


class _LockConflict(Exception):
    """One failed attempt to take the file lock; retried until the budget runs out."""


def _is_lock_conflict(exc: BaseException) -> bool:
    return isinstance(exc, _LockConflict)


class Warehouse:
    def __init__(
        self,
        path: Path,
        *,
        lock_timeout: float = 60.0,
        memory_limit: str = "400MB",
        threads: int = 2,
        stop: threading.Event | None = None,
        streams: Sequence[Stream] | None = None,
        storage_version: str = STORAGE_VERSION,
    ) -> None:
        self.path = path
        self.storage_version = storage_version
        self.streams = tuple(registered() if streams is None else streams)
        """The streams whose tables `migrate` provides (default: every registered one)."""
        self._lock_timeout = lock_timeout
        # DuckDB applies storage_compatibility_version only when it creates a file (an
        # existing one keeps its own); every open passes it, since a process's
        # connections to one file must share one configuration.
        self._config: dict[str, str | int] = {
            "memory_limit": memory_limit,
            "threads": threads,
            "storage_compatibility_version": storage_version,
        }
        self._stop = stop or threading.Event()
        self._active: duckdb.DuckDBPyConnection | None = None
        self._holding = False
        self._held: duckdb.DuckDBPyConnection | None = None

    def interrupt(self) -> None:
        """Abort the statement running on the open connection, if any (for shutdown):
        its transaction rolls back and the caller sees `Stopped`."""
        con = self._active
        if con is not None:
            con.interrupt()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Within the block, calls share one connection instead of opening their own: an
        open and close costs ~10-15 ms (the catalog read, a checkpoint written), most of
        what a pass that finds nothing new costs. `release` closes it before a wait on
        the network, so the file is not kept from readers meanwhile."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            self.release()

    def release(self) -> None:
        """Close the connection `held` keeps, if one is open; the next call opens another."""
        con, self._held = self._held, None
        if con is not None:
            con.close()

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the file, retrying while another process holds its lock (or share the
        connection `held` keeps)."""
        con = self._held or self._open_retrying(read_only)
        if self._holding and not read_only:
            self._held = con
        self._active = con
        try:
            yield con
        except duckdb.InterruptException:
            self._discard(con)
            raise Stopped("stop requested: the running statement was interrupted") from None
        except (duckdb.IOException, duckdb.OutOfMemoryException) as exc:
            # A full disk, a vanished directory, memory_limit too small: nothing committed.
            self._discard(con)
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WarehouseUnavailable(f"writing {self.path} failed: {first_line}") from None
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

    def _open_retrying(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        retrying = Retrying(
            retry=retry_if_exception(_is_lock_conflict),
            stop=stop_after_delay(self._lock_timeout),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            con: duckdb.DuckDBPyConnection = retrying(self._open, read_only)
        except _LockConflict as exc:
            raise WarehouseLocked(
                f"warehouse {self.path} is locked by another process{exc}; "
                f"gave up after {self._lock_timeout:g}s"
            ) from None
        return con

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        if read_only and not self.path.exists():
            raise WarehouseUnavailable(f"warehouse {self.path} does not exist yet: run a sync")
        created = not self.path.exists()
        try:
            con = duckdb.connect(str(self.path), read_only=read_only, config=dict(self._config))
        except duckdb.IOException as exc:
            message = str(exc)
            if "lock" in message.lower():
                pid = LOCK_PID.search(message)
                raise _LockConflict(f" (PID {pid.group(1)})" if pid else "") from None
            raise WarehouseUnavailable(f"cannot open warehouse {self.path}: {message}") from None
        except duckdb.Error as exc:
            raise WarehouseUnavailable(f"cannot open warehouse {self.path}: {exc}") from None
        if created:
            os.chmod(self.path, FILE_MODE)
        return con

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Stopped("stop requested")

    def migrate(self) -> list[int]:
        """Apply pending migrations, each in its own transaction, then provide the tables
        of streams not yet recorded (`tables.ensure`); return the migrations applied."""
        applied: list[int] = []
        with self.connect() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL)"
            )
            done = {
                int(r[0]) for r in con.execute("SELECT version FROM schema_migrations").fetchall()
            }
            for version, name, sql in MIGRATIONS:
                if version in done:
                    continue
                try:
                    with _transaction(con, self.path):
                        con.execute(sql)
                        con.execute(
                            "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                            [version, name, datetime.now(UTC)],
                        )
                except duckdb.Error as exc:
                    raise WarehouseUnavailable(f"migration {version} failed: {exc}") from None
                applied.append(version)
                log.info("migration_applied", version=version, name=name)
            self._ensure_streams(con)
        return applied

    def _ensure_streams(self, con: duckdb.DuckDBPyConnection) -> None:
        con.execute(REGISTRY_DDL)
        done = {str(r[0]) for r in con.execute("SELECT stream FROM schema_streams").fetchall()}
        for stream in self.streams:
            if stream.name in done:
                continue
            try:
                with _transaction(con, self.path):
                    ensure(con, stream, datetime.now(UTC))
            except duckdb.Error as exc:
                raise WarehouseUnavailable(
                    f"creating the tables of stream {stream.name} failed: {exc}"
                ) from None

    def start_run(self, stream: Stream, scope: str, command: str, mode: str) -> int:
        with self.connect() as con:
            row = con.execute(
                "INSERT INTO sync_runs (stream, scope, command, mode, pid, started_at, status) "
                "VALUES (?, ?, ?, ?, ?, ?, 'running') RETURNING run_id",
                [stream.name, scope, command, mode, os.getpid(), datetime.now(UTC)],
            ).fetchone()
        assert row is not None
        return int(row[0])

    def finish_run(self, run_id: int, error: BaseException | None) -> None:
        status = "ok" if error is None else "stopped" if isinstance(error, Stopped) else "failed"
        message = None if error is None else redact(str(error) or type(error).__name__)
        with self.connect() as con:
            con.execute(
                "UPDATE sync_runs SET finished_at = ?, status = ?, error = ?, error_kind = ? "
                "WHERE run_id = ?",
                [
                    datetime.now(UTC),
                    status,
                    message,
                    None if error is None else error_kind(error),
                    run_id,
                ],
            )

    def checkpoint(self, stream: Stream, scope: str) -> datetime | None:
        with self.connect() as con:
            row = con.execute(
                "SELECT checkpoint FROM sync_checkpoints WHERE stream = ? AND scope = ?",
                [stream.name, scope],
            ).fetchone()
        return _utc(row[0]) if row else None

    def set_checkpoint(self, stream: Stream, scope: str, checkpoint: datetime, run_id: int) -> None:
        """Record a checkpoint earned without loading anything (all windows were read)."""
        with self.connect() as con, _transaction(con, self.path):
            _write_checkpoint(con, stream, scope, checkpoint, datetime.now(UTC))
            con.execute(
                "UPDATE sync_runs SET checkpoint = ? WHERE run_id = ?", [checkpoint, run_id]
            )

    def fetches(self, stream: Stream, scope: str) -> list[Fetch]:
        with self.connect() as con:
            rows = con.execute(
                "SELECT window_start, window_end, fetched_at FROM sync_windows "
                "WHERE stream = ? AND scope = ?",
                [stream.name, scope],
            ).fetchall()
        return [Fetch(Window(_utc(a), _utc(b)), _utc(f)) for a, b, f in rows]

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
        with self.connect() as con, _transaction(con, self.path):
            con.executemany(
                "INSERT INTO sync_splits VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (stream, scope, period_start, period_end) DO UPDATE SET "
                "span = least(span, excluded.span), reason = excluded.reason, "
                "recorded_at = excluded.recorded_at",
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
        max_records: int | None,
        privacy: Privacy = PLAIN,
    ) -> LoadResult:
        """Load one response and its bookkeeping in ONE transaction: after a crash at any
        instant either both are in the file or neither is."""
        with self.connect() as con:
            staged = stage(con, commit.stream, body, max_records=max_records, privacy=privacy)
            now = datetime.now(UTC)
            with _transaction(con, self.path):
                result = apply(
                    con,
                    commit.stream,
                    staged,
                    run_id=commit.run_id,
                    now=now,
                    observed_at=commit.fetched_at,
                    include_optional=include_optional,
                )
                self._record(con, commit, result, now)
        return result

    @staticmethod
    def _record(
        con: duckdb.DuckDBPyConnection, commit: Commit, result: LoadResult, now: datetime
    ) -> None:
        if commit.window is not None:
            con.execute(
                "INSERT INTO sync_windows VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    commit.stream.name,
                    commit.scope,
                    commit.window.start,
                    commit.window.end,
                    commit.fetched_at,
                    result.received,
                    commit.run_id,
                    now,
                ],
            )
        if commit.checkpoint is not None:
            _write_checkpoint(con, commit.stream, commit.scope, commit.checkpoint, now)
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

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """A read-only query for status and reports (opens the file read-only)."""
        with self.connect(read_only=True) as con:
            return con.execute(sql, params or []).fetchall()


def _write_checkpoint(
    con: duckdb.DuckDBPyConnection, stream: Stream, scope: str, checkpoint: datetime, now: datetime
) -> None:
    con.execute(
        "INSERT INTO sync_checkpoints VALUES (?, ?, ?, ?) "
        "ON CONFLICT (stream, scope) DO UPDATE SET "
        "checkpoint = excluded.checkpoint, updated_at = excluded.updated_at",
        [stream.name, scope, checkpoint, now],
    )


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection, path: Path) -> Iterator[None]:
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
        raise WarehouseUnavailable(f"commit to {path} failed: {exc}") from None


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
