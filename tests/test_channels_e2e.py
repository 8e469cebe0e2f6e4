"""The provider's sibling streams (SMS, voicemail drops, calls, teams), synced by the real
CLI over real HTTP from the simulator's descriptions of them.

None of the record endpoints takes `modified_since`: their incremental passes are tiered
re-reads of the update horizon (`rcs_sync/model/reread.py`), tested here with a moved
clock (the ledger's fetch times moved back, as the catch-up tests do).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import requests

from rcs_sim.endpoints import sibling
from rcs_sim.server import spawn
from rcs_sync.model.reread import DEFAULT_BUDGET, DEFAULT_CELL, budget_cells
from tests.adversarial_helpers import signal_pass
from tests.conftest import TOKEN, Site

pytestmark = pytest.mark.kinds

SiteFactory = Callable[..., Site]
SMS = "/j/text_records"


def channel_site(site: SiteFactory, streams: list[str], records: int = 1_500, **kw: Any) -> Site:
    endpoints = tuple(
        sibling(name, records=records, days=3)
        for name in streams
        if name not in ("teams",)
        if name != "rcs_records"
    )
    return site(
        sync={"streams": streams},
        endpoints=endpoints,
        serve_teams="teams" in streams,
        records=300,
        days=3,
        **kw,
    )


def stored(s: Site, table: str, state: str = "state") -> dict[int, int]:
    rows = s.query(f"SELECT id, {state} FROM {table}")
    assert len(rows) == len(dict(rows)), "a record is stored twice"
    return dict(rows)


def requests_to(s: Site, path: str, since: int = 0) -> list[Any]:
    return [r for r in s.sim.sim.requests[since:] if r.path == path]


def drain(s: Site, budget: float = DEFAULT_BUDGET) -> None:
    """The passes that read a horizon all due (`age_ledger`): at most `budget_cells` of
    its cells a pass beyond the must-reads, so ceil(N / B) passes for its N cells (one
    with `[streams.text_records] reread_budget = 1`, `whole_horizon`)."""
    horizon = timedelta(days=int(s.sim.sim.config.days) + 2)  # Site's update_horizon
    cells = horizon // DEFAULT_CELL + 1  # and the cell in progress
    for _ in range(-(-cells // budget_cells(horizon, DEFAULT_CELL, budget))):
        s.ok("sync")


def whole_horizon(s: Site) -> float:
    """Let a pass re-read every due cell of the SMS horizon (one pass then drains it);
    the budget set, for `drain`."""
    s.write_config(**{"streams.text_records": {"reread_budget": 1.0}})
    return 1.0


def age_ledger(s: Site, stream: str, hours: float) -> None:
    """As if every window of `stream` had been read `hours` earlier than it was."""
    s.execute(
        "UPDATE sync_windows SET fetched_at = fetched_at - to_seconds(?) WHERE stream = ?",
        [hours * 3600, stream],
    )


def test_every_sibling_stream_backfills_and_teams_are_a_dimension(site: SiteFactory) -> None:
    streams = ["text_records", "voicemail_drop_records", "call_records", "teams"]
    s = channel_site(site, streams, records=800)

    result = s.ok("sync")

    assert [line.split(",")[0] for line in result.stdout.strip().splitlines()] == [
        "text_records/all: backfill",
        "voicemail_drop_records/all: backfill",
        "call_records/all: backfill",
        "teams/all: replace",
    ], result.stdout
    sim = s.sim.sim
    assert stored(s, "text_records") == sim.endpoint_truth(SMS)
    assert stored(s, "voicemail_drop_records") == sim.endpoint_truth("/j/voicemail_drop_records")
    assert stored(s, "call_records", "error") == sim.endpoint_truth("/j/call_records")
    assert all("modified_since" not in r.params for r in sim.requests)
    for table in ("text_quarantine", "voicemail_drop_quarantine", "call_quarantine"):
        assert s.query(f"SELECT count(*) FROM {table}") == [(0,)], table
    [(directions,)] = s.query(
        "SELECT list(DISTINCT direction ORDER BY direction) FROM call_records"
    )
    assert directions == ["incoming", "outgoing"]
    assert s.query("SELECT min(talk_duration) >= 0, max(error) <= 10 FROM call_records") == [
        (True, True)
    ]
    assert s.query("SELECT id, name FROM teams ORDER BY id") == [
        (1, "Team 1"),
        (2, "Team 2"),
        (3, "Team 3"),
    ]

    # teams: replaced whole on every pass, in one transaction.
    sim.team_names[2] = "Renamed"
    del sim.team_names[3]
    sim.team_names[9] = "New"
    second = s.ok("sync")
    assert "text_records/all: incremental" in second.stdout
    assert s.query("SELECT id, name FROM teams ORDER BY id") == [
        (1, "Team 1"),
        (2, "Renamed"),
        (9, "New"),
    ]
    [teams_request] = requests_to(s, "/j/teams", len(sim.requests) - 4)
    assert set(teams_request.params) == {"start", "end"}

    by_team = s.ok("report", "--channel", "sms", "--by", "team", "--format", "json").stdout
    names = {r["team"]: r["team_name"] for r in json.loads(by_team)}
    assert names == {1: "Team 1", 2: "Renamed", 3: None}  # team 3 no longer listed
    [(sms_names,)] = s.query(
        "SELECT list(DISTINCT team_name ORDER BY team_name) FROM message_rates_daily "
        "WHERE channel = 'sms'"
    )
    assert sms_names == ["Renamed", "Team 1", None]
    [(voicemail,)] = s.query(
        "SELECT sum(messages) FROM message_rates_daily WHERE channel = 'voicemail'"
    )
    assert voicemail == len(sim.endpoint_truth("/j/voicemail_drop_records"))
    [(calls,)] = s.query("SELECT sum(calls) FROM call_outcomes_daily")
    assert calls == len(sim.endpoint_truth("/j/call_records"))

    # The analysts' snapshot (a lake's readers attach the lake) holds the new tables
    # and the views across channels.
    s.ok("sync", "--publish-snapshot")
    snapshot = s.dir / "rcs.snapshot.duckdb"
    with (
        duckdb.connect(str(snapshot), read_only=True)
        if s.catalog is None
        else s.connect(read_only=True)
    ) as con:
        channels = con.execute(
            "SELECT channel, sum(messages) FROM message_rates_daily GROUP BY ALL ORDER BY 1"
        ).fetchall()
        [(snapshot_calls,)] = con.execute("SELECT sum(calls) FROM call_outcomes_daily").fetchall()
    assert dict(channels) == {
        "sms": len(sim.endpoint_truth(SMS)),
        "voicemail": len(sim.endpoint_truth("/j/voicemail_drop_records")),
    }
    assert snapshot_calls == calls

    report = json.loads(s.ok("status", "--json").stdout)
    by_stream = {e["stream"]: e for e in report["streams"]}
    assert by_stream["text_records"]["records"] == len(sim.endpoint_truth(SMS))
    assert by_stream["teams"]["records"] == 3


@pytest.mark.any_kind
def test_sms_changes_are_seen_within_the_tier_bound_never_with_modified_since(
    site: SiteFactory,
) -> None:
    s = channel_site(site, ["text_records", "rcs_records"])
    sim = s.sim.sim
    s.ok("sync")
    assert stored(s, "text_records") == sim.endpoint_truth(SMS)
    total = len(sim.endpoint_truth(SMS))

    # A pass a few minutes later re-reads the recent cells only, and sees a change to
    # a record of the last half hour at once (tier "1h": every pass).
    sim.advance(300)
    recent = sim.endpoint_mutate(SMS, 5, newer_than=1800)
    old = sim.endpoint_mutate(SMS, 200)
    before = len(sim.requests)
    result = s.ok("sync")
    assert "text_records/all: incremental" in result.stdout, result.stdout
    reads = requests_to(s, SMS, before)
    assert reads and all("modified_since" not in r.params for r in reads)
    assert sum(r.records for r in reads) <= 0.35 * total
    table = stored(s, "text_records")
    truth = sim.endpoint_truth(SMS)
    assert all(table[k] == truth[k] for k in recent)
    assert any(table[k] != truth[k] for k in old), "old cells should not all be re-read yet"

    # A day on (the ledger moved back by the last tier's `every`): every change is in.
    age_ledger(s, "text_records", 24.1)
    drain(s)
    assert stored(s, "text_records") == sim.endpoint_truth(SMS)
    s.assert_converged()
    [(checkpoint,)] = s.query(
        "SELECT checkpoint FROM sync_checkpoints WHERE stream = 'text_records'"
    )
    assert checkpoint is not None

    # report --channel: each channel's rows from message_rates_daily.
    truth = sim.endpoint_truth(SMS)
    sms = json.loads(s.ok("report", "--channel", "sms", "--by", "team", "--format", "json").stdout)
    assert sum(r["messages"] for r in sms) == len(truth)
    assert sum(r["delivered"] for r in sms) == sum(1 for v in truth.values() if v == 1)
    assert all(r["read_rate"] is None and r["read"] == 0 for r in sms)
    rcs = json.loads(s.ok("report", "--channel", "rcs", "--format", "json").stdout)
    plain = json.loads(s.ok("report", "--format", "json").stdout)
    assert rcs == plain  # the RCS channel is rcs_rates_daily's counts
    refused = s.run("report", "--channel", "voicemail")
    assert refused.returncode == 2 and "voicemail_drop_records" in refused.stderr


@pytest.mark.any_kind
def test_the_simulator_refuses_modified_since_where_it_is_not_supported(
    site: SiteFactory,
) -> None:
    s = channel_site(site, ["text_records", "call_records"], records=10)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    span = {"start": "2026-01-01T00:00:00Z", "end": "2027-01-01T00:00:00Z"}
    base = s.sim.base_url
    for path in (SMS, "/j/call_records"):
        ok = requests.get(base + path, params=span, headers=headers, timeout=10)
        assert ok.status_code == 200 and len(ok.json()) == 10
        since = {**span, "modified_since": "2026-01-01T00:00:00Z"}
        refused = requests.get(base + path, params=since, headers=headers, timeout=10)
        assert refused.status_code == 400, path
    body = requests.get(base + SMS, params={**span, "include": "body"}, headers=headers, timeout=10)
    assert all("body" in r for r in body.json())
    plain = requests.get(base + SMS, params=span, headers=headers, timeout=10)
    assert all("body" not in r for r in plain.json())


@pytest.mark.any_kind
def test_a_killed_sms_reread_resumes_to_exactly_the_providers_records(
    site: SiteFactory,
) -> None:
    s = channel_site(site, ["text_records"], records=600, latency=0.1)
    sim = s.sim.sim
    s.ok("sync")
    age_ledger(s, "text_records", 24.1)  # every cell of the horizon is due
    sim.advance(60)
    sim.endpoint_mutate(SMS, 100)

    budget = whole_horizon(s)
    code = signal_pass(s, ("sync",), after_requests=8, delay=0.05)

    assert code == -signal.SIGKILL
    rerun = s.ok("sync")
    assert rerun.stdout.startswith("all: incremental"), rerun.stdout
    drain(s, budget)
    assert stored(s, "text_records") == sim.endpoint_truth(SMS)
    once = "SELECT count(*) = count(DISTINCT id) FROM text_records"
    assert s.query(once) == [(True,)]
    assert all("modified_since" not in r.params for r in sim.requests)


@pytest.mark.any_kind
def test_sms_under_faults_and_every_bounds_semantics_converges(site: SiteFactory) -> None:
    """Faults (429, 5xx, dropped connections, truncated and HTML bodies) and inclusive
    bounds on a stream without modified_since: backfill and tiered re-reads still end
    with exactly the provider's records."""
    s = channel_site(
        site,
        ["text_records"],
        records=1_200,
        fault_rate=0.3,
        faults=("429", "500", "503", "drop", "truncate", "html"),
        bounds="[]",
    )
    sim = s.sim.sim
    s.ok("sync")
    assert stored(s, "text_records") == sim.endpoint_truth(SMS)
    sim.advance(120)
    sim.endpoint_mutate(SMS, 150)
    age_ledger(s, "text_records", 24.1)
    drain(s, whole_horizon(s))
    assert stored(s, "text_records") == sim.endpoint_truth(SMS)
    assert s.query("SELECT count(*) FROM text_quarantine") == [(0,)]
    assert any(r.fault for r in sim.requests), "no fault was injected"
    assert all("modified_since" not in r.params for r in sim.requests)


