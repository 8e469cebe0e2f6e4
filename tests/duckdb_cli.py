"""The DuckDB 1.x command-line client, for tests that read our files as an analyst does.

`make test` installs the `duckdb-cli` package (the newest 1.x CLI on the package index)
into its own venv, `.venv-cli/`, so its `duckdb` binary never meets the Python `duckdb`
module of `.venv`. `$RCS_SYNC_DUCKDB_CLI` names another binary.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / ".venv-cli" / "bin" / "duckdb"


def duckdb_cli() -> Path:
    """The CLI's path; the calling test skips when it is not installed."""
    path = Path(os.environ.get("RCS_SYNC_DUCKDB_CLI", DEFAULT))
    if not os.access(path, os.X_OK):
        pytest.skip(f"the DuckDB 1.x CLI is not installed at {path}: run `make .venv-cli`")
    return path


def run_cli(cli: Path, database: Path, sql: str) -> subprocess.CompletedProcess[str]:
    """`duckdb -readonly DATABASE` with `sql` on stdin, results as CSV, stopping at the
    first error."""
    return subprocess.run(
        [str(cli), "-readonly", "-bail", "-csv", str(database)],
        input=sql,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
