"""A stream's tables, rendered from its declaration, and how `migrate` provides them.

Each stream has a records table (its key the primary key, the declared fields, `extra`
for undocumented ones, `first_seen_at`, `updated_at`), a quarantine table and, for a
stream with states, a history table. `ensure` runs after the numbered migrations, once
per stream (recorded in `schema_streams`, keyed by the stream's name, as a migration is
by its version): it creates the tables a stream lacks from its declaration, so a new
stream needs no hand-written migration, and checks those that exist against it.

The RCS tables came from migrations 1 and 3, which stay as they shipped: a migration is
never altered in effect, and one derived from a declaration would change whenever the
declaration does. `ensure` adopts them, after checking they are what the declaration
renders; the tests hold both to the schema those migrations have always created.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import structlog

from rcs_sync.model.errors import WarehouseUnavailable
from rcs_sync.model.streams import Stream
from rcs_sync.warehouse.validation import quote

log = structlog.get_logger(__name__)

REGISTRY_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_streams ("
    "stream VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
)
"""Streams whose tables `ensure` created or adopted; like `schema_migrations`, created
by `migrate` itself."""


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    not_null: bool = False
    primary_key: bool = False

    def ddl(self) -> str:
        constraint = " PRIMARY KEY" if self.primary_key else " NOT NULL" if self.not_null else ""
        return f"{quote(self.name)} {self.sql_type}{constraint}"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]

    def ddl(self) -> str:
        return f"CREATE TABLE {quote(self.name)} ({', '.join(c.ddl() for c in self.columns)})"


def records_table(stream: Stream) -> Table:
    fields = tuple(
        Column(f.name, f.sql_type, not_null=f.required, primary_key=f.name == stream.key)
        for f in stream.all_fields()
    )
    bookkeeping = (
        Column("extra", "JSON"),
        Column("first_seen_at", "TIMESTAMPTZ", not_null=True),
        Column("updated_at", "TIMESTAMPTZ", not_null=True),
    )
    return Table(stream.table, fields + bookkeeping)


def quarantine_table(stream: Stream) -> Table:
    return Table(
        stream.quarantine_table,
        (
            Column("run_id", "BIGINT"),
            Column("record_id", "VARCHAR"),
            Column("reason", "VARCHAR", not_null=True),
            Column("raw", "VARCHAR"),
            Column("quarantined_at", "TIMESTAMPTZ", not_null=True),
        ),
    )


def history_table(stream: Stream) -> Table | None:
    """Rows as the loader appends them: key, from state (NULL when first seen), to state,
    when it was observed."""
    history = stream.history
    if history is None:
        return None
    state = stream.field_named(history.state).sql_type
    return Table(
        history.table,
        (
            Column(stream.key, stream.field_named(stream.key).sql_type, not_null=True),
            Column("from_state", state),
            Column("to_state", state, not_null=True),
            Column("observed_at", "TIMESTAMPTZ", not_null=True),
        ),
    )


def stream_tables(stream: Stream) -> tuple[Table, ...]:
    history = history_table(stream)
    return (records_table(stream), quarantine_table(stream), *([history] if history else []))


def table_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The tables of the connection's current database (its `main` schema)."""
    return {
        str(r[0])
        for r in con.execute(
            "SELECT table_name FROM duckdb_tables() "
            "WHERE database_name = current_database() AND schema_name = 'main'"
        ).fetchall()
    }


def ensure(con: duckdb.DuckDBPyConnection, stream: Stream, now: datetime) -> list[str]:
    """Create the stream's missing tables and check the others, then record the stream;
    return the tables created. The caller runs it in a transaction, once per stream."""
    existing = table_names(con)
    created = []
    for table in stream_tables(stream):
        if table.name in existing:
            _check(con, stream, table)
        else:
            con.execute(table.ddl())
            created.append(table.name)
    con.execute("INSERT INTO schema_streams VALUES (?, ?)", [stream.name, now])
    if created:
        log.info("stream_tables_created", stream=stream.name, tables=created)
    return created


def _check(con: duckdb.DuckDBPyConnection, stream: Stream, table: Table) -> None:
    """The existing table has the declared columns, types, NOT NULLs and primary key (in
    any order: a later migration's ALTER TABLE appends)."""
    types = con.execute(
        "SELECT " + ", ".join(f"typeof(NULL::{c.sql_type})" for c in table.columns)
    ).fetchone()
    assert types is not None
    declared = {
        (c.name, str(t), not (c.not_null or c.primary_key))
        for c, t in zip(table.columns, types, strict=True)
    }
    found = set(
        con.execute(
            "SELECT column_name, data_type, is_nullable FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = 'main' "
            "AND table_name = ?",
            [table.name],
        ).fetchall()
    )
    keys = con.execute(
        "SELECT constraint_column_names FROM duckdb_constraints() "
        "WHERE database_name = current_database() AND schema_name = 'main' "
        "AND table_name = ? AND constraint_type = 'PRIMARY KEY'",
        [table.name],
    ).fetchall()
    found_key = [list(r[0]) for r in keys]
    declared_key = [c.name for c in table.columns if c.primary_key]
    if found != declared or found_key != ([declared_key] if declared_key else []):
        differing = sorted({name for name, *_ in found ^ declared})
        raise WarehouseUnavailable(
            f"table {table.name} does not match the declaration of stream {stream.name} "
            f"(columns differing: {', '.join(differing) or 'none'}; primary key "
            f"{found_key or 'none'}, declared {declared_key or 'none'}): a migration must "
            "bring it in line"
        )
