"""The analysts' snapshot: complete, atomic, never blocked by readers, crash-safe."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from rcs_sync.model.commits import Commit
from rcs_sync.model.errors import WarehouseUnavailable
from rcs_sync.model.responses import Spool
from rcs_sync.model.streams import RCS_RECORDS
from rcs_sync.warehouse import snapshot as snapshot_module
from rcs_sync.warehouse.duckdb_file import Warehouse
from rcs_sync.warehouse.snapshot import INFO_TABLE, SnapshotResult, publish

READER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
for line in sys.stdin:
    print(con.execute(line).fetchone()[0], flush=True)
"""
"""An analyst in another process: one read-only connection, kept open, one query a line."""

COUNT = "SELECT count(*) FROM rcs_records\n"


class Reader:
    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", READER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def count(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(COUNT)
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0


@pytest.fixture
def reader() -> Iterator[Callable[[Path], Reader]]:
    readers: list[Reader] = []

    def connect(path: Path) -> Reader:
        readers.append(Reader(path))
        return readers[-1]

    yield connect
    for r in readers:
        r.close()


@pytest.fixture
def main(tmp_path: Path) -> Path:
    """A migrated warehouse with a few thousand records and some bookkeeping."""
    path = tmp_path / "rcs.duckdb"
    Warehouse(path).migrate()
    execute(
        path,
        """
        INSERT INTO rcs_records
        SELECT i, i // 100, i // 10, i % 3, '+3361234' || lpad(i::VARCHAR, 4, '0'),
               'ref-' || i, 'web', (i % 5)::UTINYINT,
               TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_minutes(i), NULL, NULL,
               TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_minutes(i),
               TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_minutes(i)
        FROM range(1, 3001) AS r(i);
        INSERT INTO rcs_quarantine VALUES (1, '9', 'state: unknown value', '{"id":9}', now());
        INSERT INTO sync_checkpoints VALUES ('rcs_records', 'all', now(), now());
        INSERT INTO sync_runs (stream, scope, command, started_at, status)
        VALUES ('rcs_records', 'all', 'sync', now(), 'ok');
        """,
    )
    return path


@pytest.fixture
def snap(tmp_path: Path) -> Path:
    return tmp_path / "rcs.snapshot.duckdb"


def execute(path: Path, sql: str) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute(sql)


def count(path: Path) -> int:
    with duckdb.connect(str(path), read_only=True) as con:
        row = con.execute(COUNT).fetchone()
    assert row is not None
    return int(row[0])


def assert_same(main: Path, snap: Path) -> None:
    """Every table of the warehouse (or of a snapshot, but for its `as_of`) is in the
    snapshot, row for row."""
    with duckdb.connect() as con:
        con.execute("ATTACH ? AS w (READ_ONLY)", [str(main)])
        con.execute("ATTACH ? AS s (READ_ONLY)", [str(snap)])
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = 'w'"
                " AND table_name != ?",
                [INFO_TABLE],
            ).fetchall()
        ]
        assert {"rcs_records", "rcs_quarantine", "sync_runs", "schema_migrations"} <= set(tables)
        for table in tables:
            row = con.execute(
                f"SELECT (SELECT count(*) FROM (FROM w.{table} EXCEPT ALL FROM s.{table})),"
                f" (SELECT count(*) FROM (FROM s.{table} EXCEPT ALL FROM w.{table}))"
            ).fetchone()
            assert row == (0, 0), table


def pass_through_loader(main: Path, tmp_path: Path, first_id: int, state: int = 4) -> None:
    """A typical pass through the real loader: some state changes, some new records. New
    records in state 0 get a state history row dated by their own (old) timestamp."""
    records = [
        {"id": i, "state": state, "timestamp": "2026-01-02T10:00:00Z", "number": "+33600000000"}
        for i in range(first_id - 50, first_id + 50)
    ]
    body = tmp_path / "body.json"
    body.write_text(json.dumps(records))
    wh = Warehouse(main)
    run_id = wh.start_run(RCS_RECORDS, "all", "sync", "incremental")
    now = datetime.now(UTC)
    wh.commit_batch(
        Spool.of(body),
        Commit(RCS_RECORDS, "all", run_id, now, checkpoint=now),
        include_optional=False,
        server_limit=None,
    )
    wh.finish_run(run_id, error=None)


