"""Sparse stretches read as joined windows (`[sync] min_records_per_request`): fewer
requests, the same rows, a ledger that still covers the span, and a killed backfill
that resumes where it stopped."""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import timedelta

import pytest

from rcs_sync.model.durations import format_instant, parse_instant
from rcs_sync.model.windows import BOUNDARY_PAD, JOIN_MOST, Window, gaps
from tests.adversarial_helpers import kill_after_commits
from tests.conftest import Site

pytestmark = pytest.mark.kinds

SiteFactory = Callable[..., Site]


def ledger(s: Site) -> list[Window]:
    rows = s.query("SELECT window_start, window_end FROM sync_windows ORDER BY window_start")
    return [Window(start, end) for start, end in rows]


JOINED = {"min_records_per_request": 20_000}
"""The product's default (the tests' sites read every window alone)."""


def full_reads(s: Site) -> int:
    return sum(1 for r in s.sim.sim.requests if "modified_since" not in r.params)


def test_a_sparse_backfill_joins_windows_and_stores_every_record(site: SiteFactory) -> None:
    # 60 days of ~5 records: day windows alone would be 62 requests.
    s = site(records=300, days=60, sync=JOINED)
    s.ok("sync")
    reads = full_reads(s)
    windows = ledger(s)
    assert reads == len(windows) < 62 / 2
    assert max(w.span for w in windows).days == JOIN_MOST
    first = s.query("SELECT min(window_start), max(window_end) FROM sync_windows")[0]
    assert gaps(Window(*first), windows) == []
    s.assert_converged()
    again = s.ok("sync")  # incremental now: nothing is read again in full
    assert "incremental" in again.stdout and full_reads(s) == reads


def test_at_zero_every_window_is_read_alone(site: SiteFactory) -> None:
    s = site(records=300, days=20, sync={"min_records_per_request": 0})
    s.ok("sync")
    assert full_reads(s) == len(ledger(s)) >= 21
    assert max(w.span for w in ledger(s)).days == 1
    s.assert_converged()


def test_a_killed_sparse_backfill_resumes_without_reading_a_window_twice(
    site: SiteFactory,
) -> None:
    s = site(records=400, days=80, latency=0.1, sync=JOINED, api={"concurrency": 1})
    assert kill_after_commits(s, ("sync",), commits=4) == -signal.SIGKILL
    done = ledger(s)
    assert done and any(w.span.days > 1 for w in done), "the kill came after a joined window"
    sent = len(s.sim.sim.requests)
    s.ok("sync")
    resumed = [
        Window(parse_instant(r.params["start"]) + BOUNDARY_PAD, parse_instant(r.params["end"]))
        for r in s.sim.sim.requests[sent:]
        if "modified_since" not in r.params
    ]
    assert resumed
    for read in resumed:
        assert all(read.end <= w.start or w.end <= read.start for w in done), read
    s.assert_converged()


def test_joined_windows_stay_under_half_a_known_server_limit(site: SiteFactory) -> None:
    # ~5 records a day and a server cutting at 100: joined windows hold fewer than 50,
    # so none comes back at exactly the limit and none has to be split. The backfill
    # starts inside the records: an empty first day would make the next ones look empty.
    s = site(records=300, days=60, truncate_at=100, api={"server_limit": 100}, sync=JOINED)
    s.write_config(sync={"initial_start": format_instant(s.sim.sim.now() - timedelta(days=60))})
    s.ok("sync")
    spans = [w.span.days for w in ledger(s)]
    assert 1 < max(spans) <= 10
    assert s.query("SELECT count(*) FROM sync_splits") == [(0,)]
    assert max(r.records for r in s.sim.sim.requests) < 50
    s.assert_converged()
