"""What a pass needs of the warehouse, as a Protocol: the engine never names a backend.

`session.py` passes in a DuckDB file (`warehouse/duckdb_file.py`) or a DuckLake
(`warehouse/lake.py`); both implement these calls once, in `warehouse/bookkeeping.py`,
with the same promise: `commit_batch` loads a body and writes its `Commit` in one
transaction, or neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from rcs_sync.model.commits import Commit, LoadResult
from rcs_sync.model.responses import Spool
from rcs_sync.model.streams import Stream
from rcs_sync.model.windows import Fetch, Split
from rcs_sync.warehouse.privacy import Privacy


class Store(Protocol):
    def checkpoint(self, stream: Stream, scope: str) -> datetime | None:
        """The scope's checkpoint, None before its first complete pass."""
        ...

    def set_checkpoint(self, stream: Stream, scope: str, checkpoint: datetime, run_id: int) -> None:
        """Write a checkpoint earned without a batch (every window was read before)."""
        ...

    def fetches(self, stream: Stream, scope: str) -> list[Fetch]:
        """The completed windows, with when each was fetched."""
        ...

    def splits(self, stream: Stream, scope: str) -> list[Split]:
        """Periods known to need smaller windows."""
        ...

    def record_splits(
        self, stream: Stream, scope: str, splits: Sequence[tuple[Split, str]]
    ) -> None: ...

    def start_run(self, stream: Stream, scope: str, command: str, mode: str) -> int:
        """A `sync_runs` row for this pass; its id goes into each `Commit`."""
        ...

    def finish_run(self, run_id: int, error: BaseException | None) -> None: ...

    def commit_batch(
        self,
        body: Spool,
        commit: Commit,
        *,
        include_optional: bool,
        server_limit: int | None,
        privacy: Privacy,
    ) -> LoadResult:
        """Load `body` and write `commit` in one transaction."""
        ...

    def release(self) -> None:
        """Let go of the file while the pass waits on the network."""
        ...
