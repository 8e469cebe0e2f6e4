"""Wiring: settings in, a ready API client, warehouse and syncer out.

The CLI commands and the daemon build their objects here, so both run exactly the
same machinery with the same settings. The warehouse side alone is `backend.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

from rcs_sync.backend import Backend
from rcs_sync.config import read_number_key, read_token
from rcs_sync.engine.sync import Listener, Options, Scope, Syncer
from rcs_sync.model.errors import Stopped, WarehouseBusy
from rcs_sync.model.streams import Stream
from rcs_sync.model.throttle import Throttle
from rcs_sync.model.windows import SyncPolicy
from rcs_sync.source.client import ApiClient, RetryPolicy
from rcs_sync.stop_signals import StopSignals
from rcs_sync.warehouse.bookkeeping import failed_run
from rcs_sync.warehouse.privacy import PLAIN, Privacy


class App(Backend):
    """The backend, and what a pass adds to it: the token, the API client, the syncer."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._signals: StopSignals | None = None

    @contextmanager
    def session(
        self,
        on_response: Callable[[int | None], None] | None = None,
        *,
        command: str = "sync",
        scopes: Sequence[str] | None = None,
        wait: bool = True,
        on_wait: Callable[[int | None, float], None] | None = None,
        first_contact_fails_fast: bool = False,
        verify: bool = True,
    ) -> Iterator[ApiClient]:
        """What every pass runs inside (`sync`, `backfill`, the daemon's passes): stop
        signals that finish or roll back the window in hand, the token read once up
        front, the one-writer lock (`writer_lock.py`; waiting for another writer unless
        not `wait`), the warehouse held and migrated, and an API client, closed after.

        A failure before the pass could start (the token unreadable, the file locked,
        unwritable or damaged) is kept as a failed run of each of its (stream, scope)
        pairs (`scopes`: keys, default the configured ones), written into `sync_runs` by
        the next pass that can write (`Warehouse.defer_run`).

        `first_contact_fails_fast` (one-shot commands, never the daemon's passes): a first
        request that cannot connect at all fails at once (`ApiUnreachable`), unretried.
        `verify`: check every data block before writing (`Warehouse.verify`); the daemon's
        passes skip it (the daemon checked at start-up, and a damaged block any pass
        reads fails it just as well)."""
        self._stop_on_signals(interrupt=False)
        started = datetime.now(UTC)
        ready = False
        try:
            self.token()
            with self.writer(wait=wait, on_wait=on_wait), self.warehouse.held():
                self.warehouse.migrate(verify=verify)
                ready = True
                self._stop_on_signals(interrupt=True)
                api = self.api(on_response, first_contact_fails_fast=first_contact_fails_fast)
                try:
                    yield api
                finally:
                    api.close()
        except Exception as exc:
            if not ready and not isinstance(exc, Stopped | WarehouseBusy):
                keys = [s.key for s in self.scopes()] if scopes is None else scopes
                for stream in self.streams():
                    for key in keys:
                        self.warehouse.defer_run(
                            failed_run(stream.name, key, command, exc, started)
                        )
            raise

    def _stop_on_signals(self, *, interrupt: bool) -> None:
        """SIGTERM/SIGINT finish or roll back the window in hand, then exit: this is how
        the daemon stops a pass, and how Ctrl-C stops a backfill. Replaces the start-up
        handler of `rcs_sync/__main__.py`. Without `interrupt` (while migrating) a stop
        only sets `stop` for the pass to see: `Warehouse.migrate` reports an interrupted
        migration as a failure (exit 5), not a stop, and a migration is short. The
        handler itself only wakes a thread that does this (`stop_signals.py`)."""
        if self._signals is None:
            self._signals = StopSignals(self.stop)
            self._signals.install()
        self._signals.on_stop = self.warehouse.interrupt if interrupt else None

    def token(self) -> str:
        """Read afresh for every request, so a rotated token file is used at once."""
        return read_token(self.settings.api, self.env)

    def api(
        self,
        on_response: Callable[[int | None], None] | None = None,
        *,
        first_contact_fails_fast: bool = False,
    ) -> ApiClient:
        api = self.settings.api
        return ApiClient(
            api.base_url,
            self.token,
            connect_timeout=api.connect_timeout.total_seconds(),
            read_timeout=api.timeout.total_seconds(),
            retry=RetryPolicy(api.retry_budget, api.backoff_initial, api.backoff_max),
            spool_dir=self.settings.warehouse.spool_path,
            ca_bundle=api.ca_bundle,
            stop=self.stop,
            on_response=on_response,
            throttle=Throttle(api.concurrency),
            first_contact_fails_fast=first_contact_fails_fast,
        )

    def options(self) -> Options:
        s = self.settings.sync
        return Options(
            policy=SyncPolicy(
                initial_start=s.initial_start,
                window=s.window,
                update_horizon=s.update_horizon,
                overlap=s.overlap,
                clock_skew=s.clock_skew,
            ),
            include_optional=self.settings.api.include_content,
            server_limit=self.settings.api.server_limit,
            min_window=s.min_window,
            privacy=self.privacy(),
            concurrency=self.settings.api.concurrency,
            target_records=s.target_records_per_request,
            join_below=s.min_records_per_request,
            reread=dict(self.settings.reread),
            reread_budget=dict(self.settings.reread_budget),
        )

    def privacy(self) -> Privacy:
        wh = self.settings.warehouse
        if wh.number == "hash":
            return Privacy("hash", read_number_key(wh, self.env))
        return Privacy("mask") if wh.number == "mask" else PLAIN

    def syncer(self, api: ApiClient, stream: Stream, listener: Listener | None = None) -> Syncer:
        return Syncer(
            stream, api, self.warehouse, self.options(), listener=listener, stop=self.stop
        )

    def scopes(self) -> list[Scope]:
        teams = self.settings.api.teams
        return [Scope(t) for t in teams] if teams else [Scope()]