def generations(snap: Path) -> list[str]:
    return sorted(p.name for p in snap.with_name(f".{snap.name}.d").iterdir())


def test_publish_copies_every_table(main: Path, snap: Path) -> None:
    result = publish(main, snap)
    assert result == SnapshotResult(snap, result.seconds, snap.stat().st_size, "full")
    assert_same(main, snap)
    with duckdb.connect(str(snap), read_only=True) as con:
        row = con.execute(f"SELECT as_of FROM {INFO_TABLE}").fetchone()
    assert row is not None and row[0] <= datetime.now(UTC)


def test_refresh_is_incremental_and_equals_the_warehouse(
    main: Path, snap: Path, tmp_path: Path
) -> None:
    # A long backfill, still running at the first publishes, ends before the last one.
    running: int | None = Warehouse(main).start_run(RCS_RECORDS, "all", "backfill", "backfill")
    execute(
        main, f"UPDATE sync_runs SET started_at = now() - INTERVAL 1 DAY WHERE run_id = {running}"
    )
    assert [publish(main, snap).mode for _ in range(2)] == ["full", "full"]
    for first_id, state in ((2990, 4), (3100, 0)):
        pass_through_loader(main, tmp_path, first_id, state)
        execute(main, "INSERT INTO rcs_quarantine VALUES (2, '8', 'id: missing', '{}', now())")
        assert publish(main, snap).mode == "incremental"
        assert_same(main, snap)
        if running is not None:
            Warehouse(main).finish_run(running, error=None)
            running = None
    full = tmp_path / "full.duckdb"
    assert publish(main, full).mode == "full"
    assert_same(full, snap)


def test_files_are_group_readable_only(main: Path, snap: Path) -> None:
    old = os.umask(0o002)
    try:
        publish(main, snap)
        publish(main, snap)
    finally:
        os.umask(old)
    hidden = snap.with_name(f".{snap.name}.d")
    assert stat.S_IMODE(snap.stat().st_mode) == 0o640
    assert stat.S_IMODE(hidden.stat().st_mode) == 0o700
    for generation in hidden.glob("gen-*"):
        assert stat.S_IMODE(generation.stat().st_mode) == 0o640


@pytest.mark.timeout(60)
def test_readers_keep_their_snapshot_and_never_block_publishing(
    main: Path, snap: Path, tmp_path: Path, reader: Callable[[Path], Reader]
) -> None:
    publish(main, snap)
    publish(main, snap)
    analyst = reader(snap)
    assert analyst.count() == 3000
    modes = []
    for first_id in (3050, 3150):
        # The second publish finds the analyst's generation as its spare: it must copy.
        pass_through_loader(main, tmp_path, first_id)
        result = publish(main, snap)
        assert result.seconds < 5
        modes.append(result.mode)
    assert modes == ["incremental", "full"]
    assert analyst.count() == 3000
    assert reader(snap).count() == count(main) == 3199
    assert_same(main, snap)
    assert len([g for g in generations(snap) if g.startswith("gen-")]) == 2


def test_a_new_schema_is_copied_whole(main: Path, snap: Path) -> None:
    publish(main, snap)
    publish(main, snap)
    execute(
        main,
        """
        ALTER TABLE rcs_records ADD COLUMN channel VARCHAR;
        CREATE TABLE text_records (id BIGINT PRIMARY KEY, updated_at TIMESTAMPTZ);
        INSERT INTO text_records VALUES (1, now());
        CREATE VIEW read_rate AS SELECT avg((state = 4)::INT) AS rate FROM rcs_records;
        """,
    )
    assert publish(main, snap).mode == "full"
    assert_same(main, snap)
    with duckdb.connect(str(snap), read_only=True) as con:
        assert con.execute("SELECT rate FROM read_rate").fetchone() == (0.2,)


