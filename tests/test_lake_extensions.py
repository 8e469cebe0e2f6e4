"""The lake's extensions load from the installed wheels and a real PostgreSQL catalog
holds a DuckLake that a second process reads while the first writes.

Runs in the lake virtualenv (`make test` builds it: the `lake` extra pins the DuckDB
release the extension wheels are built for)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from rcs_sync.warehouse.extensions import LAKE_EXTENSIONS, NO_DOWNLOADS, load
from tests.postgres import PostgresServer

pytestmark = pytest.mark.lake


def _attach(con: duckdb.DuckDBPyConnection, catalog: str, data: Path, extra: str = "") -> None:
    con.execute(f"ATTACH 'ducklake:{catalog}' AS lake (DATA_PATH '{data}'{extra})")


def test_extensions_load_from_wheels_into_a_private_directory(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    private = tmp_path / "extensions"
    con = duckdb.connect(config=NO_DOWNLOADS)
    load(con, LAKE_EXTENSIONS, private)
    loaded = {
        name: path
        for name, path in con.execute(
            "SELECT extension_name, install_path FROM duckdb_extensions() WHERE loaded"
        ).fetchall()
    }
    assert {"ducklake", "postgres_scanner"} <= loaded.keys()
    assert con.execute("SELECT current_setting('extension_directory')").fetchone() == (
        str(private),
    )
    links = sorted(p.name for p in private.glob("*/*.duckdb_extension"))
    assert links == ["ducklake.duckdb_extension", "postgres_scanner.duckdb_extension"]
    # Loading again (another process, the next pass) reuses the links.
    load(duckdb.connect(config=NO_DOWNLOADS), LAKE_EXTENSIONS, private)


def test_a_reader_in_another_process_sees_each_commit_of_the_writer(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    catalog = postgres_server.catalog(postgres_server.create_database())
    data = tmp_path / "data"
    writer = duckdb.connect(config=NO_DOWNLOADS)
    load(writer, LAKE_EXTENSIONS, tmp_path / "extensions")
    _attach(writer, catalog, data)
    writer.execute("CREATE TABLE lake.t (id BIGINT NOT NULL, v INTEGER)")
    reader = (
        "import sys, duckdb\n"
        "from pathlib import Path\n"
        "from rcs_sync.warehouse.extensions import LAKE_EXTENSIONS, NO_DOWNLOADS, load\n"
        "con = duckdb.connect(config=NO_DOWNLOADS)\n"
        "load(con, LAKE_EXTENSIONS, Path(sys.argv[3]))\n"
        "con.execute(f\"ATTACH 'ducklake:{sys.argv[1]}' AS lake "
        "(DATA_PATH '{sys.argv[2]}', READ_ONLY)\")\n"
        "print(con.execute('SELECT count(*), coalesce(sum(v), 0) FROM lake.t').fetchone())\n"
    )

    def read() -> str:
        return subprocess.run(
            [sys.executable, "-c", reader, catalog, str(data), str(tmp_path / "extensions")],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()

    assert read() == "(0, 0)"
    for n in range(1, 3):
        writer.execute("BEGIN")
        writer.execute(
            "MERGE INTO lake.t USING (SELECT range AS id, ? AS v FROM range(100)) s "
            "ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v "
            "WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)",
            [n],
        )
        # Uncommitted work is invisible to the reader.
        assert read() == f"({100 if n > 1 else 0}, {100 * (n - 1)})"
        writer.execute("COMMIT")
        assert read() == f"(100, {100 * n})"
