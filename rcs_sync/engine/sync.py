"""One pass over one (stream, scope): plan → fetch → load → commit.

The plan comes from `windows.py`; this module only carries it out. Each response is
committed together with the bookkeeping it earns (a completed window, or the
checkpoint once the pass is whole), so a crash at any moment redoes at most the
request in flight.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from rcs_sync.engine.source import Source
from rcs_sync.engine.store import Store
from rcs_sync.model.commits import Commit, LoadResult
from rcs_sync.model.durations import format_instant
from rcs_sync.model.errors import (
    ApiUnavailable,
    ApiUnreachable,
    RcsSyncError,
    Stopped,
    SuspectedTruncation,
)
from rcs_sync.model.events import Outcome, Planned, Progress, Summary, WindowLoaded
from rcs_sync.model.reread import (
    DEFAULT_BUDGET,
    DEFAULT_CELL,
    Tier,
    horizon_span,
    latest_reads,
    plan_reread,
    stream_tiers,
)
from rcs_sync.model.responses import Deadline, Response
from rcs_sync.model.streams import Stream
from rcs_sync.model.windows import (
    GRID_ANCHOR,
    INCREMENTAL_LEAD,
    JOIN_MOST,
    Fetch,
    PassPlan,
    Split,
    SyncPolicy,
    Window,
    checkpoint_after_full_pass,
    checkpoint_after_incremental,
    cut,
    density_size,
    gaps,
    joinable,
    plan_pass,
    plan_windows,
)
from rcs_sync.warehouse.privacy import PLAIN, Privacy

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Scope:
    """Everything the token sees (`team=None`), or one team, each with its own checkpoint."""

    team: int | None = None

    @property
    def key(self) -> str:
        return "all" if self.team is None else str(self.team)


@dataclass(frozen=True)
class Options:
    policy: SyncPolicy
    include_optional: bool
    server_limit: int | None
    """A count the server is known to cut responses at: exactly that many is evidence."""
    min_window: timedelta
    privacy: Privacy = PLAIN
    concurrency: int = 1
    """Windows a full pass fetches at once; loads stay one at a time (`_Writer`)."""
    target_records: int | None = None
    """Full passes cut windows ahead, from the density seen, to hold about this many."""
    join_below: int = 0
    """Backfills and catch-ups read consecutive windows as one request while the density
    seen says they hold fewer records than this together (`windows.joinable`; 0: never)."""
    reread: dict[str, tuple[Tier, ...]] = field(default_factory=dict)
    """Re-read tiers by stream name, for streams without `modified_since` (default:
    `default_tiers` of the update horizon)."""
    reread_cell: timedelta = DEFAULT_CELL
    """The grid cell those streams' horizons are re-read in."""
    reread_budget: dict[str, float] = field(default_factory=dict)
    """The share of the horizon's cells a pass re-reads beyond its must-reads, by stream
    name (default `DEFAULT_BUDGET`)."""

    def tiers(self, stream: Stream) -> tuple[Tier, ...]:
        return stream_tiers(self.reread, stream.name, self.policy.update_horizon)

    def budget(self, stream: Stream) -> float:
        return self.reread_budget.get(stream.name, DEFAULT_BUDGET)


@dataclass
class PassResult:
    scope: Scope
    mode: str
    windows: int = 0
    received: int = 0
    inserted: int = 0
    updated: int = 0
    quarantined: int = 0
    splits: int = 0
    checkpoint: datetime | None = None
    started: float = field(default_factory=time.monotonic)
    started_cpu: float = field(default_factory=time.process_time)
    """CPU of the whole process, DuckDB's threads included, from the pass's start."""

    def add(self, result: LoadResult) -> None:
        self.windows += 1
        self.received += result.received
        self.inserted += result.inserted
        self.updated += result.updated
        self.quarantined += result.quarantined

    def summary(self) -> Summary:
        return {
            "scope": self.scope.key,
            "mode": self.mode,
            "windows": self.windows,
            "received": self.received,
            "inserted": self.inserted,
            "updated": self.updated,
            "quarantined": self.quarantined,
            "splits": self.splits,
            "checkpoint": format_instant(self.checkpoint) if self.checkpoint else None,
            "checkpoint_lag_s": (
                round((datetime.now(UTC) - self.checkpoint).total_seconds(), 1)
                if self.checkpoint
                else None
            ),
            "duration_s": round(time.monotonic() - self.started, 3),
            "cpu_s": round(time.process_time() - self.started_cpu, 3),
        }


