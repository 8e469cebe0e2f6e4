"""Load one spooled response into the warehouse in two steps.

`stage` parses the body into a connection-local temp table *before* the transaction:
a body DuckDB refuses aborts nothing, and the slow path can take over. `apply` then
quarantines, dedupes and upserts inside the caller's transaction.

DuckDB parses the body (`read_json` with every documented field typed JSON, the parts
of a cut body in parallel: see `spool.py`), the validation rules compiled in
`validation.py` sort good records from bad, and an UPDATE of changed rows plus a plain
INSERT of new ones upsert the batch. Python never touches a record, except on the rare
body DuckDB's parser refuses (see `bodies.py`).

`load` runs both steps and the caller's bookkeeping in one transaction. A body larger
than `GROUP_BYTES` is staged and applied a group of its parts at a time inside that
transaction, so the peak memory of a load does not grow with the response.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from rcs_sync.model.commits import LoadResult
from rcs_sync.model.errors import SuspectedTruncation
from rcs_sync.model.responses import Spool
from rcs_sync.model.streams import Stream
from rcs_sync.warehouse.bodies import Rejected, sanitize_body
from rcs_sync.warehouse.privacy import Privacy
from rcs_sync.warehouse.validation import (
    literal,
    quote,
    raw_expr,
    reason_expr,
    staging_columns,
    typed,
    value_expr,
)

SAMPLE_SIZE = 20_480
"""Records at the head of a body whose keys are looked at for undocumented fields
(as many as DuckDB's own schema detection samples)."""

REFUSED = (duckdb.InvalidInputException, duckdb.ConversionException)
"""What DuckDB raises for a body it cannot read as records of the declared shape."""
WITHHELD = '"withheld: the record could not be parsed and may hold personal data"'
"""The raw JSON kept for an unparseable record when personal data must not be stored."""


GROUP_BYTES = 384 << 20
"""Parts of a body loaded together (~2M records of the provider's layout): a group costs
at most as much memory as a one-shot load of that size, whatever the size of the whole
response. Not lower: grouping a body costs ~15-20 % of its load time (measured at 96 MB
on 1M records, 270k against 326k records/s), and the windows the planner sizes
(`[sync] target_records_per_request`, 500k) stay well under it."""


class _Repeated(Exception):
    """A key of this group was applied by an earlier group of the same body."""


@dataclass(frozen=True)
class Staged:
    """A body parsed into the temp table `_batch`, plus what the slow path rejected."""

    received: int
    rejected: list[Rejected]


def stage(
    con: duckdb.DuckDBPyConnection,
    stream: Stream,
    body: Spool,
    *,
    server_limit: int | None,
    privacy: Privacy,
) -> Staged:
    """Parse and validate a body into `_batch`, outside any transaction.

    A complete array is loaded whatever its size: only a response of exactly
    `server_limit` records (a count the server is known to cut at) is evidence that
    the server left records out."""
    received, rejected = _parse(con, stream, body, privacy)
    received += len(rejected)
    _check_limit(received, server_limit)
    return Staged(received, rejected)


def _check_limit(received: int, server_limit: int | None) -> None:
    if server_limit is not None and received == server_limit:
        raise SuspectedTruncation(f"response holds exactly {received} records, the server's limit")


def load(
    con: duckdb.DuckDBPyConnection,
    stream: Stream,
    body: Spool,
    *,
    server_limit: int | None,
    privacy: Privacy,
    run_id: int | None,
    observed_at: datetime,
    include_optional: bool,
    transaction: Callable[[], AbstractContextManager[None]],
    record: Callable[[LoadResult, datetime], None],
) -> LoadResult:
    """Load `body` and write the caller's bookkeeping (`record`) in one `transaction`.

    A body of several groups (see `GROUP_BYTES`) is applied group by group; a group
    DuckDB refuses rolls that back and the body is loaded whole, by the slow path if
    need be."""
    loading = _Loading(con, stream, privacy, run_id, observed_at, include_optional)
    groups = _groups(body.parts)
    if len(groups) > 1 and stream.windowed:
        try:
            return loading.groups(groups, server_limit, transaction, record)
        except REFUSED:
            body = Spool.of(body.whole())
    staged = stage(con, stream, body, server_limit=server_limit, privacy=privacy)
    now = datetime.now(UTC)
    with transaction():
        result = loading.apply(staged, now)
        record(result, now)
    return result


def _groups(parts: tuple[Path, ...]) -> list[tuple[Path, ...]]:
    """Consecutive parts of about `GROUP_BYTES` together."""
    groups: list[tuple[Path, ...]] = []
    group: list[Path] = []
    size = 0
    for part in parts:
        group.append(part)
        size += part.stat().st_size
        if size >= GROUP_BYTES:
            groups.append(tuple(group))
            group, size = [], 0
    if group:
        groups.append(tuple(group))
    return groups


@dataclass(frozen=True)
class _Loading:
    """One body being loaded: where, and what `apply` needs besides the batch."""

    con: duckdb.DuckDBPyConnection
    stream: Stream
    privacy: Privacy
    run_id: int | None
    observed_at: datetime
    include_optional: bool

    def apply(self, staged: Staged, now: datetime) -> LoadResult:
        return apply(
            self.con,
            self.stream,
            staged,
            run_id=self.run_id,
            now=now,
            observed_at=self.observed_at,
            include_optional=self.include_optional,
        )

    def groups(
        self,
        groups: list[tuple[Path, ...]],
        server_limit: int | None,
        transaction: Callable[[], AbstractContextManager[None]],
        record: Callable[[LoadResult, datetime], None],
    ) -> LoadResult:
        """Apply the groups in turn inside one transaction, each as a body of its own.

        That equals loading the body at once as long as no key is in two groups, which
        is checked as the groups go. When one is, the transaction is rolled back, the
        copies that lose (`_drop_duplicates`' rule, over the whole body) are found by
        parsing every group once more, and the groups are applied again without them."""
        losers = False
        extra = _extra_fields(self.con, self.stream, sum(groups, ()), "array")
        try:
            while True:
                now = datetime.now(UTC)
                try:
                    with transaction():
                        result = self._apply_groups(groups, extra, now, losers=losers)
                        _check_limit(result.received, server_limit)
                        record(result, now)
                    return result
                except _Repeated:
                    self._find_losers(groups, extra)
                    losers = True
        finally:
            with suppress(duckdb.Error):  # never hide why the load failed
                self.con.execute("DROP TABLE IF EXISTS _applied")
                self.con.execute("DROP TABLE IF EXISTS _losers")

    def _apply_groups(
        self, groups: list[tuple[Path, ...]], extra: tuple[str, ...], now: datetime, *, losers: bool
    ) -> LoadResult:
        """Stage and apply each group; with `losers`, first quarantine the copies
        `_losers` lists, else stop (`_Repeated`) at a key an earlier group held."""
        con, stream = self.con, self.stream
        key = quote(stream.key)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _applied ({key} {self._key_type()})")
        total = LoadResult(0, 0, 0, 0)
        offset = 0
        for group in groups:
            received = _stage(con, stream, group, "array", self.privacy, extra=extra)
            dropped = 0
            if losers:
                where = f"(rowid + {offset - _first_rowid(con)}) IN (SELECT ord FROM _losers)"
                dropped = _supersede(con, stream, self.run_id, now, where)
            else:
                row = con.execute(
                    f"SELECT count(*) FROM _applied WHERE {key} IN "
                    f"(SELECT {key} FROM _batch WHERE _reason IS NULL)"
                ).fetchone()
                if row and row[0]:
                    raise _Repeated
                con.execute(f"INSERT INTO _applied SELECT {key} FROM _batch WHERE _reason IS NULL")
            result = self.apply(Staged(received, []), now)
            total = LoadResult(
                total.received + result.received,
                total.inserted + result.inserted,
                total.updated + result.updated,
                total.quarantined + result.quarantined + dropped,
            )
            offset += received
        return total

    def _find_losers(self, groups: list[tuple[Path, ...]], extra: tuple[str, ...]) -> None:
        """`_losers`: the position in the body of every valid copy of a key that a copy
        elsewhere in the body supersedes (the rule of `_drop_duplicates`)."""
        con, stream = self.con, self.stream
        key = quote(stream.key)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _copies ({key} {self._key_type()}, "
            "rank INTEGER, ord BIGINT)"
        )
        offset = 0
        for group in groups:
            received = _stage(con, stream, group, "array", self.privacy, extra=extra)
            con.execute(
                f"INSERT INTO _copies SELECT {key}, {stream.precedence}, rowid + ? "
                "FROM _batch WHERE _reason IS NULL",
                [offset - _first_rowid(con)],
            )
            offset += received
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _losers AS SELECT ord FROM _copies
            QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY rank DESC, ord DESC) > 1
            """
        )
        con.execute("DROP TABLE _copies")
        con.execute("DROP TABLE _batch")

    def _key_type(self) -> str:
        return self.stream.field_named(self.stream.key).sql_type


def _first_rowid(con: duckdb.DuckDBPyConnection) -> int:
    """The rowid of the first record of `_batch`: rows are numbered in the order of the
    body, from 0 outside a transaction but from 2**55 inside one."""
    row = con.execute("SELECT min(rowid) FROM _batch").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _parse(
    con: duckdb.DuckDBPyConnection, stream: Stream, body: Spool, privacy: Privacy
) -> tuple[int, list[Rejected]]:
    """The parts in parallel; the whole body when a cut fell inside a record; the slow
    path when DuckDB refuses the body itself."""
    if body.cut:
        try:
            return _stage(con, stream, body.parts, "array", privacy), []
        except REFUSED:
            pass
    whole = body.whole()
    try:
        return _stage(con, stream, (whole,), "array", privacy), []
    except REFUSED:
        clean, rejected = sanitize_body(whole, stream.key)
    if privacy.mode != "plain" and stream.personal:
        rejected = [replace(r, raw=WITHHELD) for r in rejected]
    try:
        return _stage(con, stream, (clean,), "newline_delimited", privacy), rejected
    finally:
        clean.unlink(missing_ok=True)


def apply(
    con: duckdb.DuckDBPyConnection,
    stream: Stream,
    staged: Staged,
    *,
    run_id: int | None,
    now: datetime,
    observed_at: datetime,
    include_optional: bool,
) -> LoadResult:
    """Quarantine, dedupe and upsert the staged batch; the caller commits.

    `observed_at` is when the server produced the data (the request's server time):
    state changes are logged at that instant."""
    rejected = staged.rejected
    received = staged.received
    quarantined = len(rejected) + _quarantine_invalid(con, stream, run_id, now)
    if rejected:
        con.executemany(
            f"INSERT INTO {quote(stream.quarantine_table)} VALUES (?, ?, ?, ?, ?)",
            [[run_id, r.record_id, r.reason, r.raw, now] for r in rejected],
        )
    quarantined += _drop_duplicates(con, stream, run_id, now)
    key_range = _find_known(con, stream)
    _log_states(con, stream, observed_at, known=key_range is not None)
    updated = (
        _update_existing(con, stream, now, key_range, include_optional=include_optional)
        if key_range
        else 0
    )
    inserted = _insert_new(con, stream, now)
    if not stream.windowed:
        _drop_missing(con, stream)
    con.execute("DROP TABLE _known")
    con.execute("DROP TABLE _batch")
    return LoadResult(received, inserted, updated, quarantined)


def _drop_missing(con: duckdb.DuckDBPyConnection, stream: Stream) -> None:
    """A stream read whole (a dimension): rows the response no longer holds go, in the
    same transaction as the upsert, so readers see the old table or the new one."""
    key, table = quote(stream.key), quote(stream.table)
    con.execute(f"DELETE FROM {table} WHERE {key} NOT IN (SELECT {key} FROM _batch)")


def _find_known(con: duckdb.DuckDBPyConnection, stream: Stream) -> tuple[object, object] | None:
    """Copy into `_known` the keys (and states) of the batch the table already holds;
    return the batch's key range when there are any, else None.

    This is the only statement that looks for the batch in the whole table. A join
    reads the table's key column into memory, which made a load's cost and peak RSS
    grow with the warehouse; the constant key range lets DuckDB skip every row group
    outside it (ids grow with time, so a window's ids sit in a few row groups).
    """
    key = quote(stream.key)
    row = con.execute(f"SELECT min({key}), max({key}) FROM _batch").fetchone()
    low, high = (row[0], row[1]) if row else (None, None)
    state = f", t.{quote(stream.history.state)}" if stream.history else ""
    found = con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _known AS
        SELECT t.{key}{state} FROM {quote(stream.table)} AS t
        WHERE t.{key} BETWEEN ? AND ? AND t.{key} IN (SELECT {key} FROM _batch)
        """,
        [low, high],
    ).fetchone()
    return (low, high) if found and found[0] else None


def _extra_fields(
    con: duckdb.DuckDBPyConnection, stream: Stream, files: tuple[Path, ...], fmt: str
) -> tuple[str, ...]:
    """Undocumented fields (e.g. `portal` once was) among the keys of the first
    `SAMPLE_SIZE` records. DuckDB reads them (and stops there) without holding Python's
    lock, which a Python parse of the head held for ~20 ms a body, more while fetch
    threads spooled other bodies: that stalled the one writer."""
    known = {f.name for f in stream.all_fields()}
    rows = con.execute(
        f"SELECT DISTINCT unnest(json_keys(json)) FROM (SELECT json FROM "
        f"read_json_objects(?, format={literal(fmt)}) LIMIT {SAMPLE_SIZE})",
        [[str(f) for f in files]],
    ).fetchall()
    return tuple(sorted({str(r[0]) for r in rows} - known))


def _stage(
    con: duckdb.DuckDBPyConnection,
    stream: Stream,
    files: tuple[Path, ...],
    fmt: str,
    privacy: Privacy,
    *,
    extra: tuple[str, ...] | None = None,
) -> int:
    """Parse the body once into `_batch`: typed values, a rejection reason, raw JSON of
    rejects. Personal fields are protected right here, before anything is stored.
    `extra`: the undocumented fields, when the head of the body was already sampled."""
    if extra is None:
        extra = _extra_fields(con, stream, files, fmt)
    fields = stream.all_fields()
    names = tuple(f.name for f in fields)
    values = ", ".join(
        f"{privacy.sql(value_expr(f)) if f.name in stream.personal else value_expr(f)} "
        f"AS {typed(f.name)}"
        for f in fields
    )
    protected = {n: f"to_json({typed(n)})" for n in stream.personal}
    loaded = ", ".join(f"{typed(f.name)}::{f.sql_type} AS {quote(f.name)}" for f in fields)
    if extra:
        all_null = " AND ".join(f"{quote(n)} IS NULL" for n in extra)
        extra_expr = f"CASE WHEN {all_null} THEN NULL ELSE {raw_expr(extra)} END"
    else:
        extra_expr = "NULL::JSON"
    row = con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _batch AS
        SELECT {loaded}, {extra_expr} AS extra, _reason,
               CASE WHEN _reason IS NOT NULL THEN {raw_expr(names + extra, protected)} END
                   AS _raw
        FROM (
            SELECT *, {reason_expr(fields)} AS _reason
            FROM (
                SELECT *, {values}
                FROM read_json(?, format={literal(fmt)}, columns={staging_columns(names + extra)})
            )
        )
        """,
        [[str(f) for f in files]],
    ).fetchone()
    return int(row[0]) if row else 0


def _quarantine_invalid(
    con: duckdb.DuckDBPyConnection, stream: Stream, run_id: int | None, now: datetime
) -> int:
    row = con.execute(
        f"""
        INSERT INTO {quote(stream.quarantine_table)}
            (run_id, record_id, reason, raw, quarantined_at)
        SELECT ?, _raw ->> {literal(stream.key)}, _reason, _raw, ?
        FROM _batch WHERE _reason IS NOT NULL
        """,
        [run_id, now],
    ).fetchone()
    count = int(row[0]) if row else 0
    if count:
        con.execute("DELETE FROM _batch WHERE _reason IS NOT NULL")
    return count


def _drop_duplicates(
    con: duckdb.DuckDBPyConnection, stream: Stream, run_id: int | None, now: datetime
) -> int:
    """Keep one copy per key: DuckDB's ON CONFLICT would silently keep the *first*.

    The copy kept is the one the stream's `precedence` ranks highest (for RCS, the most
    advanced state), the last in the response on a tie; the others are quarantined so
    nothing disappears silently.
    """
    key = quote(stream.key)
    row = con.execute(f"SELECT count(*) - count(DISTINCT {key}) FROM _batch").fetchone()
    if not row or not row[0]:
        return 0
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _superseded AS
        SELECT rowid AS rid FROM _batch
        QUALIFY row_number() OVER (
            PARTITION BY {key} ORDER BY {stream.precedence} DESC, rowid DESC) > 1
        """
    )
    _supersede(con, stream, run_id, now, "rowid IN (SELECT rid FROM _superseded)")
    con.execute("DROP TABLE _superseded")
    return int(row[0])


