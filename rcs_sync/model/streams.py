"""Declarations of the provider's record endpoints.

A stream is data, not code: the fetch, validation and load machinery is shared and
driven entirely by these declarations, so adding `/j/text_records` is one more
`Stream(...)` plus a migration creating its tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["integer", "string", "timestamp"]


@dataclass(frozen=True)
class Field:
    """One documented field of a record and the rule a value must meet to load."""

    name: str
    kind: Kind
    sql_type: str
    required: bool = False
    allowed: tuple[int, ...] | None = None
    minimum: int | None = None


@dataclass(frozen=True)
class History:
    """A stream whose records move through states, and the table logging each move."""

    table: str
    state: str = "state"
    initial: int = 0
    """A record first seen in this state was observed at its own `time` field."""
    time: str = "timestamp"


@dataclass(frozen=True)
class Stream:
    """A provider endpoint mirrored into one table keyed by `key`."""

    name: str
    path: str
    table: str
    quarantine_table: str
    fields: tuple[Field, ...]
    key: str = "id"
    optional_fields: tuple[Field, ...] = ()
    """Fields only present when requested with `include=<name>`."""
    precedence: str = "0"
    """SQL over the typed fields ranking copies of one key in a single response; the
    highest is kept."""
    personal: tuple[str, ...] = ()
    """Fields holding personal data: stored as `[warehouse] number` says (privacy.py)."""
    history: History | None = None
    """Where each first-seen state and each state change is appended, if anywhere."""

    def field_names(self, *, include_optional: bool) -> tuple[str, ...]:
        fields = self.fields + (self.optional_fields if include_optional else ())
        return tuple(f.name for f in fields)

    def all_fields(self) -> tuple[Field, ...]:
        return self.fields + self.optional_fields


RCS_STATES = {0: "sent", 1: "delivered", 2: "failed", 3: "rejected", 4: "read"}

RCS_RECORDS = Stream(
    name="rcs_records",
    path="/j/rcs_records",
    table="rcs_records",
    quarantine_table="rcs_quarantine",
    fields=(
        Field("id", "integer", "BIGINT", required=True, minimum=1),
        Field("campaign", "integer", "BIGINT"),
        Field("job", "integer", "BIGINT"),
        Field("team", "integer", "BIGINT"),
        Field("number", "string", "VARCHAR"),
        Field("reference", "string", "VARCHAR"),
        Field("portal", "string", "VARCHAR"),
        Field("state", "integer", "UTINYINT", required=True, allowed=tuple(RCS_STATES)),
        Field("timestamp", "timestamp", "TIMESTAMPTZ", required=True),
    ),
    optional_fields=(Field("content_message", "string", "VARCHAR"),),
    precedence="CASE state WHEN 4 THEN 3 WHEN 2 THEN 2 WHEN 3 THEN 2 WHEN 1 THEN 1 ELSE 0 END",
    personal=("number",),
    history=History("rcs_state_changes"),
)

STREAMS = (RCS_RECORDS,)
"""Every stream the warehouse holds."""
