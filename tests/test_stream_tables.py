"""A stream's tables come from its declaration; existing warehouses keep theirs unchanged."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import duckdb
import pytest

from rcs_sync.model.commits import Commit
from rcs_sync.model.errors import WarehouseUnavailable
from rcs_sync.model.responses import Spool
from rcs_sync.model.streams import RCS_RECORDS, Field, History, Stream, register, registered
from rcs_sync.warehouse.duckdb_file import Warehouse
from rcs_sync.warehouse.migrations import MIGRATIONS, VIEWS_ONLY
from rcs_sync.warehouse.tables import (
    BOOKKEEPING,
    SCHEMA_MIGRATIONS,
    SCHEMA_STREAMS,
    check,
    stream_tables,
)
from tests.widget_stream import WIDGETS

TYPE_NAMES = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE"}
"""How DESCRIBE spells the declarations' types."""

MAIN_SCHEMA = {
    "rcs_records": "CREATE TABLE rcs_records(id BIGINT PRIMARY KEY, campaign BIGINT, "
    "job BIGINT, team BIGINT, number VARCHAR, reference VARCHAR, portal VARCHAR, "
    'state UTINYINT NOT NULL, "timestamp" TIMESTAMP WITH TIME ZONE NOT NULL, '
    "content_message VARCHAR, extra JSON, first_seen_at TIMESTAMP WITH TIME ZONE NOT NULL, "
    "updated_at TIMESTAMP WITH TIME ZONE NOT NULL);",
    "rcs_quarantine": "CREATE TABLE rcs_quarantine(run_id BIGINT, record_id VARCHAR, "
    "reason VARCHAR NOT NULL, raw VARCHAR, quarantined_at TIMESTAMP WITH TIME ZONE NOT NULL);",
    "rcs_state_changes": "CREATE TABLE rcs_state_changes(id BIGINT NOT NULL, "
    "from_state UTINYINT, to_state UTINYINT NOT NULL, "
    "observed_at TIMESTAMP WITH TIME ZONE NOT NULL);",
}
"""The RCS tables as every release so far has created them (DuckDB's own rendering)."""


def declared_columns(stream: Stream) -> dict[str, list[tuple[str, str, str, str | None]]]:
    """DESCRIBE's (name, type, null, key) of each table, as the declaration reads."""

    def column(name: str, sql_type: str, *, null: bool, key: bool = False) -> Any:
        return (name, TYPE_NAMES.get(sql_type, sql_type), "YES" if null else "NO", key or None)

    records = [
        column(f.name, f.sql_type, null=not f.required, key=f.name == stream.key)
        for f in stream.all_fields()
    ]
    records += [
        column("extra", "JSON", null=True),
        column("first_seen_at", "TIMESTAMPTZ", null=False),
        column("updated_at", "TIMESTAMPTZ", null=False),
    ]
    tables = {
        stream.table: [(n, t, null, "PRI" if key else None) for n, t, null, key in records],
        stream.quarantine_table: [
            column("run_id", "BIGINT", null=True),
            column("record_id", "VARCHAR", null=True),
            column("reason", "VARCHAR", null=False),
            column("raw", "VARCHAR", null=True),
            column("quarantined_at", "TIMESTAMPTZ", null=False),
        ],
    }
    if stream.history is not None:
        state = stream.field_named(stream.history.state).sql_type
        tables[stream.history.table] = [
            column(stream.key, stream.field_named(stream.key).sql_type, null=False),
            column("from_state", state, null=True),
            column("to_state", state, null=False),
            column("observed_at", "TIMESTAMPTZ", null=False),
        ]
    return tables


