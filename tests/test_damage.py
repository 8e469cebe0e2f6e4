"""A damaged warehouse or snapshot is named, never written into, and status is unhealthy.

Four cases from the field: 64 KB of garbage in the middle of the file, a file cut in
half, a garbage header, and the analysts' snapshot copied over the warehouse (the
documented recovery, which must simply work).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Site, log_lines, terminal_line

SiteFactory = Callable[..., Site]


def garbage_mid_file(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(64 * 1024))


def truncated(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def garbage_header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(os.urandom(4096))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (garbage_mid_file, "checksum"),
        (truncated, "truncated"),
        (garbage_header, "header"),
    ],
    ids=["garbage-mid-file", "truncated", "garbage-header"],
)
def test_a_damaged_warehouse_is_named_never_written_and_unhealthy(
    site: SiteFactory, damage: Callable[[Path], None], what: str
) -> None:
    s = site(records=60_000, days=4)
    s.ok("sync")
    damage(s.db)
    before = digest(s.db)
    requests = len(s.sim.sim.requests)
    s.sim.sim.advance(60)
    s.sim.sim.mutate(20)
    for command in (
        ("sync",),
        ("report",),
        ("backfill", "--start", "2026-01-01", "--end", "2026-01-02"),
        ("migrate",),
    ):
        result = s.run(*command)
        assert result.returncode == 5, (command, result.stderr[-2000:])
        errors = [e for e in log_lines(result.stderr) if e["level"] == "error"]
        assert len(errors) == 1, (command, result.stderr)
        line = terminal_line(result.stderr)
        assert line.startswith(f"rcs-sync: error: warehouse {s.db} is damaged ("), line
        assert what in line, line
        assert "nothing is written into it" in line
        assert "rcs.snapshot.duckdb" in line and "backfill --force" in line
    assert digest(s.db) == before, "a command wrote into the damaged file"
    assert len(s.sim.sim.requests) == requests, "a pass went on to the API"
    status = s.run("status", "--json")
    assert status.returncode == 6, status.stderr
    report = json.loads(status.stdout)
    assert not report["healthy"] and report["damaged"]
    assert "is damaged" in report["problems"][0]
    assert digest(s.db) == before


def test_a_damaged_snapshot_is_named_by_report(site: SiteFactory) -> None:
    s = site(records=60_000, days=4)
    s.ok("sync", "--publish-snapshot")
    snapshot = s.dir / "rcs.snapshot.duckdb"
    copy = s.dir / "snapshot-copy.duckdb"
    shutil.copy(snapshot, copy)
    os.replace(copy, snapshot)  # its own file, not the daemon's generation
    garbage_mid_file(snapshot)
    result = s.run("report")
    assert result.returncode == 5, result.stderr[-2000:]
    line = terminal_line(result.stderr)
    assert line.startswith(f"rcs-sync: error: snapshot {snapshot} is damaged ("), line
    assert "delete it" in line


def test_a_copy_of_the_snapshot_works_as_the_warehouse(site: SiteFactory) -> None:
    s = site(records=3_000, days=4)
    for _ in range(3):  # the third publish refreshes the first generation in place
        s.sim.sim.advance(60)
        s.sim.sim.mutate(20)
        s.ok("sync", "--publish-snapshot")
    os.replace(s.db, s.dir / "lost.duckdb")
    shutil.copy(s.dir / "rcs.snapshot.duckdb", s.db)
    s.sim.sim.advance(60)
    s.sim.sim.mutate(20)
    result = s.ok("sync")
    assert "incremental" in result.stdout
    s.assert_converged()
    runs = s.query("SELECT run_id FROM sync_runs ORDER BY run_id")
    assert len(runs) == len(set(runs)) >= 4
