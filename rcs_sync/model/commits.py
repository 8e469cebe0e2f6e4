"""The engine ↔ warehouse hand-over: what a loaded batch is committed with, and what the
load did. Shared types, so an engine and any warehouse backend speak the same terms."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from rcs_sync.model.streams import Stream
from rcs_sync.model.windows import Window


@dataclass(frozen=True)
class Commit:
    """Bookkeeping written in the same transaction as a batch of records."""

    stream: Stream
    scope: str
    run_id: int
    fetched_at: datetime
    window: Window | None = None
    """Set for full-window reads: recorded as completed, so a rerun skips it."""
    checkpoint: datetime | None = None
    """Set when this batch completes a pass: the checkpoint it earns."""
    horizon: timedelta | None = None
    """The update horizon plus the clock-skew margin: ledger rows of windows that ended
    longer than this before the read only serve backfills (`warehouse/ledger.py`)."""


@dataclass(frozen=True)
class LoadResult:
    received: int
    inserted: int
    updated: int
    quarantined: int
