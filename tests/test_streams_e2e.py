"""A second stream, declared by the tests alone, synced by the real CLI over real HTTP.

The widget stream (`tests/widget_stream.py`) is one `Stream(...)` the product has never
seen; the simulator serves it from its own description. Nothing else is added for it:
its tables come from the declaration when the warehouse migrates, and sync, status and
the snapshot cover it because `[sync] streams` names it.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from typing import Any

import duckdb
import pytest

from tests.adversarial_helpers import inside_read, kill_after_commits
from tests.conftest import Site
from tests.test_stream_tables import declared_columns, described
from tests.widget_stream import ENDPOINT, PROGRAM, WIDGETS

SiteFactory = Callable[..., Site]
STREAM_TABLES = (
    "test_widgets",
    "test_widget_quarantine",
    "test_widget_phases",
    "rcs_records",
    "rcs_quarantine",
    "rcs_state_changes",
)

pytestmark = pytest.mark.kinds


def widget_site(site: SiteFactory, streams: list[str], **sim_config: Any) -> Site:
    s = site(sync={"streams": streams}, endpoints=(ENDPOINT,), **sim_config)
    s.program = PROGRAM
    return s


def widgets(s: Site) -> dict[int, int]:
    rows = s.query("SELECT serial, phase FROM test_widgets")
    assert len(rows) == len(dict(rows)), "a widget is stored twice"
    return dict(rows)


def widget_requests(s: Site, since: int = 0) -> list[Any]:
    return [r for r in s.sim.sim.requests[since:] if r.path == ENDPOINT.path]


def assert_snapshot_holds(s: Site, tables: tuple[str, ...]) -> None:
    """The analysts' snapshot has each table, row for row as the warehouse."""
    with duckdb.connect() as con:
        con.execute("ATTACH ? AS w (READ_ONLY)", [str(s.db)])
        con.execute("ATTACH ? AS s (READ_ONLY)", [str(s.dir / "rcs.snapshot.duckdb")])
        for table in tables:
            row = con.execute(
                f"SELECT (SELECT count(*) FROM w.{table}),"
                f" (SELECT count(*) FROM (FROM w.{table} EXCEPT ALL FROM s.{table})),"
                f" (SELECT count(*) FROM (FROM s.{table} EXCEPT ALL FROM w.{table}))"
            ).fetchone()
            assert row is not None and row[1:] == (0, 0), (table, row)


