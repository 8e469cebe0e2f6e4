"""The engine in-process: `Syncer` with a real warehouse file and the real `ApiClient`
over a scripted transport (`tests/fake_transport.py`), no network, no subprocess.

Splitting, retry deadlines, budgets and checkpoint coverage are engine logic; here they
are driven request by request and checked against the requests made and the file's
bookkeeping. The end-to-end suites check the same machinery over real HTTP.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from rcs_sync.engine.sync import Listener, Options, Scope, Syncer, sync_all
from rcs_sync.model.durations import format_instant
from rcs_sync.model.errors import (
    ApiUnavailable,
    AuthRejected,
    BadRequest,
    Stopped,
    SuspectedTruncation,
)
from rcs_sync.model.events import Progress
from rcs_sync.model.streams import RCS_RECORDS
from rcs_sync.model.throttle import RECOVER_AFTER, Change, Throttle
from rcs_sync.model.windows import (
    BOUNDARY_PAD,
    SyncPolicy,
    Window,
    checkpoint_after_full_pass,
)
from rcs_sync.source.client import ApiClient, RetryPolicy
from rcs_sync.warehouse.duckdb_file import Warehouse
from tests.fake_transport import Answer, FakeTransport, Reply, Sent, json_reply

TOKEN = "tok-in-process"
BASE_URL = "http://127.0.0.1:9"
"""Never dialled (the fake transport answers); were it, the discard port refuses."""
HORIZON = timedelta(days=10)
OVERLAP = timedelta(minutes=5)
SKEW = timedelta(minutes=5)
DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)
"""`initial_start`: first passes read DAY, its two successors and today, a day each."""
ONE_DAY = Window(DAY, DAY + timedelta(days=1))
FULL = ONE_DAY.span + BOUNDARY_PAD
HALF = ONE_DAY.span / 2 + BOUNDARY_PAD
"""What a request for a day, and for half a day, spans (`Window.request_bounds`)."""


def record(id_: int, at: datetime) -> dict[str, Any]:
    return {"id": id_, "state": 1, "timestamp": format_instant(at), "team": 1}


FIFTEEN = [record(i, DAY + i * timedelta(minutes=90)) for i in range(1, 16)]
"""Seven records in the first half of ONE_DAY, eight in the second."""


@dataclass
class Api:
    """A fake endpoint: the records stamped inside the requested window, at most `limit`
    of them (a server cutting large answers silently), dated by `clock` if set."""

    records: list[dict[str, Any]]
    limit: int | None = None
    clock: Callable[[], datetime] | None = None

    def __call__(self, sent: Sent) -> Reply:
        start, end = bounds(sent)
        inside = [r for r in self.records if start <= datetime.fromisoformat(r["timestamp"]) < end]
        return json_reply(inside[: self.limit], date=self.clock() if self.clock else None)


def bounds(sent: Sent) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(sent.params["start"]), datetime.fromisoformat(sent.params["end"])


def span(sent: Sent) -> timedelta:
    start, end = bounds(sent)
    return end - start


def failing_first(answer: Answer, seconds: float) -> Callable[[Sent], Reply]:
    """A 503 for each window's first `seconds`, then `answer`: a short outage per window."""
    first: dict[tuple[datetime, datetime], float] = {}

    def reply(sent: Sent) -> Reply:
        if sent.at - first.setdefault(bounds(sent), sent.at) < seconds:
            return Reply(503)
        return answer(sent) if callable(answer) else answer

    return reply


@dataclass
class Rig:
    syncer: Syncer
    transport: FakeTransport
    warehouse: Warehouse
    stop: threading.Event
    events: list[Progress] = field(default_factory=list)

    @property
    def sent(self) -> list[Sent]:
        return self.transport.sent

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.warehouse.query(sql)

    def ids(self) -> set[int]:
        return {i for (i,) in self.query("SELECT id FROM rcs_records")}

    def checkpoint(self) -> datetime | None:
        return self.warehouse.checkpoint(RCS_RECORDS, "all")

    def given_checkpoint(self, checkpoint: datetime) -> None:
        run = self.warehouse.start_run(RCS_RECORDS, "all", "sync", "incremental")
        self.warehouse.set_checkpoint(RCS_RECORDS, "all", checkpoint, run)
        self.warehouse.finish_run(run, None)


