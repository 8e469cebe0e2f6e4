"""`status` over the configured streams: each one's counts, RCS's top-level keys as before."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import duckdb

from rcs_sync.model.streams import RCS_RECORDS
from rcs_sync.warehouse import status
from rcs_sync.warehouse.duckdb_file import Warehouse
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
