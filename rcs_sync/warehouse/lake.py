"""The warehouse as a DuckLake: the catalog in PostgreSQL (or SQLite), the data as
Parquet files under `data_path`; the bookkeeping is every backend's (`bookkeeping.py`).

A lake lets readers in, on any machine, while it is written, so a pass keeps one
connection from start to end (`held`; `release` keeps it). A `Lake` attaches once (a
database with the extensions loaded, ~0.8 s: DuckDB checks their signatures) and hands
out cursors of it; `close` detaches. Extensions come from the lake extra's wheels
(`extensions.py`), never from the network.

`connect()` (every backend's) yields a connection with the lake attached as `lake` and
`USE`d: DuckLake's own functions (`ducklake_snapshots('lake')`, maintenance) run on it.

The catalog string never holds a password (config.py refuses one): libpq reads it
from PGPASSWORD or PGPASSFILE, which `libpq_environment` points at a systemd
credential when there is one, so it is in no message, argument or table.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb

from rcs_sync.config import WarehouseSettings, libpq_environment
from rcs_sync.model.errors import WarehouseUnavailable
from rcs_sync.model.streams import Stream
from rcs_sync.warehouse.bookkeeping import Bookkeeping
from rcs_sync.warehouse.dialect import DUCKLAKE as LAKE_DIALECT
from rcs_sync.warehouse.extensions import (
    DUCKLAKE,
    LAKE_EXTENSIONS,
    NO_DOWNLOADS,
    SQLITE,
    ExtensionMissing,
    load,
    private_directory,
)
from rcs_sync.warehouse.tables import SCHEMA_MIGRATIONS, table_names
from rcs_sync.warehouse.validation import literal

LAKE_ALIAS = "lake"
"""The name the lake is attached under, and `USE`d (`lake.main.rcs_records`)."""
_SECRET = re.compile(r"(password\s*=\s*)(\S+)|(://[^/@:]*:)([^/@]*)(@)", re.IGNORECASE)


def redact_catalog(catalog: str) -> str:
    """The catalog string with any password masked (config.py refuses them; a message
    must not show one even so)."""
    return _SECRET.sub(lambda m: f"{m[1]}***" if m[1] else f"{m[3]}***{m[5]}", catalog)


class Lake(Bookkeeping):
    dialect = LAKE_DIALECT

    def __init__(
        self,
        catalog: str,
        data_path: str,
        *,
        spool_dir: Path,
        memory_limit: str = "300MB",
        threads: int = 2,
        streams: Sequence[Stream] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(streams)
        self.catalog = catalog
        """A DuckLake catalog string: `postgres:dbname=… host=…` or `sqlite:PATH`."""
        self.data_path = data_path
        """Where the Parquet files are: a directory, a shared mount (or a URL)."""
        self.spool_dir = spool_dir
        self._config: dict[str, str | int | bool] = {
            **NO_DOWNLOADS,
            "memory_limit": memory_limit,
            "threads": threads,
        }
        self._env = os.environ if env is None else env
        self._bases: dict[bool, duckdb.DuckDBPyConnection] = {}

    @classmethod
    def from_settings(
        cls,
        settings: WarehouseSettings,
        *,
        streams: Sequence[Stream] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Lake:
        """The lake `[warehouse]` describes (`kind = "ducklake"`, checked by config.py)."""
        assert settings.catalog is not None and settings.data_path is not None
        return cls(
            settings.catalog,
            settings.data_path,
            spool_dir=settings.spool_path,
            memory_limit=settings.memory_limit,
            threads=settings.threads,
            streams=streams,
            env=env,
        )

    @property
    def location(self) -> str:
        return f"lake ducklake:{redact_catalog(self.catalog)}"

    @property
    def deferred_dir(self) -> Path:
        return self.spool_dir.parent / f".{self.spool_dir.name}.runs"

    @property
    def local_data(self) -> Path | None:
        """`data_path` as a local directory, None for a URL (object storage)."""
        return None if "://" in self.data_path else Path(self.data_path)

    def exists(self) -> bool:
        """Whether a pass has created the lake's tables (its catalog may be empty)."""
        try:
            with self.connect(read_only=True) as con:
                return SCHEMA_MIGRATIONS.name in table_names(con)
        except ExtensionMissing:
            raise
        except WarehouseUnavailable as exc:
            if "not initialized" in str(exc).lower() or "does not exist" in str(exc).lower():
                return False
            raise

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A read-only database of the caller's own (closing it frees everything), the
        lake attached and `USE`d: for analysts, while a daemon writes
        (`analytics/sources.py`)."""
        return self._attach(read_only=True)

    def close(self) -> None:
        """Detach: close the databases `connect` hands out connections to."""
        bases, self._bases = self._bases, {}
        for base in bases.values():
            base.close()

    def release(self) -> None:
        """Nothing: readers never wait for a lake's writer, so the pass keeps its
        connection (and saves an attach per window)."""

    def verify(self, con: duckdb.DuckDBPyConnection) -> None:
        """The data directory is there (a shared mount that is not mounted would make
        every read of an existing file fail mid-pass)."""
        local = self.local_data
        if local is not None and not local.is_dir():
            raise WarehouseUnavailable(
                f"[warehouse] data_path {local} is not a directory (is the shared mount there?)"
            )

    def _open_connection(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """A new connection (a cursor) to this object's database with the lake attached,
        read-only or not: loading the extensions costs ~0.7 s a database (DuckDB checks
        their signatures, 78 MB), attaching ~0.1 s, a cursor nothing; so the database is
        made once, on first use, and kept until `close`."""
        base = self._bases.get(read_only)
        if base is None:
            base = self._bases[read_only] = self._attach(read_only)
        con = base.cursor()
        try:
            con.execute(f"USE {LAKE_ALIAS}")
        except BaseException:
            con.close()
            raise
        return con

    def _attach(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        con = duckdb.connect(config=dict(self._config))
        try:
            sqlite = self.catalog.startswith("sqlite:")
            load(con, (DUCKLAKE, SQLITE) if sqlite else LAKE_EXTENSIONS, private_directory())
            os.environ.update(libpq_environment(self._env))
            local = self.local_data
            if local is not None and not read_only:
                local.mkdir(parents=True, exist_ok=True, mode=0o750)
            options = f"DATA_PATH {literal(self.data_path)}" + (", READ_ONLY" if read_only else "")
            con.execute(f"ATTACH {literal('ducklake:' + self.catalog)} AS {LAKE_ALIAS} ({options})")
            con.execute(f"USE {LAKE_ALIAS}")
        except duckdb.Error as exc:
            con.close()
            raise WarehouseUnavailable(
                f"cannot attach {self.location}: {_first_line(exc)}"
            ) from None
        except BaseException:
            con.close()
            raise
        return con

    def _failure(self, exc: duckdb.Error) -> Exception:
        if isinstance(
            exc, duckdb.IOException | duckdb.OutOfMemoryException | duckdb.TransactionException
        ):
            # The catalog server gone, a full data disk, a conflicting commit (another
            # writer, or maintenance): nothing committed; the next pass redoes the window.
            # The next connection attaches afresh (the catalog's connection may be dead).
            self.close()
            return WarehouseUnavailable(f"writing {self.location} failed: {_first_line(exc)}")
        return exc


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return redact_catalog(text.splitlines()[0] if text else type(exc).__name__)
