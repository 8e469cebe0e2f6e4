"""SQL for the simulator's synthetic RCS population: generation, state as of a clock, JSON.

Everything is computed inside DuckDB from a seeded hash of the row number, so millions of
records are generated in seconds with no Python object per record, and one seed always
yields the same population (and the same response bytes) on a given DuckDB version.

Each record stores its creation time ``t0`` (epoch ms) and a pre-scheduled lifecycle: the
first transition ``d1`` ms after creation into ``s1`` (delivered, failed or rejected; NULL
for records that stay "sent") and, for some delivered ones, a transition to read ``d2`` ms
after creation. The state and last-modification time as of any clock follow from those
columns, so the server never has to "run" anything as time passes. The JSON text around
the state is precomputed (``head``/``tail``) because string building dominates the cost of
serving a large window; with FSST compression a record costs ~55 bytes in all.
"""

from __future__ import annotations

from dataclasses import dataclass

FAULT_KINDS = (
    "429",
    "500",
    "502",
    "503",
    "504",
    "drop",
    "truncate",
    "html",
    "reset",
    "slow",
    "empty_object",  # 200 with the body `{}`
    "null",  # 200 with the body `null`
    "text",  # 200 with a plain-text error message (wrong content type)
)
BOUNDS = ("[)", "[]", "()", "(]")

DATABASE = "simdb"  # attached in-memory database, compressed on checkpoint
TABLE = f"{DATABASE}.pop"

# Stored in the ``bad`` column as index + 1; 0 means the record is served well-formed.
BAD_KINDS = (
    "missing_id",
    "id_string",
    "state_9",
    "state_string",
    "bad_timestamp",
    "campaign_string",
    "number_int",
)
_STATE_9 = BAD_KINDS.index("state_9") + 1
_STATE_STRING = BAD_KINDS.index("state_string") + 1

# One JSON element per line, each prefixed with a comma; the server sends "[" + the file
# minus its first byte + "]". A control character can never occur raw inside JSON text, so
# with quoting disabled the CSV writer emits every line verbatim.
_COPY_OPTIONS = "(FORMAT csv, HEADER false, QUOTE '', ESCAPE '', DELIMITER '\x01')"

_DAY_MS = 86_400_000


@dataclass(frozen=True)
class RecordFilter:
    """One validated ``/j/rcs_records`` request, times in epoch microseconds."""

    start_us: int
    end_us: int
    team: int | None = None
    modified_since_us: int | None = None
    content_message: bool = False


@dataclass(frozen=True)
class PopulationSpec:
    """Shape of the generated population; times in epoch milliseconds."""

    seed: int
    n_past: int  # records created in [start - past_ms, start], visible from the start
    n_future: int  # arrivals pre-generated in (start, start + future_ms]
    start_ms: int
    past_ms: int
    future_ms: int
    teams: int
    campaigns: int
    bad_fraction: float
    boundary_fraction: float = 0.0  # share of records placed exactly on a UTC midnight


def _reference(id_sql: str) -> str:
    """A customer reference unique per record (multiplication by an odd constant mod 1e8)."""
    return f"'R' || lpad((({id_sql} * 2654435761) % 100000000)::VARCHAR, 8, '0')"


def _draws_sql(spec: PopulationSpec, lo: int, hi: int) -> str:
    """Rows ``i`` in [lo, hi) with uniform [0, 1) draws ``u0…u11`` from four seeded hashes.

    Each hash is sliced into three 21-bit uniforms: plenty of resolution, a third of the
    hashing cost.
    """
    hashes = ", ".join(f"hash(i, {spec.seed}, {k}) AS h{k}" for k in range(4))
    draws = ", ".join(
        f"((h{n // 3} >> {21 * (n % 3)}) & 2097151)::DOUBLE / 2097152.0 AS u{n}" for n in range(12)
    )
    return f"SELECT i, {draws} FROM (SELECT i, {hashes} FROM range({lo}, {hi}) AS r(i))"


