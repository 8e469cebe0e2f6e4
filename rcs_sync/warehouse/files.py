"""Small file and query helpers the snapshot and the storage rewrite share."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb


def one(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    """The single value `sql` returns."""
    row = con.execute(sql).fetchone()
    assert row is not None
    return row[0]


def wal(database: Path) -> Path:
    """DuckDB's write-ahead log beside `database`."""
    return database.with_name(database.name + ".wal")


def fsync(path: Path) -> None:
    """Flush `path` to disk, so a rename after it publishes a whole file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
