"""The warehouse `[warehouse] kind` names and its one-writer lock: what every command
that touches the warehouse needs. `status`, `migrate` and `maintain` need nothing else,
so they start without the HTTP stack and the engine a pass loads (`session.py`, which
builds on this): `status`, a monitoring probe, took 0.45 s instead of 0.70 (README)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from rcs_sync.config import Settings
from rcs_sync.model.streams import Stream, named
from rcs_sync.warehouse.duckdb_file import Warehouse
from rcs_sync.warehouse.lake import Lake
from rcs_sync.writer_lock import WriterLock


@dataclass
class Backend:
    """The warehouse the settings name (`warehouse`), and its writer lock."""

    settings: Settings
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.warehouse = self._backend()

    def _backend(self) -> Warehouse | Lake:
        """The one place `[warehouse] kind` chooses the backend."""
        wh = self.settings.warehouse
        if wh.kind == "ducklake":
            return Lake.from_settings(wh, streams=self.streams(), env=self.env)
        return Warehouse(
            wh.path,
            lock_timeout=wh.lock_timeout.total_seconds(),
            memory_limit=wh.memory_limit,
            threads=wh.threads,
            stop=self.stop,
            streams=self.streams(),
            snapshot=wh.snapshot_file,
            storage_version=wh.storage_version,
        )

    def writer(
        self, *, wait: bool = True, on_wait: Callable[[int | None, float], None] | None = None
    ) -> WriterLock:
        """The one-writer lock of the warehouse (`writer_lock.py`)."""
        wh = self.settings.warehouse
        return WriterLock(
            wh.lock_anchor, wait=wait, stop=self.stop, on_wait=on_wait, label=wh.label
        )

    def streams(self) -> tuple[Stream, ...]:
        """The declarations `[sync] streams` names, in its order."""
        return tuple(named(name) for name in self.settings.sync.streams)
