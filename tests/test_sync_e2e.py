"""End to end: the real CLI, over real HTTP, against the simulator's truth."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from rcs_sync.model.durations import format_instant
from tests.adversarial_helpers import compare, inside_read, kill_after_commits
from tests.conftest import TOKEN, Site, log_lines, terminal_line

pytestmark = pytest.mark.kinds

SiteFactory = Callable[..., Site]


def summary(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.strip().splitlines()[-1]


def first_backfill(s: Site) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The first `sync` and the summaries its backfill may give: one day window from
    `initial_start` up to our clock + clock_skew (5 min), taken before and after the run,
    so a run at 23:55-00:00 UTC, whose end crosses midnight, counts the extra day."""
    initial = (s.sim.sim.now() - timedelta(days=s.sim.sim.config.days + 1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    before = datetime.now(UTC)
    result = s.ok("sync")
    counts = {
        -((initial - at - timedelta(minutes=5)) // timedelta(days=1))
        for at in (before, datetime.now(UTC))
    }
    return result, {f"backfill, {n} windows" for n in counts}


def test_backfill_then_incremental_passes_converge(site: SiteFactory) -> None:
    s = site(records=20_000, days=10)
    first, expected = first_backfill(s)
    assert any(f"all: {e}" in summary(first) for e in expected), (expected, summary(first))
    s.assert_converged()
    assert s.query("SELECT count(*) FROM sync_checkpoints") == [(1,)]

    for round_ in range(3):
        s.sim.sim.advance(300)
        changed = s.sim.sim.mutate(40)
        before = len(s.sim.sim.requests)
        result = s.ok("sync")
        assert "incremental, 1 windows" in summary(result), result.stdout
        s.assert_converged()
        [request] = s.sim.sim.requests[before:]
        assert "modified_since" in request.params
        # Only what changed (plus the overlap margin) travels, not the population.
        assert len(changed) <= request.records < 2_000, (round_, request.records)


def test_catchup_when_the_checkpoint_is_too_old_for_modified_since(site: SiteFactory) -> None:
    s = site(records=5_000, days=12)
    s.ok("sync")
    # As if the daemon had been down for 50 hours since its last pass.
    [(checkpoint,)] = s.query("SELECT checkpoint FROM sync_checkpoints")
    stale = checkpoint - timedelta(hours=50)
    s.execute("UPDATE sync_checkpoints SET checkpoint = ?", [stale])
    s.execute("UPDATE sync_windows SET fetched_at = fetched_at - INTERVAL 50 HOUR")
    s.sim.sim.advance(60)
    s.sim.sim.mutate(100)
    before = len(s.sim.sim.requests)
    result = s.ok("sync")
    assert "all: catchup," in summary(result)
    requests = s.sim.sim.requests[before:]
    assert requests and all("modified_since" not in r.params for r in requests)
    s.assert_converged()
    [(checkpoint,)] = s.query("SELECT checkpoint FROM sync_checkpoints")
    assert checkpoint > stale + timedelta(hours=49)
    assert "incremental" in summary(s.ok("sync"))


def test_backfill_killed_mid_way_resumes_and_loses_nothing(site: SiteFactory) -> None:
    s = site(records=20_000, days=40, latency=0.1)
    start = format_instant(s.sim.sim.now() - timedelta(days=41))
    end = format_instant(s.sim.sim.now() + timedelta(hours=1))
    code = kill_after_commits(s, ("backfill", "--start", start, "--end", end), commits=10)
    assert code == -signal.SIGKILL
    committed = s.query("SELECT window_start, window_end FROM sync_windows")
    assert 10 <= len(committed) < 42  # killed after its 10th commit, before its last
    before = len(s.sim.sim.requests)
    rerun = s.ok("backfill", "--start", start, "--end", end)
    assert "backfill" in summary(rerun)
    # Resumed: no window the killed run committed is read again, but for the last one,
    # whose end the server's clock has moved (the ledger's pruning folds such rows, so
    # counting rows before and after says nothing; the requests themselves do).
    again = [r.params for r in s.sim.sim.requests[before:] if inside_read(r, committed)]
    assert len(again) <= 1, again
    s.assert_converged()
    assert s.query("SELECT count(*) = count(DISTINCT id) FROM rcs_records") == [(True,)]
    # A first `sync` afterwards reuses the backfilled windows instead of reading them again.
    before = len(s.sim.sim.requests)
    s.ok("sync")
    assert len(s.sim.sim.requests) - before <= 2


@pytest.mark.any_kind
def test_one_incremental_pass_brings_the_newest_records_of_a_server_15_min_ahead(
    site: SiteFactory,
) -> None:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=15)
    s = site(records=3_000, days=4, start_time=start, arrival_rate=0.2)
    s.ok("sync")  # the backfill reads up to our now + clock_skew (5 min), no further
    assert not compare(s).ok, "the server's newest 10 minutes should still be missing"
    s.sim.sim.advance(60)
    s.sim.sim.mutate(30)
    server_now = s.sim.sim.now()
    before = len(s.sim.sim.requests)
    result = s.ok("sync")
    assert "incremental, 1 windows" in summary(result)
    [request] = s.sim.sim.requests[before:]
    assert datetime.fromisoformat(request.params["end"]) > server_now
    assert compare(s).ok, compare(s)
    [(newest,)] = s.query("SELECT max(timestamp) FROM rcs_records")
    assert newest > server_now - timedelta(seconds=60)
    # The checkpoint is the server's time of the request, committed with its data.
    [(checkpoint,)] = s.query("SELECT checkpoint FROM sync_checkpoints")
    assert server_now - timedelta(seconds=2) <= checkpoint <= server_now


@pytest.mark.any_kind
def test_token_rejected_exits_3_with_one_line(site: SiteFactory) -> None:
    s = site(records=100)
    result = s.run("sync", env=s.env(RCS_SYNC_TOKEN="wrong-token-123"))
    assert result.returncode == 3
    assert terminal_line(result.stderr) == (
        f"rcs-sync: error: token rejected by 127.0.0.1:{s.sim.port} (HTTP 403)"
    )
    # Logged once, as `token_rejected`, with its priority: not again as plain text.
    lines = log_lines(result.stderr)
    assert [e["event"] for e in lines if "token rejected" in str(e.get("error"))] == [
        "token_rejected"
    ]
    assert result.stderr.splitlines()[-1].startswith("<3>")
    assert "Traceback" not in result.stderr
    assert "wrong-token-123" not in result.stderr + result.stdout


def test_bad_request_exits_4_and_keeps_the_checkpoint(site: SiteFactory) -> None:
    s = site(records=500)
    s.ok("sync")
    # Just young enough for us, already too old for a server whose clock runs ahead.
    near_limit = datetime.now(UTC) - timedelta(hours=47, minutes=45)
    s.execute("UPDATE sync_checkpoints SET checkpoint = ?", [near_limit])
    s.sim.sim.advance(3600)
    result = s.run("sync")
    assert result.returncode == 4, result.stderr
    assert "refused the request (HTTP 400)" in terminal_line(result.stderr)
    assert s.query("SELECT checkpoint FROM sync_checkpoints") == [(near_limit,)]
    [(status, error)] = s.query("SELECT status, error FROM sync_runs ORDER BY run_id DESC LIMIT 1")
    assert status == "failed" and "HTTP 400" in error


def test_api_failing_past_the_retry_budget_exits_4_and_keeps_committed_work(
    site: SiteFactory,
) -> None:
    s = site(records=2_000)
    s.write_config(api={"retry_budget": "1s", "backoff_initial": "10ms"})
    s.ok("sync")
    [(checkpoint,)] = s.query("SELECT checkpoint FROM sync_checkpoints")
    s.sim.sim.advance(120)
    s.sim.sim.mutate(30)
    s.sim.sim.update_config(fault_rate=1.0, faults=("500", "503"))
    result = s.run("sync")
    assert result.returncode == 4
    assert "still failing after retries" in terminal_line(result.stderr)
    assert s.query("SELECT checkpoint FROM sync_checkpoints") == [(checkpoint,)]
    s.sim.sim.update_config(fault_rate=0.0)
    s.ok("sync")
    s.assert_converged()


@pytest.mark.any_kind
def test_fault_storm_with_state_changes_converges_exactly(site: SiteFactory) -> None:
    """The bar: >= 200k records over >= 30 windows plus 3 incremental passes, 10 % faults."""
    s = site(
        records=210_000,
        days=32,
        fault_rate=0.10,
        faults=("429", "500", "503", "drop", "truncate", "html", "reset"),
        seed=7,
    )
    first, expected = first_backfill(s)
    assert any(e in summary(first) for e in expected), (expected, summary(first))
    assert any(r.fault for r in s.sim.sim.requests), "the storm injected no fault"
    s.assert_converged()
    for _ in range(3):
        s.sim.sim.advance(240)
        s.sim.sim.mutate(500)
        assert "incremental" in summary(s.ok("sync"))
        s.assert_converged()
    assert sum(1 for r in s.sim.sim.requests if r.fault) >= 3


@pytest.mark.any_kind
def test_malformed_records_are_quarantined_and_valid_ones_converge(site: SiteFactory) -> None:
    s = site(records=5_000, bad_fraction=0.03, extra_fields=True)
    result = s.ok("sync")
    s.assert_converged()
    bad = s.sim.sim.bad_ids()
    assert bad
    quarantined = {
        int(r)
        for (r,) in s.query("SELECT record_id FROM rcs_quarantine")
        if r and r.lstrip("-").isdigit()
    }
    assert quarantined <= bad | set(s.sim.sim.truth())
    [(distinct, total)] = s.query("SELECT count(DISTINCT raw), count(*) FROM rcs_quarantine")
    assert distinct >= len(bad)
    assert f", {total} quarantined," in summary(result)
    [(with_extra,)] = s.query("SELECT count(*) FROM rcs_records WHERE extra IS NOT NULL")
    assert with_extra > 0


def test_truncating_server_makes_windows_split_until_nothing_is_lost(site: SiteFactory) -> None:
    s = site(records=6_000, days=6, truncate_at=300, api={"server_limit": 300})
    result = s.ok("sync")
    s.assert_converged()
    assert any(r.records >= 300 for r in s.sim.sim.requests)
    assert any(e["event"] == "window_split" for e in log_lines(result.stderr))


@pytest.mark.duckdb_only
def test_a_reader_holding_the_file_delays_a_pass_or_fails_it_with_exit_5(
    site: SiteFactory,
) -> None:
    s = site(records=500)
    s.ok("sync")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\n"
            f"con = duckdb.connect({str(s.db)!r}, read_only=True)\n"
            "print('held', flush=True)\n"
            "time.sleep(float(sys.argv[1]))\n",
            "4",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    s.write_config(warehouse={"lock_timeout": "1s"})
    result = s.run("sync")
    assert result.returncode == 5, result.stderr
    assert "locked by another process" in terminal_line(result.stderr)
    assert f"PID {holder.pid}" in result.stderr
    s.write_config(warehouse={"lock_timeout": "30s"})
    s.sim.sim.mutate(10)
    s.ok("sync")  # waits for the reader to let go
    holder.wait(timeout=10)
    s.assert_converged()
    # The pass that never got the file is a run too, written by the next one that did.
    [(status, kind, error)] = s.query(
        "SELECT status, error_kind, error FROM sync_runs WHERE status <> 'ok'"
    )
    assert (status, kind) == ("failed", "warehouse")
    assert "locked by another process" in error
    assert not list(s.dir.glob(".rcs.duckdb.runs/*.json"))


@pytest.mark.any_kind
def test_teams_are_synced_as_separate_scopes(site: SiteFactory) -> None:
    s = site(records=3_000, teams=3)
    s.write_config(api={"teams": [1, 3], "include_content": True})
    result = s.ok("sync")
    assert result.stdout.count("backfill") == 2
    truth = {i: st for i, st in s.sim.sim.truth().items()}
    teams = dict(s.query("SELECT id, team FROM rcs_records"))
    assert set(teams.values()) == {1, 3}
    assert {i: truth[i] for i in teams} == s.table()
    assert s.query("SELECT count(*) FROM rcs_records WHERE content_message IS NULL") == [(0,)]
    scopes = s.query("SELECT scope FROM sync_checkpoints ORDER BY scope")
    assert scopes == [("1",), ("3",)]


def test_status_reports_checkpoints_windows_and_runs(site: SiteFactory) -> None:
    s = site(records=1_000)
    s.ok("sync")
    s.ok("sync")
    report = json.loads(s.ok("status", "--json").stdout)
    truth = s.sim.sim.truth()
    assert report["records"] == len(truth)
    [counts] = report["streams"]
    assert counts["stream"] == "rcs_records"
    assert counts["records"] == len(truth) and counts["quarantined"] == 0
    meanings = ["sent", "delivered", "failed", "rejected", "read"]
    assert counts["states"] == {m: list(truth.values()).count(i) for i, m in enumerate(meanings)}
    [scope] = report["scopes"]
    assert scope["scope"] == "all"
    assert scope["checkpoint_age_s"] >= 0
    assert len(scope["completed"]) == 1
    assert [r["mode"] for r in scope["last_runs"]] == ["incremental", "backfill"]
    assert all(r["status"] == "ok" for r in scope["last_runs"])
    text = s.ok("status").stdout
    assert "rcs_records / all: checkpoint" in text


@pytest.mark.any_kind
def test_the_token_never_appears_in_any_output(site: SiteFactory) -> None:
    s = site(records=2_000, fault_rate=0.2, faults=("429", "500", "drop"))
    outputs = [s.run("-v", "sync"), s.run("-v", "sync"), s.run("status", "--json")]
    for result in outputs:
        assert result.returncode == 0, result.stderr
        assert TOKEN not in result.stdout + result.stderr
    assert not s.query("SELECT count(*) FROM sync_runs WHERE error LIKE ?", [f"%{TOKEN}%"])[0][0]


@pytest.mark.any_kind
def test_config_errors_exit_2_naming_the_key(site: SiteFactory) -> None:
    s = site(records=10)
    s.write_config(sync={"window": "soon"})
    result = s.run("sync")
    assert result.returncode == 2
    assert terminal_line(result.stderr).startswith("rcs-sync: config: [sync] window:")
    assert len(result.stderr.strip().splitlines()) == 1
    bad_cli = s.run("backfill", "--start", "yesterday", "--end", "2026-01-01")
    assert bad_cli.returncode == 2
    assert "Traceback" not in bad_cli.stderr


@pytest.mark.any_kind
def test_an_unknown_stream_is_a_config_error_naming_the_key(site: SiteFactory) -> None:
    s = site(records=10)
    s.write_config(sync={"streams": ["emails"]})
    result = s.run("sync")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert terminal_line(result.stderr) == (
        "rcs-sync: config: [sync] streams: unknown stream 'emails'; known: rcs_records, "
        "text_records, voicemail_drop_records, call_records, teams"
    )
    assert not s.db.exists()


@pytest.mark.any_kind
@pytest.mark.parametrize(
    ("layout", "gzipped", "content"),
    [("compact", True, False), ("pretty", False, True), ("lines", True, True)],
)
def test_every_body_layout_and_encoding_loads_exactly_the_records_served(
    site: SiteFactory, layout: str, gzipped: bool, content: bool
) -> None:
    """The default concurrency, bodies compact, indented or one record per line, gzip
    or not: the warehouse ends up holding what the server holds."""
    s = site(records=4_000, days=6, format=layout, gzip=gzipped, api={"include_content": content})
    s.ok("sync")
    s.assert_converged()
    [(with_content,)] = s.query(
        "SELECT count(*) FROM rcs_records WHERE content_message IS NOT NULL"
    )
    assert (with_content > 0) == content


@pytest.mark.any_kind
def test_a_wrong_base_url_fails_within_15s_with_one_line_naming_it(site: SiteFactory) -> None:
    s = site(records=10)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    s.write_config(api={"base_url": f"http://127.0.0.1:{port}", "retry_budget": "120s"})
    for command in (("sync",), ("backfill", "--start", "2026-01-01", "--end", "2026-01-03")):
        began = time.monotonic()
        result = s.run(*command)
        assert result.returncode == 4, result.stderr[-2000:]
        assert time.monotonic() - began < 15
        naming = [e for e in log_lines(result.stderr) if "[api] base_url" in str(e.get("error"))]
        assert len(naming) == 1, result.stderr
        assert terminal_line(result.stderr) == (
            f"rcs-sync: error: cannot connect to [api] base_url http://127.0.0.1:{port}: "
            "connection failed (ConnectionError: connection refused)"
        )
        assert "api_retry" not in result.stderr
