"""The daemon behind `rcs-sync run`: a schedule, signals, systemd, metrics.

Each pass runs as a child process (`rcs-sync sync --events --publish-snapshot`, or on a
lake `--maintain` instead, forked by `passes.py`) whose JSON lines on stdout
(`model/events.py`) tell this process what happened; a lake's pass maintains it when due
(`warehouse/maintenance.py`).
The daemon itself never loads DuckDB, requests, the engine, source, warehouse or
analytics packages, the charts or the simulator, nor holds a byte of record data, so it
idles small and a pass's memory is returned to the system when the pass ends; a crash
inside a pass cannot take down the schedule (`tests/test_daemon_footprint.py`
checks the running process, import-linter the imports). A failing API or a locked file
fails the pass, never the daemon.

SIGTERM/SIGINT are forwarded to a running pass, which finishes or rolls back the
window in hand and exits; one that does not within `STOP_GRACE` seconds is killed,
which is safe at any instant (committed data is durable, an open transaction is
discarded).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from rcs_sync.config import ConfigError, Settings, parse_listen
from rcs_sync.daemon.metrics import Metrics
from rcs_sync.daemon.notify import Notifier
from rcs_sync.daemon.passes import PassEntry, PassProcess
from rcs_sync.model import events
from rcs_sync.model.durations import format_instant, parse_instant
from rcs_sync.model.errors import EXIT_STOPPED, WarehouseUnavailable
from rcs_sync.model.events import PassFailed, ScopeFinished
from rcs_sync.model.reread import checkpoint_lag_bound, stream_tiers
from rcs_sync.model.streams import named
from rcs_sync.stop_signals import StopSignals
from rcs_sync.writer_lock import WriterLock

log = structlog.get_logger(__name__)

PASS = ["sync", "--events", "--publish-snapshot"]
LAKE_PASS = ["sync", "--events", "--maintain"]
"""A lake has no snapshot: its readers attach it (said once, in `daemon_started`); its
passes maintain it when due (`warehouse/maintenance.py`)."""
STOP_GRACE = 8.0
MAX_JITTER = timedelta(seconds=30)


def lag_bound(settings: Settings, name: str) -> timedelta:
    """The checkpoint lag a stream has by design: none when read with `modified_since`
    or replaced whole, the last tier's `every` when re-read in tiers (`model/reread.py`)."""
    stream = named(name)
    if stream.modified_since or not stream.windowed:
        return timedelta(0)
    return checkpoint_lag_bound(stream_tiers(settings.reread, name, settings.sync.update_horizon))


@dataclass
class PassReport:
    """What one pass process reported: each scope's outcome, and how it exited."""

    scopes: list[ScopeFinished] = field(default_factory=list)
    exit_code: int | None = None
    failure: PassFailed | None = None
    """The failure no scope event reports (the warehouse, the token), if the pass said."""

    @property
    def reason(self) -> str:
        """Why the pass failed, as the `reason` label: its error kind, else `crash` (it
        died without saying: killed, or a crash before it could)."""
        return self.failure["kind"] if self.failure else "crash"

    @property
    def auth_failed(self) -> bool:
        return any(s["outcome"] == "auth_failed" for s in self.scopes)

    def status_line(self, now: datetime) -> str:
        when = format_instant(now)
        if self.auth_failed:
            return f"{when}: token rejected by the API; retrying every interval"
        failures = [f"{s['scope']}: {s['error']}" for s in self.scopes if s["outcome"] != "ok"]
        if not self.scopes and self.exit_code:
            failures = [
                self.failure["error"] if self.failure else f"pass process exited {self.exit_code}"
            ]
        summaries = [s["summary"] for s in self.scopes if s["summary"]]
        received = sum(s["received"] for s in summaries)
        changed = sum(s["inserted"] + s["updated"] for s in summaries)
        state = "failed: " + "; ".join(failures) if failures else "ok"
        return f"{when}: last pass {state} ({received} received, {changed} changed)"


