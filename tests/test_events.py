"""The daemon↔pass protocol: what a pass writes is what the daemon reads back."""

from __future__ import annotations

import pytest

from rcs_sync.model import events


def test_every_kind_round_trips_through_one_json_line() -> None:
    written: list[events.PassEvent] = [
        events.Planned(event="planned", scope="all", windows=3, seconds=259_200.0),
        events.ApiResponse(event="api_response", status=None),
        events.SnapshotPublished(event="snapshot", seconds=0.25, mode="refresh"),
        events.ScopeFinished(
            event="scope",
            stream="rcs_records",
            scope="7",
            outcome="failed",
            summary=None,
            checkpoint=None,
            error="api unavailable",
            kind="api",
        ),
        events.PassFailed(event="failed", kind="warehouse", error="locked", exit_code=5),
        events.WriterWait(event="writer_wait", pid=1234, waited_s=5.0),
    ]
    for event in written:
        line = events.encode(event)
        assert "\n" not in line
        assert events.decode(line) == event
    assert {e["event"] for e in written} | {"window"} == events.KINDS


@pytest.mark.parametrize(
    "line", ['{"event": "gossip"}', '["scope"]', '"scope"', '{"scope": "all"}']
)
def test_a_line_that_is_no_event_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="not a pass event"):
        events.decode(line)


def test_a_stray_print_is_refused_as_not_json() -> None:
    with pytest.raises(ValueError):
        events.decode("hello from a pass")
