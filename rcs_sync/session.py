"""Wiring: settings in, a ready API client, warehouse and syncer out.

The CLI commands and the daemon build their objects here, so both run exactly the
same machinery with the same settings.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from rcs_sync.config import Settings, read_number_key, read_token
from rcs_sync.engine.sync import Listener, Options, Scope, Syncer
from rcs_sync.model.streams import RCS_RECORDS, Stream
from rcs_sync.model.windows import SyncPolicy
from rcs_sync.source.client import ApiClient, RetryPolicy
from rcs_sync.warehouse.duckdb_file import Warehouse
from rcs_sync.warehouse.privacy import PLAIN, Privacy


@dataclass
class App:
    settings: Settings
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        wh = self.settings.warehouse
        self.warehouse = Warehouse(
            wh.path,
            lock_timeout=wh.lock_timeout.total_seconds(),
            memory_limit=wh.memory_limit,
            threads=wh.threads,
            stop=self.stop,
        )

    def token(self) -> str:
        """Read afresh for every request, so a rotated token file is used at once."""
        return read_token(self.settings.api, self.env)

    def api(self, on_response: Callable[[int | None], None] | None = None) -> ApiClient:
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
            max_records=s.max_records_per_request,
            min_window=s.min_window,
            privacy=self.privacy(),
        )

    def privacy(self) -> Privacy:
        wh = self.settings.warehouse
        if wh.number == "hash":
            return Privacy("hash", read_number_key(wh, self.env))
        return Privacy("mask") if wh.number == "mask" else PLAIN

    def syncer(
        self, api: ApiClient, stream: Stream = RCS_RECORDS, listener: Listener | None = None
    ) -> Syncer:
        return Syncer(
            stream, api, self.warehouse, self.options(), listener=listener, stop=self.stop
        )

    def scopes(self) -> list[Scope]:
        teams = self.settings.api.teams
        return [Scope(t) for t in teams] if teams else [Scope()]
