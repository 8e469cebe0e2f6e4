"""Rewriting a warehouse into the configured storage version is all or nothing."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from rcs_sync.warehouse import storage
from rcs_sync.warehouse.duckdb_file import Warehouse
from tests.fixtures import RECORDS, build_warehouse


def latest(path: Path) -> Path:
    Warehouse(path, storage_version="latest").migrate()
    build_warehouse(path)  # the schema is there: this adds the rows
    return path


def rows(path: Path) -> list[tuple[object, ...]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute("SELECT * FROM rcs_records ORDER BY id").fetchall()


def test_new_files_are_written_for_1_1(tmp_path: Path) -> None:
    path = build_warehouse(tmp_path / "rcs.duckdb")
    assert storage.file_version(path) == "v1.0.0+"  # DuckDB's name of the 1.0-1.1 format
    assert storage.convert(Warehouse(path)) is None


def test_a_failed_rewrite_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = latest(tmp_path / "rcs.duckdb")
    before = rows(path)
    assert len(before) == len(RECORDS)

    def crash(_src: object, _dst: object) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr("rcs_sync.warehouse.storage.os.replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        storage.convert(Warehouse(path))
    monkeypatch.undo()
    assert storage.file_version(path) == "v2.0.0+"
    assert rows(path) == before
    assert list(tmp_path.glob(".rcs.duckdb.rewrite-*")) == []

    # A leftover of a crash (kill -9 mid-copy) is cleared by the next rewrite.
    (tmp_path / ".rcs.duckdb.rewrite-copy-0123456789ab.duckdb").write_bytes(b"half a file")
    converted = storage.convert(Warehouse(path))
    assert converted is not None
    assert (converted.before, converted.after) == ("v2.0.0+", "v1.0.0+")
    assert rows(path) == before
    assert list(tmp_path.glob(".rcs.duckdb.rewrite-*")) == []
    assert not path.with_name("rcs.duckdb.wal").exists()