@dataclass
class Coverage:
    """What this pass has committed of its span, and the checkpoint the whole earns."""

    span: Window
    fetches: list[Fetch]
    earn: Callable[[Window, list[Fetch]], datetime] | None
    """Checkpoint for a complete span; None for passes that never move the checkpoint."""

    def checkpoint_with(self, fetch: Fetch) -> datetime | None:
        """The checkpoint to commit alongside `fetch`, if it completes the span."""
        done = [*self.fetches, fetch]
        if self.earn is None or gaps(self.span, [f.window for f in done]):
            return None
        return self.earn(self.span, done)


@dataclass
class _Pass:
    """The state one pass threads through its (possibly split) requests."""

    scope: Scope
    run_id: int
    result: PassResult
    coverage: Coverage
    modified_since: datetime | None
    record_windows: bool
    """Full-window reads: each loaded window is recorded as read, each split as needed."""
    retry_budget: float
    """Seconds of failures a window and all its halves share; a full response renews it,
    so an outage fails the pass within about one budget however deep the splits go."""
    observed: list[Fetch] = field(default_factory=list)
    """Fetches with their record counts (the ledger's, then this pass's): the density
    the next windows are planned by."""
    join_below: int = 0
    """Windows are joined while they hold fewer records than this (0: never)."""
    splits: list[Split] = field(default_factory=list)
    """The scope's recorded splits: no window is joined over one."""
    deadline: float = field(init=False)
    """`time.monotonic()` at which the current budget runs out."""

    def __post_init__(self) -> None:
        self.renew()

    def renew(self) -> None:
        self.deadline = time.monotonic() + self.retry_budget


Listener = Callable[[Progress], None]
"""Told of each scope's planned windows and of each window loaded."""


