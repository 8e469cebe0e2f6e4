"""What a pass reports, as `rcs-sync sync --events` JSON lines and to a progress bar.

The daemon reads these lines back from its pass processes (`daemon/service.py`), the
engine and the CLI write them: one declaration here keeps both sides to the same keys.
They are TypedDicts because the JSON line *is* the event: encoding is `json.dumps`, and
the documented `--events` output stays exactly what it was.
"""

from __future__ import annotations

import json
from typing import Literal, NotRequired, TypedDict, TypeGuard

Outcome = Literal["ok", "failed", "auth_failed", "stopped"]


class Summary(TypedDict):
    """One scope's pass in numbers, as `PassResult.summary()` gives it."""

    scope: str
    mode: str
    windows: int
    received: int
    inserted: int
    updated: int
    quarantined: int
    splits: int
    checkpoint: str | None
    checkpoint_lag_s: float | None
    duration_s: float
    cpu_s: float


class Planned(TypedDict):
    """The windows a scope's pass is about to read."""

    event: Literal["planned"]
    scope: str
    windows: int
    seconds: float
    """The span they cover together: a window planned smaller or split changes how many
    are read, never the span they cover, so progress is measured in it."""


class WindowLoaded(TypedDict):
    """One window committed."""

    event: Literal["window"]
    scope: str
    window_start: str
    window_end: str
    received: int
    inserted: int
    updated: int
    quarantined: int


class ApiResponse(TypedDict):
    """One HTTP response (None: no response at all), for the requests counter."""

    event: Literal["api_response"]
    status: int | None


class ScopeFinished(TypedDict):
    """How one (stream, scope) pass ended; its checkpoint gives the daemon the lag."""

    event: Literal["scope"]
    stream: str
    scope: str
    outcome: Outcome
    summary: Summary | None
    checkpoint: str | None
    error: str | None
    kind: NotRequired[str | None]
    """The failure's `error_kind` (`api`, `auth`, `warehouse`, …); None when ok."""


class PassFailed(TypedDict):
    """The pass ended in a failure that no `scope` event reports (the warehouse could
    not be opened, the token not read, …): written just before the process exits."""

    event: Literal["failed"]
    kind: str
    error: str
    exit_code: int


class WriterWait(TypedDict):
    """The pass is waiting for another rcs-sync writing the warehouse (`pid`), repeated
    while it waits so the daemon knows it is alive."""

    event: Literal["writer_wait"]
    pid: int | None
    waited_s: float


class SnapshotPublished(TypedDict):
    """The analysts' snapshot was published after the pass."""

    event: Literal["snapshot"]
    seconds: float
    mode: str


Progress = Planned | WindowLoaded
"""What the engine tells a listener while a pass runs."""

PassEvent = (
    Planned
    | WindowLoaded
    | ApiResponse
    | ScopeFinished
    | SnapshotPublished
    | PassFailed
    | WriterWait
)

KINDS = frozenset(
    {"planned", "window", "api_response", "scope", "snapshot", "failed", "writer_wait"}
)


def encode(event: PassEvent) -> str:
    """One JSON line, without its newline."""
    return json.dumps(event)


def _is_event(value: object) -> TypeGuard[PassEvent]:
    return isinstance(value, dict) and value.get("event") in KINDS


def decode(line: str) -> PassEvent:
    """The event a pass wrote; ValueError for a line that is none (a stray print)."""
    value = json.loads(line)
    if not _is_event(value):
        raise ValueError(f"not a pass event: {line[:80]!r}")
    return value