def _supersede(
    con: duckdb.DuckDBPyConnection,
    stream: Stream,
    run_id: int | None,
    now: datetime,
    where: str,
) -> int:
    """Move the copies of `_batch` that `where` picks into quarantine as superseded."""
    names = tuple(f.name for f in stream.all_fields())
    row = con.execute(
        f"""
        INSERT INTO {quote(stream.quarantine_table)}
            (run_id, record_id, reason, raw, quarantined_at)
        SELECT ?, {quote(stream.key)}::VARCHAR, ?, {raw_expr(names)}, ?
        FROM _batch WHERE {where}
        """,
        [run_id, superseded(stream), now],
    ).fetchone()
    con.execute(f"DELETE FROM _batch WHERE {where}")
    return int(row[0]) if row else 0


def superseded(stream: Stream) -> str:
    """The quarantine reason of a copy `_drop_duplicates` did not keep."""
    return f"{stream.key}: duplicate in response, superseded by another copy"


def _written(stream: Stream, *, include_optional: bool) -> list[str]:
    """The non-key fields a load overwrites; optional ones only when they were requested."""
    optional = {f.name for f in stream.optional_fields}
    return [
        f.name
        for f in stream.all_fields()
        if f.name != stream.key and (include_optional or f.name not in optional)
    ]