Make = Callable[..., Rig]


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[Warehouse]:
    """Held as `App.session` holds it: one connection, released during downloads."""
    wh = Warehouse(tmp_path / "rcs.duckdb", lock_timeout=5.0)
    with wh.held():
        wh.migrate()
        yield wh


@pytest.fixture
def make(tmp_path: Path, warehouse: Warehouse) -> Iterator[Make]:
    clients: list[ApiClient] = []

    def build(
        *script: Answer,
        then: Answer | None = None,
        budget: float = 1.0,
        server_limit: int | None = None,
        concurrency: int = 1,
        target_records: int | None = None,
        min_window: timedelta = timedelta(minutes=1),
        include_optional: bool = False,
        token: Callable[[], str] = lambda: TOKEN,
        listener: Listener | None = None,
        stop: threading.Event | None = None,
    ) -> Rig:
        transport = FakeTransport(*script, then=then)
        stop = stop or threading.Event()
        api = ApiClient(
            BASE_URL,
            token,
            connect_timeout=1,
            read_timeout=1,
            retry=RetryPolicy(
                timedelta(seconds=budget), timedelta(milliseconds=1), timedelta(milliseconds=5)
            ),
            spool_dir=tmp_path / "spool",
            stop=stop,
            transport=transport,
            throttle=Throttle(concurrency),
        )
        clients.append(api)
        policy = SyncPolicy(DAY, timedelta(days=1), HORIZON, OVERLAP, SKEW)
        options = Options(
            policy,
            include_optional,
            server_limit,
            min_window,
            concurrency=concurrency,
            target_records=target_records,
        )
        events: list[Progress] = []

        def listen(event: Progress) -> None:
            events.append(event)
            if listener is not None:
                listener(event)

        syncer = Syncer(RCS_RECORDS, api, warehouse, options, listener=listen, stop=stop)
        return Rig(syncer, transport, warehouse, stop, events)

    yield build
    for api in clients:
        api.close()


# --- splitting ----------------------------------------------------------------------------


def test_a_window_that_looks_truncated_is_split_and_both_halves_load(make: Make) -> None:
    rig = make(then=Api(FIFTEEN, limit=10), server_limit=10)
    result = rig.syncer.backfill(Scope(), ONE_DAY, force=False)
    assert [span(s) for s in rig.sent] == [FULL, HALF, HALF]
    assert rig.ids() == set(range(1, 16))
    assert (result.splits, result.windows, result.received) == (1, 2, 15)
    [(start, end, size, reason)] = rig.query(
        "SELECT period_start, period_end, span, reason FROM sync_splits"
    )
    assert (start, end, size) == (ONE_DAY.start, ONE_DAY.end, ONE_DAY.span / 2)
    assert "exactly 10 records" in reason
    assert rig.query("SELECT window_start, window_end FROM sync_windows ORDER BY 1") == [
        (half.start, half.end) for half in ONE_DAY.halves()
    ]


def test_a_recorded_split_makes_a_later_backfill_read_that_day_in_halves_at_once(
    make: Make,
) -> None:
    """Moved in from test_sync_e2e, where the simulator truncated at 300 records."""
    rig = make(then=Api(FIFTEEN, limit=10), server_limit=10)
    rig.syncer.backfill(Scope(), ONE_DAY, force=False)
    before = len(rig.sent)
    again = rig.syncer.backfill(Scope(), ONE_DAY, force=True)
    assert [span(s) for s in rig.sent[before:]] == [HALF, HALF]
    assert (again.splits, again.received) == (0, 15)


