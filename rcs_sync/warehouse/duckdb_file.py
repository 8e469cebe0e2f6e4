"""The DuckDB file: connections with lock retries, damage checks; the bookkeeping they
carry is shared with every backend (`bookkeeping.py`).

DuckDB lets one process write or many read, never both, so a connection is opened per
transaction and closed straight after: a reader (or another rcs-sync) delays us, and
we delay it, only for the length of one commit.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb
import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from rcs_sync.model.errors import (
    Stopped,
    WarehouseDamaged,
    WarehouseLocked,
    WarehouseUnavailable,
)
from rcs_sync.model.streams import Stream
from rcs_sync.warehouse.bookkeeping import FILE_MODE, Bookkeeping
from rcs_sync.warehouse.dialect import DUCKDB_FILE

log = structlog.get_logger(__name__)

STORAGE_VERSION = "v1.1.0"
"""The DuckDB release new files are written for (`[warehouse] storage_version`): the
oldest whose format holds what the schema uses, so every 1.1+ client reads them (README,
"Querying the data"). An existing file keeps the version it was created with until
`rcs-sync migrate` rewrites it (`warehouse/storage.py`)."""
CHECKPOINT_THRESHOLD = "32MB"
"""WAL a commit may leave before DuckDB checkpoints it (its default: 16 MB). Windows
under a row group (122,880 records) go through the WAL, and each checkpoint has a fixed
cost: at 16 MB a 200k-record backfill checkpointed at its second commit and again at
close. At 32 MB: 0.937 -> 0.875 s for those 200k (+5 MB peak RSS), 30 days of 1.5M
254k -> 260k records/s (+10 MB); 64 MB gained 1 % more for +34 MB (medians of 7 and 5,
trees alternating). A crash leaves at most this much WAL to replay."""
LOCK_PID = re.compile(r"\(PID (\d+)\)")
LOCK_WAIT_WARNING = 3.0
"""Seconds of waiting for DuckDB's file lock after which the wait is logged (a warning
naming the holder, once per wait), like PostgreSQL's `log_lock_waits`."""
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


class Warehouse(Bookkeeping):
    dialect = DUCKDB_FILE

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
        super().__init__(streams)
        self.path = path
        self.role = role
        """What the file is to an operator, for messages: "warehouse" or "snapshot"."""
        self.snapshot = snapshot
        """The analysts' snapshot of this warehouse, named as a way to recover it."""
        self.storage_version = storage_version
        self._lock_timeout = lock_timeout
        # DuckDB applies storage_compatibility_version only when it creates a file (an
        # existing one keeps its own); every open passes it, since a process's
        # connections to one file must share one configuration.
        self._config: dict[str, str | int] = {
            "memory_limit": memory_limit,
            "threads": threads,
            "storage_compatibility_version": storage_version,
            "checkpoint_threshold": CHECKPOINT_THRESHOLD,
        }
        self._stop = stop or threading.Event()

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def deferred_dir(self) -> Path:
        return self.path.parent / f".{self.path.name}.runs"

    def exists(self) -> bool:
        return self.path.exists()

    def release(self) -> None:
        """Close the connection `held` keeps, so the file is not kept from readers while
        the pass waits on the network; the next call opens another."""
        self._drop_held()

    def _open_connection(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """Open the file, retrying while another process holds its lock."""
        return self._open_retrying(read_only)

    def _failure(self, exc: duckdb.Error) -> Exception:
        damage = self.damage(exc)
        if damage is not None:
            return damage
        if isinstance(
            exc, duckdb.IOException | duckdb.OutOfMemoryException | duckdb.TransactionException
        ):
            # A full disk (also as a statement's own commit refused: TransactionException),
            # a vanished directory, memory_limit too small: nothing committed.
            first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return WarehouseUnavailable(f"writing {self.path} failed: {first_line}")
        return exc

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
            self.check_length(con)
        except BaseException:
            con.close()
            raise
        return con

    def check_length(self, con: duckdb.DuckDBPyConnection, database: str | None = None) -> None:
        """A file shorter than the blocks its header counts in use was truncated (a copy cut
        short, a full disk): say so before any block is read, or written. `database`:
        the name `con` attached this file as (default: its current database). Skipped
        while a WAL is pending, whose replay may count blocks not yet on disk."""
        if self.path.with_name(self.path.name + ".wal").exists():
            return
        rows = con.execute("PRAGMA database_size").fetchall()
        if database is None:
            current = con.execute("SELECT current_database()").fetchone()
            database = str(current[0]) if current else None
        for name, _size, block_size, _total, used_blocks, *_rest in rows:
            if name != database:
                continue
            # Free blocks at the end may have been cut off by DuckDB itself; used ones not.
            expected = HEADER_BYTES + int(block_size) * int(used_blocks)
            actual = self.path.stat().st_size
            if actual < expected:
                raise self._damaged(f"truncated: {actual} bytes of the {expected} it should hold")

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
