"""Further record endpoints of the provider's shape, each served from a short description.

The RCS endpoint has a detailed model of its own (`population.py`). An `Endpoint`
describes any other by its path, key, time field, state field and a few plain fields:
enough to serve a stream the product does not ship (a test declares one to show a
stream is data), with the same clock, faults, bounds and truncation as RCS records.

Each record is created at a seeded random time in the `days` before the start clock,
in a seeded random state; it changes state only when `mutate_sql` moves it (to the next
of `states`, cyclically), which also sets its modification time to the clock. A
request selects records by their time field (`start`, `end`) and, with
`modified_since`, by modification time. The JSON has the key, the plain fields, the
state and the time, in that order; times carry milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rcs_sim.population import RecordFilter, copy_to_sql, span_sql

Kind = Literal["integer", "string"]
KINDS: tuple[Kind, ...] = ("integer", "string")


@dataclass(frozen=True)
class Endpoint:
    """A record endpoint: `GET path?start=…&end=…[&modified_since=…]`."""

    path: str
    key: str
    time: str
    state: str
    states: tuple[int, ...]
    fields: tuple[tuple[str, Kind], ...] = ()
    """Plain fields: integers below 1000, or strings `<name>-<n>`."""
    records: int = 1_000
    days: float = 10.0

    def names(self) -> list[str]:
        return [self.key, *(name for name, _ in self.fields), self.state, self.time]


def check(endpoint: Endpoint) -> str | None:
    """Why the description cannot be served, if it cannot."""
    if not endpoint.path.startswith("/j/"):
        return f"endpoint path {endpoint.path!r} must start with /j/"
    if len(set(endpoint.names())) != len(endpoint.names()):
        return f"endpoint {endpoint.path}: field names must differ"
    if not endpoint.states or not all(isinstance(s, int) for s in endpoint.states):
        return f"endpoint {endpoint.path}: states must be a non-empty tuple of integers"
    if any(kind not in KINDS for _, kind in endpoint.fields):
        return f"endpoint {endpoint.path}: field kinds must be among {KINDS}"
    if endpoint.records < 0 or endpoint.days <= 0:
        return f"endpoint {endpoint.path}: records must be >= 0 and days > 0"
    return None


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _states(endpoint: Endpoint) -> str:
    return "[" + ", ".join(str(s) for s in endpoint.states) + "]"


def population_sql(endpoint: Endpoint, table: str, *, seed: int, start_ms: int) -> str:
    """The table of records: key `k`, creation `t0` and modification `mt` (epoch ms),
    state `st`, and one column `f<i>` per plain field."""
    past_ms = round(endpoint.days * 86_400_000)
    slot = f"{past_ms} / {max(endpoint.records, 1)}"
    columns = [
        f"(hash(i, {seed}, {n}) % 1000)::BIGINT AS f{n}"
        if kind == "integer"
        else f"{_literal(name + '-')} || (hash(i, {seed}, {n}) % 10000) AS f{n}"
        for n, (name, kind) in enumerate(endpoint.fields)
    ]
    states = _states(endpoint)
    return f"""
CREATE TABLE {table} AS
SELECT *, t0 AS mt FROM (
    SELECT i + 1 AS k,
        ({start_ms - past_ms} + floor((i + (hash(i, {seed}, 'at') % 1000) / 1000) * {slot}))::BIGINT
            AS t0,
        {states}[1 + (hash(i, {seed}, 'state') % {len(endpoint.states)})::BIGINT] AS st
        {"".join(", " + c for c in columns)}
    FROM range({endpoint.records}) AS r(i)
)
"""


def records_copy_sql(
    endpoint: Endpoint,
    table: str,
    flt: RecordFilter,
    *,
    clock_ms: int,
    bounds: str,
    limit: int | None,
    path: str,
) -> str:
    """``COPY`` writing the matching records as ``,{…}`` lines to ``path``, in key order."""
    where = f"t0 <= {clock_ms} AND {span_sql(flt, bounds)}"
    if flt.modified_since_us is not None:
        where += f" AND mt > {flt.modified_since_us // 1000}"
    pairs = [f"{_literal(endpoint.key)}, k"]
    pairs += [f"{_literal(name)}, f{n}" for n, (name, _) in enumerate(endpoint.fields)]
    pairs += [
        f"{_literal(endpoint.state)}, st",
        f"{_literal(endpoint.time)}, strftime(epoch_ms(t0), '%Y-%m-%dT%H:%M:%S.%gZ')",
    ]
    limit_sql = "" if limit is None else f"LIMIT {limit}"
    select = f"""
    SELECT ',' || json_object({", ".join(pairs)})::VARCHAR
    FROM {table} WHERE {where} ORDER BY k {limit_sql}
"""
    return copy_to_sql(select, path)


def truth_sql(table: str, clock_ms: int) -> str:
    """(key, state) of every record visible at the clock."""
    return f"SELECT k, st FROM {table} WHERE t0 <= {clock_ms}"


def mutate_sql(
    endpoint: Endpoint, table: str, *, clock_ms: int, seed: int, round_: int, count: int
) -> str:
    """Move ``count`` hash-chosen visible records to their next state now."""
    states = _states(endpoint)
    return f"""
UPDATE {table} AS p SET st = c.next, mt = {clock_ms}
FROM (
    SELECT k, {states}[list_position({states}, st) % {len(endpoint.states)} + 1] AS next
    FROM {table} WHERE t0 <= {clock_ms}
    ORDER BY hash(k, {seed}, {round_}, 'mutate')
    LIMIT {count}
) AS c
WHERE p.k = c.k
RETURNING p.k
"""