def test_a_window_still_truncated_at_min_window_fails_rather_than_load_part_of_it(
    make: Make,
) -> None:
    rig = make(then=Api(FIFTEEN, limit=10), server_limit=10, min_window=timedelta(days=1))
    with pytest.raises(SuspectedTruncation):
        rig.syncer.backfill(Scope(), ONE_DAY, force=False)
    assert len(rig.sent) == 1
    assert rig.ids() == set()
    assert rig.query("SELECT count(*) FROM sync_windows") == [(0,)]
    assert rig.query("SELECT status, error_kind FROM sync_runs") == [("failed", "api")]


SPLITTABLE = {
    "502": (Reply(502), "HTTP 502"),
    "504": (Reply(504), "HTTP 504"),
    "timeout": (Reply(raises=requests.ReadTimeout), "timed out (ReadTimeout)"),
}


@pytest.mark.parametrize("failure", sorted(SPLITTABLE))
def test_a_window_failing_at_full_size_is_split_once_its_split_deadline_passes(
    make: Make, failure: str
) -> None:
    """Moved in from test_sync_e2e, where the simulator served the 502s."""
    reply, reason = SPLITTABLE[failure]
    budget = 0.4
    api = Api(FIFTEEN)
    rig = make(then=lambda sent: reply if span(sent) == FULL else api(sent), budget=budget)
    result = rig.syncer.backfill(Scope(), ONE_DAY, force=False)
    full = [s for s in rig.sent if span(s) == FULL]
    halves = rig.sent[len(full) :]
    assert len(full) >= 2, "the full window was not retried before splitting"
    assert [span(s) for s in halves] == [HALF, HALF]
    # Half the budget goes to the full size; the halves have the rest.
    assert halves[0].at - full[0].at >= budget / 4
    assert rig.ids() == set(range(1, 16))
    assert result.splits == 1
    [(recorded,)] = rig.query("SELECT reason FROM sync_splits")
    assert reason in recorded


def test_an_outage_fails_each_pass_within_one_retry_budget_however_deep_it_splits(
    make: Make,
) -> None:
    """Moved in from test_sync_e2e. Before the budget covered a window and its halves,
    each half started a budget of its own: some 17 budgets down to min_window."""
    budget = 0.3
    api = Api(FIFTEEN)
    outage = False
    rig = make(then=lambda sent: Reply(502) if outage else api(sent), budget=budget)
    rig.syncer.sync(Scope())
    checkpoint = rig.checkpoint()
    windows = rig.query("SELECT * FROM sync_windows ORDER BY ALL")
    outage = True
    passes: list[Callable[[], object]] = [
        lambda: rig.syncer.sync(Scope()),  # incremental
        # Whole days: a span from our clock would start with a sliver before midnight.
        lambda: rig.syncer.backfill(Scope(), Window(DAY, DAY + timedelta(days=3)), force=True),
    ]
    for run in passes:
        before = len(rig.sent)
        with pytest.raises(ApiUnavailable, match="still failing after retries: HTTP 502"):
            run()
        sent = rig.sent[before:]
        assert len({span(s) for s in sent}) >= 3, "the failing window was not split"
        assert sent[-1].at - sent[0].at < budget + 0.25
        assert rig.checkpoint() == checkpoint
        assert rig.query("SELECT * FROM sync_windows ORDER BY ALL") == windows
    # An outage says nothing about the size a period needs.
    assert rig.query("SELECT count(*) FROM sync_splits") == [(0,)]
    assert rig.query("SELECT status FROM sync_runs ORDER BY run_id") == [
        ("ok",),
        ("failed",),
        ("failed",),
    ]
    outage = False
    assert rig.syncer.sync(Scope()).mode == "incremental"
    assert rig.checkpoint() != checkpoint


