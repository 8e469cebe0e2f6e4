"""Prometheus metrics for `rcs-sync run`, served at `http://<listen>/metrics`.

Each `Metrics` owns its own `CollectorRegistry`, never the process-wide default, so
tests and several instances in one process never see each other's samples. Metric
names and labels are a public interface (dashboards and alerts depend on them): see
the README before renaming anything.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Mapping
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

OUTCOMES = ("ok", "failed", "auth_failed")
REASONS: dict[str, tuple[str, ...]] = {
    "ok": ("",),
    "failed": ("api", "warehouse", "internal", "crash"),
    "auth_failed": ("auth", "config"),
}
"""The `reason` label each outcome takes: the failure's kind (`sync_runs.error_kind`),
or `crash` for a pass that died without saying why; empty for `ok`."""
OPERATIONS = ("received", "inserted", "updated", "quarantined")

PASS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
"""From a no-op incremental pass (tens of ms) to an hour-long backfill."""

PUBLISH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
"""A snapshot is a copy of the DuckDB file: milliseconds when small, minutes when large."""

POLL_INTERVAL = 0.05
"""How often the server loop checks for `close()`; the default 0.5 s would delay exit."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    """A scrape that hangs never holds up the process's exit."""


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log: a line per scrape on stderr would interleave with the JSON logs."""


class Metrics:
    """The daemon's counters, gauges and histograms, and the HTTP server exposing them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._passes = Counter(
            "rcs_sync_passes_total",
            "Sync passes finished, by outcome and the reason of a failure.",
            ["stream", "scope", "outcome", "reason"],
            registry=self.registry,
        )
        self._records = Counter(
            "rcs_sync_records_total",
            "Records received from the API and what loading them did.",
            ["stream", "operation"],
            registry=self.registry,
        )
        self._api_requests = Counter(
            "rcs_sync_api_requests_total",
            "HTTP responses from the provider by status code; 'error' for none at all.",
            ["status"],
            registry=self.registry,
        )
        self._last_success = Gauge(
            "rcs_sync_last_success_timestamp_seconds",
            "Unix time the last successful pass finished.",
            ["stream", "scope"],
            registry=self.registry,
        )
        self._checkpoint_lag = Gauge(
            "rcs_sync_checkpoint_lag_seconds",
            "Age of the checkpoint after the last pass (server time, so it can dip "
            "slightly below 0 when the server clock runs ahead).",
            ["stream", "scope"],
            registry=self.registry,
        )
        self._checkpoint_lag_bound = Gauge(
            "rcs_sync_checkpoint_lag_bound_seconds",
            "How far the checkpoint trails by design: 0 for streams read with "
            "modified_since, the last re-read tier's every for tiered re-reads.",
            ["stream", "scope"],
            registry=self.registry,
        )
        self._pass_duration = Histogram(
            "rcs_sync_pass_duration_seconds",
            "Wall time of sync passes, whatever their outcome.",
            ["stream"],
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )
        self._snapshot_publish = Histogram(
            "rcs_sync_snapshot_publish_seconds",
            "Time taken to publish the read-only snapshot of the warehouse.",
            buckets=PUBLISH_BUCKETS,
            registry=self.registry,
        )

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics from a daemon thread and return the bound port (port 0 picks
        a free one), so a stuck scrape can never hold up the sync or the exit."""
        if self._server is not None:
            raise RuntimeError("metrics server already running")
        family, *_, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        server_class = _Server6 if family == socket.AF_INET6 else _Server
        server = make_server(
            str(sockaddr[0]), port, make_wsgi_app(self.registry), server_class, _QuietHandler
        )
        thread = threading.Thread(
            target=server.serve_forever, args=(POLL_INTERVAL,), name="metrics-http", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread
        return server.server_port

    def close(self) -> None:
        """Stop serving and release the port; safe to call more than once."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    def api_request(self, status: int | None) -> None:
        """Count one provider response; None when none came (connection error, timeout)."""
        self._api_requests.labels("error" if status is None else str(status)).inc()

    def pass_finished(
        self,
        *,
        stream: str,
        scope: str,
        outcome: str,
        reason: str | None = None,
        duration_s: float,
        received: int,
        inserted: int,
        updated: int,
        quarantined: int,
        checkpoint: datetime | None,
        now: datetime,
    ) -> None:
        """Record one finished pass. `checkpoint` is the scope's checkpoint after it (even
        a failed pass may have committed windows), `now` an aware time at its end."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        # Create every outcome's series at 0, so increase(...{outcome="failed"}) sees the
        # first failure rather than a series appearing from nowhere.
        for name, reasons in REASONS.items():
            for known in reasons:
                self._passes.labels(stream, scope, name, known)
        if reason is None:
            reason = REASONS[outcome][0]
        self._passes.labels(stream, scope, outcome, reason).inc()
        counts = (received, inserted, updated, quarantined)
        for operation, count in zip(OPERATIONS, counts, strict=True):
            self._records.labels(stream, operation).inc(count)
        self._pass_duration.labels(stream).observe(duration_s)
        if outcome == "ok":
            self._last_success.labels(stream, scope).set(now.timestamp())
        if checkpoint is not None:
            self._checkpoint_lag.labels(stream, scope).set((now - checkpoint).total_seconds())

    def checkpoint_lag_bounds(self, bounds: Mapping[tuple[str, str], float]) -> None:
        """Declare each (stream, scope)'s designed checkpoint lag, in seconds, which the
        alert on the checkpoint lag allows for."""
        for (stream, scope), seconds in bounds.items():
            self._checkpoint_lag_bound.labels(stream, scope).set(seconds)

    def snapshot_published(self, seconds: float) -> None:
        """Record how long one snapshot publication took."""
        self._snapshot_publish.observe(seconds)