@pytest.mark.parametrize(
    "change",
    [
        "INSERT INTO rcs_records SELECT 9999, NULL, NULL, NULL, NULL, NULL, NULL, 1, now(),"
        " NULL, NULL, now(), TIMESTAMPTZ '2000-01-01 00:00:00+00'",  # updated_at too old
        "DELETE FROM rcs_quarantine",
        "DELETE FROM sync_runs",
        # A history row whose record did not change: not looked for.
        "INSERT INTO rcs_state_changes VALUES (1, 1, 4, TIMESTAMPTZ '2000-01-01 00:00:00+00')",
    ],
)
def test_a_change_a_refresh_cannot_see_forces_a_full_copy(
    main: Path, snap: Path, change: str
) -> None:
    publish(main, snap)
    publish(main, snap)
    execute(main, change)
    assert publish(main, snap).mode == "full"
    assert_same(main, snap)


def test_a_warehouse_left_with_its_wal_is_published_whole(main: Path, snap: Path) -> None:
    """After a daemon crash the last commits may live only in the WAL."""
    for mode in ("full", "full", "incremental"):
        with duckdb.connect(str(main)) as con:
            con.execute("PRAGMA disable_checkpoint_on_shutdown")
            con.execute(
                "INSERT INTO rcs_records SELECT max(id) + 1, NULL, NULL, NULL, NULL, NULL,"
                " NULL, 1, now(), NULL, NULL, now(), now() FROM rcs_records"
            )
        assert main.with_name(main.name + ".wal").exists()
        assert publish(main, snap).mode == mode
        assert_same(main, snap)
    assert count(snap) == 3003


def test_the_snapshot_cannot_be_the_warehouse(main: Path) -> None:
    with pytest.raises(WarehouseUnavailable, match="is the warehouse itself"):
        publish(main, main.parent / "." / main.name)
    assert count(main) == 3000


def fail_on_sync_runs(original: Any) -> Any:
    def refresh(self: Any, *args: Any) -> None:
        if self.name == "sync_runs":  # after rcs_records, inside the transaction
            raise RuntimeError("crash")
        original(self, *args)

    return refresh


def half_copy(src: Any, dst: Any) -> None:
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read(os.path.getsize(src) // 2))
    raise OSError("crash")


def fail_swap(original: Any) -> Any:
    def replace(src: Any, dst: Any) -> None:
        if Path(dst).name == "rcs.snapshot.duckdb":
            raise OSError("crash")
        original(src, dst)

    return replace


@pytest.mark.parametrize("step", ["refresh", "copy", "swap"])
def test_a_failed_publish_leaves_the_previous_snapshot(
    main: Path, snap: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    publish(main, snap)
    if step != "copy":
        publish(main, snap)  # a spare exists: the next publish is incremental
    before = snap.stat().st_ino
    pass_through_loader(main, tmp_path, 3050)
    if step == "refresh":
        table = snapshot_module._Table
        monkeypatch.setattr(table, "refresh", fail_on_sync_runs(table.refresh))
    elif step == "copy":
        monkeypatch.setattr(shutil, "copyfile", half_copy)
    else:
        monkeypatch.setattr(os, "replace", fail_swap(os.replace))
    with pytest.raises((RuntimeError, OSError), match="crash"):
        publish(main, snap)
    monkeypatch.undo()
    assert snap.stat().st_ino == before
    assert count(snap) == 3000
    publish(main, snap)
    assert_same(main, snap)
    leftovers = [g for g in generations(snap) if not g.startswith("gen-") and g != "lock"]
    assert leftovers == []


PUBLISHER = """
import sys
from pathlib import Path
from rcs_sync.warehouse.snapshot import publish
print("go", flush=True)
publish(Path(sys.argv[1]), Path(sys.argv[2]))
"""


@pytest.mark.timeout(60)
def test_kill_9_at_any_instant_leaves_a_whole_snapshot(
    main: Path, snap: Path, tmp_path: Path
) -> None:
    publish(main, snap)
    for i, delay in enumerate((0.0, 0.04, 0.1)):
        before = count(snap)
        pass_through_loader(main, tmp_path, 3050 + 100 * i)
        child = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(main), str(snap)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert child.stdout is not None and child.stdout.readline() == "go\n"
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert count(snap) in (before, count(main))
    publish(main, snap)
    assert_same(main, snap)
    assert [g for g in generations(snap) if not g.startswith("gen-") and g != "lock"] == []