def _changed(stream: Stream, old: str, new: str, *, include_optional: bool) -> str:
    """SQL that is true when loading `new` over `old` changes the stored row."""
    conditions = [
        f"{old}.{quote(n)} IS DISTINCT FROM {new}.{quote(n)}"
        for n in _written(stream, include_optional=include_optional)
    ]
    conditions.append(f"({new}.extra IS NOT NULL AND {new}.extra IS DISTINCT FROM {old}.extra)")
    return " OR ".join(conditions)


def _log_states(
    con: duckdb.DuckDBPyConnection, stream: Stream, observed_at: datetime, *, known: bool
) -> None:
    """Append first-seen states and state changes to the stream's history table, before
    the upsert overwrites the old states. A record first seen in its initial state is
    dated by its own timestamp (exact); any other observation by the fetch (the
    resolution of the sync interval). Without `known` records (`_known` is empty: every
    window of a first backfill) there is no change to look for."""
    history = stream.history
    if history is None:
        return
    key, state = quote(stream.key), quote(history.state)
    if known:
        con.execute(
            f"""
            INSERT INTO {quote(history.table)}
            SELECT b.{key}, k.{state}, b.{state}, ?
            FROM _batch AS b JOIN _known AS k ON k.{key} = b.{key}
            WHERE k.{state} <> b.{state}
            """,
            [observed_at],
        )
    con.execute(
        f"""
        INSERT INTO {quote(history.table)}
        SELECT b.{key}, NULL, b.{state},
               CASE WHEN b.{state} = {history.initial} THEN b.{quote(history.time)} ELSE ? END
        FROM _batch AS b
        WHERE NOT EXISTS (SELECT 1 FROM _known AS k WHERE k.{key} = b.{key})
        """,
        [observed_at],
    )


