"""The bulk loader against a real DuckDB file: validation, quarantine, dedup, upserts."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rcs_sync.model.commits import Commit
from rcs_sync.model.errors import BadBody, SuspectedTruncation
from rcs_sync.model.responses import Spool
from rcs_sync.model.streams import RCS_RECORDS
from rcs_sync.model.windows import Window
from rcs_sync.warehouse.duckdb_file import Warehouse
from rcs_sync.warehouse.migrations import MIGRATIONS

T0 = datetime(2026, 3, 1, tzinfo=UTC)
WINDOW = Window(T0, datetime(2026, 3, 2, tzinfo=UTC))


def record(rid: Any = 1, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "campaign": 7,
        "id": rid,
        "job": 70,
        "number": "+33612345678",
        "portal": None,
        "reference": f"ref-{rid}",
        "state": 1,
        "team": 2,
        "timestamp": "2026-03-01T10:21:14.243Z",
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    wh = Warehouse(tmp_path / "rcs.duckdb", lock_timeout=5)
    wh.migrate()
    return wh


def load(
    wh: Warehouse,
    tmp_path: Path,
    body: str | bytes | list[Any],
    *,
    include: bool = False,
    server_limit: int | None = None,
    window: Window | None = WINDOW,
) -> Any:
    path = tmp_path / "body.json"
    if isinstance(body, list):
        body = json.dumps(body)
    path.write_bytes(body.encode() if isinstance(body, str) else body)
    run_id = wh.start_run(RCS_RECORDS, "all", "test", "backfill")
    commit = Commit(RCS_RECORDS, "all", run_id, T0, window=window)
    return wh.commit_batch(
        Spool.of(path), commit, include_optional=include, server_limit=server_limit
    )


def rows(wh: Warehouse, sql: str) -> list[tuple[Any, ...]]:
    return wh.query(sql)


def test_valid_records_land_typed(warehouse: Warehouse, tmp_path: Path) -> None:
    result = load(
        warehouse,
        tmp_path,
        [
            record(1, state=0, timestamp="2013-02-25T09:21:14Z"),
            record(2, state=4, portal="web", number='+33 6 ü "quoted" \\ slash'),
        ],
    )
    assert (result.received, result.inserted, result.updated, result.quarantined) == (2, 2, 0, 0)
    got = rows(
        warehouse,
        "SELECT id, campaign, job, team, number, reference, portal, state, timestamp "
        "FROM rcs_records ORDER BY id",
    )
    assert got[0][:8] == (1, 7, 70, 2, "+33612345678", "ref-1", None, 0)
    assert got[0][8] == datetime(2013, 2, 25, 9, 21, 14, tzinfo=UTC)
    assert got[1][4] == '+33 6 ü "quoted" \\ slash'
    assert got[1][6:8] == ("web", 4)
    assert got[1][8] == datetime(2026, 3, 1, 10, 21, 14, 243000, tzinfo=UTC)


MALFORMED = [
    (record(...), "id: missing"),
    (record("11"), "id: not an integer"),
    (record(-12), "id: below 1"),
    (record(0), "id: below 1"),
    (record(18446744073709551615), "id: out of range"),
    (record(16.5), "id: not an integer"),
    (record(17, state=9), "state: unknown value"),
    (record(18, state="4"), "state: not an integer"),
    (record(19, state=1.5), "state: not an integer"),
    (record(20, state=None), "state: missing"),
    (record(21, timestamp="yesterday"), "timestamp: not a valid timestamp"),
    (record(22, timestamp=1700000000), "timestamp: not a string"),
    (record(23, timestamp=...), "timestamp: missing"),
    (record(24, campaign="seven"), "campaign: not an integer"),
    (record(25, number=33612345678), "number: not a string"),
    (record(26, reference={"deep": [[[[{"x": 1}]]]]}), "reference: not a string"),
    (record(27, team=True), "team: not an integer"),
    (record(28, state=1e3), "state: not an integer"),
    (record(29, state=-1), "state: out of range"),
    (record(30, state=256), "state: out of range"),
]


def test_malformed_records_are_quarantined_and_the_rest_loads(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    body = [record(100), *(bad for bad, _ in MALFORMED), record(101)]
    result = load(warehouse, tmp_path, body)
    assert result.received == len(body)
    assert result.inserted == 2
    assert result.quarantined == len(MALFORMED)
    assert rows(warehouse, "SELECT id FROM rcs_records ORDER BY id") == [(100,), (101,)]
    reasons = rows(warehouse, "SELECT reason, raw FROM rcs_quarantine")
    assert sorted(r for r, _ in reasons) == sorted(reason for _, reason in MALFORMED)
    # The raw JSON keeps what the provider sent, e.g. the id as a string.
    raws = [json.loads(raw) for _, raw in reasons]
    assert {"id": "11"}.items() <= next(r for r in raws if r.get("id") == "11").items()


def test_duplicates_in_one_response_keep_the_most_advanced_state(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    body = [record(5, state=4), record(5, state=1), record(6, state=0), record(6, state=1)]
    result = load(warehouse, tmp_path, body)
    assert (result.inserted, result.quarantined) == (2, 2)
    assert rows(warehouse, "SELECT id, state FROM rcs_records ORDER BY id") == [(5, 4), (6, 1)]
    assert rows(warehouse, "SELECT DISTINCT reason FROM rcs_quarantine") == [
        ("id: duplicate in response, superseded by another copy",)
    ]


def test_upsert_is_idempotent_and_counts_changes(warehouse: Warehouse, tmp_path: Path) -> None:
    load(warehouse, tmp_path, [record(1, state=0), record(2, state=0)])
    [(first_seen, updated_at)] = rows(
        warehouse, "SELECT first_seen_at, updated_at FROM rcs_records WHERE id = 1"
    )
    again = load(warehouse, tmp_path, [record(1, state=0), record(2, state=0)])
    assert (again.inserted, again.updated) == (0, 0)
    changed = load(warehouse, tmp_path, [record(1, state=4), record(2, state=0), record(3)])
    assert (changed.inserted, changed.updated) == (1, 1)
    [(first_after, updated_after, state)] = rows(
        warehouse, "SELECT first_seen_at, updated_at, state FROM rcs_records WHERE id = 1"
    )
    assert (first_after, state) == (first_seen, 4)
    assert updated_after > updated_at
    [(unchanged_updated,)] = rows(warehouse, "SELECT updated_at FROM rcs_records WHERE id = 2")
    assert unchanged_updated == updated_at


def test_content_is_kept_when_a_later_pass_does_not_ask_for_it(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    load(warehouse, tmp_path, [record(1, content_message="hello")], include=True)
    again = load(warehouse, tmp_path, [record(1)], include=False)
    assert again.updated == 0
    assert rows(warehouse, "SELECT content_message FROM rcs_records") == [("hello",)]


def test_undocumented_fields_are_kept_in_extra(warehouse: Warehouse, tmp_path: Path) -> None:
    load(warehouse, tmp_path, [record(1, channel="rcs", agent={"id": 3}), record(2)])
    got = dict(rows(warehouse, "SELECT id, extra FROM rcs_records"))
    assert json.loads(got[1]) == {"channel": "rcs", "agent": {"id": 3}}
    assert got[2] is None


def test_bodies_duckdb_cannot_parse_go_through_the_slow_path(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    good = json.dumps(record(1))
    lone_surrogate = json.dumps(record(2, number="\\ud800")).replace("\\\\ud800", "\\ud800")
    body = (
        "[" + good + ", " + lone_surrogate + ', 5, "text", ' + json.dumps(record(3)) + "]"
    ).encode()
    body = body.replace(b"ref-3", b"ref-\xff3")  # not UTF-8
    result = load(warehouse, tmp_path, body)
    assert result.received == 5
    assert result.inserted == 1
    assert result.quarantined == 4
    assert rows(warehouse, "SELECT id FROM rcs_records") == [(1,)]
    reasons = sorted(r for (r,) in rows(warehouse, "SELECT reason FROM rcs_quarantine"))
    assert reasons.count("record: not a JSON object") == 2
    assert sum("not valid Unicode" in r for r in reasons) == 2


def test_a_body_that_is_not_json_is_a_bad_body_and_writes_nothing(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    with pytest.raises(BadBody):
        load(warehouse, tmp_path, '[{"id": 1, "state": 1} {"id": 2}]')
    assert rows(warehouse, "SELECT count(*) FROM sync_windows") == [(0,)]
    assert rows(warehouse, "SELECT count(*) FROM rcs_records") == [(0,)]


def test_suspected_truncation_rolls_back_the_whole_batch(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    with pytest.raises(SuspectedTruncation):
        load(warehouse, tmp_path, [record(i) for i in range(1, 11)], server_limit=10)
    assert rows(warehouse, "SELECT count(*) FROM rcs_records") == [(0,)]
    assert rows(warehouse, "SELECT count(*) FROM sync_windows") == [(0,)]
    load(warehouse, tmp_path, [record(i) for i in range(1, 10)], server_limit=10)
    assert rows(warehouse, "SELECT count(*) FROM sync_windows") == [(1,)]


def test_more_records_than_the_server_limit_load_they_were_evidently_not_cut_there(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    load(warehouse, tmp_path, [record(i) for i in range(1, 12)], server_limit=10)
    assert rows(warehouse, "SELECT count(*) FROM rcs_records") == [(11,)]


def test_window_and_records_commit_together(warehouse: Warehouse, tmp_path: Path) -> None:
    load(warehouse, tmp_path, [record(1)])
    assert rows(warehouse, "SELECT window_start, window_end, records FROM sync_windows") == [
        (WINDOW.start, WINDOW.end, 1)
    ]
    assert [(w.window, w.fetched_at) for w in warehouse.fetches(RCS_RECORDS, "all")] == [
        (WINDOW, T0)
    ]


def test_migrations_run_once(warehouse: Warehouse) -> None:
    assert warehouse.migrate() == []
    versions = [version for version, _, _ in MIGRATIONS]
    assert rows(warehouse, "SELECT version FROM schema_migrations ORDER BY 1") == [
        (v,) for v in versions
    ]
    assert versions == list(range(1, len(versions) + 1))


def test_database_file_is_not_world_readable(warehouse: Warehouse) -> None:
    assert warehouse.path.stat().st_mode & 0o777 == 0o640


def test_extra_fields_are_found_even_behind_a_record_bigger_than_the_sample(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    big = record(1, reference="r" * (3 * 1024 * 1024), channel="rcs")
    load(warehouse, tmp_path, [big, record(2)])
    got = dict(rows(warehouse, "SELECT id, extra FROM rcs_records"))
    assert json.loads(got[1]) == {"channel": "rcs"}


def opens_elsewhere(path: Path) -> bool:
    """Whether another process can open the file now (DuckDB locks it per process)."""
    code = "import duckdb, sys; duckdb.connect(sys.argv[1], read_only=True).close()"
    return (
        subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True).returncode == 0
    )


def test_held_calls_share_one_connection_released_before_a_wait(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    with warehouse.held():
        load(warehouse, tmp_path, [record(1)])
        assert not opens_elsewhere(warehouse.path)  # kept open between calls
        assert rows(warehouse, "SELECT count(*) FROM rcs_records") == [(1,)]
        warehouse.release()
        assert opens_elsewhere(warehouse.path)
        # After a failed batch the connection is not reused (nor left open).
        with pytest.raises(SuspectedTruncation):
            load(warehouse, tmp_path, [record(i) for i in range(2, 12)], server_limit=10)
        assert opens_elsewhere(warehouse.path)
        load(warehouse, tmp_path, [record(2)])
    assert opens_elsewhere(warehouse.path)
    assert rows(warehouse, "SELECT count(*) FROM rcs_records") == [(2,)]
