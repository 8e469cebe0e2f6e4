"""Cost of publishing the analysts' snapshot of a 10M-record warehouse.

Builds the warehouse with the real migrations in a temp dir, then times (median of RUNS):
the first publish (a full copy), a typical pass (5k changed records through the real
loader), the refresh after such a pass (incremental), and for comparison a plain byte
copy of the file to a new file. "Written" is what the process sent to the disk
(/proc/self/io, Linux). Passes here follow each other within seconds, so a refresh also
re-copies earlier passes' rows within `snapshot.OVERLAP`: the refresh figure is
pessimistic. BENCH_RUNS, BENCH_RECORDS and BENCH_PASS_RECORDS override the sizes.
Prints one labelled line per figure, then all figures as one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

import duckdb

from bench import RUNS, banner, median, report
from rcs_sync.logs import configure_logging
from rcs_sync.model.commits import Commit
from rcs_sync.model.responses import Spool
from rcs_sync.model.streams import RCS_RECORDS
from rcs_sync.warehouse.duckdb_file import Warehouse
from rcs_sync.warehouse.snapshot import publish

T = TypeVar("T")

RECORDS = int(os.environ.get("BENCH_RECORDS", "10000000"))
PASS_RECORDS = int(os.environ.get("BENCH_PASS_RECORDS", "5000"))
RUNS_PER_YEAR = 105_000
"""sync_runs rows after a year of 5-minute passes: bookkeeping is copied whole."""

RECORDS_SQL = """
INSERT INTO rcs_records
SELECT i + 1 AS id, 1000 + i // 20000, 500000 + i // 2000, 1 + hash(i // 20000) % 20,
       '+336' || lpad((hash(i) % 100000000)::VARCHAR, 8, '0'),
       'ref-' || substr(md5(i::VARCHAR), 1, 12),
       CASE WHEN hash(i) % 10 < 7 THEN 'web' ELSE 'api' END,
       CASE WHEN hash(i * 7) % 100 < 5 THEN 0 WHEN hash(i * 7) % 100 < 35 THEN 1
            WHEN hash(i * 7) % 100 < 40 THEN 2 WHEN hash(i * 7) % 100 < 42 THEN 3
            ELSE 4 END::UTINYINT,
       TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_microseconds(i * (31536000000000 // $n)) AS ts,
       NULL, NULL, ts + INTERVAL 30 SECOND, ts + to_seconds(hash(i) % 86400)
FROM range($n) AS r(i)
"""
"""A year of records, in arrival order as a backfill writes them; states 0-4."""

HISTORY_SQL = """
INSERT INTO rcs_state_changes SELECT id, NULL, 0, "timestamp" FROM rcs_records;
INSERT INTO rcs_state_changes SELECT id, 0, state, updated_at FROM rcs_records WHERE state <> 0;
"""
"""Their state history as the loader writes it: first seen sent, then the move to their
state: ~2 rows a record, the biggest table of the warehouse after the records."""

BOOKKEEPING_SQL = f"""
INSERT INTO rcs_quarantine
SELECT i // 100, (20000000 + i)::VARCHAR, 'state: unknown value',
       '{{"id":' || (20000000 + i) || ',"state":9,"number":"+33612345678"}}', now()
FROM range(10000) AS r(i);
INSERT INTO sync_runs (stream, scope, command, mode, pid, started_at, finished_at, status,
                       windows, received, updated)
SELECT 'rcs_records', 'all', 'run', 'incremental', 4242,
       now() - to_minutes(5 * i), now() - to_minutes(5 * i) + INTERVAL 2 SECOND, 'ok',
       1, 5000, 4000
FROM range({RUNS_PER_YEAR}) AS r(i);
"""


def written() -> int:
    """Bytes this process has sent to the storage layer so far."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def measured(action: Callable[[], T]) -> tuple[float, int, T]:
    """Wall time, bytes written, and result of an action started with no dirty pages, so
    the writeback of earlier steps is not billed to it."""
    os.sync()
    began, before = time.perf_counter(), written()
    result = action()
    return time.perf_counter() - began, written() - before, result


def build(path: Path) -> None:
    Warehouse(path).migrate()
    with duckdb.connect(str(path)) as con:
        con.execute(RECORDS_SQL, {"n": RECORDS})
        con.execute(HISTORY_SQL)
        con.execute(BOOKKEEPING_SQL)


def typical_pass(main: Path, body: Path, newest: int) -> int:
    """Upsert PASS_RECORDS records through the real loader: 80% state changes of recent
    records, 20% new ones. Returns the new newest id."""
    changed = PASS_RECORDS * 4 // 5
    records = [
        {"id": i, "state": 4, "timestamp": "2025-12-31T12:00:00Z", "number": f"+336{newest:08d}"}
        for i in range(newest - changed * 4, newest, 4)
    ] + [
        {"id": i, "state": 0, "timestamp": "2025-12-31T12:00:00Z", "number": "+33622222222"}
        for i in range(newest + 1, newest + 1 + PASS_RECORDS - changed)
    ]
    body.write_text(json.dumps(records))
    wh = Warehouse(main)
    run_id = wh.start_run(RCS_RECORDS, "all", "run", "incremental")
    now = datetime.now(UTC)
    commit = Commit(RCS_RECORDS, "all", run_id, now, checkpoint=now)
    result = wh.commit_batch(Spool.of(body), commit, include_optional=False, server_limit=None)
    wh.finish_run(run_id, error=None)
    assert result.updated == changed and result.inserted == PASS_RECORDS - changed, result
    return newest + PASS_RECORDS - changed


def plain_copy(main: Path, copy: Path) -> None:
    shutil.copyfile(main, copy)
    fd = os.open(copy, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bench_first_publish(main: Path, figures: dict[str, object]) -> None:
    runs = [
        measured(partial(publish, main, main.with_name(f"first{i}.duckdb"))) for i in range(RUNS)
    ]
    report(figures, "first publish, full copy (s)", "first_publish_s", median([r[0] for r in runs]))
    report(
        figures,
        "first publish, written (MB)",
        "first_publish_written_mb",
        median([r[1] / 1e6 for r in runs]),
    )
    copies = [
        measured(partial(plain_copy, main, main.with_name(f"plain{i}.duckdb"))) for i in range(RUNS)
    ]
    report(
        figures,
        "for comparison: plain file copy + fsync (s)",
        "plain_copy_s",
        median([r[0] for r in copies]),
    )
    report(
        figures,
        "for comparison: plain file copy, written (MB)",
        "plain_copy_written_mb",
        median([r[1] / 1e6 for r in copies]),
    )


def bench_refresh(main: Path, figures: dict[str, object]) -> None:
    snap = main.with_name("rcs.snapshot.duckdb")
    publish(main, snap)
    publish(main, snap)  # two generations exist from now on: refreshes are incremental
    body, newest = main.with_name("body.json"), RECORDS
    passes, refreshes = [], []
    for _ in range(RUNS):
        seconds, _, newest = measured(partial(typical_pass, main, body, newest))
        passes.append(seconds)
        refresh = measured(partial(publish, main, snap))
        if refresh[2].mode != "incremental":
            sys.exit(f"bench: expected an incremental refresh, got {refresh[2]}")
        refreshes.append(refresh)
    report(figures, f"typical pass, upsert {PASS_RECORDS:,} records (s)", "pass_s", median(passes))
    report(
        figures,
        "refresh after a typical pass, incremental (s)",
        "refresh_s",
        median([r[0] for r in refreshes]),
    )
    report(
        figures,
        "refresh after a typical pass, written (MB)",
        "refresh_written_mb",
        median([r[1] / 1e6 for r in refreshes]),
    )
    report(figures, "snapshot size (MB)", "snapshot_mb", round(snap.stat().st_size / 1e6, 1))


def main() -> None:
    configure_logging(level="warning")  # stdout holds the figures only
    banner("snapshot bench", f"{RECORDS:,} records, passes of {PASS_RECORDS:,}")
    figures: dict[str, object] = {"records": RECORDS, "pass_records": PASS_RECORDS, "runs": RUNS}
    with tempfile.TemporaryDirectory(prefix="rcs-snapshot-bench-") as tmp:
        main_file = Path(tmp) / "rcs.duckdb"
        build(main_file)
        report(
            figures, "warehouse size (MB)", "warehouse_mb", round(main_file.stat().st_size / 1e6, 1)
        )
        bench_first_publish(main_file, figures)
        bench_refresh(main_file, figures)
    at = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps({"bench": "rcs-sync-snapshot", "at": at, **figures}))


if __name__ == "__main__":
    main()
