"""The views across channels: created by migration 7 over RCS alone, rebuilt over each
channel's table once its stream is configured; the README's definitions hold."""

from __future__ import annotations

from pathlib import Path

import duckdb

from rcs_sync.model.streams import CALL_RECORDS, RCS_RECORDS, TEAMS, TEXT_RECORDS
from rcs_sync.warehouse.duckdb_file import Warehouse


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).fetchall()


def test_views_exist_with_rcs_alone_then_cover_each_configured_channel(tmp_path: Path) -> None:
    path = tmp_path / "rcs.duckdb"
    Warehouse(path).migrate()
    with duckdb.connect(str(path)) as con:
        con.execute(
            "INSERT INTO rcs_records (id, team, campaign, state, timestamp, first_seen_at, "
            "updated_at) SELECT i, 1, 5, i % 5, TIMESTAMPTZ '2026-03-01 10:00:00+00', now(), "
            "now() FROM range(1, 11) AS r(i)"
        )
    assert rows(path, "SELECT channel, messages, team_name FROM message_rates_daily") == [
        ("rcs", 10, None)
    ]
    assert rows(path, "SELECT count(*) FROM call_outcomes_daily") == [(0,)]

    Warehouse(path, streams=(RCS_RECORDS, TEXT_RECORDS, CALL_RECORDS, TEAMS)).migrate()
    with duckdb.connect(str(path)) as con:
        con.execute("INSERT INTO teams VALUES (1, 'North', NULL, now(), now())")
        con.execute(
            "INSERT INTO text_records (id, team, campaign, state, timestamp, first_seen_at, "
            "updated_at) SELECT i, 1, 5, i % 4, TIMESTAMPTZ '2026-03-01 11:00:00+00', now(), "
            "now() FROM range(1, 9) AS r(i)"
        )
        con.execute(
            "INSERT INTO call_records (id, team, campaign, error, talk_duration, "
            "wait_duration, timestamp, first_seen_at, updated_at) SELECT i, 1, 5, i % 2, "
            "10 * i, i, TIMESTAMPTZ '2026-03-01 12:00:00+00', now(), now() "
            "FROM range(1, 5) AS r(i)"
        )
    got = rows(
        path,
        "SELECT channel, day::VARCHAR, team_name, messages, delivered, failed, rejected, "
        "pending, delivery_rate, read_rate FROM message_rates_daily ORDER BY channel",
    )
    # rcs: states 1,2,3,4,0 twice -> delivered (1, 4) 4, failed 4, rejected 2, pending 2,
    # read 2; sms: states 1,2,3,0 twice -> delivered 2, failed 4, rejected 2, pending 2.
    assert got == [
        ("rcs", "2026-03-01", "North", 10, 4, 4, 2, 2, 0.5, 0.5),
        ("sms", "2026-03-01", "North", 8, 2, 4, 2, 2, 2 / 6, None),
    ]
    calls = rows(
        path,
        "SELECT calls, succeeded, bad_number, talk_p50_s, wait_p90_s, team_name "
        "FROM call_outcomes_daily",
    )
    assert calls == [(4, 2, 2, 25.0, 3.7, "North")]