def described(path: Path, table: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return [tuple(r[:4]) for r in con.execute(f'DESCRIBE "{table}"').fetchall()]


def catalog(path: Path) -> dict[str, str]:
    """Every table's and view's definition, as DuckDB renders it."""
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute(
            "SELECT table_name, sql FROM duckdb_tables() UNION ALL "
            "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal"
        ).fetchall()
    return dict(rows)


def scalar(path: Path, sql: str) -> Any:
    with duckdb.connect(str(path), read_only=True) as con:
        row = con.execute(sql).fetchone()
    assert row is not None
    return row[0]


@pytest.mark.parametrize("stream", [*registered(), WIDGETS], ids=lambda s: s.name)
def test_a_fresh_warehouse_has_each_stream_table_as_declared(
    tmp_path: Path, stream: Stream
) -> None:
    path = tmp_path / "rcs.duckdb"
    Warehouse(path, streams=(*registered(), WIDGETS)).migrate()
    for table, columns in declared_columns(stream).items():
        assert described(path, table) == columns, table


def test_the_rcs_tables_are_exactly_those_every_release_created(tmp_path: Path) -> None:
    path = tmp_path / "rcs.duckdb"
    Warehouse(path).migrate()
    assert {t: catalog(path)[t] for t in MAIN_SCHEMA} == MAIN_SCHEMA


def test_the_rcs_declaration_renders_what_migrations_1_and_3_create(tmp_path: Path) -> None:
    """Migrations 1 and 3 stay as shipped; their RCS tables equal the rendered DDL."""
    rendered = tmp_path / "rendered.duckdb"
    with duckdb.connect(str(rendered)) as con:
        for table in stream_tables(RCS_RECORDS):
            con.execute(table.ddl())
    assert catalog(rendered) == MAIN_SCHEMA


def test_an_existing_warehouse_reruns_no_migration_and_adopts_its_rcs_tables(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rcs.duckdb"
    with duckdb.connect(str(path)) as con:  # as every earlier release left a warehouse
        con.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
            "name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
        )
        for version, name, sql in MIGRATIONS:
            con.execute(sql)
            con.execute("INSERT INTO schema_migrations VALUES (?, ?, now())", [version, name])
        con.execute(
            "INSERT INTO rcs_records (id, state, timestamp, first_seen_at, updated_at) "
            "VALUES (1, 4, now(), now(), now())"
        )
    before = catalog(path)

    assert Warehouse(path).migrate() == []

    after = catalog(path)
    assert after.pop("schema_streams")
    assert after == before
    assert scalar(path, "SELECT list(stream) FROM schema_streams") == ["rcs_records"]
    assert scalar(path, "SELECT count(*) FROM rcs_records WHERE state = 4") == 1


def test_a_stream_added_later_gets_its_tables_on_the_next_migrate(tmp_path: Path) -> None:
    path = tmp_path / "rcs.duckdb"
    Warehouse(path, streams=(RCS_RECORDS,)).migrate()
    assert WIDGETS.table not in catalog(path)

    assert Warehouse(path, streams=(RCS_RECORDS, WIDGETS)).migrate() == []

    tables = catalog(path)
    assert {t.name for t in stream_tables(WIDGETS)} <= tables.keys()
    streams = "SELECT list(stream ORDER BY stream) FROM schema_streams"
    assert scalar(path, streams) == ["rcs_records", "test_widget_records"]
    with duckdb.connect(str(path)) as con:
        con.execute("INSERT INTO test_widgets VALUES (1, 'red', 5, 8, now(), NULL, now(), now())")
    Warehouse(path, streams=(WIDGETS,)).migrate()  # recorded: neither created nor checked again
    assert catalog(path) == tables
    assert scalar(path, "SELECT count(*) FROM test_widgets") == 1


def test_a_table_contradicting_its_declaration_stops_the_migration_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rcs.duckdb"
    Warehouse(path, streams=(RCS_RECORDS,)).migrate()
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE test_widget_phases (serial BIGINT, phase VARCHAR)")

    with pytest.raises(WarehouseUnavailable, match="test_widget_phases does not match") as err:
        Warehouse(path, streams=(RCS_RECORDS, WIDGETS)).migrate()

    assert "columns differing: from_state, observed_at, phase, serial, to_state" in str(err.value)
    assert WIDGETS.table not in catalog(path)  # rolled back with the check
    assert scalar(path, "SELECT list(stream) FROM schema_streams") == ["rcs_records"]


def test_the_loader_follows_the_declaration_of_a_stream_it_never_saw(tmp_path: Path) -> None:
    """Key name and type, validation, dedupe precedence and history all come from it."""
    warehouse = Warehouse(tmp_path / "rcs.duckdb", streams=(WIDGETS,))
    warehouse.migrate()
    made = "2026-03-01T10:00:00.250Z"
    body = tmp_path / "body.json"
    body.write_text(
        json.dumps(
            [
                {"serial": 1, "colour": "red", "grams": 120, "phase": 7, "made": made},
                {"serial": 2, "colour": "blue", "grams": 80, "phase": 9, "made": made},
                {"serial": 2, "colour": "blue", "grams": 80, "phase": 8, "made": made},
                {"serial": 3, "phase": 4, "made": made},
                {"serial": 4, "grams": 70000, "phase": 7, "made": made},
                {"phase": 7, "made": made, "finish": "matt"},
            ]
        )
    )
    now = datetime.now(UTC)
    run_id = warehouse.start_run(WIDGETS, "all", "test", "backfill")
    result = warehouse.commit_batch(
        Spool.of(body),
        Commit(WIDGETS, "all", run_id, now),
        include_optional=False,
        server_limit=None,
    )

    assert (result.received, result.inserted, result.quarantined) == (6, 2, 4)
    assert warehouse.query("SELECT serial, colour, grams, phase, made FROM test_widgets") == [
        (1, "red", 120, 7, datetime(2026, 3, 1, 10, 0, 0, 250000, tzinfo=UTC)),
        (2, "blue", 80, 9, datetime(2026, 3, 1, 10, 0, 0, 250000, tzinfo=UTC)),
    ]
    quarantined = "SELECT record_id, reason FROM test_widget_quarantine ORDER BY ALL"
    assert warehouse.query(quarantined) == [
        ("2", "serial: duplicate in response, superseded by another copy"),
        ("3", "phase: unknown value"),
        ("4", "grams: out of range"),
        (None, "serial: missing"),
    ]
    assert warehouse.query(
        "SELECT serial, from_state, to_state, observed_at = made FROM test_widget_phases "
        "JOIN test_widgets USING (serial) ORDER BY serial"
    ) == [(1, None, 7, True), (2, None, 9, False)]


def test_declarations_are_checked_and_names_registered_once() -> None:
    assert register(RCS_RECORDS) is RCS_RECORDS
    with pytest.raises(ValueError, match="already registered"):
        register(WIDGETS.__class__(**{**WIDGETS.__dict__, "name": "rcs_records"}))
    assert [s.name for s in registered()] == [
        "rcs_records",
        "text_records",
        "voicemail_drop_records",
        "call_records",
        "teams",
    ]
    with pytest.raises(ValueError, match="must cover exactly"):
        Stream(
            name="bad",
            path="/j/bad",
            table="bad",
            quarantine_table="bad_quarantine",
            fields=(
                Field("id", "integer", "BIGINT", required=True),
                Field("state", "integer", "UTINYINT", allowed=(0, 1)),
                Field("timestamp", "timestamp", "TIMESTAMPTZ"),
            ),
            history=History("bad_history", meanings=MappingProxyType({0: "new"})),
        )


def test_the_declared_bookkeeping_is_what_the_migrations_made(tmp_path: Path) -> None:
    """A lake's schema is created from the declarations (`Dialect.from_declarations`):
    they must be the tables migrations 1-3 and 5 made, and the migrations it replays
    instead (`VIEWS_ONLY`) must make nothing but views."""
    path = tmp_path / "rcs.duckdb"
    Warehouse(path).migrate()
    with duckdb.connect(str(path), read_only=True) as con:
        for table in (SCHEMA_MIGRATIONS, SCHEMA_STREAMS, *BOOKKEEPING, *stream_tables(RCS_RECORDS)):
            check(con, table, "the declarations")
    only_views = set()
    for version, _name, sql in MIGRATIONS:
        code = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
        statements = [s.strip().upper() for s in code.split(";") if s.strip()]
        if all(s.startswith(("CREATE VIEW", "CREATE OR REPLACE VIEW")) for s in statements):
            only_views.add(version)
    assert only_views == VIEWS_ONLY
