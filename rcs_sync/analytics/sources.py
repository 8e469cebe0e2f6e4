"""Which file analysts read, and a read-only connection to it that sees its newest data.

Two files hold the data: the live warehouse, which a running daemon writes to, and the
snapshot it publishes after each successful pass (`warehouse/snapshot.py`). `open_source`
picks one (`auto`: the snapshot, unless the live file has a newer successful pass and no
process holds it for writing) and attaches it, read-only, to a new in-memory DuckDB
connection, then `USE`s it, so its tables and views resolve unqualified.

Why attach rather than `duckdb.connect(path)`: DuckDB's Python module keeps one database
instance per path per process, so a second `connect(path)` while an earlier connection
is open returns the *old* instance, even after the snapshot was replaced. An `ATTACH`
from a fresh in-memory connection opens the file anew, so every call sees the newest
published data, whatever connections are still open.

A lake (`[warehouse] kind = "ducklake"`) has neither: it is attached itself, read-only,
as `lake`, while the daemon writes it; each query sees the last commit. Its `as_of` is
the time of the lake's latest snapshot (its last commit).

The connection also has a temporary table `rcs_source` (one row: `source`, `path`,
`as_of`, `last_pass`) saying what it reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import duckdb

from rcs_sync.config import WarehouseSettings
from rcs_sync.model.durations import format_instant
from rcs_sync.model.errors import WarehouseLocked, WarehouseUnavailable
from rcs_sync.warehouse.duckdb_file import Warehouse
from rcs_sync.warehouse.lake import LAKE_ALIAS, Lake

SourceName = Literal["auto", "snapshot", "live"]
SOURCES: tuple[SourceName, ...] = ("auto", "snapshot", "live")
ALIAS = "rcs"
"""The name the chosen file is attached under (`rcs.main.rcs_records`)."""
_PROBE = "_rcs_probe"


@dataclass(frozen=True)
class Source:
    """The file a connection reads, and how fresh its data is."""

    path: Path | str
    """The file, or a lake's catalog (`Lake.location`)."""
    snapshot: bool
    as_of: datetime | None
    """For a snapshot, `snapshot_info.as_of` (everything committed before it is in the
    file); for the live file, its last successful pass."""
    last_pass: datetime | None = None
    """When the last successful pass recorded in the file finished."""
    lake: bool = False

    @property
    def name(self) -> str:
        return "lake" if self.lake else "snapshot" if self.snapshot else "live"

    def describe(self) -> str:
        when = format_instant(self.as_of) if self.as_of else None
        if self.lake:
            last = format_instant(self.last_pass) if self.last_pass else "never"
            return f"{self.path} (last commit {when or 'none'}, last successful pass {last})"
        if self.snapshot:
            return f"{self.path} (snapshot as of {when or 'unknown'})"
        return f"{self.path} (live file, last successful pass {when or 'never'})"


class _Locked(Exception):
    """The live file is held by a writer right now."""


