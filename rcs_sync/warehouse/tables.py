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


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    not_null: bool = False
    primary_key: bool = False
    default: str | None = None

    def ddl(self, *, constraints: bool = True) -> str:
        """Without `constraints` (a backend without keys: DuckLake) a key column is only
        NOT NULL."""
        if self.primary_key and constraints:
            constraint = " PRIMARY KEY"
        elif self.primary_key or self.not_null:
            constraint = " NOT NULL"
        else:
            constraint = ""
        default = f" DEFAULT {self.default}" if self.default is not None else ""
        return f"{quote(self.name)} {self.sql_type}{default}{constraint}"


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()
    """A primary key of several columns (one column's is `Column.primary_key`)."""

    @property
    def key_columns(self) -> tuple[str, ...]:
        return self.key or tuple(c.name for c in self.columns if c.primary_key)

    def ddl(self, *, constraints: bool = True, if_not_exists: bool = False) -> str:
        parts = [c.ddl(constraints=constraints) for c in self.columns]
        if self.key and constraints:
            parts.append(f"PRIMARY KEY ({', '.join(quote(k) for k in self.key)})")
        exists = " IF NOT EXISTS" if if_not_exists else ""
        return f"CREATE TABLE{exists} {quote(self.name)} ({', '.join(parts)})"

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def _key(*names: str) -> tuple[Column, ...]:
    return tuple(Column(n, "VARCHAR", not_null=True) for n in names)


SCHEMA_MIGRATIONS = Table(
    "schema_migrations",
    (
        Column("version", "INTEGER", primary_key=True),
        Column("name", "VARCHAR", not_null=True),
        Column("applied_at", "TIMESTAMPTZ", not_null=True),
    ),
)
"""The numbered migrations applied (`migrations.py`); created by `migrate` itself."""
SCHEMA_STREAMS = Table(
    "schema_streams",
    (Column("stream", "VARCHAR", primary_key=True), Column("applied_at", "TIMESTAMPTZ", True)),
)
"""Streams whose tables `ensure` created or adopted; like `schema_migrations`, created
by `migrate` itself."""
SYNC_CHECKPOINTS = Table(
    "sync_checkpoints",
    (
        *_key("stream", "scope"),
        Column("checkpoint", "TIMESTAMPTZ", not_null=True),
        Column("updated_at", "TIMESTAMPTZ", not_null=True),
    ),
    key=("stream", "scope"),
)
SYNC_WINDOWS = Table(
    "sync_windows",
    (
        *_key("stream", "scope"),
        Column("window_start", "TIMESTAMPTZ", not_null=True),
        Column("window_end", "TIMESTAMPTZ", not_null=True),
        Column("fetched_at", "TIMESTAMPTZ", not_null=True),
        Column("records", "BIGINT", not_null=True),
        Column("run_id", "BIGINT"),
        Column("completed_at", "TIMESTAMPTZ", not_null=True),
    ),
)
SYNC_RUNS = Table(
    "sync_runs",
    (
        Column("run_id", "BIGINT", primary_key=True),
        *_key("stream", "scope", "command"),
        Column("mode", "VARCHAR"),
        Column("pid", "INTEGER"),
        Column("started_at", "TIMESTAMPTZ", not_null=True),
        Column("finished_at", "TIMESTAMPTZ"),
        Column("status", "VARCHAR", not_null=True),
        Column("windows", "INTEGER", not_null=True, default="0"),
        Column("received", "BIGINT", not_null=True, default="0"),
        Column("inserted", "BIGINT", not_null=True, default="0"),
        Column("updated", "BIGINT", not_null=True, default="0"),
        Column("quarantined", "BIGINT", not_null=True, default="0"),
        Column("checkpoint", "TIMESTAMPTZ"),
        Column("error", "VARCHAR"),
        Column("error_kind", "VARCHAR"),
    ),
)
"""Its `run_id` comes from `Dialect.next_run_id` (a sequence in a DuckDB file)."""
SYNC_SPLITS = Table(
    "sync_splits",
    (
        *_key("stream", "scope"),
        Column("period_start", "TIMESTAMPTZ", not_null=True),
        Column("period_end", "TIMESTAMPTZ", not_null=True),
        Column("span", "INTERVAL", not_null=True),
        Column("reason", "VARCHAR", not_null=True),
        Column("recorded_at", "TIMESTAMPTZ", not_null=True),
    ),
    key=("stream", "scope", "period_start", "period_end"),
)
BOOKKEEPING = (SYNC_CHECKPOINTS, SYNC_WINDOWS, SYNC_RUNS, SYNC_SPLITS)
"""The sync's own tables as migrations 1, 2 and 5 left them; a schema created from the
declarations (`Dialect.from_declarations`) starts with these."""


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


def ensure(
    con: duckdb.DuckDBPyConnection, stream: Stream, now: datetime, *, constraints: bool = True
) -> list[str]:
    """Create the stream's missing tables and check the others, then record the stream;
    return the tables created. The caller runs it in a transaction, once per stream."""
    existing = table_names(con)
    created = []
    for table in stream_tables(stream):
        if table.name in existing:
            check(con, table, f"stream {stream.name}", constraints=constraints)
        else:
            con.execute(table.ddl(constraints=constraints))
            created.append(table.name)
    con.execute("INSERT INTO schema_streams VALUES (?, ?)", [stream.name, now])
    if created:
        log.info("stream_tables_created", stream=stream.name, tables=created)
    return created


def check(
    con: duckdb.DuckDBPyConnection, table: Table, owner: str, *, constraints: bool = True
) -> None:
    """The existing table has the declared columns, types, NOT NULLs and (with
    `constraints`) primary key, in any order: a later migration's ALTER TABLE appends.
    `owner` names the declaration in the message ("stream rcs_records")."""
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
    declared_key = list(table.key_columns) if constraints else []
    if found != declared or found_key != ([declared_key] if declared_key else []):
        differing = sorted({name for name, *_ in found ^ declared})
        raise WarehouseUnavailable(
            f"table {table.name} does not match the declaration of {owner} "
            f"(columns differing: {', '.join(differing) or 'none'}; primary key "
            f"{found_key or 'none'}, declared {declared_key or 'none'}): a migration must "
            "bring it in line"
        )