class Syncer:
    def __init__(
        self,
        stream: Stream,
        api: Source,
        warehouse: Store,
        options: Options,
        *,
        listener: Listener | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.stream = stream
        self.stop = stop or threading.Event()
        self.api = api
        self.warehouse = warehouse
        self.options = options
        self._listen = listener or (lambda _event: None)

    def sync(self, scope: Scope) -> PassResult:
        """The pass the checkpoint calls for: first backfill, catch-up or incremental.

        A full pass that found every window already read (a `backfill` went past now)
        only wrote the checkpoint those reads earned; the changes made since then are
        fetched at once by the incremental pass it now allows, not an interval later."""
        if not self.stream.windowed:
            return self._run(scope, self._plan(scope), command="sync")
        result = self._run(scope, self._plan(scope), command="sync")
        if result.mode != "incremental" and result.windows == 0 and result.checkpoint:
            follow_up = self._plan(scope)
            if follow_up.mode == "incremental":
                return self._run(scope, follow_up, command="sync")
        return result

    def _plan(self, scope: Scope) -> PassPlan:
        checkpoint = self.warehouse.checkpoint(self.stream, scope.key)
        now = datetime.now(UTC)
        policy = self.options.policy
        if not self.stream.windowed:
            # start/end are required by the API; ask for everything up to past our now.
            return PassPlan(
                "replace", Window(GRID_ANCHOR, now + policy.clock_skew + INCREMENTAL_LEAD)
            )
        if self.stream.modified_since or checkpoint is None:
            return plan_pass(checkpoint, now, policy)
        # No modified_since: the incremental pass re-reads the cells of the horizon due.
        end = now + policy.clock_skew
        return PassPlan("incremental", horizon_span(now, end, policy.update_horizon))

    def backfill(self, scope: Scope, span: Window, *, force: bool) -> PassResult:
        """Read `span` in full windows, skipping those already read unless `force`."""
        fresh_after = datetime.now(UTC) if force else None
        return self._run(
            scope,
            PassPlan("backfill", span, fresh_after=fresh_after),
            command="backfill",
            sets_checkpoint=False,
        )

    def _run(
        self, scope: Scope, plan: PassPlan, *, command: str, sets_checkpoint: bool = True
    ) -> PassResult:
        result = PassResult(scope, plan.mode)
        run_id = self.warehouse.start_run(self.stream, scope.key, command, plan.mode)
        log.info(
            "pass_started",
            stream=self.stream.name,
            scope=scope.key,
            mode=plan.mode,
            span_start=format_instant(plan.span.start),
            span_end=format_instant(plan.span.end),
            modified_since=format_instant(plan.modified_since) if plan.modified_since else None,
        )
        try:
            if plan.mode == "replace":
                self._replace(scope, plan, run_id, result)
            elif plan.mode == "incremental" and not self.stream.modified_since:
                self._reread(scope, plan, run_id, result)
            elif plan.mode == "incremental":
                self._incremental(scope, plan, run_id, result)
            else:
                self._full(scope, plan, run_id, result, sets_checkpoint=sets_checkpoint)
        except BaseException as exc:
            self.warehouse.finish_run(run_id, exc)
            raise
        self.warehouse.finish_run(run_id, None)
        log.info("pass_complete", stream=self.stream.name, **result.summary())
        return result

    def _full(
        self,
        scope: Scope,
        plan: PassPlan,
        run_id: int,
        result: PassResult,
        *,
        sets_checkpoint: bool,
    ) -> None:
        fresh = [
            f
            for f in self.warehouse.fetches(self.stream, scope.key)
            if plan.fresh_after is None or f.fetched_at >= plan.fresh_after
        ]
        splits = self.warehouse.splits(self.stream, scope.key)
        todo = plan_windows(plan.span, fresh, self.options.policy.window, None, splits)
        self._planned(scope, todo)
        horizon = self.options.policy.update_horizon
        coverage = Coverage(
            plan.span,
            fresh,
            (lambda span, done: checkpoint_after_full_pass(span, done, horizon))
            if sets_checkpoint
            else None,
        )
        # Joined windows hold no more than a window is planned to (else the pieces of a
        # window planned smaller would be joined again), nor, from a server known to cut
        # responses at a count, as many as half of it: exactly that many is truncation.
        join, limit = self.options.join_below, self.options.server_limit
        if self.options.target_records is not None:
            join = min(join, self.options.target_records)
        if limit is not None:
            join = min(join, limit // 2)
        self._windows(scope, run_id, result, coverage, todo, join_below=join, splits=splits)
        if not todo and sets_checkpoint:
            # Every window was read before (e.g. by `backfill` up to a future end): the
            # checkpoint those reads earned was never written by a commit of this pass.
            result.checkpoint = checkpoint_after_full_pass(plan.span, fresh, horizon)
            self.warehouse.set_checkpoint(self.stream, scope.key, result.checkpoint, run_id)

    def _windows(
        self,
        scope: Scope,
        run_id: int,
        result: PassResult,
        coverage: Coverage,
        todo: list[Window],
        *,
        join_below: int = 0,
        splits: list[Split] | None = None,
    ) -> None:
        """Read and record `todo`, as full windows, concurrently where allowed; sparse
        ones joined with `join_below` (re-reads keep their cells: never)."""
        budget = self.api.retry_budget.total_seconds()
        ctx = _Pass(
            scope,
            run_id,
            result,
            coverage,
            None,
            record_windows=True,
            retry_budget=budget,
            join_below=join_below,
            splits=splits or [],
        )
        ctx.observed = [f for f in self.warehouse.fetches(self.stream, scope.key) if f.records]
        if self.options.concurrency > 1 and len(todo) > 1:
            self._concurrently(ctx, todo)
        else:
            pending = deque(todo)
            while pending:
                if self.stop.is_set():
                    raise Stopped("stop requested between windows")
                self._read(ctx, self._next(ctx, pending), _here, [])

    def _reread(self, scope: Scope, plan: PassPlan, run_id: int, result: PassResult) -> None:
        """The incremental pass of a stream without `modified_since`: re-read the cells
        of the horizon its tiers say are due (`model/reread.py`), as full windows. The
        checkpoint, committed with the window that completes the horizon, is the oldest
        fetch among its cells: every change made before it is in."""
        # The ledger grows by the cells each pass reads: only the latest read of each
        # window reaching into the horizon matters, to the plan and to the checkpoint.
        fetches = latest_reads(self.warehouse.fetches(self.stream, scope.key), plan.span)
        horizon = self.options.policy.update_horizon
        todo = plan_reread(
            datetime.now(UTC),
            plan.span.end,
            horizon,
            tiers=self.options.tiers(self.stream),
            fetches=fetches,
            cell=self.options.reread_cell,
            budget=self.options.budget(self.stream),
        )
        self._planned(scope, todo)
        coverage = Coverage(
            plan.span,
            fetches,
            lambda span, done: checkpoint_after_full_pass(span, done, horizon),
        )
        self._windows(scope, run_id, result, coverage, todo)
        if not todo:
            result.checkpoint = checkpoint_after_full_pass(plan.span, fetches, horizon)
            self.warehouse.set_checkpoint(self.stream, scope.key, result.checkpoint, run_id)

    def _replace(self, scope: Scope, plan: PassPlan, run_id: int, result: PassResult) -> None:
        """A stream without windows: one request for everything, loaded in one
        transaction that also deletes the rows the response no longer holds."""
        self._planned(scope, [plan.span])
        coverage = Coverage(plan.span, [], checkpoint_after_incremental)
        budget = self.api.retry_budget.total_seconds()
        ctx = _Pass(
            scope, run_id, result, coverage, None, record_windows=False, retry_budget=budget
        )
        self._read(ctx, plan.span, _here, [], splittable=False)

    def _incremental(self, scope: Scope, plan: PassPlan, run_id: int, result: PassResult) -> None:
        """One request over the span with `modified_since`, split only if it must be.

        Recorded splits are neither used nor written here: an incremental response holds
        the records changed since the checkpoint, so its size depends on how long ago that
        was, not on the period, and its span moves with the clock anyway."""
        self._planned(scope, [plan.span])
        coverage = Coverage(plan.span, [], checkpoint_after_incremental)
        budget = self.api.retry_budget.total_seconds()
        ctx = _Pass(
            scope,
            run_id,
            result,
            coverage,
            plan.modified_since,
            record_windows=False,
            retry_budget=budget,
        )
        self._read(ctx, plan.span, _here, [])

    def _planned(self, scope: Scope, windows: list[Window]) -> None:
        seconds = sum(w.span.total_seconds() for w in windows)
        self._listen(
            Planned(event="planned", scope=scope.key, windows=len(windows), seconds=seconds)
        )

    def _next(self, ctx: _Pass, pending: deque[Window]) -> Window:
        """The next window to fetch, cut first where the density seen says it would
        hold more than the target (the rest of it goes back to the front of the queue),
        or joined with the windows after it where they hold few records together."""
        window = pending.popleft()
        target = self.options.target_records
        if not ctx.record_windows:
            return window
        size = window.span if target is None else density_size(window, ctx.observed, target)
        if size >= window.span:
            return self._joined(ctx, window, pending)
        pieces = cut(window, max(size, self.options.min_window))
        log.info(
            "window_planned_smaller",
            scope=ctx.scope.key,
            window_start=format_instant(window.start),
            window_end=format_instant(window.end),
            pieces=len(pieces),
            target=target,
        )
        pending.extendleft(reversed(pieces[1:]))
        return pieces[0]

    def _joined(self, ctx: _Pass, window: Window, pending: deque[Window]) -> Window:
        """`window` and the windows after it `windows.joinable` allows, as one window
        (taken off the queue)."""
        following = list(itertools.islice(pending, JOIN_MOST - 1))
        joined = joinable(window, following, ctx.observed, ctx.join_below, ctx.splits)
        if not joined:
            return window
        for _ in range(joined):
            pending.popleft()
        log.info(
            "windows_joined",
            scope=ctx.scope.key,
            window_start=format_instant(window.start),
            window_end=format_instant(following[joined - 1].end),
            windows=joined + 1,
            below=ctx.join_below,
        )
        return Window(window.start, following[joined - 1].end)

    def _concurrently(self, ctx: _Pass, todo: list[Window]) -> None:
        """Download up to `concurrency` windows at once (fewer while the server pushes
        back), each on a thread of its own that streams to a spool file; this thread
        is the single writer and commits each window in its own transaction as its
        body arrives, in whatever order they come. A window waiting for its load frees
        its download slot, and the next download starts right then, from the thread
        handing its body over, not once this thread is done with the load in hand; at
        most `concurrency` bodies wait on disk.

        The first failure stops new windows from starting; the windows in flight still
        finish (their loads are good data), then the failure is raised. A stop request
        ends the downloads at once, and loads not yet begun are not begun."""
        most = 2 * self.options.concurrency
        with ThreadPoolExecutor(most, thread_name_prefix="fetch") as pool:
            flight = _Flight(self, ctx, deque(todo), pool, most)
            writer = flight.writer
            try:
                flight.top_up()
                while not flight.over():
                    writer.serve(timeout=0.05)
                    flight.reap()
                    flight.top_up()
            finally:
                writer.close()
        if flight.failure is not None:
            raise flight.failure

    def _deadline(self, ctx: _Pass, window: Window) -> Deadline:
        """A window that keeps failing in a way a smaller one may avoid gives up after
        half the time left, leaving the other half to its halves."""
        if window.span / 2 < self.options.min_window:
            return Deadline(ctx.deadline)
        now = time.monotonic()
        return Deadline(ctx.deadline, split=now + (ctx.deadline - now) / 2)

    def _read(
        self,
        ctx: _Pass,
        window: Window,
        run: Run,
        unrecorded: list[tuple[Split, str]],
        *,
        splittable: bool = True,
    ) -> None:
        """Fetch and commit one window, halving it while the server seems to truncate or
        choke on it (there is no pagination to fall back on).

        `run` carries the warehouse's work to the single writer (the calling thread
        itself when the pass fetches one window at a time). `unrecorded` holds the
        splits made on the way to this window, recorded once a smaller window loads: a
        window that fails at every size (an outage) says nothing about the size it needs."""
        start, end = window.request_bounds()
        params = {"start": format_instant(start), "end": format_instant(end)}
        if ctx.modified_since is not None:
            params["modified_since"] = format_instant(ctx.modified_since)
        if ctx.scope.team is not None:
            params["team"] = str(ctx.scope.team)
        if self.options.include_optional and self.stream.optional_fields:
            params["include"] = ",".join(f.name for f in self.stream.optional_fields)

        def commit(response: Response) -> LoadResult:
            # Without a Date header, our clock minus the skew margin stands in for the server's.
            skew = self.options.policy.clock_skew
            fetched_at = response.server_sent_at or response.sent_at - skew
            fetch = Fetch(window, fetched_at)
            commit = Commit(
                stream=self.stream,
                scope=ctx.scope.key,
                run_id=ctx.run_id,
                fetched_at=fetched_at,
                window=window if ctx.record_windows else None,
                checkpoint=ctx.coverage.checkpoint_with(fetch),
                horizon=self.options.policy.update_horizon + skew,
            )
            loaded = self.warehouse.commit_batch(
                response.body,
                commit,
                include_optional=self.options.include_optional,
                server_limit=self.options.server_limit,
                privacy=self.options.privacy,
            )
            ctx.coverage.fetches.append(fetch)
            ctx.observed.append(Fetch(window, fetched_at, loaded.received))
            if commit.checkpoint is not None:
                ctx.result.checkpoint = commit.checkpoint
            if unrecorded:
                self.warehouse.record_splits(self.stream, ctx.scope.key, unrecorded)
                unrecorded.clear()
            self._loaded(ctx, window, loaded)
            return loaded

        def consume(response: Response) -> LoadResult:
            return run(lambda: commit(response))

        if run is _here:
            self.warehouse.release()  # not held while the response downloads
        try:
            self.api.fetch(self.stream.path, params, consume, self._deadline(ctx, window))
        except (SuspectedTruncation, ApiUnavailable) as exc:
            if isinstance(exc, SuspectedTruncation):
                ctx.renew()  # answered in full: the server works, the window is too big
            elif not exc.splittable or time.monotonic() >= ctx.deadline:
                raise  # no time left for the halves
            if window.span / 2 < self.options.min_window or not splittable:
                raise
            log.warning(
                "window_split",
                scope=ctx.scope.key,
                window_start=format_instant(window.start),
                window_end=format_instant(window.end),
                reason=str(exc),
            )
            ctx.result.splits += 1
            if ctx.record_windows:
                unrecorded.append((Split(window, window.span / 2), str(exc)))
            for half in window.halves():
                self._read(ctx, half, run, unrecorded)
            return
        ctx.renew()

    def _loaded(self, ctx: _Pass, window: Window, loaded: LoadResult) -> None:
        """Count a committed window and tell the listener (on the writer's thread)."""
        ctx.result.add(loaded)
        event = WindowLoaded(
            event="window",
            scope=ctx.scope.key,
            window_start=format_instant(window.start),
            window_end=format_instant(window.end),
            received=loaded.received,
            inserted=loaded.inserted,
            updated=loaded.updated,
            quarantined=loaded.quarantined,
        )
        log.info("window_loaded", **{k: v for k, v in event.items() if k != "event"})
        self._listen(event)


Run = Callable[[Callable[[], LoadResult]], LoadResult]
"""Runs the warehouse's share of a window (its commit) on the writer's thread."""


def _here(work: Callable[[], LoadResult]) -> LoadResult:
    """The writer is the calling thread: one window at a time."""
    return work()


@dataclass
class _Job:
    work: Callable[[], LoadResult]
    done: threading.Event = field(default_factory=threading.Event)
    result: LoadResult | None = None
    error: BaseException | None = None


class _Flight:
    """The windows of a concurrent pass: those waiting, those downloading, the first
    failure. `top_up` is called from the pass's thread and from fetch threads handing
    their body to the writer, hence the lock."""

    def __init__(
        self,
        syncer: Syncer,
        ctx: _Pass,
        pending: deque[Window],
        pool: ThreadPoolExecutor,
        most: int,
    ) -> None:
        self._syncer = syncer
        self._ctx = ctx
        self._pending = pending
        self._pool = pool
        self._most = most
        self._running: dict[Future[None], Window] = {}
        self._lock = threading.Lock()
        self.failure: BaseException | None = None
        self.writer = _Writer(syncer.warehouse.release, syncer.stop, handed=self.top_up)

    def top_up(self) -> None:
        """Start windows while a download slot is free."""
        syncer, writer = self._syncer, self.writer
        with self._lock:
            if syncer.stop.is_set() and self.failure is None:
                self.failure = Stopped("stop requested between windows")
            limit = min(syncer.options.concurrency, syncer.api.throttle.limit)
            try:
                while (
                    self._pending
                    and self.failure is None
                    and len(self._running) - writer.waiting < limit
                    and len(self._running) < self._most
                ):
                    window = syncer._next(self._ctx, self._pending)
                    future = self._pool.submit(syncer._read, self._ctx, window, writer.run, [])
                    self._running[future] = window
                    future.add_done_callback(lambda _future: writer.wake())
            except Exception as exc:  # a fetch thread calling must not lose its own body
                self.failure = exc

    def reap(self) -> None:
        """Forget finished downloads; keep the first failure."""
        with self._lock:
            for future in [f for f in self._running if f.done()]:
                del self._running[future]
                error = future.exception()
                if error is not None and self.failure is None:
                    self.failure = error

    def over(self) -> bool:
        with self._lock:
            return not self._running and (not self._pending or self.failure is not None)


class _Writer:
    """The one thread that touches the warehouse while fetch threads download.

    Fetch threads hand it their commits (`run`, blocking until done); the pass's own
    thread executes them one at a time (`serve`), so the DuckDB connection is never
    used from two threads, each window is still its own transaction, and a stop
    signal's `interrupt` reaches the statement in hand. Once no commit has come for
    `LINGER`, the file is let go, so readers get in while the pass waits on the network;
    not sooner, as closing DuckDB's connection checkpoints the file: bodies arriving
    back to back would pay one checkpoint each (~25 ms at 50k records, growing with the
    primary-key index)."""

    LINGER = 0.5
    """Seconds without a commit after which the file is let go."""

    def __init__(
        self,
        release: Callable[[], None],
        stop: threading.Event,
        *,
        handed: Callable[[], None],
    ) -> None:
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        """Commits handed in, and None for a download that ended (`wake`)."""
        self._release = release
        self._stop = stop
        self._handed = handed
        """Told (on the fetch thread) each time a body is handed in."""
        self._closed = False
        self._last = time.monotonic()
        """When the last commit ended (or the writer started)."""
        self._lock = threading.Lock()
        self.waiting = 0
        """Fetch threads whose body is downloaded and waits for (or is in) its load."""

    def run(self, work: Callable[[], LoadResult]) -> LoadResult:
        job = _Job(work)
        with self._lock:
            self.waiting += 1
        try:
            self._jobs.put(job)
            self._handed()
            if self._closed:
                self._drain()
            job.done.wait()
        finally:
            with self._lock:
                self.waiting -= 1
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def serve(self, *, timeout: float) -> None:
        """Run one commit, waiting up to `timeout` for one; the caller starts new
        downloads between two commits."""
        try:
            job = self._jobs.get(timeout=timeout)
        except queue.Empty:
            if time.monotonic() - self._last >= self.LINGER:
                self._release()
            return
        if job is None:
            return
        if self._stop.is_set():
            job.error = Stopped("stop requested before this window was loaded")
        else:
            try:
                job.result = job.work()
            except BaseException as exc:  # handed to the fetch thread, which raises it
                job.error = exc
        self._last = time.monotonic()
        job.done.set()

    def wake(self) -> None:
        """A download ended: `serve` returns now, not at the end of its wait, so the
        pass's thread sees at once that the flight is over (or a slot is free)."""
        self._jobs.put(None)

    def close(self) -> None:
        """No more commits: any handed in from now on (or waiting) fail with Stopped."""
        self._closed = True
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is None:
                continue
            job.error = Stopped("the pass ended before this window was loaded")
            job.done.set()


@dataclass(frozen=True)
class ScopeOutcome:
    """How one (stream, scope) pass ended."""

    stream: Stream
    scope: Scope
    outcome: Outcome
    result: PassResult | None = None
    error: RcsSyncError | None = None


def sync_all(syncer: Syncer, scopes: list[Scope]) -> list[ScopeOutcome]:
    """One pass per scope. A failing scope does not stop the others, except a refused
    or unreadable token (it would fail them all) and a stop request."""
    outcomes: list[ScopeOutcome] = []
    if not syncer.stream.windowed:
        scopes = [Scope()]  # a dimension: read whole, once, whatever the scopes
    for scope in scopes:
        try:
            result = syncer.sync(scope)
        except Stopped as exc:
            outcomes.append(ScopeOutcome(syncer.stream, scope, "stopped", error=exc))
            break
        except RcsSyncError as exc:
            if exc.kind in ("auth", "config"):
                log.error("token_rejected", scope=scope.key, error=str(exc))
                outcomes.append(ScopeOutcome(syncer.stream, scope, "auth_failed", error=exc))
                break
            log.error("pass_failed", scope=scope.key, kind=exc.kind, error=str(exc))
            outcomes.append(ScopeOutcome(syncer.stream, scope, "failed", error=exc))
            if isinstance(exc, ApiUnreachable):
                break  # a wrong base_url: every other scope would fail the same way
            continue
        outcomes.append(ScopeOutcome(syncer.stream, scope, "ok", result=result))
    return outcomes


def sync_streams(syncers: list[Syncer], scopes: list[Scope]) -> list[ScopeOutcome]:
    """`sync_all` for each stream in turn; a refused token or a stop ends them all."""
    outcomes: list[ScopeOutcome] = []
    for syncer in syncers:
        outcomes += sync_all(syncer, scopes)
        if outcomes and (
            outcomes[-1].outcome in ("auth_failed", "stopped")
            or isinstance(outcomes[-1].error, ApiUnreachable)
        ):
            break
    return outcomes
