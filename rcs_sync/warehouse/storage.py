"""The DuckDB file format the warehouse is written in, and rewriting a file into another.

DuckDB writes each file for a *storage version* chosen when the file is created
(`[warehouse] storage_version`, default `duckdb_file.STORAGE_VERSION`) and keeps it for
the file's life: a file created by DuckDB 2.x in its own format (storage version 69)
opens in no 1.x client. `convert` rewrites such a file into the configured version:

1. under the warehouse's write lock (no other process reads or writes meanwhile), the
   file is checkpointed, so its WAL is empty;
2. `COPY FROM DATABASE` copies every table, view, sequence and constraint into a new
   file beside it, created with the configured version; the row counts are compared;
3. the new file is checkpointed, fsynced and renamed over the old one.

A crash before the rename leaves the old file untouched (and a leftover the next
`convert` deletes); after it, the new file is complete. A logical copy takes ~6.5 s per
10M records (`bench/snapshot_bench.py`), once.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import duckdb
import structlog

from rcs_sync.model.errors import WarehouseUnavailable
from rcs_sync.warehouse import files
from rcs_sync.warehouse.duckdb_file import Warehouse
from rcs_sync.warehouse.validation import quote

log = structlog.get_logger(__name__)

REWRITE = "_rcs_rewrite"
"""Alias of the new file while it is written."""


@dataclass(frozen=True)
class Conversion:
    path: Path
    before: str
    """The storage version DuckDB reports for the file before ("v2.0.0+")..."""
    after: str
    """...and after the rewrite ("v1.0.0+": DuckDB names a format by its first release)."""


def storage_version(con: duckdb.DuckDBPyConnection, database: str) -> str:
    """The storage version of an attached database, as DuckDB names it ("v1.0.0+")."""
    row = con.execute(
        "SELECT tags['storage_version'] FROM duckdb_databases() WHERE database_name = ?",
        [database],
    ).fetchone()
    return str(row[0]) if row and row[0] is not None else "unknown"


def warehouse_version(warehouse: Warehouse) -> str:
    """The storage version of the warehouse file (read-only, waiting out a writer)."""
    with warehouse.connect(read_only=True) as con:
        return storage_version(con, str(files.one(con, "SELECT current_database()")))


def file_version(path: Path) -> str:
    """The storage version of the DuckDB file at `path`, opened read-only on its own."""
    with duckdb.connect() as con:
        try:
            con.execute(f"ATTACH {_literal(str(path))} AS {REWRITE} (READ_ONLY)")
        except duckdb.Error as exc:
            first_line = str(exc).splitlines()[0]
            raise WarehouseUnavailable(f"cannot open {path}: {first_line}") from None
        return storage_version(con, REWRITE)


def _format_of(con: duckdb.DuckDBPyConnection, version: str, path: Path) -> str:
    """How DuckDB names the format of a file created for `version` (several releases
    share one: v0.10.0-v1.1.x write "v1.0.0+"), found by creating an empty one."""
    probe = _sibling(path, "probe")
    try:
        con.execute(
            f"ATTACH {_literal(str(probe))} AS {REWRITE} (STORAGE_VERSION {_literal(version)})"
        )
        try:
            return storage_version(con, REWRITE)
        finally:
            con.execute(f"DETACH {REWRITE}")
    except duckdb.InvalidInputException as exc:
        raise WarehouseUnavailable(f"[warehouse] storage_version: {exc}") from None
    finally:
        for leftover in (probe, files.wal(probe)):
            leftover.unlink(missing_ok=True)


def convert(warehouse: Warehouse) -> Conversion | None:
    """Rewrite the warehouse file into its configured storage version if it is written
    in another; None when it already is (or does not exist yet)."""
    path = warehouse.path
    if not path.exists():
        return None
    with warehouse.connect() as con:
        for leftover in path.parent.glob(f".{path.name}.rewrite-*"):
            leftover.unlink()
        source = str(files.one(con, "SELECT current_database()"))
        before = storage_version(con, source)
        wanted = _format_of(con, warehouse.storage_version, path)
        if before == wanted:
            return None
        log.info("storage_rewrite_started", path=str(path), before=before, after=wanted)
        con.execute("CHECKPOINT")
        building = _sibling(path, "copy")
        try:
            _copy(con, source, building, warehouse.storage_version)
            os.chmod(building, path.stat().st_mode & 0o777)
            files.fsync(building)
            os.replace(building, path)
            files.fsync(path.parent)
        except BaseException:
            for leftover in (building, files.wal(building)):
                leftover.unlink(missing_ok=True)
            raise
    log.info("storage_rewritten", path=str(path), before=before, after=wanted)
    return Conversion(path, before, wanted)


def _copy(con: duckdb.DuckDBPyConnection, source: str, target: Path, version: str) -> None:
    con.execute(
        f"ATTACH {_literal(str(target))} AS {REWRITE} (STORAGE_VERSION {_literal(version)})"
    )
    try:
        con.execute(f"COPY FROM DATABASE {quote(source)} TO {REWRITE}")
        tables = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ?",
            [source],
        ).fetchall()
        for schema, table in tables:
            name = f"{quote(schema)}.{quote(table)}"
            same = files.one(
                con,
                f"SELECT (SELECT count(*) FROM {quote(source)}.{name})"
                f" = (SELECT count(*) FROM {REWRITE}.{name})",
            )
            if not same:
                raise WarehouseUnavailable(f"rewriting {target}: {name} lost rows in the copy")
        con.execute(f"CHECKPOINT {REWRITE}")
    finally:
        con.execute(f"DETACH {REWRITE}")
    if files.wal(target).exists():
        raise WarehouseUnavailable(f"rewriting {target}: its WAL was not folded in")


def _sibling(path: Path, purpose: str) -> Path:
    """A hidden file beside `path` that `convert` deletes if a crash leaves it behind."""
    return path.with_name(f".{path.name}.rewrite-{purpose}-{secrets.token_hex(6)}.duckdb")


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