@pytest.mark.any_kind
def test_a_stream_declared_by_a_test_alone_backfills_then_syncs_changes(
    site: SiteFactory,
) -> None:
    s = widget_site(site, [WIDGETS.name, "rcs_records"], records=2_000)

    first = s.ok("sync", "--events", "--publish-snapshot")

    events = [json.loads(line) for line in first.stdout.splitlines()]
    scopes = [e for e in events if e["event"] == "scope"]
    assert [e["mode"] for e in events if e["event"] == "snapshot"] == ["full"]
    assert [(e["stream"], e["scope"], e["outcome"]) for e in scopes] == [
        (WIDGETS.name, "all", "ok"),
        ("rcs_records", "all", "ok"),
    ]
    assert [e["summary"]["mode"] for e in scopes] == ["backfill", "backfill"]
    assert all(e["checkpoint"] for e in scopes)
    truth = s.sim.sim.endpoint_truth(ENDPOINT.path)
    assert len(truth) == 3_000
    assert widgets(s) == truth
    s.assert_converged()
    requests = widget_requests(s)
    assert len(requests) == scopes[0]["summary"]["windows"] >= 11
    assert all(set(r.params) == {"start", "end"} for r in requests)
    for table, columns in declared_columns(WIDGETS).items():
        assert described(s.db, table) == columns, table
    first_seen = (
        "SELECT count(*), count(*) FILTER (WHERE from_state IS NULL) FROM test_widget_phases"
    )
    assert s.query(first_seen) == [(3_000, 3_000)]
    assert s.query("SELECT stream, scope FROM sync_checkpoints ORDER BY ALL") == [
        ("rcs_records", "all"),
        (WIDGETS.name, "all"),
    ]

    for round_ in range(2):
        s.sim.sim.advance(300)
        moved = s.sim.sim.endpoint_mutate(ENDPOINT.path, 40)
        s.sim.sim.mutate(30)
        before = len(s.sim.sim.requests)
        result = s.ok("sync", "--publish-snapshot")
        lines = result.stdout.strip().splitlines()
        assert [line.split(",")[0] for line in lines] == [
            f"{WIDGETS.name}/all: incremental",
            "rcs_records/all: incremental",
        ], result.stdout
        [request] = widget_requests(s, before)
        assert "modified_since" in request.params
        assert len(moved) <= request.records < 300, (round_, request.records)
        assert widgets(s) == s.sim.sim.endpoint_truth(ENDPOINT.path)
        s.assert_converged()
        changed = s.query(
            "SELECT serial FROM test_widget_phases WHERE from_state IS NOT NULL "
            "AND observed_at = (SELECT max(observed_at) FROM test_widget_phases) ORDER BY 1"
        )
        assert [serial for (serial,) in changed] == moved
        assert_snapshot_holds(s, STREAM_TABLES)
        # The second publish has no spare generation yet; the third refreshes one.
        published = [line for line in result.stderr.splitlines() if "snapshot_published" in line]
        assert len(published) == 1 and ("full" if round_ == 0 else "incremental") in published[0]
        assert "snapshot_spare_unusable" not in result.stderr

    report = json.loads(s.ok("status", "--json").stdout)
    assert WIDGETS.history is not None
    phases = list(widgets(s).values())
    counts = {meaning: phases.count(p) for p, meaning in WIDGETS.history.meanings.items()}
    assert report["streams"][0] == {
        "stream": WIDGETS.name,
        "records": 3_000,
        "quarantined": 0,
        "states": counts,
    }
    assert report["streams"][1]["records"] == len(s.sim.sim.truth())
    assert (report["records"], report["quarantined"]) == (3_000, 0)  # the first stream's
    assert {(e["stream"], e["scope"]) for e in report["scopes"]} == {
        (WIDGETS.name, "all"),
        ("rcs_records", "all"),
    }


def test_a_backfill_of_the_test_stream_killed_mid_way_resumes_to_exactly_its_records(
    site: SiteFactory,
) -> None:
    s = widget_site(site, [WIDGETS.name], records=100, latency=0.1)

    code = kill_after_commits(s, ("sync",), commits=3)

    assert code == -signal.SIGKILL
    committed_sql = (
        "SELECT window_start, window_end FROM sync_windows WHERE stream = 'test_widget_records'"
    )
    committed = s.query(committed_sql)
    done = len(committed)
    assert done >= 3
    before = len(s.sim.sim.requests)
    rerun = s.ok("sync")
    assert rerun.stdout.startswith("all: backfill, "), rerun.stdout  # one stream: no name
    total = len(s.query(committed_sql))
    assert done < total, (done, total)
    # Resumed: no committed window is read again but perhaps the last, whose end the
    # server's clock has moved. (The killed pass's requests in flight may reach the log
    # after `before`; they are for windows it did not commit, so they do not count.)
    again = [r.params for r in widget_requests(s, before) if inside_read(r, committed)]
    assert len(again) <= 1, again
    assert widgets(s) == s.sim.sim.endpoint_truth(ENDPOINT.path)
    assert s.query("SELECT count(*) FROM test_widget_quarantine") == [(0,)]
    once = "SELECT count(*), count(DISTINCT serial) FROM test_widget_phases"
    assert s.query(once) == [(3_000, 3_000)]
    assert s.query("SELECT count(*) FROM rcs_records") == [(0,)]  # not configured: not synced
    assert {r.path for r in s.sim.sim.requests} == {ENDPOINT.path}
