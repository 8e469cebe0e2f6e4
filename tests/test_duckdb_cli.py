"""The warehouse and the snapshot open in the newest DuckDB 1.x CLI on the package index
(README, "Querying the data"): every view, every table and every SQL block of the
README run through it against both files, and `rcs-sync migrate` rewrites a file
written in DuckDB 2.x's own format into one it reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from rcs_sync.warehouse.snapshot import publish
from rcs_sync.warehouse.storage import file_version
from tests.conftest import Site
from tests.duckdb_cli import duckdb_cli, run_cli
from tests.fixtures import build_warehouse
from tests.test_readme_sql import BLOCKS

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    main = build_warehouse(tmp_path_factory.mktemp("cli") / "rcs.duckdb")
    snapshot = main.with_name("rcs.snapshot.duckdb")
    publish(main, snapshot)
    return main, snapshot


def _objects(database: Path) -> list[str]:
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{database}' AS f (READ_ONLY)")
        rows = con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'f' "
            "UNION ALL SELECT view_name FROM duckdb_views() "
            "WHERE database_name = 'f' AND NOT internal ORDER BY 1"
        ).fetchall()
    return [str(name) for (name,) in rows]


@pytest.mark.parametrize("which", ["warehouse", "snapshot"])
def test_every_view_and_table_reads_in_the_1x_cli(files: tuple[Path, Path], which: str) -> None:
    cli = duckdb_cli()
    database = files[0] if which == "warehouse" else files[1]
    assert file_version(database) == "v1.0.0+"
    objects = _objects(database)
    assert {"rcs_rates_daily", "rcs_rates_campaign", "rcs_message_timings"} <= set(objects)
    for name in objects:
        result = run_cli(cli, database, f'SELECT * FROM "{name}";')
        assert result.returncode == 0, f"{name}: {result.stderr}"


@pytest.mark.parametrize("which", ["warehouse", "snapshot"])
@pytest.mark.parametrize("sql", BLOCKS, ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_readme_sql_runs_in_the_1x_cli(files: tuple[Path, Path], which: str, sql: str) -> None:
    cli = duckdb_cli()
    result = run_cli(cli, files[0] if which == "warehouse" else files[1], sql)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) >= 2, f"no rows from:\n{sql}\n{result.stdout}"  # a header, then rows


def test_migrate_rewrites_a_2x_file_for_the_1x_cli(site: Callable[..., Site]) -> None:
    cli = duckdb_cli()
    s = site(records=2_000)
    s.write_config(warehouse={"storage_version": "latest"})
    s.ok("sync", "--publish-snapshot")
    snapshot = s.dir / "rcs.snapshot.duckdb"
    before = s.query("SELECT count(*), sum(state), max(run_id) FROM rcs_records, sync_runs")
    for database in (s.db, snapshot):
        refused = run_cli(cli, database, "SELECT 1;")
        assert refused.returncode != 0
        assert "version number" in refused.stderr

    s.write_config(warehouse={"storage_version": "v1.1.0"})
    result = s.ok("migrate")
    assert "storage rewritten: v2.0.0+ -> v1.0.0+" in result.stdout
    assert f"snapshot republished: {snapshot}" in result.stdout
    assert s.query("SELECT count(*), sum(state), max(run_id) FROM rcs_records, sync_runs") == before
    for database in (s.db, snapshot):
        read = run_cli(cli, database, "SELECT count(*) FROM rcs_rates_daily;")
        assert read.returncode == 0, read.stderr
    assert list(s.dir.glob(".rcs.duckdb.rewrite-*")) == []
    # The rewritten file syncs on, and a second migrate has nothing to rewrite.
    s.ok("sync", "--publish-snapshot")
    assert "storage rewritten" not in s.ok("migrate").stdout
    assert run_cli(cli, snapshot, "SELECT count(*) FROM rcs_records;").returncode == 0
