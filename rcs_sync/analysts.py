"""`rcs_sync.connect()`: the analysts' Python entry point (a notebook, a script).

A module of its own name would shadow the function as an attribute of the package once
imported, hence `analysts`."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from rcs_sync.analytics.sources import SourceName, open_source
from rcs_sync.config import config_path, load_settings


def connect(
    config: str | os.PathLike[str] | None = None, *, source: SourceName = "auto"
) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection to the warehouse's data, with its tables and views.

    `config` is the rcs-sync config file (default: `$RCS_SYNC_CONFIG`, else
    `./rcs-sync.toml`); only its `[warehouse]` section is used, and no token is needed.
    `source` chooses the file: `"auto"` (the default) reads the analysts' snapshot, or
    the live warehouse when its last successful pass is newer and no process is writing
    to it; `"snapshot"` or `"live"` insist on one (`"live"` waits up to `[warehouse]
    lock_timeout` for a writer to finish).

    Every call opens the file anew, so it sees the newest published data even while
    connections made earlier in the same process are still open (they keep the data
    they saw). `SELECT * FROM rcs_source` tells which file the connection reads and how
    fresh it is. Close the connection when done: while it reads the live file, a
    running daemon cannot write to it.

    Raises `rcs_sync.model.errors.WarehouseUnavailable` when the file does not exist,
    `WarehouseLocked` when it stayed locked, and `rcs_sync.config.ConfigError` for a
    bad config file.
    """
    path = config_path(None if config is None else os.fspath(config), os.environ)
    settings = load_settings(Path(path))
    con, _chosen = open_source(settings.warehouse, source)
    return con
