"""What differs between backends in the SQL they are sent, declared once per backend.

Everything else (the bookkeeping statements, the migrate and ensure flow, run records)
is shared (`bookkeeping.py`): a third backend is one more `Dialect` and a connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rcs_sync.warehouse.tables import Table
from rcs_sync.warehouse.validation import quote

INCOMING = "incoming"
"""How an upsert's update expressions name the row arriving (`{new}`)."""


@dataclass(frozen=True)
class Dialect:
    name: str
    constraints: bool
    """Primary keys exist (and `INSERT … ON CONFLICT` with them); else upserts MERGE."""
    next_run_id: str
    """A query of the next `sync_runs.run_id`."""
    from_declarations: bool
    """A new schema is created at the current version from the declarations
    (`tables.py`) instead of by replaying the numbered migrations."""

    def upsert(self, table: Table, updates: Mapping[str, str]) -> str:
        """One row's upsert into `table`, its columns as `?` parameters in order. Each
        update expression names the stored row `{old}` and the arriving one `{new}`."""
        old, names = quote(table.name), [quote(c.name) for c in table.columns]
        keys = table.key_columns
        if self.constraints:
            sets = ", ".join(
                f"{quote(c)} = {e.format(old=old, new='excluded')}" for c, e in updates.items()
            )
            return (
                f"INSERT INTO {old} VALUES ({', '.join('?' for _ in names)}) "
                f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET {sets}"
            )
        source = ", ".join(f"?::{c.sql_type} AS {quote(c.name)}" for c in table.columns)
        match = " AND ".join(f"{old}.{quote(k)} = {INCOMING}.{quote(k)}" for k in keys)
        sets = ", ".join(
            f"{quote(c)} = {e.format(old=old, new=INCOMING)}" for c, e in updates.items()
        )
        values = ", ".join(f"{INCOMING}.{n}" for n in names)
        return (
            f"MERGE INTO {old} USING (SELECT {source}) AS {INCOMING} ON {match} "
            f"WHEN MATCHED THEN UPDATE SET {sets} "
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}) VALUES ({values})"
        )


DUCKDB_FILE = Dialect(
    "duckdb",
    constraints=True,
    # The sequence's, unless rows were copied in without it (a snapshot used as the
    # warehouse holds the rows but a sequence as of its first copy).
    next_run_id=(
        "SELECT greatest(nextval('sync_runs_id'), coalesce(max(run_id), 0) + 1) FROM sync_runs"
    ),
    from_declarations=False,
)
DUCKLAKE = Dialect(
    "ducklake",
    constraints=False,
    # No sequences in a lake; one writer at a time (`writer_lock.py`) makes max + 1 unique.
    next_run_id="SELECT coalesce(max(run_id), 0) + 1 FROM sync_runs",
    from_declarations=True,
)