@pytest.mark.any_kind
def test_every_personal_field_of_calls_and_sms_is_hashed(site: SiteFactory, tmp_path: Path) -> None:
    s = channel_site(site, ["text_records", "call_records"], records=300)
    key_file = tmp_path / "number_key"
    key_file.write_text("a-long-random-secret\n")
    key_file.chmod(0o600)
    s.write_config(
        warehouse={"number": "hash", "number_key_file": str(key_file)},
        api={"include_content": True},
    )
    s.ok("sync")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    span = {"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}
    base = s.sim.base_url
    calls = requests.get(base + "/j/call_records", params=span, headers=headers, timeout=10)
    sms = requests.get(base + SMS, params={**span, "include": "body"}, headers=headers, timeout=10)
    served = {
        ("call_records", field, r["id"]): r[field]
        for r in calls.json()
        for field in ("number", "local_number")
    } | {
        ("text_records", field, r["id"]): r[field]
        for r in sms.json()
        for field in ("number", "body")
    }
    for (table, field, key), raw in list(served.items())[::37]:
        [(value,)] = s.query(f"SELECT {field} FROM {table} WHERE id = ?", [key])
        expected = hmac.new(b"a-long-random-secret", raw.encode(), hashlib.sha256).hexdigest()
        assert value == expected, (table, field, key)


def test_simulate_streams_serves_the_siblings_and_teams() -> None:
    env = {**os.environ, "RCS_SIM_TOKEN": TOKEN}
    process, base = spawn(
        ["--records", "50", "--days", "1", "--streams", "text_records,teams"], env
    )
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        span = {"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"}
        teams = requests.get(base + "/j/teams", params=span, headers=headers, timeout=10)
        assert teams.json() == [{"id": n, "name": f"Team {n}"} for n in (1, 2, 3)]
        sms = requests.get(base + SMS, params=span, headers=headers, timeout=10).json()
        assert len(sms) == 50
        assert set(sms[0]) == {
            "id",
            "campaign",
            "job",
            "number",
            "reference",
            "team",
            "portal",
            "state",
            "timestamp",
        }
        calls = requests.get(base + "/j/call_records", params=span, headers=headers, timeout=10)
        assert calls.status_code == 404  # not asked for
    finally:
        process.terminate()
        process.wait(timeout=10)
