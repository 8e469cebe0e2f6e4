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

import dataclasses
from dataclasses import dataclass
from typing import Literal

from rcs_sim.population import RecordFilter, copy_to_sql, span_sql

Kind = Literal["integer", "string", "team", "phone", "seconds"]
KINDS: tuple[Kind, ...] = ("integer", "string", "team", "phone", "seconds")
FieldKind = Kind | tuple[str, ...]
"""A plain field's kind, or the strings it takes (an enum such as call direction)."""


@dataclass(frozen=True)
class Endpoint:
    """A record endpoint: `GET path?start=…&end=…[&modified_since=…]`."""

    path: str
    key: str
    time: str
    state: str
    states: tuple[int, ...]
    fields: tuple[tuple[str, FieldKind], ...] = ()
    """Plain fields: integers below 1000, strings `<name>-<n>`, teams 1-3, phone numbers
    `+336…`, seconds below 600, or one of the strings given."""
    records: int = 1_000
    days: float = 10.0
    modified_since: bool = True
    """Whether `modified_since` is accepted; sent where it is not, it is a 400."""
    optional: tuple[tuple[str, FieldKind], ...] = ()
    """Fields served only with `include=<name>`."""
    team: str | None = None
    """The plain field the `team` parameter filters on; without one, `team` is a 400."""

    def names(self) -> list[str]:
        return [
            self.key,
            *(name for name, _ in self.fields),
            *(name for name, _ in self.optional),
            self.state,
            self.time,
        ]


def check(endpoint: Endpoint) -> str | None:
    """Why the description cannot be served, if it cannot."""
    if not endpoint.path.startswith("/j/"):
        return f"endpoint path {endpoint.path!r} must start with /j/"
    if len(set(endpoint.names())) != len(endpoint.names()):
        return f"endpoint {endpoint.path}: field names must differ"
    if not endpoint.states or not all(isinstance(s, int) for s in endpoint.states):
        return f"endpoint {endpoint.path}: states must be a non-empty tuple of integers"
    for _, kind in (*endpoint.fields, *endpoint.optional):
        if isinstance(kind, tuple):
            if not kind or not all(isinstance(v, str) for v in kind):
                return f"endpoint {endpoint.path}: choices must be a tuple of strings"
        elif kind not in KINDS:
            return f"endpoint {endpoint.path}: field kinds must be among {KINDS}"
    if endpoint.team is not None and endpoint.team not in dict(endpoint.fields):
        return f"endpoint {endpoint.path}: team must name a plain field"
    if endpoint.records < 0 or endpoint.days <= 0:
        return f"endpoint {endpoint.path}: records must be >= 0 and days > 0"
    return None


def _column_sql(name: str, kind: FieldKind, h: str) -> str:
    if isinstance(kind, tuple):
        options = "[" + ", ".join(_literal(v) for v in kind) + "]"
        return f"{options}[1 + ({h} % {len(kind)})::BIGINT]"
    return {
        "integer": f"({h} % 1000)::BIGINT",
        "string": f"{_literal(name + '-')} || ({h} % 10000)",
        "team": f"(1 + {h} % 3)::BIGINT",
        "phone": f"'+336' || lpad(({h} % 100000000)::VARCHAR, 8, '0')",
        "seconds": f"({h} % 600)::BIGINT",
    }[kind]


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
        f"{_column_sql(name, kind, f'hash(i, {seed}, {n})')} AS f{n}"
        for n, (name, kind) in enumerate((*endpoint.fields, *endpoint.optional))
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
    layout: str = "lines",
) -> str:
    """``COPY`` writing the matching records to ``path`` in `layout`, in key order."""
    where = f"t0 <= {clock_ms} AND {span_sql(flt, bounds)}"
    if flt.modified_since_us is not None:
        where += f" AND mt > {flt.modified_since_us // 1000}"
    names = [name for name, _ in endpoint.fields]
    if flt.team is not None and endpoint.team is not None:
        where += f" AND f{names.index(endpoint.team)} = {int(flt.team)}"
    pairs = [f"{_literal(endpoint.key)}, k"]
    pairs += [f"{_literal(name)}, f{n}" for n, name in enumerate(names)]
    if flt.content_message:  # include= named the optional fields
        pairs += [
            f"{_literal(name)}, f{len(names) + n}" for n, (name, _) in enumerate(endpoint.optional)
        ]
    pairs += [
        f"{_literal(endpoint.state)}, st",
        f"{_literal(endpoint.time)}, strftime(epoch_ms(t0), '%Y-%m-%dT%H:%M:%S.%gZ')",
    ]
    limit_sql = "" if limit is None else f"LIMIT {limit}"
    select = f"""
    SELECT ',' || json_object({", ".join(pairs)})::VARCHAR
    FROM {table} WHERE {where} ORDER BY k {limit_sql}
"""
    return copy_to_sql(select, path, layout)