def open_source(
    settings: WarehouseSettings,
    source: str = "auto",
    *,
    stream: str | None = None,
) -> tuple[duckdb.DuckDBPyConnection, Source]:
    """A new read-only connection to the chosen file, and what it is.

    `auto` reads the snapshot, or the live file when its last successful pass (of
    `stream`, or of any stream) is newer than the snapshot's and no writer holds it
    (or when there is no snapshot). `snapshot` and `live` insist; `live` waits up to
    `lock_timeout` for a writer to let go, like every rcs-sync connection.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    lake = settings.kind == "ducklake"
    if lake and source == "snapshot":
        raise WarehouseUnavailable(
            "a lake has no snapshot: read it with source 'auto' or 'live' (it is attached "
            "read-only, and each query sees the last commit)"
        )
    con = (
        Lake.from_settings(settings).reader()
        if lake
        else duckdb.connect(
            config={"memory_limit": settings.memory_limit, "threads": settings.threads}
        )
    )
    try:
        chosen = (
            _lake_source(con, settings, stream) if lake else _file(con, settings, source, stream)
        )
        con.execute(
            "CREATE TEMP TABLE rcs_source AS SELECT ?::VARCHAR AS source, ?::VARCHAR AS path, "
            "?::TIMESTAMPTZ AS as_of, ?::TIMESTAMPTZ AS last_pass",
            [chosen.name, str(chosen.path), chosen.as_of, chosen.last_pass],
        )
    except BaseException:
        con.close()
        raise
    return con, chosen


def _file(
    con: duckdb.DuckDBPyConnection, settings: WarehouseSettings, source: str, stream: str | None
) -> Source:
    chosen = _choose(con, settings, source, stream)
    con.execute(f"USE {ALIAS}")
    _inspector(settings, Path(chosen.path), snapshot=chosen.snapshot).verify(con)
    return chosen


def _lake_source(
    con: duckdb.DuckDBPyConnection, settings: WarehouseSettings, stream: str | None
) -> Source:
    """The lake itself, attached read-only (`auto` and `live` are the same on a lake); its
    `as_of` is its last commit."""
    as_of = _optional(con, f"SELECT max(snapshot_time) FROM ducklake_snapshots({LAKE_ALIAS!r})")
    last = _last_pass(con, LAKE_ALIAS, stream)
    return Source(settings.label, False, as_of, last, lake=True)


def _choose(
    con: duckdb.DuckDBPyConnection,
    settings: WarehouseSettings,
    source: str,
    stream: str | None,
) -> Source:
    snapshot, live = settings.snapshot_file, settings.path
    if source == "snapshot" or (source == "auto" and snapshot.exists() and not live.exists()):
        return _attach_snapshot(con, settings)
    if source == "live" or not snapshot.exists():
        if not live.exists():
            raise WarehouseUnavailable(f"warehouse {live} does not exist yet: run a sync")
        return _attach_live(con, settings, stream, settings.lock_timeout)
    chosen = _attach_snapshot(con, settings, stream)
    try:
        newer = _last_pass_of(settings, stream)
    except _Locked:
        return chosen  # a writer is at work: it publishes a newer snapshot soon
    if newer is None or (chosen.last_pass is not None and newer <= chosen.last_pass):
        return chosen
    con.execute(f"DETACH {ALIAS}")
    try:
        return _attach_live(con, settings, stream, timedelta(0))
    except WarehouseLocked:  # a writer took it meanwhile
        return _attach_snapshot(con, settings, stream)


def _attach_snapshot(
    con: duckdb.DuckDBPyConnection, settings: WarehouseSettings, stream: str | None = None
) -> Source:
    snapshot = settings.snapshot_file
    if not snapshot.exists():
        raise WarehouseUnavailable(
            f"no snapshot at {snapshot}: `rcs-sync run` (or `sync --publish-snapshot`) "
            "publishes one"
        )
    try:
        _attach(con, _inspector(settings, snapshot, snapshot=True), ALIAS)
    except _Locked:
        raise WarehouseLocked(f"snapshot {snapshot} is locked by a writer") from None
    as_of = _optional(con, f"SELECT max(as_of) FROM {ALIAS}.main.snapshot_info")
    return Source(snapshot, True, as_of, _last_pass(con, ALIAS, stream))


def _attach_live(
    con: duckdb.DuckDBPyConnection,
    settings: WarehouseSettings,
    stream: str | None,
    patience: timedelta,
) -> Source:
    live = settings.path
    deadline = time.monotonic() + patience.total_seconds()
    pause = 0.05
    while True:
        try:
            _attach(con, _inspector(settings, live, snapshot=False), ALIAS)
            break
        except _Locked as exc:
            if time.monotonic() >= deadline:
                raise WarehouseLocked(
                    f"warehouse {live} is locked by another process{exc}; "
                    f"gave up after {patience.total_seconds():g}s"
                ) from None
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
    last = _last_pass(con, ALIAS, stream)
    return Source(live, False, last, last)


def _last_pass_of(settings: WarehouseSettings, stream: str | None) -> datetime | None:
    """The live file's last successful pass, read through a connection of its own, so
    the file is held only for that one query."""
    with duckdb.connect() as probe:
        _attach(probe, _inspector(settings, settings.path, snapshot=False), _PROBE)
        return _last_pass(probe, _PROBE, stream)


def _inspector(settings: WarehouseSettings, path: Path, *, snapshot: bool) -> Warehouse:
    """The file's damage checks and messages (which file, what is wrong, how to recover),
    as every rcs-sync command gives them; nothing is opened by it."""
    return Warehouse(
        path,
        role="snapshot" if snapshot else "warehouse",
        snapshot=None if snapshot else settings.snapshot_file,
    )


def _attach(con: duckdb.DuckDBPyConnection, file: Warehouse, alias: str) -> None:
    """Attach `file` read-only as `alias`; its length is checked before any query reads
    a block, so a truncated file is named damaged whichever query would hit the gap."""
    path = file.path
    try:
        con.execute(f"ATTACH ? AS {alias} (READ_ONLY)", [str(path)])
    except duckdb.Error as exc:
        message = str(exc)
        if isinstance(exc, duckdb.IOException) and "lock" in message.lower():
            pid = message.rsplit("(PID ", 1)
            raise _Locked(f" (PID {pid[1].split(')')[0]})" if len(pid) == 2 else "") from None
        damage = file.damage(exc)
        if damage is not None:
            raise damage from None
        raise WarehouseUnavailable(f"cannot open {path}: {message.splitlines()[0]}") from None
    file.check_length(con, alias)


def _last_pass(con: duckdb.DuckDBPyConnection, alias: str, stream: str | None) -> datetime | None:
    sql = f"SELECT max(finished_at) FROM {alias}.main.sync_runs WHERE status = 'ok'"
    last: datetime | None = _optional(
        con, sql + (" AND stream = ?" if stream else ""), [stream] if stream else []
    )
    return last


def _optional(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    """The query's one value, or None when the table it reads does not exist (yet)."""
    try:
        row = con.execute(sql, params or []).fetchone()
    except duckdb.CatalogException:
        return None
    return row[0] if row else None
