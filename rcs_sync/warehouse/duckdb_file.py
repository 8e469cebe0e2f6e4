"""The DuckDB file: connections with lock retries, migrations, and the sync bookkeeping.

DuckDB lets one process write or many read, never both, so a connection is opened per
transaction and closed straight after: a reader (or another rcs-sync) delays us, and
we delay it, only for the length of one commit.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

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
from rcs_sync.warehouse.loader import load
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
LOCK_WAIT_WARNING = 3.0
"""Seconds of waiting for DuckDB's file lock after which the wait is logged (a warning
naming the holder, once per wait), like PostgreSQL's `log_lock_waits`."""
RUN_FIELDS = (
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
"""What a deferred run record holds (`defer_run`), besides an optional `run_id`."""


NEXT_RUN_ID = (
    "SELECT greatest(nextval('sync_runs_id'), coalesce(max(run_id), 0) + 1) FROM sync_runs"
)
"""The next `run_id`: the sequence's, unless rows were copied in without it (a snapshot
used as the warehouse holds the rows but a sequence as of its first copy)."""


HEADER_BYTES = 3 * 4096
"""DuckDB's file header and its two database headers, before the first block."""
DAMAGE = re.compile(
    r"Corrupt database file|does not match stored checksum|Could not read enough bytes|"
    r"not a valid DuckDB database file|database file is truncated",
    re.IGNORECASE,
)
"""What DuckDB says of a corrupt block, a short read, or a file that is no database."""


class _LockConflict(Exception):
    """One failed attempt to take the file lock; retried until the budget runs out."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(pid)
        self.pid = pid


def _is_lock_conflict(exc: BaseException) -> bool:
    return isinstance(exc, _LockConflict)


class Warehouse:
    def __init__(
        self,
        path: Path,
        *,
        lock_timeout: float = 60.0,
        memory_limit: str = "300MB",
        threads: int = 2,
        stop: threading.Event | None = None,
        streams: Sequence[Stream] | None = None,
        role: str = "warehouse",
        snapshot: Path | None = None,
        storage_version: str = STORAGE_VERSION,
    ) -> None:
        self.path = path
        self.role = role
        """What the file is to an operator, for messages: "warehouse" or "snapshot"."""
        self.snapshot = snapshot
        """The analysts' snapshot of this warehouse, named as a way to recover it."""
        self.storage_version = storage_version
        self.streams = tuple((RCS_RECORDS,) if streams is None else streams)
        """The streams whose tables `migrate` provides (the session passes `[sync] streams`;
        default: `rcs_records`, the default config's)."""
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
        except (
            duckdb.IOException,
            duckdb.OutOfMemoryException,
            duckdb.TransactionException,
        ) as exc:
            # A full disk (also as a statement's own commit refused: TransactionException),
            # a vanished directory, memory_limit too small: nothing committed.
            self._discard(con)
            damage = self.damage(exc)
            if damage is not None:
                raise damage from None
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WarehouseUnavailable(f"writing {self.path} failed: {first_line}") from None
        except duckdb.Error as exc:
            self._discard(con)
            damage = self.damage(exc)
            if damage is not None:
                raise damage from None
            raise
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
        began = time.monotonic()
        warned = False
        holder: int | None = None

        def note(state: RetryCallState) -> None:
            nonlocal holder
            exc = state.outcome.exception() if state.outcome else None
            holder = exc.pid if isinstance(exc, _LockConflict) else None

        def sleep(seconds: float) -> None:
            """Sleep, logging the wait once it has lasted LOCK_WAIT_WARNING seconds."""
            nonlocal warned
            end = time.monotonic() + seconds
            while True:
                now = time.monotonic()
                if not warned and now - began >= LOCK_WAIT_WARNING:
                    warned = True
                    log.warning(
                        "warehouse_lock_wait",
                        path=str(self.path),
                        holder_pid=holder,
                        waited_s=round(now - began, 1),
                        timeout_s=self._lock_timeout,
                    )
                if now >= end:
                    return
                step = end - now
                if not warned:
                    step = min(step, began + LOCK_WAIT_WARNING - now + 0.01)
                self._sleep(step)

        retrying = Retrying(
            retry=retry_if_exception(_is_lock_conflict),
            stop=stop_after_delay(self._lock_timeout),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            sleep=sleep,
            before_sleep=note,
            reraise=True,
        )
        try:
            con: duckdb.DuckDBPyConnection = retrying(self._open, read_only)
        except _LockConflict as exc:
            by = f" (PID {exc.pid})" if exc.pid else ""
            raise WarehouseLocked(
                f"warehouse {self.path} is locked by another process{by}; "
                f"gave up after {self._lock_timeout:g}s"
            ) from None
        if warned:
            log.info(
                "warehouse_lock_acquired",
                path=str(self.path),
                waited_s=round(time.monotonic() - began, 1),
            )
        return con

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        if read_only and not self.path.exists():
            raise WarehouseUnavailable(f"warehouse {self.path} does not exist yet: run a sync")
        created = not self.path.exists()
        try:
            con = duckdb.connect(str(self.path), read_only=read_only, config=dict(self._config))
        except duckdb.IOException as exc:
            message = str(exc)
            damage = self.damage(exc)
            if damage is not None:
                raise damage from None
            if "lock" in message.lower():
                pid = LOCK_PID.search(message)
                raise _LockConflict(int(pid.group(1)) if pid else None) from None
            raise WarehouseUnavailable(f"cannot open warehouse {self.path}: {message}") from None
        except duckdb.Error as exc:
            damage = self.damage(exc)
            if damage is not None:
                raise damage from None
            raise WarehouseUnavailable(f"cannot open warehouse {self.path}: {exc}") from None
        if created:
            os.chmod(self.path, FILE_MODE)
        try:
            self._check_length(con)
        except BaseException:
            con.close()
            raise
        return con

    def _check_length(self, con: duckdb.DuckDBPyConnection) -> None:
        """A file shorter than the blocks its header counts in use was truncated (a copy cut
        short, a full disk): say so before any block is read, or written. Skipped while
        a WAL is pending, whose replay may count blocks not yet on disk."""
        if self.path.with_name(self.path.name + ".wal").exists():
            return
        rows = con.execute("PRAGMA database_size").fetchall()
        current = con.execute("SELECT current_database()").fetchone()
        for name, _size, block_size, _total, used_blocks, *_rest in rows:
            if current is None or name != current[0]:
                continue
            # Free blocks at the end may have been cut off by DuckDB itself; used ones not.
            expected = HEADER_BYTES + int(block_size) * int(used_blocks)
            actual = self.path.stat().st_size
            if actual < expected:
                raise self._damaged(f"truncated: {actual} bytes of the {expected} it should hold")

    def check(self, con: duckdb.DuckDBPyConnection) -> None:
        """Both checks, on a connection whose current database is this file (one that
        attached it and `USE`d it, as analysts' connections do)."""
        self._check_length(con)
        self.verify(con)

    def verify(self, con: duckdb.DuckDBPyConnection) -> None:
        """Read every column of every table, so DuckDB checks each data block's checksum:
        garbage anywhere in the data raises `WarehouseDamaged` here, before a pass
        writes into the file (~0.1 s per million records)."""
        tables = con.execute(
            "SELECT table_name FROM duckdb_tables() "
            "WHERE database_name = current_database() ORDER BY ALL"
        ).fetchall()
        for (table,) in tables:
            try:
                con.execute(f'SELECT min(COLUMNS(*)) FROM "{str(table).replace(chr(34), "")}"')
            except (duckdb.BinderException, duckdb.NotImplementedException):
                continue  # a column type without min(): not ours, not checked
            except duckdb.Error as exc:
                damage = self.damage(exc)
                if damage is not None:
                    raise damage from None
                raise

    def damage(self, exc: BaseException) -> WarehouseDamaged | None:
        """The error as `WarehouseDamaged` if it says the file is corrupt or truncated."""
        text = str(exc)
        if not DAMAGE.search(text):
            return None
        first = text.splitlines()[0] if text else type(exc).__name__
        first = re.sub(r"^(IO )?Error: ", "", first)
        if "not a valid DuckDB database file" in first:
            first = "its header is not a DuckDB header"
        elif "Could not read enough bytes" in first:
            # A block past the end of the file: only a truncated file has none there.
            first = f"truncated: {self.path.stat().st_size} bytes, a block lies beyond its end"
        return self._damaged(first)

    def _damaged(self, what: str) -> WarehouseDamaged:
        if self.role == "snapshot":
            recovery = (
                "delete it: the daemon's next pass publishes a new one "
                "(or `rcs-sync sync --publish-snapshot`); query the warehouse meanwhile"
            )
        else:
            snapshot = f"`cp {self.snapshot} {self.path}`" if self.snapshot else "copy it"
            recovery = (
                f"stop the daemon, then publish from the analysts' snapshot ({snapshot}), "
                f"or move {self.path.name} away and run `rcs-sync backfill --force` "
                "over the whole range into a fresh file"
            )
        return WarehouseDamaged(
            f"{self.role} {self.path} is damaged ({what}); nothing is written into it. "
            f"To recover, {recovery}"
        )

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Stopped("stop requested")

    def migrate(self, *, verify: bool = True) -> list[int]:
        """Apply pending migrations, each in its own transaction, then provide the tables
        of streams not yet recorded (`tables.ensure`); return the migrations applied.
        First, with `verify`, every data block is checked (`verify`): a damaged file is
        never written into."""
        applied: list[int] = []
        with self.connect() as con:
            if verify:
                self.verify(con)
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
            self._write_deferred(con)
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
                    # The views across channels cover the record tables now present.
                    tables = {
                        str(r[0])
                        for r in con.execute(
                            "SELECT table_name FROM duckdb_tables() "
                            "WHERE database_name = current_database() AND schema_name = 'main'"
                        ).fetchall()
                    }
                    for sql in views_sql(tables):
                        con.execute(sql)
            except duckdb.Error as exc:
                raise WarehouseUnavailable(
                    f"creating the tables of stream {stream.name} failed: {exc}"
                ) from None

    def start_run(self, stream: Stream, scope: str, command: str, mode: str) -> int:
        """A `running` row in `sync_runs`. If the file cannot be written, the failed run
        is kept beside it (`defer_run`) before the error is raised."""
        started = datetime.now(UTC)
        try:
            with self.connect() as con:
                row = con.execute(
                    "INSERT INTO sync_runs "
                    "(run_id, stream, scope, command, mode, pid, started_at, status) "
                    f"VALUES (({NEXT_RUN_ID}), ?, ?, ?, ?, ?, ?, 'running') RETURNING run_id",
                    [stream.name, scope, command, mode, os.getpid(), started],
                ).fetchone()
        except (WarehouseLocked, WarehouseUnavailable) as exc:
            self.defer_run(failed_run(stream.name, scope, command, exc, started, mode=mode))
            raise
        assert row is not None
        return int(row[0])

    def finish_run(self, run_id: int, error: BaseException | None) -> None:
        """Close the run's row; if the file cannot be written now, its outcome is kept
        beside it and written by the next opening (`defer_run`) rather than raised over
        the error that ended the run."""
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

    @property
    def deferred_dir(self) -> Path:
        """Where run records wait that could not be written when they were made."""
        return self.path.parent / f".{self.path.name}.runs"

    def defer_run(self, record: Mapping[str, Any]) -> None:
        """Keep a run record (a new failed run, or the outcome of run `run_id`) that could
        not be written because the file was locked or unwritable: a small JSON file in
        `deferred_dir`, moved into `sync_runs` by the next opening that can write
        (`migrate`, which every pass starts with). Written under a temporary name, fsynced,
        then renamed: a crash leaves it whole or absent, and writing it twice is harmless
        (`_write_deferred` skips a row it already holds)."""
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
        with _transaction(con, self.path):
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
                con.execute(
                    "INSERT INTO sync_runs (run_id, stream, scope, command, mode, pid, "
                    "started_at, finished_at, status, error, error_kind) "
                    f"SELECT ({NEXT_RUN_ID}), ?, ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS ("
                    "SELECT 1 FROM sync_runs WHERE stream = ? AND scope = ? "
                    "AND pid IS NOT DISTINCT FROM ? AND started_at = ?)",
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
                        r.get("stream"),
                        r.get("scope"),
                        r.get("pid"),
                        started,
                    ],
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
        with self.connect() as con, _transaction(con, self.path):
            _write_checkpoint(con, stream, scope, checkpoint, datetime.now(UTC))
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
        server_limit: int | None,
        privacy: Privacy = PLAIN,
    ) -> LoadResult:
        """Load one response and its bookkeeping in ONE transaction: after a crash at any
        instant either both are in the file or neither is."""
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
                transaction=partial(_transaction, con, self.path),
                record=partial(self._record, con, commit),
            )

    @staticmethod
    def _record(
        con: duckdb.DuckDBPyConnection, commit: Commit, result: LoadResult, now: datetime
    ) -> None:
        ledger.record(con, commit, result.received, now)
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


def failed_run(
    stream: str,
    scope: str,
    command: str,
    error: BaseException,
    started: datetime,
    *,
    mode: str | None = None,
) -> dict[str, Any]:
    """A deferred record (`Warehouse.defer_run`) of a run that failed before it had a row."""
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