def test_connection_failures_are_retried_at_full_size_not_split(make: Make) -> None:
    budget = 0.3
    rig = make(then=Reply(raises=requests.ConnectionError), budget=budget)
    with pytest.raises(ApiUnavailable, match="connection failed") as raised:
        rig.syncer.backfill(Scope(), ONE_DAY, force=False)
    assert not raised.value.splittable
    assert len(rig.sent) >= 2
    assert {span(s) for s in rig.sent} == {FULL}
    assert rig.sent[-1].at - rig.sent[0].at < budget + 0.25


# --- retry budgets ------------------------------------------------------------------------


def test_a_full_response_renews_the_budget_for_the_next_window(make: Make) -> None:
    """Each window fails for half the budget before it loads: three of them, more than
    a budget in all, still pass, because every window that loads starts a new one."""
    budget = 0.2
    rig = make(then=failing_first(Api(FIFTEEN), budget / 2), budget=budget)
    three_days = Window(DAY, DAY + timedelta(days=3))
    result = rig.syncer.backfill(Scope(), three_days, force=False)
    assert result.windows == 3
    attempts = Counter(bounds(s) for s in rig.sent)
    assert len(attempts) == 3 and min(attempts.values()) >= 2
    assert rig.sent[-1].at - rig.sent[0].at > budget


def test_a_truncated_response_renews_the_budget_for_its_halves(make: Make) -> None:
    """A response cut at the threshold came in full: the server works, the window is too
    big. Without renewal the halves would inherit what the failures before it left."""
    budget = 0.3
    rig = make(
        then=failing_first(Api(FIFTEEN, limit=10), budget * 2 / 3),
        budget=budget,
        server_limit=10,
    )
    result = rig.syncer.backfill(Scope(), ONE_DAY, force=False)
    assert (result.splits, result.windows) == (1, 2)
    assert rig.ids() == set(range(1, 16))


def test_a_retry_after_longer_than_the_budget_is_cut_short_at_the_deadline(
    make: Make,
) -> None:
    budget = 0.3
    rig = make(then=Reply(429, headers={"Retry-After": "60"}), budget=budget)
    with pytest.raises(ApiUnavailable, match="HTTP 429"):
        rig.syncer.backfill(Scope(), ONE_DAY, force=False)
    assert 2 <= len(rig.sent) <= 3
    waited = rig.sent[1].at - rig.sent[0].at
    assert budget / 2 <= waited < budget + 0.25