def _update_existing(
    con: duckdb.DuckDBPyConnection,
    stream: Stream,
    now: datetime,
    key_range: tuple[object, object],
    *,
    include_optional: bool,
) -> int:
    """Rewrite stored records the batch changes; identical ones are left untouched.

    Optional fields (content_message) are only overwritten when they were requested,
    and `extra` only when the response carried undocumented fields, so a pass made
    without them never erases what an earlier pass stored.
    """
    key = quote(stream.key)
    changed = _changed(stream, "t", "b", include_optional=include_optional)
    sets = [
        f"{quote(n)} = b.{quote(n)}" for n in _written(stream, include_optional=include_optional)
    ]
    sets += ["extra = coalesce(b.extra, t.extra)", "updated_at = ?"]
    row = con.execute(
        f"""
        UPDATE {quote(stream.table)} AS t SET {", ".join(sets)}
        FROM _batch AS b
        WHERE t.{key} = b.{key} AND t.{key} BETWEEN ? AND ? AND ({changed})
        """,
        [now, *key_range],
    ).fetchone()
    return int(row[0]) if row else 0


def _insert_new(con: duckdb.DuckDBPyConnection, stream: Stream, now: datetime) -> int:
    """Insert the records the table does not hold yet.

    A plain INSERT costs half of `INSERT … ON CONFLICT` in DuckDB, and every key of
    `_batch` is unique and, outside `_known`, absent from the table, so no conflict can
    arise.
    """
    key = quote(stream.key)
    names = [quote(f.name) for f in stream.all_fields()]
    row = con.execute(
        f"""
        INSERT INTO {quote(stream.table)} ({", ".join(names)}, extra, first_seen_at, updated_at)
        SELECT {", ".join(f"b.{n}" for n in names)}, b.extra, ?, ? FROM _batch AS b
        WHERE NOT EXISTS (SELECT 1 FROM _known AS k WHERE k.{key} = b.{key})
        """,
        [now, now],
    ).fetchone()
    return int(row[0]) if row else 0