def truth_sql(table: str, clock_ms: int) -> str:
    """(key, state) of every record visible at the clock."""
    return f"SELECT k, st FROM {table} WHERE t0 <= {clock_ms}"


def mutate_sql(
    endpoint: Endpoint,
    table: str,
    *,
    clock_ms: int,
    seed: int,
    round_: int,
    count: int,
    newer_than_ms: int | None = None,
) -> str:
    """Move ``count`` hash-chosen visible records (created in the last ``newer_than_ms``,
    if given) to their next state now."""
    states = _states(endpoint)
    recent = "" if newer_than_ms is None else f" AND t0 >= {clock_ms - newer_than_ms}"
    return f"""
UPDATE {table} AS p SET st = c.next, mt = {clock_ms}
FROM (
    SELECT k, {states}[list_position({states}, st) % {len(endpoint.states)} + 1] AS next
    FROM {table} WHERE t0 <= {clock_ms}{recent}
    ORDER BY hash(k, {seed}, {round_}, 'mutate')
    LIMIT {count}
) AS c
WHERE p.k = c.k
RETURNING p.k
"""


def sibling(name: str, *, records: int = 1_000, days: float = 10.0) -> Endpoint:
    """The simulator's description of one of the provider's sibling endpoints, by the
    name of its path (`text_records`, `voicemail_drop_records`, `call_records`)."""
    return dataclasses.replace(SIBLINGS[name], records=records, days=days)


_DELIVERY_FIELDS: tuple[tuple[str, FieldKind], ...] = (
    ("campaign", "integer"),
    ("job", "integer"),
    ("number", "phone"),
    ("reference", "string"),
    ("team", "team"),
)

SIBLINGS: dict[str, Endpoint] = {
    "text_records": Endpoint(
        path="/j/text_records",
        key="id",
        time="timestamp",
        state="state",
        states=(0, 1, 2, 3),
        fields=(*_DELIVERY_FIELDS, ("portal", "string")),
        optional=(("body", "string"),),
        modified_since=False,
        team="team",
    ),
    "voicemail_drop_records": Endpoint(
        path="/j/voicemail_drop_records",
        key="id",
        time="timestamp",
        state="state",
        states=(0, 1, 2, 3),
        fields=_DELIVERY_FIELDS,
        modified_since=False,
        team="team",
    ),
    "call_records": Endpoint(
        path="/j/call_records",
        key="id",
        time="timestamp",
        state="error",
        states=tuple(range(11)),
        fields=(
            ("agent", "integer"),
            ("broadcast_duration", "seconds"),
            ("campaign", "integer"),
            ("direction", ("outgoing", "incoming")),
            ("job", "integer"),
            ("label", "string"),
            ("local_number", "phone"),
            ("number", "phone"),
            ("reference", "string"),
            ("talk_duration", "seconds"),
            ("team", "team"),
            ("wait_duration", "seconds"),
        ),
        modified_since=False,
        team="team",
    ),
}
"""Descriptions of `/j/text_records`, `/j/voicemail_drop_records` and `/j/call_records`
as the provider documents them: none takes `modified_since`, states change later."""