def test_a_body_cut_off_mid_array_is_fetched_again_and_only_the_whole_one_loads(
    make: Make,
) -> None:
    """DuckDB would read `[{…},{…},` as the records so far: the client must refuse it."""
    whole = json_reply(FIFTEEN)
    cut = whole.body[: whole.body.index(b"}, {", len(whole.body) // 2) + 2]
    rig = make(Reply(body=cut, headers=whole.headers), then=Api(FIFTEEN))
    result = rig.syncer.backfill(Scope(), ONE_DAY, force=False)
    assert len(rig.sent) == 2
    assert (result.received, result.quarantined) == (15, 0)
    assert rig.ids() == set(range(1, 16))


# --- checkpoints and coverage -------------------------------------------------------------


def test_the_first_pass_commits_the_checkpoint_with_its_last_window_as_planned(
    make: Make, warehouse: Warehouse
) -> None:
    seen: list[datetime | None] = []

    def listener(event: Progress) -> None:
        if event["event"] == "window":
            seen.append(warehouse.checkpoint(RCS_RECORDS, "all"))

    rig = make(then=Api(FIFTEEN), listener=listener)
    result = rig.syncer.sync(Scope())
    assert result.mode == "backfill"
    assert len(seen) >= 4 and seen[:-1] == [None] * (len(seen) - 1)
    fetches = warehouse.fetches(RCS_RECORDS, "all")
    span_ = Window(DAY, max(f.window.end for f in fetches))
    expected = checkpoint_after_full_pass(span_, fetches, HORIZON)
    assert seen[-1] == result.checkpoint == expected
    # Every window may still change: the earliest request bounds the checkpoint.
    assert expected == min(f.fetched_at for f in fetches) < max(f.fetched_at for f in fetches)
    assert rig.query("SELECT checkpoint FROM sync_runs") == [(expected,)]


def test_a_pass_failing_midway_keeps_its_windows_and_the_rerun_reads_only_the_rest(
    make: Make, warehouse: Warehouse
) -> None:
    api = Api(FIFTEEN)
    rig = make(api, api, Reply(400, b"no such team"), then=api)
    with pytest.raises(BadRequest, match="HTTP 400"):
        rig.syncer.sync(Scope())
    assert len(rig.sent) == 3, "a 400 is not retried"
    assert len(warehouse.fetches(RCS_RECORDS, "all")) == 2
    assert rig.checkpoint() is None, "an incomplete first pass earns no checkpoint"
    result = rig.syncer.sync(Scope())
    fetches = warehouse.fetches(RCS_RECORDS, "all")
    assert len(rig.sent) - 3 == len(fetches) - 2
    span_ = Window(DAY, max(f.window.end for f in fetches))
    assert result.checkpoint == checkpoint_after_full_pass(span_, fetches, HORIZON)
    assert rig.checkpoint() == result.checkpoint
    assert rig.ids() == set(range(1, 16))


def test_an_incremental_pass_asks_for_changes_since_the_checkpoint_minus_overlap(
    make: Make,
) -> None:
    server_now = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=10)
    rig = make(then=Api(FIFTEEN, clock=lambda: server_now))
    checkpoint = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    rig.given_checkpoint(checkpoint)
    result = rig.syncer.sync(Scope())
    [sent] = rig.sent
    since = checkpoint - OVERLAP
    assert sent.params["modified_since"] == format_instant(since)
    assert sent.params["start"] == format_instant(since - HORIZON - BOUNDARY_PAD)
    assert bounds(sent)[1] > datetime.now(UTC) + timedelta(days=1)
    assert (result.mode, result.windows) == ("incremental", 1)
    # The server's time of the request (Date minus the round trip), not ours.
    assert result.checkpoint is not None
    assert server_now - timedelta(seconds=1) < result.checkpoint <= server_now
    assert rig.checkpoint() == result.checkpoint
    assert rig.query("SELECT count(*) FROM sync_windows") == [(0,)]


def test_a_split_incremental_pass_checkpoints_with_its_last_half_at_its_first_halfs_time(
    make: Make, warehouse: Warehouse
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    records = [record(i, now - timedelta(days=6, minutes=10 * i)) for i in range(1, 9)]
    records += [record(i, now - timedelta(days=2, minutes=10 * i)) for i in range(9, 16)]
    dates = iter([now, now + timedelta(seconds=20), now + timedelta(seconds=40)])
    seen: list[datetime | None] = []

    def listener(event: Progress) -> None:
        if event["event"] == "window":
            seen.append(warehouse.checkpoint(RCS_RECORDS, "all"))

    rig = make(
        then=Api(records, limit=10, clock=lambda: next(dates)), server_limit=10, listener=listener
    )
    checkpoint = now - timedelta(hours=1)
    rig.given_checkpoint(checkpoint)
    result = rig.syncer.sync(Scope())
    assert result.mode == "incremental" and result.splits == 1
    assert all("modified_since" in s.params for s in rig.sent)
    first_half = now + timedelta(seconds=20)
    assert seen[0] == checkpoint, "half the span read: the checkpoint must not move"
    assert seen[1] == result.checkpoint
    assert result.checkpoint is not None
    assert first_half - timedelta(seconds=1) < result.checkpoint <= first_half
    assert rig.ids() == set(range(1, 16))
    # Incremental sizes depend on the checkpoint's age, not the period: not recorded.
    assert rig.query("SELECT count(*) FROM sync_splits") == [(0,)]


def test_without_a_date_header_the_checkpoint_is_our_send_time_minus_clock_skew(
    make: Make,
) -> None:
    rig = make(then=Api(FIFTEEN))
    rig.given_checkpoint(datetime.now(UTC) - timedelta(hours=1))
    before = datetime.now(UTC)
    result = rig.syncer.sync(Scope())
    after = datetime.now(UTC)
    assert result.checkpoint is not None
    assert before - SKEW <= result.checkpoint <= after - SKEW


def test_a_checkpoint_too_old_for_modified_since_is_caught_up_in_full_windows(
    make: Make, warehouse: Warehouse
) -> None:
    rig = make(then=Api(FIFTEEN))
    rig.syncer.sync(Scope())
    with warehouse.connect() as con:  # as if the daemon had been down for 50 hours
        con.execute("UPDATE sync_checkpoints SET checkpoint = checkpoint - INTERVAL 50 HOUR")
        con.execute("UPDATE sync_windows SET fetched_at = fetched_at - INTERVAL 50 HOUR")
    stale = rig.checkpoint()
    assert stale is not None
    before = len(rig.sent)
    result = rig.syncer.sync(Scope())
    caught_up = rig.sent[before:]
    assert result.mode == "catchup"
    assert caught_up and all("modified_since" not in s.params for s in caught_up)
    assert bounds(caught_up[0])[0] <= stale - HORIZON
    assert result.checkpoint is not None and result.checkpoint > stale + timedelta(hours=49)
    assert rig.syncer.sync(Scope()).mode == "incremental"


def test_a_sync_after_a_backfill_past_now_reads_nothing_again_and_goes_incremental(
    make: Make,
) -> None:
    rig = make(then=Api(FIFTEEN))
    rig.syncer.backfill(Scope(), Window(DAY, datetime.now(UTC) + timedelta(hours=1)), force=False)
    before = len(rig.sent)
    result = rig.syncer.sync(Scope())
    [sent] = rig.sent[before:]
    assert "modified_since" in sent.params
    assert result.mode == "incremental"
    assert result.checkpoint is not None and rig.checkpoint() == result.checkpoint


# --- scopes, stops and failures -----------------------------------------------------------


def test_a_stop_requested_during_a_window_ends_the_pass_before_the_next(make: Make) -> None:
    stop = threading.Event()

    def stop_after_first(event: Progress) -> None:
        if event["event"] == "window":
            stop.set()

    rig = make(then=Api(FIFTEEN), listener=stop_after_first, stop=stop)
    [outcome] = sync_all(rig.syncer, [Scope(), Scope(2)])
    assert outcome.outcome == "stopped"
    assert len(rig.sent) == 1
    assert rig.query("SELECT count(*) FROM sync_windows") == [(1,)]
    assert rig.query("SELECT status FROM sync_runs") == [("stopped",)]


def test_a_rejected_token_ends_sync_all_as_auth_failed_and_spares_the_other_scopes(
    make: Make,
) -> None:
    rig = make(then=Reply(403, b"Forbidden"))
    [outcome] = sync_all(rig.syncer, [Scope(1), Scope(2)])
    assert (outcome.scope, outcome.outcome) == (Scope(1), "auth_failed")
    assert isinstance(outcome.error, AuthRejected)
    [sent] = rig.sent
    assert sent.params["team"] == "1"
    assert rig.query("SELECT scope, status, error_kind FROM sync_runs") == [("1", "failed", "auth")]


def test_a_scope_whose_request_is_refused_does_not_stop_the_next_scope(make: Make) -> None:
    rig = make(Reply(400, b"unknown team"), then=Api(FIFTEEN))
    outcomes = sync_all(rig.syncer, [Scope(1), Scope(2)])
    assert [o.outcome for o in outcomes] == ["failed", "ok"]
    assert isinstance(outcomes[0].error, BadRequest)
    assert {s.params["team"] for s in rig.sent[1:]} == {"2"}
    assert rig.query("SELECT DISTINCT scope FROM sync_checkpoints") == [("2",)]


def test_each_attempt_carries_the_current_token_and_the_scope_and_field_parameters(
    make: Make,
) -> None:
    tokens = iter(["tok-old", "tok-rotated"])
    rig = make(Reply(500), then=Api(FIFTEEN), token=lambda: next(tokens), include_optional=True)
    rig.syncer.backfill(Scope(7), ONE_DAY, force=False)
    assert [s.headers["Authorization"] for s in rig.sent] == [
        "Bearer tok-old",
        "Bearer tok-rotated",
    ]
    for sent in rig.sent:
        assert sent.url.startswith(f"{BASE_URL}/j/rcs_records?")
        assert sent.headers["Accept"] == "application/json"
        assert sent.params == {
            "start": format_instant(DAY - BOUNDARY_PAD),
            "end": format_instant(DAY + timedelta(days=1)),
            "team": "7",
            "include": "content_message",
        }


# --- big responses and density planning ---------------------------------------------------


def test_a_response_above_the_target_is_loaded_whole_and_the_next_day_planned_smaller(
    make: Make,
) -> None:
    """A complete array is never thrown away for its size: the day above the target
    loads as sent, and its density plans its neighbour in halves, with no wasted read."""
    two_days = FIFTEEN + [
        record(100 + i, DAY + timedelta(days=1) + i * timedelta(minutes=90)) for i in range(15)
    ]
    rig = make(then=Api(two_days), target_records=10)
    result = rig.syncer.backfill(Scope(), Window(DAY, DAY + timedelta(days=2)), force=False)
    assert [span(s) for s in rig.sent] == [FULL, HALF, HALF]
    assert result.received == len(rig.ids()) == 30, "every record served once, stored once"
    assert result.splits == 0
    assert rig.query("SELECT count(*) FROM sync_splits") == [(0,)]


def test_more_records_than_the_server_limit_is_no_evidence_of_truncation(make: Make) -> None:
    rig = make(then=Api(FIFTEEN), server_limit=10)
    result = rig.syncer.backfill(Scope(), ONE_DAY, force=False)
    assert [span(s) for s in rig.sent] == [FULL]
    assert (result.splits, result.received) == (0, 15)


def test_a_later_backfill_plans_from_the_densities_in_the_ledger(make: Make) -> None:
    rig = make(then=Api(FIFTEEN), target_records=10)
    rig.syncer.backfill(Scope(), ONE_DAY, force=False)
    rig.syncer.backfill(Scope(), ONE_DAY, force=True)
    assert [span(s) for s in rig.sent] == [FULL, HALF, HALF]
    assert len(rig.ids()) == 15


# --- requests in flight -------------------------------------------------------------------


def days(n: int) -> list[dict[str, Any]]:
    return [record(i, DAY + i * timedelta(minutes=37)) for i in range(1, n * 39)]


class InFlight:
    """An endpoint that answers slowly and counts the requests it holds at once."""

    def __init__(self, api: Api, delay: float) -> None:
        self.api, self.delay = api, delay
        self.now = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, sent: Sent) -> Reply:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self.delay)
            return self.api(sent)
        finally:
            with self.lock:
                self.now -= 1