def _select_sql(spec: PopulationSpec, lo: int, hi: int) -> str:
    """One chunk of records. Staged CTEs, because DuckDB re-evaluates a lateral alias at
    every use, and the strings built from these columns use them several times."""

    def exponential(u: str, mean_ms: int) -> str:
        return f"(-ln(1 - {u}) * {mean_ms})"

    past_slot = f"{spec.past_ms} / {max(spec.n_past, 1)}"
    future_slot = f"{spec.future_ms} / {max(spec.n_future, 1)}"
    return f"""
WITH draws AS ({_draws_sql(spec, lo, hi)}),
picks AS (
    SELECT i + 1 AS id, u1, u3, u4, u5, u11,
        CASE WHEN i < {spec.n_past}
            THEN {spec.start_ms - spec.past_ms} + floor((i + u0) * {past_slot})
            ELSE {spec.start_ms} + 1 + floor((i - {spec.n_past} + u0) * {future_slot})
        END::BIGINT AS t_raw,
        CASE WHEN u2 < 0.08 THEN 0 WHEN u2 < 0.11 THEN 2 WHEN u2 < 0.13 THEN 3
             ELSE 1 END::UTINYINT AS s1,
        (1 + floor(u6 * {spec.campaigns}))::BIGINT AS campaign,
        CASE WHEN u7 < 0.75
            THEN '33' || (600000000 + floor(u7 / 0.75 * 200000000))::BIGINT
            ELSE '447' || (100000000 + floor((u7 - 0.75) / 0.25 * 900000000))::BIGINT
        END AS digits,
        CASE WHEN u8 < 0.6 THEN 'null' WHEN u8 < 0.75 THEN '"web"'
             WHEN u8 < 0.95 THEN '"api"' ELSE '"sftp"' END AS portal,
        CASE WHEN u9 < {spec.bad_fraction} THEN 1 + floor(u10 * {len(BAD_KINDS)})
             ELSE 0 END::UTINYINT AS bad
    FROM draws
),
rows AS (
    SELECT id, s1, campaign, digits, portal, bad, u4, u5,
        CASE WHEN u1 < {spec.boundary_fraction / 2} THEN t_raw - t_raw % {_DAY_MS}
             WHEN u1 < 0.5 THEN t_raw + (1000 - t_raw % 1000) % 1000
             ELSE t_raw END AS t0,
        CASE s1 WHEN 1 THEN 1000 + {exponential("u3", 30_000)}
                WHEN 2 THEN 5000 + {exponential("u3", 120_000)}
                WHEN 3 THEN 500 + {exponential("u3", 2_000)} END::BIGINT AS d1,
        (campaign - 1) % {spec.teams} + 1 AS team,
        floor(u11 * 4)::UTINYINT AS template,
        u11 * 4 - floor(u11 * 4) < 0.1 AS extra
    FROM picks
)
SELECT id, t0, team::USMALLINT AS team, s1, d1,
    CASE WHEN s1 = 1 AND u4 < 0.6
        THEN d1 + 30000 + {exponential("u5", 2_700_000)} END::BIGINT AS d2,
    bad, extra, template,
    concat('{{"campaign":',
        CASE WHEN bad = 6 THEN '"' || campaign || '"' ELSE campaign::VARCHAR END,
        CASE bad WHEN 1 THEN '' WHEN 2 THEN ',"id":"' || id || '"' ELSE ',"id":' || id END,
        ',"job":', campaign * 1000 + (t0 // {_DAY_MS}) % 1000,
        ',"number":', CASE WHEN bad = 7 THEN digits ELSE '"+' || digits || '"' END,
        ',"portal":', portal, ',"reference":"', {_reference("id")}, '","state":') AS head,
    concat(',"team":', team, ',"timestamp":"', CASE
        WHEN bad = 5 THEN strftime(epoch_ms(t0), '%d/%m/%Y %H:%M')
        WHEN t0 % 1000 = 0 THEN strftime(epoch_ms(t0), '%Y-%m-%dT%H:%M:%SZ')
        ELSE strftime(epoch_ms(t0), '%Y-%m-%dT%H:%M:%S.%gZ') END, '"') AS tail
FROM rows
"""


def population_statements(spec: PopulationSpec, chunk: int = 1_000_000) -> list[str]:
    """SQL that builds the population table, ids ascending with creation time.

    One record per equal time slot at a random offset inside it (a Poisson-like stream
    that needs no sort). Half the timestamps are rounded up to whole seconds (up, so no
    arrival lands on the start clock), so both ``…:14Z`` and ``…:14.243Z`` are served;
    with ``boundary_fraction``, that share of them is moved down to the UTC midnight
    before it instead (a window boundary for day-sized windows).
    Each chunk is checkpointed (compressed) before the next, so peak memory stays near
    one uncompressed chunk.
    """
    total = spec.n_past + spec.n_future
    statements = []
    for lo in range(0, max(total, 1), chunk):
        select = _select_sql(spec, lo, min(lo + chunk, total))
        create = f"CREATE TABLE {TABLE} AS {select}" if lo == 0 else f"INSERT INTO {TABLE} {select}"
        statements += [create, f"CHECKPOINT {DATABASE}"]
    return statements


def _content_message() -> str:
    """``,"content_message":…`` computed at query time: rarely asked for, so not stored."""
    return f"""concat(',"content_message":', to_json(CASE template
        WHEN 0 THEN 'Bonjour ! Votre colis ' || {_reference("id")} || ' sera livré demain 📦'
        WHEN 1 THEN 'Your appointment on ' || strftime(epoch_ms(t0 + 3 * {_DAY_MS}), '%d %b')
            || ' is confirmed. Reply "STOP" to opt out.'
        WHEN 2 THEN 'Votre code de vérification : '
            || lpad(((id * 7919) % 1000000)::VARCHAR, 6, '0')
        ELSE 'Rappel : la facture ' || {_reference("id")} || ' est disponible.'
            || chr(10) || 'Merci !'
    END))"""