class Service:
    def __init__(
        self,
        settings: Settings,
        command: list[str],
        entry: PassEntry,
        notifier: Notifier | None = None,
        *,
        wait: bool = True,
    ) -> None:
        self.settings = settings
        self.wait = wait
        """Wait for another daemon serving the same warehouse to exit (else exit 5)."""
        self.command = command
        """`rcs-sync`'s global options; passes run `rcs-sync *command *PASS`."""
        self.entry = entry
        self.notifier = notifier or Notifier()
        self.stop = threading.Event()
        self.metrics: Metrics | None = None
        self._lock: WriterLock | None = None
        self._process: PassProcess | None = None
        self._progress_at = time.monotonic()
        self._idle = threading.Event()
        self._idle.set()

    @property
    def interval(self) -> timedelta:
        return self.settings.sync.interval

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 once stopped cleanly."""
        signals = StopSignals(self.stop)
        signals.install()
        try:
            # One daemon per warehouse: a second one waits here for the first to exit
            # (it would also find the metrics port taken).
            wh = self.settings.warehouse
            self._lock = WriterLock(
                wh.lock_anchor, role="daemon", wait=self.wait, stop=self.stop, label=wh.label
            )
            self._lock.acquire()
            # A listen address that cannot be bound is a configuration error: report it
            # before waiting on the warehouse lock and migrations.
            self._start_metrics()
            self._migrate()
            scheduler = self._start_scheduler()
            self.notifier.ready("warehouse ready; first pass running")
            lake = self.settings.warehouse.kind == "ducklake"
            log.info(
                "daemon_started",
                interval_s=self.interval.total_seconds(),
                **({"snapshot": "none: readers attach the lake itself"} if lake else {}),
            )
            try:
                self._supervise()
            finally:
                self.notifier.stopping("stopping")
                log.info("daemon_stopping", signal=signals.received)
                scheduler.shutdown(wait=False)
                self._stop_pass()
        finally:
            signals.restore()
            if self.metrics is not None:
                self.metrics.close()
            if self._lock is not None:
                self._lock.release()
        log.info("daemon_stopped")
        return 0

    def _migrate(self) -> None:
        """Open and migrate the warehouse before READY=1 (in a child, like every pass),
        starting the fork server on the way."""
        process = PassProcess(self.entry, [*self.command, "migrate"], os.environ)
        for _line in process.lines:
            pass
        code = process.wait()
        if code != 0:
            raise WarehouseUnavailable(f"could not open or migrate the warehouse (exit {code})")

    def _stop_pass(self) -> None:
        """Ask a running pass to stop; kill it if it has not within the grace period."""
        process = self._process
        if process is not None and process.running():
            process.terminate()
        if not self._idle.wait(STOP_GRACE) and process is not None:
            log.warning("pass_killed_at_stop", grace_s=STOP_GRACE)
            process.kill()
            self._idle.wait(STOP_GRACE)

    def _start_metrics(self) -> None:
        listen = self.settings.metrics.listen
        if listen is None:
            return
        host, port = parse_listen(listen)
        metrics = Metrics()
        try:
            bound = metrics.serve(host, port)
        except OSError as exc:
            # Port taken, address not local, name unknown, port < 1024: a restart cannot
            # fix any of these, so exit 2 (RestartPreventExitStatus=) rather than 1.
            reason = exc.strerror or str(exc)
            raise ConfigError(
                "[metrics] listen",
                f"cannot listen on {listen.strip()}: {reason[:1].lower()}{reason[1:]}",
            ) from None
        self.metrics = metrics
        metrics.checkpoint_lag_bounds(
            {
                (stream, key): lag_bound(self.settings, stream).total_seconds()
                for stream in self.settings.sync.streams
                for key in self._scope_keys()
            }
        )
        log.info("metrics_listening", address=f"{host}:{bound}")

    def _scope_keys(self) -> list[str]:
        """The scope of each pass: one per configured team, else `all`."""
        teams = self.settings.api.teams
        return [str(t) for t in teams] if teams else ["all"]

    def _start_scheduler(self) -> BackgroundScheduler:
        # A pass outliving the interval (a backfill) is normal and coalesced: apscheduler's
        # "skipped: maximum number of running instances" warning every interval is noise.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        interval = self.interval.total_seconds()
        scheduler = BackgroundScheduler(timezone=UTC)
        scheduler.add_job(
            self._pass,
            IntervalTrigger(
                seconds=interval, jitter=min(MAX_JITTER.total_seconds(), interval / 10)
            ),
            id="sync",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(interval)),
            next_run_time=datetime.now(UTC),
        )
        scheduler.start()
        return scheduler

    def _supervise(self) -> None:
        """The main thread: ping the watchdog while passes make progress, until stopped."""
        watchdog = self.notifier.watchdog
        tick = watchdog.total_seconds() / 2 if watchdog else 1.0
        while not self.stop.wait(tick):
            if watchdog and self._making_progress(watchdog):
                self.notifier.ping()

    def _making_progress(self, watchdog: timedelta) -> bool:
        """A pass silent for a whole watchdog period is stuck: stop pinging, so systemd
        restarts us. Waiting between passes is progress."""
        if self._idle.is_set():
            return True
        return time.monotonic() - self._progress_at < watchdog.total_seconds()

    @contextmanager
    def _running(self) -> Iterator[None]:
        self._idle.clear()
        self._progress_at = time.monotonic()
        try:
            yield
        finally:
            self._process = None
            self._idle.set()

    def _pass(self) -> None:
        if self.stop.is_set():
            return
        with self._running():
            report = self._run_pass()
        if self.stop.is_set():
            return
        self.notifier.status(report.status_line(datetime.now(UTC)))
        if report.exit_code and report.exit_code != EXIT_STOPPED:
            self._count_unreported(report)
        if report.exit_code and not report.scopes:
            log.error(
                "pass_process_failed",
                exit_code=report.exit_code,
                kind=report.reason,
                error=report.failure["error"] if report.failure else None,
            )

    def _count_unreported(self, report: PassReport) -> None:
        """A pass that failed before (or without) reporting a scope, say on a locked
        file, still counts: as failed, for each configured (stream, scope) it did not
        report, with the kind of failure as `reason`."""
        if self.metrics is None:
            return
        keys = self._scope_keys()
        reported = {(s["stream"], s["scope"]) for s in report.scopes}
        reason = report.reason
        outcome = "auth_failed" if reason in ("auth", "config") else "failed"
        for stream in self.settings.sync.streams:
            for key in keys:
                if (stream, key) in reported:
                    continue
                self.metrics.pass_finished(
                    stream=stream,
                    scope=key,
                    outcome=outcome,
                    reason=reason,
                    duration_s=0.0,
                    received=0,
                    inserted=0,
                    updated=0,
                    quarantined=0,
                    checkpoint=None,
                    now=datetime.now(UTC),
                )

    def _run_pass(self) -> PassReport:
        report = PassReport()
        started = time.monotonic()
        one = LAKE_PASS if self.settings.warehouse.kind == "ducklake" else PASS
        process = PassProcess(self.entry, [*self.command, *one], os.environ)
        self._process = process
        for line in process.lines:
            self._progress_at = time.monotonic()
            try:
                event = events.decode(line)
            except ValueError:
                log.warning("pass_output_unreadable", line=line[:200])
                continue
            self._handle(event, report, time.monotonic() - started)
        report.exit_code = process.wait()
        return report

    def _handle(self, event: events.PassEvent, report: PassReport, elapsed: float) -> None:
        if event["event"] == "scope":
            report.scopes.append(event)
        elif event["event"] == "failed":
            report.failure = event
        if self.metrics is None:
            return
        if event["event"] == "api_response":
            self.metrics.api_request(event["status"])
        elif event["event"] == "snapshot":
            self.metrics.snapshot_published(event["seconds"])
        elif event["event"] == "scope" and event["outcome"] != "stopped":
            summary = event["summary"]
            checkpoint = event["checkpoint"]
            self.metrics.pass_finished(
                stream=event["stream"],
                scope=event["scope"],
                outcome=event["outcome"],
                reason=(event.get("kind") or "internal") if event["outcome"] != "ok" else "",
                duration_s=summary["duration_s"] if summary else elapsed,
                received=summary["received"] if summary else 0,
                inserted=summary["inserted"] if summary else 0,
                updated=summary["updated"] if summary else 0,
                quarantined=summary["quarantined"] if summary else 0,
                checkpoint=parse_instant(checkpoint) if checkpoint else None,
                now=datetime.now(UTC),
            )