def test_a_backfill_keeps_several_requests_in_flight_and_loads_each_window_once(
    make: Make, warehouse: Warehouse
) -> None:
    records = days(12)
    endpoint = InFlight(Api(records), 0.05)
    rig = make(then=endpoint, concurrency=4)
    span_ = Window(DAY, DAY + timedelta(days=12))
    result = rig.syncer.backfill(Scope(), span_, force=False)
    assert endpoint.most == 4
    assert len(rig.sent) == 12 == result.windows
    assert rig.ids() == {r["id"] for r in records}
    fetches = warehouse.fetches(RCS_RECORDS, "all")
    assert sorted(f.window for f in fetches) == [
        Window(DAY + timedelta(days=d), DAY + timedelta(days=d + 1)) for d in range(12)
    ]


def test_concurrent_first_pass_commits_the_checkpoint_only_once_the_span_is_covered(
    make: Make, warehouse: Warehouse
) -> None:
    seen: list[datetime | None] = []

    def listener(event: Progress) -> None:
        if event["event"] == "window":
            seen.append(warehouse.checkpoint(RCS_RECORDS, "all"))

    rig = make(then=InFlight(Api(FIFTEEN), 0.02), concurrency=3, listener=listener)
    result = rig.syncer.sync(Scope())
    assert result.mode == "backfill"
    assert seen[:-1] == [None] * (len(seen) - 1)
    fetches = warehouse.fetches(RCS_RECORDS, "all")
    span_ = Window(DAY, max(f.window.end for f in fetches))
    assert seen[-1] == result.checkpoint == checkpoint_after_full_pass(span_, fetches, HORIZON)