def _as_of(clock_ms: int) -> str:
    """Columns ``st`` and ``mt``: state and last-modification time (ms) as of the clock."""
    return f"""*,
        CASE WHEN t0 + d2 <= {clock_ms} THEN 4 WHEN t0 + d1 <= {clock_ms} THEN s1
             ELSE 0 END AS st,
        CASE WHEN t0 + d2 <= {clock_ms} THEN t0 + d2 WHEN t0 + d1 <= {clock_ms} THEN t0 + d1
             ELSE t0 END AS mt"""


def _ceil_ms(us: int) -> int:
    return -(-us // 1000)


def span_sql(flt: RecordFilter, bounds: str) -> str:
    """The condition on ``t0`` (epoch ms) of a request's ``start`` and ``end`` under ``bounds``.

    Timestamps are whole milliseconds, so microsecond bounds convert exactly: ``t0 >= x``
    is ``t0 >= ceil(x)`` and ``t0 > x`` is ``t0 > floor(x)``.
    """
    low = f"t0 >= {_ceil_ms(flt.start_us)}" if bounds[0] == "[" else f"t0 > {flt.start_us // 1000}"
    high = f"t0 <= {flt.end_us // 1000}" if bounds[1] == "]" else f"t0 < {_ceil_ms(flt.end_us)}"
    return f"{low} AND {high}"


_FIELD = "\n      "
"""Before each field of an indented record."""
LAYOUT_SQL = {
    "compact": "substr(line, 2)",
    "pretty": (
        f"concat('\n   {{{_FIELD}', replace(replace(substr(line, 3, length(line) - 3), "
        f"',\"', ',{_FIELD}\"'), '\":', '\": '), '\n   }}')"
    ),
}
"""Each record of a body layout other than one per line, from its `,{…}` line. The
indented one holds for the simulator's records, whose strings never hold `,"` or `":`."""


def copy_to_sql(select: str, path: str, layout: str = "lines") -> str:
    """``COPY`` of a query's one text column (``,{…}`` records) to ``path``: each line
    verbatim, or for another `layout` each record in it followed by a comma, so that
    DuckDB, not Python, lays the body out (see `rcs_sim.server._body_file`)."""
    quoted = path.replace("'", "''")
    if layout not in LAYOUT_SQL:
        return f"COPY ({select}) TO '{quoted}' {_COPY_OPTIONS}"
    return (
        f"COPY (SELECT {LAYOUT_SQL[layout]} FROM ({select}) AS spooled(line)) "
        f"TO '{quoted}' {_COPY_OPTIONS[:-1]}, NEW_LINE ',')"
    )


def records_copy_sql(
    flt: RecordFilter,
    *,
    clock_ms: int,
    bounds: str,
    extra_fields: bool,
    limit: int | None,
    path: str,
    layout: str = "lines",
) -> str:
    """``COPY`` writing the matching records to ``path`` in `layout`, in id order."""
    where = f"t0 <= {clock_ms} AND {span_sql(flt, bounds)}"
    if flt.team is not None:
        where += f" AND team = {flt.team}"
    outer = "TRUE" if flt.modified_since_us is None else f"mt > {flt.modified_since_us // 1000}"
    state = f"""CASE bad WHEN {_STATE_9} THEN '9' WHEN {_STATE_STRING} THEN '"' || st || '"'
        ELSE st::VARCHAR END"""
    optional = (f", {_content_message()}" if flt.content_message else "") + (
        """, CASE WHEN extra THEN ',"channel":"rcs"' ELSE '' END""" if extra_fields else ""
    )
    limit_sql = "" if limit is None else f"LIMIT {limit}"
    select = f"""
    SELECT concat(',', head, {state}, tail{optional}, '}}')
    FROM (SELECT {_as_of(clock_ms)} FROM {TABLE} WHERE {where})
    WHERE {outer}
    {limit_sql}
"""
    return copy_to_sql(select, path, layout)


def truth_sql(clock_ms: int) -> str:
    """(id, state, bad) of every visible record as of the clock."""
    return (
        f"SELECT id, st, bad FROM (SELECT {_as_of(clock_ms)} FROM {TABLE} WHERE t0 <= {clock_ms})"
    )


def mutate_sql(clock_ms: int, seed: int, round_: int, count: int) -> str:
    """Move ``count`` hash-chosen visible sent/delivered/failed records to a new state now.

    A mutation replaces the record's remaining schedule: its state becomes ``s1`` at the
    clock (sent -> delivered or failed, delivered -> read, failed -> delivered on retry).
    """
    return f"""
UPDATE {TABLE} AS p SET s1 = c.new_state, d1 = {clock_ms} - p.t0, d2 = NULL
FROM (
    SELECT id, CASE st WHEN 0 THEN CASE WHEN hash(id, {seed}, {round_}) % 5 = 0 THEN 2 ELSE 1 END
                       WHEN 1 THEN 4 ELSE 1 END AS new_state
    FROM (SELECT {_as_of(clock_ms)} FROM {TABLE} WHERE t0 <= {clock_ms})
    WHERE st IN (0, 1, 2)
    ORDER BY hash(id, {seed}, {round_}, 'mutate')
    LIMIT {count}
) AS c
WHERE p.id = c.id
RETURNING p.id
"""
