"""The simulator over real HTTP on 127.0.0.1: API semantics, clock, faults, determinism."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import requests

from rcs_sim.endpoints import Endpoint
from rcs_sim.server import RunningSimulator, SimConfig, Simulator

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
AUTH = {"Authorization": "Bearer sim-token"}
FIELDS = {"campaign", "id", "job", "number", "portal", "reference", "state", "team", "timestamp"}

MakeSim = Callable[..., RunningSimulator]


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture
def make_sim(make_sim: MakeSim) -> MakeSim:
    """Small frozen simulators (2,000 records over 2 days) on a fixed clock, default token."""

    def make(**overrides: Any) -> RunningSimulator:
        settings: dict[str, Any] = {
            "records": 2000,
            "days": 2.0,
            "start_time": START,
            "token": SimConfig.token,
        }
        return make_sim(**{**settings, **overrides})

    return make


def get(
    rs: RunningSimulator,
    start: datetime = START - timedelta(days=3),
    end: datetime = START + timedelta(days=1),
    headers: dict[str, str] | None = None,
    timeout: float = 10,
    **params: str,
) -> requests.Response:
    return requests.get(
        f"{rs.base_url}/j/rcs_records",
        params={"start": iso(start), "end": iso(end), **params},
        headers=AUTH if headers is None else headers,
        timeout=timeout,
    )


def states(records: list[dict[str, Any]]) -> dict[int, int]:
    return {r["id"]: r["state"] for r in records}


# --- auth and parameters -------------------------------------------------------------


def test_missing_or_wrong_token_is_403(make_sim: MakeSim) -> None:
    rs = make_sim(records=50)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic sim-token"}):
        response = get(rs, headers=headers)
        assert response.status_code == 403
        assert response.headers["Content-Type"] == "application/json"
        assert "error" in response.json()
    assert get(rs, headers={"Authorization": "bearer sim-token"}).status_code == 200


def test_request_log_never_holds_the_token(make_sim: MakeSim) -> None:
    rs = make_sim(records=50)
    get(rs, access_token="sim-token")
    (entry,) = rs.sim.requests
    assert "sim-token" not in json.dumps(entry.to_json())
    assert entry.status == 200
    assert entry.server_time == START
    assert set(entry.params) == {"start", "end"}


@pytest.mark.parametrize(
    "params",
    [
        {"end": "2026-03-01T00:00:00Z"},
        {"start": "2026-03-01T00:00:00Z"},
        {"start": "yesterday", "end": "2026-03-01T00:00:00Z"},
        {"start": "2026-03-01T00:00:00Z", "end": "2026-02-28T00:00:00Z"},
        {"start": "2026-02-28T00:00:00Z", "end": "2026-03-01T00:00:00Z", "team": "one"},
        {"start": "2026-02-28T00:00:00Z", "end": "2026-03-01T00:00:00Z", "include": "body"},
        # modified_since must lie within the 48 hours before the server clock
        {
            "start": "2026-02-28T00:00:00Z",
            "end": "2026-03-01T00:00:00Z",
            "modified_since": "2026-02-27T11:59:59Z",
        },
        {
            "start": "2026-02-28T00:00:00Z",
            "end": "2026-03-01T00:00:00Z",
            "modified_since": "2026-03-01T12:00:01Z",
        },
    ],
)
def test_bad_parameters_are_400(make_sim: MakeSim, params: dict[str, str]) -> None:
    rs = make_sim(records=50)
    response = requests.get(f"{rs.base_url}/j/rcs_records", params=params, headers=AUTH, timeout=5)
    assert response.status_code == 400
    assert "error" in response.json()


def test_datetime_forms_are_equivalent(make_sim: MakeSim) -> None:
    rs = make_sim(records=500)
    forms = [
        ("2026-02-28T06:00:00Z", "2026-03-01T06:00:00Z", "2026-02-28T12:00:00Z"),
        ("2026-02-28T07:00:00+01:00", "2026-03-01T07:00:00+01:00", "2026-02-28T13:00:00+01:00"),
        ("2026-02-28T06:00:00.000Z", "2026-03-01T06:00:00.000000Z", "2026-02-28T12:00:00.0Z"),
    ]
    bodies = set()
    for start, end, since in forms:
        params = {"start": start, "end": end, "modified_since": since}
        response = requests.get(f"{rs.base_url}/j/rcs_records", params=params, headers=AUTH)
        assert response.status_code == 200
        bodies.add(response.content)
    assert len(bodies) == 1


# --- response shape --------------------------------------------------------------------


def test_response_shape_headers_and_both_timestamp_forms(make_sim: MakeSim) -> None:
    rs = make_sim()
    response = get(rs)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert int(response.headers["Content-Length"]) == len(response.content)
    assert parsedate_to_datetime(response.headers["Date"]) == START
    records = response.json()
    assert len(records) == 2000
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    for record in records:
        assert set(record) == FIELDS
        assert record["state"] in range(5)
        assert record["number"].startswith("+")
        assert record["portal"] is None or isinstance(record["portal"], str)
        assert record["team"] in (1, 2, 3)
        assert parse_ts(record["timestamp"]) <= START
    stamps = [r["timestamp"] for r in records]
    assert any(len(s) == len("2026-03-01T10:21:14.243Z") for s in stamps)
    assert any(len(s) == len("2026-03-01T10:21:14Z") for s in stamps)
    assert {r["state"] for r in records} == {0, 1, 2, 3, 4}


def test_empty_window_is_an_empty_array(make_sim: MakeSim) -> None:
    rs = make_sim(records=50)
    response = get(rs, start=START + timedelta(hours=1), end=START + timedelta(hours=2))
    assert response.content == b"[]"


def test_team_filter(make_sim: MakeSim) -> None:
    rs = make_sim(teams=4)
    everything = get(rs).json()
    team_2 = get(rs, team="2").json()
    assert team_2 == [r for r in everything if r["team"] == 2]
    assert 0 < len(team_2) < len(everything)


def test_include_content_message(make_sim: MakeSim) -> None:
    rs = make_sim(records=200)
    plain = get(rs).json()
    with_content = get(rs, include="content_message").json()
    assert all("content_message" not in r for r in plain)
    assert all(isinstance(r["content_message"], str) for r in with_content)
    assert [{k: v for k, v in r.items() if k != "content_message"} for r in with_content] == plain
    assert any('"STOP"' in r["content_message"] for r in with_content)


def test_extra_fields(make_sim: MakeSim) -> None:
    rs = make_sim(extra_fields=True)
    records = get(rs).json()
    extra = [r for r in records if set(r) != FIELDS]
    assert extra
    assert all(set(r) == {*FIELDS, "channel"} and r["channel"] == "rcs" for r in extra)
    assert len(extra) < len(records) / 4


@pytest.mark.parametrize(
    ("bounds", "start_included", "end_included"),
    [("[)", True, False), ("[]", True, True), ("()", False, False), ("(]", False, True)],
)
def test_bounds_on_a_record_exactly_at_the_boundary(
    make_sim: MakeSim, bounds: str, start_included: bool, end_included: bool
) -> None:
    rs = make_sim(records=300, bounds=bounds)
    record = next(r for r in get(rs).json() if "." not in r["timestamp"])
    moment = parse_ts(record["timestamp"])
    after = get(rs, start=moment, end=moment + timedelta(minutes=1)).json()
    before = get(rs, start=moment - timedelta(minutes=1), end=moment).json()
    assert (record["id"] in {r["id"] for r in after}) is start_included
    assert (record["id"] in {r["id"] for r in before}) is end_included


def test_truncate_at_silently_returns_the_first_records(make_sim: MakeSim) -> None:
    rs = make_sim(records=500)
    full = get(rs).json()
    rs.sim.update_config(truncate_at=123)
    response = get(rs)
    assert response.status_code == 200
    assert response.json() == full[:123]


# --- the clock, evolving states, modified_since ------------------------------------------


def test_states_evolve_and_modified_since_returns_exactly_the_changes(make_sim: MakeSim) -> None:
    rs = make_sim(records=3000, days=1.0, arrival_rate=0.5)
    before = states(get(rs).json())
    assert get(rs, modified_since=iso(START)).json() == []  # strictly after

    rs.sim.advance(1800)
    after = states(get(rs).json())
    changed = get(rs, modified_since=iso(START)).json()
    new = set(after) - set(before)
    moved = {i for i in before if after[i] != before[i]}
    assert 800 <= len(new) <= 1000  # 0.5 arrivals per second for 30 minutes
    assert moved
    assert all(before[i] in (0, 1) and after[i] != 0 for i in moved)  # forward only
    assert {r["id"] for r in changed} == new | moved


def test_mutations_are_seen_by_modified_since(make_sim: MakeSim) -> None:
    rs = make_sim()
    before = rs.sim.truth()
    rs.sim.advance(5)
    checkpoint = rs.sim.now()
    rs.sim.advance(5)
    mutated = rs.sim.mutate(25)
    assert len(mutated) == 25
    truth = rs.sim.truth()
    assert all(truth[i] != before[i] for i in mutated)
    changed = states(get(rs, modified_since=iso(checkpoint)).json())
    assert set(mutated) <= set(changed)
    assert all(changed[i] == truth[i] for i in mutated)


def test_advance_needs_a_frozen_clock() -> None:
    sim = Simulator(SimConfig(records=10))
    try:
        with pytest.raises(RuntimeError):
            sim.advance(1)
    finally:
        sim.close()


def test_running_clock_includes_the_offset(make_sim: MakeSim) -> None:
    rs = make_sim(records=10, frozen=False, start_time=None, clock_offset=3600)
    date = parsedate_to_datetime(get(rs).headers["Date"])
    skew = (date - datetime.now(UTC)).total_seconds()
    assert 3598 <= skew <= 3601
    first = rs.sim.now()
    time.sleep(0.05)
    assert rs.sim.now() - first >= timedelta(seconds=0.05)


def test_arrivals_become_visible_as_the_clock_moves(make_sim: MakeSim) -> None:
    rs = make_sim(records=100, arrival_rate=2.0, future_hours=1.0)
    assert len(rs.sim.truth()) == 100
    rs.sim.advance(60)
    assert 215 <= len(rs.sim.truth()) <= 225
    latest = max(parse_ts(r["timestamp"]) for r in get(rs, end=START + timedelta(hours=2)).json())
    assert START < latest <= START + timedelta(seconds=60)


# --- truth, bad records, determinism -----------------------------------------------------


def is_valid(record: dict[str, Any]) -> bool:
    try:
        parse_ts(record["timestamp"])
    except (KeyError, TypeError, ValueError):
        return False
    return (
        type(record.get("id")) is int
        and type(record.get("campaign")) is int
        and type(record.get("state")) is int
        and record["state"] in range(5)
        and isinstance(record.get("number"), str)
    )


def test_truth_agrees_with_a_full_fetch_and_the_control_endpoint(make_sim: MakeSim) -> None:
    rs = make_sim(bad_fraction=0.1)
    rs.sim.advance(600)
    rs.sim.mutate(10)
    fetched = get(rs, end=START + timedelta(days=2)).json()
    valid = [r for r in fetched if is_valid(r)]
    assert states(valid) == rs.sim.truth()
    control = requests.get(f"{rs.base_url}/_sim/truth", timeout=5).json()
    assert control["now"] == iso(START + timedelta(seconds=600))
    assert {i: s for i, s in control["records"]} == rs.sim.truth()
    assert set(control["bad_ids"]) == rs.sim.bad_ids()


def test_bad_records_are_varied_well_formed_json_and_listed_in_bad_ids(make_sim: MakeSim) -> None:
    rs = make_sim(bad_fraction=0.2)
    records = get(rs).json()  # the whole body still parses
    bad = [r for r in records if not is_valid(r)]
    bad_ids = rs.sim.bad_ids()
    assert len(bad) == len(bad_ids)
    assert 300 <= len(bad) <= 500
    assert not bad_ids & set(rs.sim.truth())
    assert {int(r["id"]) for r in bad if "id" in r} <= bad_ids
    kinds = {
        "missing id": any("id" not in r for r in bad),
        "id as string": any(isinstance(r.get("id"), str) for r in bad),
        "state 9": any(r.get("state") == 9 for r in bad),
        "state as string": any(isinstance(r.get("state"), str) for r in bad),
        "campaign as string": any(isinstance(r.get("campaign"), str) for r in bad),
        "number as int": any(isinstance(r.get("number"), int) for r in bad),
        "bad timestamp": any("/" in r["timestamp"] for r in bad),
    }
    assert all(kinds.values()), kinds
    narrow = get(rs, start=START - timedelta(hours=6), end=START).json()  # same records bad
    assert {int(r["id"]) for r in narrow if "id" in r and not is_valid(r)} <= bad_ids


def test_same_seed_same_bytes(make_sim: MakeSim) -> None:
    settings = {"bad_fraction": 0.05, "extra_fields": True, "arrival_rate": 0.2}
    first, second = make_sim(**settings), make_sim(**settings)
    other = make_sim(seed=2, **settings)
    for rs in (first, second, other):
        rs.sim.advance(120)
        rs.sim.mutate(7)
    bodies = [get(rs, include="content_message").content for rs in (first, second, other)]
    assert bodies[0] == bodies[1]
    assert bodies[0] != bodies[2]


# --- faults -----------------------------------------------------------------------------


def faulty(make_sim: MakeSim, kind: str, **overrides: Any) -> RunningSimulator:
    return make_sim(records=2000, fault_rate=1.0, faults=(kind,), **overrides)


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors(make_sim: MakeSim, status: int) -> None:
    rs = faulty(make_sim, str(status))
    response = get(rs)
    assert response.status_code == status
    assert rs.sim.requests[-1].fault == str(status)


def test_429_with_retry_after_in_both_forms(make_sim: MakeSim) -> None:
    rs = faulty(make_sim, "429")
    retry_after = set()
    with requests.Session() as session:
        for _ in range(15):
            response = session.get(
                f"{rs.base_url}/j/rcs_records",
                params={"start": iso(START - timedelta(days=1)), "end": iso(START)},
                headers=AUTH,
            )
            assert response.status_code == 429
            retry_after.add(response.headers["Retry-After"])
    assert "1" in retry_after
    dates = [parsedate_to_datetime(value) for value in retry_after - {"1"}]
    assert dates
    assert all(START < date <= START + timedelta(seconds=2) for date in dates)


def test_drop_closes_without_a_response(make_sim: MakeSim) -> None:
    rs = faulty(make_sim, "drop")
    with pytest.raises(requests.ConnectionError):
        get(rs)
    assert rs.sim.requests[-1].status is None


def test_truncate_serves_an_incomplete_array(make_sim: MakeSim) -> None:
    rs = faulty(make_sim, "truncate")
    response = get(rs)
    assert response.status_code == 200
    assert "Content-Length" not in response.headers
    assert response.content.startswith(b"[{")
    with pytest.raises(requests.JSONDecodeError):
        response.json()


def test_html_error_page_with_status_200(make_sim: MakeSim) -> None:
    rs = faulty(make_sim, "html")
    response = get(rs)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    with pytest.raises(requests.JSONDecodeError):
        response.json()


def test_reset_mid_body(make_sim: MakeSim) -> None:
    rs = faulty(make_sim, "reset")
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        get(rs).content  # noqa: B018


def test_slow_answers_after_the_client_timeout(make_sim: MakeSim) -> None:
    rs = faulty(make_sim, "slow", slow_seconds=0.4)
    with pytest.raises(requests.exceptions.ReadTimeout):
        get(rs, timeout=0.1)
    began = time.monotonic()
    assert get(rs).status_code == 200
    assert time.monotonic() - began >= 0.4


def test_latency_and_runtime_recovery(make_sim: MakeSim) -> None:
    rs = make_sim(records=100, latency=0.2, fault_rate=1.0, faults=("503",))
    began = time.monotonic()
    assert get(rs).status_code == 503
    assert time.monotonic() - began >= 0.2
    rs.sim.update_config(fault_rate=0.0, latency=0.0)
    assert get(rs).status_code == 200


def test_fault_plan_is_reproducible(make_sim: MakeSim) -> None:
    def kinds(rs: RunningSimulator) -> list[str | None]:
        for _ in range(20):
            with contextlib.suppress(requests.RequestException):
                get(rs, timeout=2)
        return [entry.fault for entry in rs.sim.requests]

    settings = {"records": 100, "fault_rate": 0.5, "faults": ("429", "500", "503", "drop")}
    first = kinds(make_sim(**settings))
    assert first == kinds(make_sim(**settings))
    assert None in first
    assert len(set(first)) >= 4


# --- control endpoints, validation, the CLI entry point -----------------------------------


def test_control_endpoints(make_sim: MakeSim) -> None:
    rs = make_sim(records=200)
    advanced = requests.post(f"{rs.base_url}/_sim/advance?seconds=90", timeout=5)
    assert advanced.json() == {"now": iso(START + timedelta(seconds=90))}
    mutated = requests.post(f"{rs.base_url}/_sim/mutate?count=3", timeout=5).json()["ids"]
    assert len(mutated) == 3
    configured = requests.post(
        f"{rs.base_url}/_sim/config", json={"faults": ["500"], "fault_rate": 1}, timeout=5
    )
    assert configured.status_code == 200
    assert get(rs).status_code == 500
    assert requests.post(f"{rs.base_url}/_sim/config", json={"seed": 3}).status_code == 400
    assert requests.post(f"{rs.base_url}/_sim/config", json={"faults": ["x"]}).status_code == 400
    assert requests.post(f"{rs.base_url}/_sim/advance?seconds=-1").status_code == 400
    log = requests.get(f"{rs.base_url}/_sim/requests", timeout=5).json()
    assert [entry["status"] for entry in log] == [500]
    assert log[0]["server_time"] == iso(START + timedelta(seconds=90))


def test_invalid_configuration_is_rejected() -> None:
    for bad in ({"bounds": "[["}, {"faults": ("teapot",)}, {"fault_rate": 2.0}, {"teams": 0}):
        with pytest.raises(ValueError):
            Simulator(SimConfig(records=1, **bad))


def test_serve_forever_stops_cleanly_on_sigterm() -> None:
    code = (
        "from rcs_sim.server import SimConfig, serve_forever\n"
        "serve_forever(SimConfig(records=100), 0, lambda port: print(port, flush=True))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        truth = requests.get(f"http://127.0.0.1:{port}/_sim/truth", timeout=5).json()
        assert len(truth["records"]) == 100
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()


# --- further endpoints from a description ----------------------------------------------

GADGETS = Endpoint(
    path="/j/gadget_records",
    key="gid",
    time="built_at",
    state="stage",
    states=(3, 5, 6),
    fields=(("label", "string"), ("volts", "integer")),
    records=500,
    days=2.0,
)


def get_gadgets(rs: RunningSimulator, **params: str) -> requests.Response:
    window = {"start": iso(START - timedelta(days=3)), "end": iso(START + timedelta(days=1))}
    return requests.get(
        f"{rs.base_url}{GADGETS.path}", params={**window, **params}, headers=AUTH, timeout=10
    )


def test_a_described_endpoint_serves_its_own_records_beside_rcs(make_sim: MakeSim) -> None:
    rs = make_sim(endpoints=(GADGETS,))
    records = get_gadgets(rs).json()
    assert len(records) == 500
    assert [list(r) for r in records[:1]] == [["gid", "label", "volts", "stage", "built_at"]]
    assert [r["gid"] for r in records] == list(range(1, 501))
    assert {r["stage"] for r in records} == {3, 5, 6}
    assert all(r["label"].startswith("label-") and 0 <= r["volts"] < 1000 for r in records)
    made = [parse_ts(r["built_at"]) for r in records]
    assert all(START - timedelta(days=2) <= t <= START for t in made)
    assert all(r["built_at"][-5] == "." for r in records)  # milliseconds, always
    assert {r["gid"]: r["stage"] for r in records} == rs.sim.endpoint_truth(GADGETS.path)
    assert len(get(rs).json()) == 2000  # RCS is served as before
    assert [r.path for r in rs.sim.requests] == [GADGETS.path, "/j/rcs_records"]


def test_a_described_endpoint_filters_by_time_and_modified_since(make_sim: MakeSim) -> None:
    rs = make_sim(endpoints=(GADGETS,))
    day = {"start": iso(START - timedelta(days=1)), "end": iso(START)}
    in_day = get_gadgets(rs, **day).json()
    assert 200 <= len(in_day) <= 300
    assert all(START - timedelta(days=1) <= parse_ts(r["built_at"]) < START for r in in_day)
    before = rs.sim.endpoint_truth(GADGETS.path)
    rs.sim.advance(60)
    since = iso(rs.sim.now())
    rs.sim.advance(60)
    moved = rs.sim.endpoint_mutate(GADGETS.path, 20)
    after = rs.sim.endpoint_truth(GADGETS.path)
    assert all(after[k] == GADGETS.states[(GADGETS.states.index(before[k]) + 1) % 3] for k in moved)
    changed = get_gadgets(rs, modified_since=since).json()
    assert {r["gid"]: r["stage"] for r in changed} == {k: after[k] for k in moved}


@pytest.mark.parametrize(
    ("params", "status"),
    [({"team": "1"}, 400), ({"include": "content_message"}, 400), ({"start": ""}, 400)],
)
def test_a_described_endpoint_refuses_what_it_does_not_take(
    make_sim: MakeSim, params: dict[str, str], status: int
) -> None:
    rs = make_sim(endpoints=(GADGETS,))
    assert get_gadgets(rs, **params).status_code == status
    missing_token = requests.get(f"{rs.base_url}{GADGETS.path}", timeout=10)
    assert missing_token.status_code == 403


def test_endpoint_descriptions_are_checked() -> None:
    with pytest.raises(ValueError, match="path of its own"):
        Simulator(SimConfig(records=10, endpoints=(GADGETS, GADGETS)))
    with pytest.raises(ValueError, match="field names must differ"):
        Simulator(SimConfig(records=10, endpoints=(replace(GADGETS, state="gid"),)))
