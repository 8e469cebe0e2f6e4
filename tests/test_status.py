"""`status` over the configured streams: each one's counts, RCS's top-level keys as before."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from rcs_sync.model.durations import parse_instant
from rcs_sync.model.errors import EXIT_UNHEALTHY, ApiUnavailable, WarehouseLocked
from rcs_sync.model.streams import RCS_RECORDS
from rcs_sync.warehouse import status
from rcs_sync.warehouse.bookkeeping import failed_run
from rcs_sync.warehouse.duckdb_file import Warehouse
from tests.conftest import RCS_SYNC
from tests.fixtures import build_warehouse
from tests.widget_stream import WIDGETS


def test_each_stream_has_its_counts_and_the_first_keeps_the_top_level_keys(
    tmp_path: Path,
) -> None:
    path = build_warehouse(tmp_path / "rcs.duckdb")
    warehouse = Warehouse(path, streams=(RCS_RECORDS, WIDGETS))
    warehouse.migrate()
    with duckdb.connect(str(path)) as con:
        con.execute(
            "INSERT INTO test_widgets (serial, phase, made, first_seen_at, updated_at) "
            "SELECT i, CASE WHEN i = 1 THEN 9 ELSE 8 END, now(), now(), now() "
            "FROM range(1, 4) AS r(i)"
        )

    report = status.collect(warehouse, timedelta(minutes=5))

    assert (report["records"], report["quarantined"]) == (15, 2)
    assert report["streams"] == [
        {
            "stream": "rcs_records",
            "records": 15,
            "quarantined": 2,
            "states": {"sent": 3, "delivered": 4, "failed": 2, "rejected": 1, "read": 5},
        },
        {
            "stream": "test_widget_records",
            "records": 3,
            "quarantined": 0,
            "states": {"drafted": 0, "built": 2, "scrapped": 1},
        },
    ]
    text = status.render(report)
    assert "rcs_records: 15 records, 2 quarantined (3 sent, 4 delivered," in text
    assert "test_widget_records: 3 records, 0 quarantined (0 drafted, 2 built, 1 scrapped)" in text


def test_a_stream_whose_tables_the_next_migration_creates_has_no_counts_yet(
    tmp_path: Path,
) -> None:
    path = build_warehouse(tmp_path / "rcs.duckdb")

    report = status.collect(Warehouse(path, streams=(WIDGETS, RCS_RECORDS)), timedelta(minutes=5))

    assert (report["records"], report["quarantined"]) == (0, 0)
    assert report["streams"][0] == {
        "stream": "test_widget_records",
        "records": None,
        "quarantined": None,
        "states": {"drafted": 0, "built": 0, "scrapped": 0},
    }
    assert report["streams"][1]["records"] == 15


def _runs(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path / "rcs.duckdb")
    warehouse.migrate()
    return warehouse


def test_a_failed_last_pass_is_degraded_and_a_later_success_clears_it(tmp_path: Path) -> None:
    warehouse = _runs(tmp_path)
    ok = warehouse.start_run(RCS_RECORDS, "all", "sync", "incremental")
    warehouse.finish_run(ok, None)
    failed = warehouse.start_run(RCS_RECORDS, "all", "sync", "incremental")
    warehouse.finish_run(failed, ApiUnavailable("API at example still failing after retries"))

    report = status.collect(warehouse, timedelta(minutes=5))

    assert (report["healthy"], report["health"]) == (True, "degraded")
    [problem] = report["problems"]
    assert problem.startswith("rcs_records/all: the last pass failed at ")
    assert "(api): API at example still failing" in problem
    assert status.render(report).startswith("DEGRADED: rcs_records/all: the last pass failed")
    again = warehouse.start_run(RCS_RECORDS, "all", "sync", "incremental")
    warehouse.finish_run(again, None)
    report = status.collect(warehouse, timedelta(minutes=5))
    assert (report["health"], report["problems"]) == ("healthy", [])


def test_a_run_shows_when_it_finished_and_no_range_ends_in_the_future(tmp_path: Path) -> None:
    warehouse = _runs(tmp_path)
    run = warehouse.start_run(RCS_RECORDS, "all", "sync", "backfill")
    warehouse.finish_run(run, None)
    now = datetime.now(UTC)
    with duckdb.connect(str(warehouse.path)) as con:
        con.execute(
            "UPDATE sync_runs SET started_at = ?, finished_at = ?",
            [now - timedelta(hours=2), now - timedelta(hours=1)],
        )
        con.execute(
            "INSERT INTO sync_windows VALUES ('rcs_records', 'all', ?, ?, ?, 0, 1, ?)",
            [now - timedelta(days=1), now + timedelta(minutes=5), now, now],
        )

    report = status.collect(warehouse, timedelta(minutes=5), now=now)

    [entry] = report["scopes"]
    [[_start, end]] = entry["completed"]
    assert parse_instant(end) <= now
    [shown] = entry["last_runs"]
    finished = shown["finished_at"]
    assert f"ok at {finished}" in status.render(report)
    assert abs(parse_instant(finished) - (now - timedelta(hours=1))) < timedelta(seconds=1)


def test_status_of_a_warehouse_that_does_not_exist_is_unhealthy_exit_6(tmp_path: Path) -> None:
    config = tmp_path / "rcs-sync.toml"
    config.write_text(
        '[api]\nbase_url = "http://127.0.0.1:9"\n'
        '[sync]\ninitial_start = "2026-01-01T00:00:00Z"\n'
        '[warehouse]\npath = "rcs.duckdb"\n',
        encoding="utf-8",
    )
    for args in ([], ["--json"]):
        result = subprocess.run(
            [RCS_SYNC, "--config", str(config), "status", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == EXIT_UNHEALTHY, result.stderr
        assert "does not exist yet: run a sync" in result.stdout
    assert not (tmp_path / "rcs.duckdb").exists()


def test_a_run_that_could_not_be_written_is_shown_then_written_exactly_once(
    tmp_path: Path,
) -> None:
    warehouse = _runs(tmp_path)
    locked = WarehouseLocked("warehouse rcs.duckdb is locked by another process (PID 7)")
    warehouse.defer_run(failed_run("rcs_records", "all", "sync", locked, datetime.now(UTC)))
    running = warehouse.start_run(RCS_RECORDS, "all", "sync", "incremental")
    warehouse.defer_run(
        {
            "run_id": running,
            "finished_at": datetime.now(UTC).isoformat(),
            "status": "failed",
            "error": "x",
            "error_kind": "api",
        }
    )

    shown = status.collect(warehouse, timedelta(minutes=5))["scopes"][0]["last_runs"]
    assert [(r["run_id"], r["status"], r["error_kind"]) for r in shown] == [
        (running, "failed", "api"),
        (None, "failed", "warehouse"),
    ]
    saved = {p: p.read_bytes() for p in warehouse.deferred_dir.glob("*.json")}
    assert len(saved) == 2
    warehouse.migrate()
    assert not list(warehouse.deferred_dir.glob("*.json"))
    for path, data in saved.items():  # as if the process died before deleting them
        path.write_bytes(data)
    warehouse.migrate()
    with duckdb.connect(str(warehouse.path), read_only=True) as con:
        rows = con.execute(
            "SELECT status, error_kind, error FROM sync_runs ORDER BY run_id"
        ).fetchall()
    assert rows == [("failed", "api", "x"), ("failed", "warehouse", str(locked))]