def test_a_failure_in_flight_stops_new_windows_and_keeps_those_that_loaded(
    make: Make, warehouse: Warehouse
) -> None:
    api = InFlight(Api(days(8)), 0.02)

    def answer(sent: Sent) -> Reply:
        if bounds(sent)[0] >= DAY + timedelta(days=2) - BOUNDARY_PAD:
            return Reply(400, b"no")
        return api(sent)

    rig = make(then=answer, concurrency=2)
    with pytest.raises(BadRequest):
        rig.syncer.backfill(Scope(), Window(DAY, DAY + timedelta(days=8)), force=False)
    assert len(rig.sent) < 8, "no new window starts after a failure"
    done = warehouse.fetches(RCS_RECORDS, "all")
    assert {f.window.start for f in done} <= {DAY, DAY + timedelta(days=1)}
    [(status,)] = rig.query("SELECT status FROM sync_runs")
    assert status == "failed"


def test_a_stop_during_a_concurrent_backfill_ends_it_with_whole_windows_only(
    make: Make, warehouse: Warehouse
) -> None:
    stop = threading.Event()
    records = days(10)
    api = InFlight(Api(records), 0.02)

    def answer(sent: Sent) -> Reply:
        if len(rig.sent) >= 3:
            stop.set()
        return api(sent)

    rig = make(then=answer, concurrency=3, stop=stop)
    with pytest.raises(Stopped):
        rig.syncer.backfill(Scope(), Window(DAY, DAY + timedelta(days=10)), force=False)
    loaded = warehouse.fetches(RCS_RECORDS, "all")
    assert len(loaded) < 10
    by_window = {
        f.window: {
            r["id"]
            for r in records
            if f.window.start <= datetime.fromisoformat(r["timestamp"]) < f.window.end
        }
        for f in loaded
    }
    assert rig.ids() >= set().union(*by_window.values())
    [(status,)] = rig.query("SELECT status FROM sync_runs")
    assert status == "stopped"


def test_a_429_halves_the_requests_in_flight_and_responses_raise_it_again(make: Make) -> None:
    answers: list[Answer] = [Reply(429, headers={"Retry-After": "0"})]
    rig = make(*answers, then=Api(FIFTEEN), concurrency=4, budget=5.0)
    throttle = rig.syncer.api.throttle
    rig.syncer.backfill(Scope(), ONE_DAY, force=False)
    assert throttle.limit == 2, "lowered by the 429, not yet recovered after one response"
    rig.syncer.backfill(
        Scope(), Window(DAY + timedelta(days=1), DAY + timedelta(days=9)), force=False
    )
    assert throttle.limit == 4


def test_throttle_halves_and_recovers_one_at_a_time() -> None:
    throttle = Throttle(4)
    assert throttle.pushed_back("429") == Change(4, 2, "429")
    assert throttle.pushed_back("429") == Change(2, 1, "429")
    assert throttle.pushed_back("429") is None
    changes = [throttle.succeeded() for _ in range(RECOVER_AFTER * 3)]
    assert [c.after for c in changes if c] == [2, 3, 4]
    assert throttle.succeeded() is None
