"""Declarations of the provider's record endpoints, and the registry naming them.

A stream is data, not code: the fetch, validation, load, table creation, status and
snapshot machinery is shared and driven entirely by these declarations, so adding
`/j/text_records` is one more registered `Stream(...)`; the warehouse creates its
tables from it (`warehouse/tables.py`) and `[sync] streams` can then name it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Kind = Literal["integer", "string", "timestamp"]


@dataclass(frozen=True)
class Field:
    """One documented field of a record and the rule a value must meet to load."""

    name: str
    kind: Kind
    sql_type: str
    required: bool = False
    allowed: tuple[int, ...] | tuple[str, ...] | None = None
    """The values the field may take (integers, or strings for a string enum)."""
    minimum: int | None = None


@dataclass(frozen=True)
class History:
    """A stream whose records move through states, and the table logging each move."""

    table: str
    state: str = "state"
    initial: int = 0
    """A record first seen in this state was observed at its own `time` field."""
    time: str = "timestamp"
    meanings: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    """What each value of `state` means (status counts records by it); its keys are the
    values the state field allows."""


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
    rates_view: str | None = None
    """The view of daily delivery and read rates `rcs-sync report` reads, if any."""
    modified_since: bool = True
    """Whether the endpoint takes `modified_since`. Without it, incremental passes are
    tiered re-reads of the update horizon (`model/reread.py`), and it is never sent."""
    windowed: bool = True
    """Whether records are read in time windows. A stream without windows (a small
    dimension such as teams) is read whole on every pass and replaces its table."""

    def __post_init__(self) -> None:
        """A declaration that contradicts itself fails at import, not in the middle of a pass."""
        names = [f.name for f in self.all_fields()]
        if len(set(names)) != len(names):
            raise ValueError(f"stream {self.name}: a field is declared twice")
        if not self.field_named(self.key).required:
            raise ValueError(f"stream {self.name}: the key {self.key} must be a required field")
        if not self.windowed and (self.history is not None or self.modified_since):
            raise ValueError(
                f"stream {self.name}: a stream read whole has no history and no modified_since"
            )
        history = self.history
        if history is not None:
            self.field_named(history.time)
            allowed = self.field_named(history.state).allowed
            if history.meanings and set(history.meanings) != set(allowed or ()):
                raise ValueError(
                    f"stream {self.name}: the meanings of {history.state} must cover exactly "
                    "the values it allows"
                )

    def field_named(self, name: str) -> Field:
        """The declared field `name` (KeyError if there is none)."""
        for f in self.all_fields():
            if f.name == name:
                return f
        raise KeyError(f"stream {self.name} declares no field {name!r}")

    def field_names(self, *, include_optional: bool) -> tuple[str, ...]:
        fields = self.fields + (self.optional_fields if include_optional else ())
        return tuple(f.name for f in fields)

    def all_fields(self) -> tuple[Field, ...]:
        return self.fields + self.optional_fields


_REGISTRY: dict[str, Stream] = {}


def register(stream: Stream) -> Stream:
    """Make `stream` known by its name to `[sync] streams`, the warehouse and status: the
    declarations below, and any a test adds before it starts the CLI."""
    known = _REGISTRY.setdefault(stream.name, stream)
    if known != stream:
        raise ValueError(f"another stream is already registered as {stream.name!r}")
    return stream


def registered() -> tuple[Stream, ...]:
    """Every registered stream, in the order of registration."""
    return tuple(_REGISTRY.values())


def named(name: str) -> Stream:
    """The registered stream `name` (KeyError if there is none)."""
    return _REGISTRY[name]


_MESSAGE = (
    Field("id", "integer", "BIGINT", required=True, minimum=1),
    Field("campaign", "integer", "BIGINT"),
    Field("job", "integer", "BIGINT"),
    Field("team", "integer", "BIGINT"),
    Field("number", "string", "VARCHAR"),
    Field("reference", "string", "VARCHAR"),
)
"""The fields every message stream (RCS, SMS, voicemail drop) starts with, in this order."""


RCS_RECORDS = register(
    Stream(
        name="rcs_records",
        path="/j/rcs_records",
        table="rcs_records",
        quarantine_table="rcs_quarantine",
        fields=(
            *_MESSAGE,
            Field("portal", "string", "VARCHAR"),
            Field("state", "integer", "UTINYINT", required=True, allowed=(0, 1, 2, 3, 4)),
            Field("timestamp", "timestamp", "TIMESTAMPTZ", required=True),
        ),
        optional_fields=(Field("content_message", "string", "VARCHAR"),),
        precedence=(
            "CASE state WHEN 4 THEN 3 WHEN 2 THEN 2 WHEN 3 THEN 2 WHEN 1 THEN 1 ELSE 0 END"
        ),
        personal=("number",),
        history=History(
            "rcs_state_changes",
            meanings=MappingProxyType(
                {0: "sent", 1: "delivered", 2: "failed", 3: "rejected", 4: "read"}
            ),
        ),
        rates_view="rcs_rates_daily",
    )
)


_DELIVERY = MappingProxyType({0: "sent", 1: "delivered", 2: "failed", 3: "rejected"})
_DELIVERY_PRECEDENCE = "CASE state WHEN 2 THEN 2 WHEN 3 THEN 2 WHEN 1 THEN 1 ELSE 0 END"

TEXT_RECORDS = register(
    Stream(
        name="text_records",
        path="/j/text_records",
        table="text_records",
        quarantine_table="text_quarantine",
        fields=(
            *_MESSAGE,
            Field("portal", "string", "VARCHAR"),
            Field("state", "integer", "UTINYINT", required=True, allowed=(0, 1, 2, 3)),
            Field("timestamp", "timestamp", "TIMESTAMPTZ", required=True),
        ),
        optional_fields=(Field("body", "string", "VARCHAR"),),
        precedence=_DELIVERY_PRECEDENCE,
        personal=("number", "body"),
        history=History("text_state_changes", meanings=_DELIVERY),
        modified_since=False,
    )
)
"""SMS sent or received (`GET /j/text_records`): no `modified_since`; `body` only with
`include=body`."""

VOICEMAIL_DROP_RECORDS = register(
    Stream(
        name="voicemail_drop_records",
        path="/j/voicemail_drop_records",
        table="voicemail_drop_records",
        quarantine_table="voicemail_drop_quarantine",
        fields=(
            *_MESSAGE,
            Field("state", "integer", "UTINYINT", required=True, allowed=(0, 1, 2, 3)),
            Field("timestamp", "timestamp", "TIMESTAMPTZ", required=True),
        ),
        precedence=_DELIVERY_PRECEDENCE,
        personal=("number",),
        history=History("voicemail_drop_state_changes", meanings=_DELIVERY),
        modified_since=False,
    )
)
"""Voicemail drops (`GET /j/voicemail_drop_records`): no `modified_since`."""

CALL_ERRORS = MappingProxyType(
    {
        0: "succeeded",
        1: "bad number",
        2: "outside business hours",
        3: "voicemail detected",
        4: "relay failed",
        5: "abandoned",
        6: "no agent",
        7: "busy",
        8: "no answer",
        9: "congestion",
        10: "policy violation",
    }
)

CALL_RECORDS = register(
    Stream(
        name="call_records",
        path="/j/call_records",
        table="call_records",
        quarantine_table="call_quarantine",
        fields=(
            Field("id", "integer", "BIGINT", required=True, minimum=1),
            Field("agent", "integer", "BIGINT"),
            Field("broadcast_duration", "integer", "BIGINT", minimum=0),
            Field("campaign", "integer", "BIGINT"),
            Field("direction", "string", "VARCHAR", allowed=("outgoing", "incoming")),
            Field("error", "integer", "UTINYINT", required=True, allowed=tuple(CALL_ERRORS)),
            Field("job", "integer", "BIGINT"),
            Field("label", "string", "VARCHAR"),
            Field("local_number", "string", "VARCHAR"),
            Field("number", "string", "VARCHAR"),
            Field("reference", "string", "VARCHAR"),
            Field("talk_duration", "integer", "BIGINT", minimum=0),
            Field("team", "integer", "BIGINT"),
            Field("timestamp", "timestamp", "TIMESTAMPTZ", required=True),
            Field("wait_duration", "integer", "BIGINT", minimum=0),
        ),
        personal=("number", "local_number"),
        history=History("call_error_changes", state="error", meanings=CALL_ERRORS),
        modified_since=False,
    )
)
"""Calls (`GET /j/call_records`): `modified_since` is not documented, so never sent;
durations are whole seconds; `error` is the call's outcome (0 succeeded)."""

TEAMS = register(
    Stream(
        name="teams",
        path="/j/teams",
        table="teams",
        quarantine_table="teams_quarantine",
        fields=(
            Field("id", "integer", "BIGINT", required=True, minimum=0),
            Field("name", "string", "VARCHAR"),
        ),
        modified_since=False,
        windowed=False,
    )
)
"""Teams (`GET /j/teams`): a small dimension, read whole and replaced on every pass."""
