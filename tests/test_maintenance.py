"""Lake maintenance (`warehouse/maintenance.py`) against a real PostgreSQL catalog: orphans
of a killed transaction go, snapshots older than the age expire while time travel to a
kept one still works, a tiny budget stops early and says so; a DuckDB file is only
checkpointed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from rcs_sim.server import RunningSimulator
from rcs_sync.config import MaintenanceSettings
from rcs_sync.warehouse import maintenance
from rcs_sync.warehouse.extensions import LAKE_EXTENSIONS, NO_DOWNLOADS, load
from tests.conftest import Site, wait_for
from tests.lake_passes import NOW, small_passes
from tests.postgres import PostgresServer
from tests.test_service import daemon, passes_ok


def _lake(catalog: str, data: Path, extensions: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config=NO_DOWNLOADS)
    load(con, LAKE_EXTENSIONS, extensions)
    con.execute(f"ATTACH 'ducklake:{catalog}' AS lake (DATA_PATH '{data}')")
    con.execute("USE lake")
    return con


@pytest.fixture
def catalog(postgres_server: PostgresServer) -> str:
    return postgres_server.catalog(postgres_server.create_database())


@pytest.fixture
def lake(tmp_path: Path, catalog: str) -> Iterator[duckdb.DuckDBPyConnection]:
    con = _lake(catalog, tmp_path / "data", tmp_path / "extensions")
    con.execute("CREATE TABLE t (id BIGINT NOT NULL, v INTEGER)")
    yield con
    con.close()


def _parquet(data: Path) -> set[Path]:
    return set(data.rglob("*.parquet"))


def _upsert(con: duckdb.DuckDBPyConnection, n: int, rows: int = 5) -> None:
    """One small pass: a few rows inserted or updated in one transaction."""
    con.execute(
        "MERGE INTO t USING (SELECT (? * 3 + range) % 200 AS id, ? AS v FROM range(?)) s "
        "ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v "
        "WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v)",
        [n, n, rows],
    )


@pytest.mark.lake
def test_orphans_of_a_killed_transaction_are_removed(
    tmp_path: Path, catalog: str, lake: duckdb.DuckDBPyConnection
) -> None:
    data = tmp_path / "data"
    lake.execute("INSERT INTO t SELECT range, 1 FROM range(1000)")
    kept = _parquet(data)
    # Another writer writes a large batch and is killed before it commits.
    killed = (
        "import os, sys, duckdb\n"
        "from pathlib import Path\n"
        "from rcs_sync.warehouse.extensions import LAKE_EXTENSIONS, NO_DOWNLOADS, load\n"
        "con = duckdb.connect(config=NO_DOWNLOADS)\n"
        "load(con, LAKE_EXTENSIONS, Path(sys.argv[3]))\n"
        "con.execute(f\"ATTACH 'ducklake:{sys.argv[1]}' AS lake (DATA_PATH '{sys.argv[2]}')\")\n"
        "con.execute('BEGIN')\n"
        "con.execute('INSERT INTO lake.t SELECT range, 2 FROM range(200000)')\n"
        "os.kill(os.getpid(), 9)\n"
    )
    writer = subprocess.run(
        [sys.executable, "-c", killed, catalog, str(data), str(tmp_path / "extensions")],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert writer.returncode == -9, writer.stderr
    orphans = _parquet(data) - kept
    assert orphans, "the killed transaction wrote no file"

    report = maintenance.maintain(lake, NOW)

    assert report.complete
    assert report.orphans_removed >= len(orphans)
    assert not (orphans & _parquet(data))
    assert lake.execute("SELECT count(*), sum(v) FROM t").fetchone() == (1000, 1000)


@pytest.mark.lake
def test_old_snapshots_expire_and_time_travel_reaches_the_kept_ones(
    lake: duckdb.DuckDBPyConnection,
) -> None:
    for n in range(5):
        _upsert(lake, n)
    cutoff = datetime.now(UTC)
    while datetime.now(UTC) <= cutoff:  # the next snapshot is strictly younger
        pass
    kept: dict[int, list[tuple[int, int]]] = {}
    for n in range(5, 10):
        _upsert(lake, n)
        version = _version(lake)
        kept[version] = lake.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    before = _versions(lake)

    report = maintenance.maintain(
        lake,
        MaintenanceSettings(expire_snapshots_after=timedelta(), remove_files_after=timedelta()),
        now=cutoff,
    )

    after = _versions(lake)
    old = {v for v in before if v < min(kept)}
    assert report.snapshots_expired == len(old) > 0
    assert not old & after
    assert set(kept) <= after
    for version, rows in kept.items():
        travelled = lake.execute(f"SELECT id, v FROM t AT (VERSION => {version}) ORDER BY id")
        assert travelled.fetchall() == rows
    with pytest.raises(duckdb.Error):
        lake.execute(f"SELECT count(*) FROM t AT (VERSION => {min(old)})").fetchall()


def _versions(con: duckdb.DuckDBPyConnection) -> set[int]:
    rows = con.execute("SELECT snapshot_id FROM ducklake_snapshots('lake')").fetchall()
    return {int(v) for (v,) in rows}


def _version(con: duckdb.DuckDBPyConnection) -> int:
    return max(_versions(con))


@pytest.mark.lake
def test_a_tiny_budget_stops_early_says_so_and_the_next_run_is_due(
    lake: duckdb.DuckDBPyConnection,
) -> None:
    for n in range(20):
        _upsert(lake, n, rows=50)
    every = MaintenanceSettings(every=timedelta(days=1))
    assert maintenance.due(lake, every, datetime.now(UTC))  # never maintained

    cut = maintenance.maintain(lake, MaintenanceSettings(budget=timedelta()))

    assert not cut.complete
    assert cut.calls == 1
    assert cut.stopped_before is not None and cut.stop_reason == "budget spent"
    assert "stopped before" in maintenance.render(cut)
    assert maintenance.due(lake, every, datetime.now(UTC))  # incomplete: due again

    full = maintenance.maintain(lake, NOW)

    assert full.complete and full.calls > 1
    assert full.data_files_after < full.data_files_before
    assert not maintenance.due(lake, every, datetime.now(UTC))
    assert maintenance.due(lake, every, datetime.now(UTC) + timedelta(days=1))
    off = MaintenanceSettings(enabled=False)
    assert not maintenance.due(lake, off, datetime.now(UTC) + timedelta(days=1))


PASSES, EVERY = 150, 50


@pytest.mark.lake
def test_after_many_small_passes_the_live_data_files_stay_at_most_20(
    tmp_path: Path, catalog: str
) -> None:
    reports, records = small_passes(catalog, tmp_path, PASSES, EVERY)

    assert records == (15 * (PASSES - 1) + 25, 15 * (PASSES - 1) + 24)
    assert len(reports) == PASSES // EVERY
    assert all(r.complete for r in reports)
    assert max(r.data_files_before for r in reports) > 20  # what EVERY passes leave
    assert [r.data_files_after for r in reports if r.data_files_after > 20] == []
    assert sum(r.snapshots_expired for r in reports) >= PASSES


def test_a_duckdb_file_is_only_checkpointed(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE TABLE t AS SELECT range AS id FROM range(10)")

    report = maintenance.maintain(con, NOW)

    assert report.kind == "duckdb" and report.complete and report.calls == 0
    assert not maintenance.due(con, NOW, datetime.now(UTC))
    assert "needs no maintenance" in maintenance.render(report)
    assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchone() == (1,)


def _lake_site(tmp_path: Path, sim: RunningSimulator, catalog: str, **maintenance: str) -> Site:
    site = Site(tmp_path, sim, catalog=catalog)
    site.write_config(sync={"interval": "1s"}, maintenance=maintenance)
    return site


@pytest.mark.lake
def test_the_daemon_maintains_the_lake_on_schedule_in_its_passes(
    tmp_path: Path, make_sim: Callable[..., RunningSimulator], catalog: str
) -> None:
    s = _lake_site(
        tmp_path,
        make_sim(records=2_000),
        catalog,
        every="4s",
        expire_snapshots_after="0s",
        remove_files_after="0s",
    )
    with daemon(s) as d:
        d.wait_message("READY", value="1", timeout=60)

        def runs() -> list[dict[str, Any]]:
            return [e for e in d.events() if e["event"] == "lake_maintained"]

        def mutate_and_count() -> bool:
            s.sim.sim.mutate(20)
            return len(runs()) >= 2

        wait_for(mutate_and_count, 120, "two maintenance runs")
        passes = passes_ok(d)
        code, _ = d.stop(timeout=30)
    assert code == 0
    first, second = runs()[:2]
    assert first["complete"] and second["complete"]
    assert first["snapshots_expired"] > 0 and second["snapshots_expired"] > 0
    assert second["data_files_after"] <= 20
    gap = datetime.fromisoformat(second["started_at"]) - datetime.fromisoformat(first["started_at"])
    assert gap >= timedelta(seconds=4)  # not before it was due again
    assert passes >= len(runs())  # in passes, after their commits
    assert s.query(f"SELECT count(*) FROM {maintenance.TABLE}") == [(len(runs()),)]
    s.assert_converged()


@pytest.mark.lake
def test_rcs_sync_maintain_by_hand_prints_what_it_did(
    tmp_path: Path, make_sim: Callable[..., RunningSimulator], catalog: str
) -> None:
    s = _lake_site(tmp_path, make_sim(records=2_000), catalog, budget="0s")
    s.ok("sync")
    cut = json.loads(s.ok("--log-format", "json", "maintain").stdout)
    assert cut["kind"] == "ducklake" and cut["calls"] == 1 and not cut["complete"]
    assert cut["stop_reason"] == "budget spent"
    s.write_config(maintenance={"budget": "60s"})
    text = s.ok("--log-format", "console", "maintain").stdout
    assert text.startswith("lake maintained in ") and ", complete: data files " in text
    s.assert_converged()


def test_rcs_sync_maintain_on_a_duckdb_file_says_it_needs_none(
    tmp_path: Path, make_sim: Callable[..., RunningSimulator]
) -> None:
    s = Site(tmp_path, make_sim(records=500))
    s.write_config()
    missing = s.run("maintain")
    assert missing.returncode == 5 and "does not exist yet" in missing.stderr
    assert not s.db.exists()
    s.ok("sync")
    out = s.ok("--log-format", "console", "maintain").stdout
    assert out.startswith("a DuckDB file needs no maintenance: checkpointed in ")
