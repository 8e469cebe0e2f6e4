"""(5) Upsert cost as the warehouse grows: one response into warehouses of each size.

Each warehouse is built once, directly in SQL, with the real migrations (records in
arrival order, 1.5 s apart). Each run copies it, then times `Warehouse.commit_batch`
on one response body of BATCH records: the same code path as a sync (staging,
quarantine checks, state-history log, update, insert, commit, close). Half of the body
is the newest records of the warehouse moving on (sent -> delivered, delivered ->
read), half is new records: an incremental pass only sees records within its
`update_horizon`, so the ids it touches are the most recent ones. Cost is flat when
the 20M-row upsert takes at most twice the 1M-row one. `rcs_state_changes` starts
empty: the load only appends to it.

BENCH_RUNS, BENCH_UPSERT_RECORDS [100k] and BENCH_UPSERT_SIZES [1000000,20000000]
override the sizes. Prints one labelled line per figure, then all figures as one JSON
line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from bench import RUNS, banner, median, report
from rcs_sync.logs import configure_logging
from rcs_sync.model.commits import Commit
from rcs_sync.model.responses import Spool
from rcs_sync.model.streams import RCS_RECORDS
from rcs_sync.warehouse.duckdb_file import Warehouse

BATCH = int(os.environ.get("BENCH_UPSERT_RECORDS", "100000"))
SIZES = tuple(int(n) for n in os.environ.get("BENCH_UPSERT_SIZES", "1000000,20000000").split(","))
IN_FLIGHT = BATCH
"""The newest records of a warehouse are still sent (0) or delivered (1)."""

COLUMNS = f"""
    i + 1 AS id,
    1000 + i // 20000 AS campaign,
    500000 + i // 2000 AS job,
    1 + hash(i // 20000) % 20 AS team,
    '+336' || lpad((hash(i) % 100000000)::VARCHAR, 8, '0') AS number,
    'R' || lpad(((i + 1) * 2654435761 % 100000000)::VARCHAR, 8, '0') AS reference,
    CASE WHEN hash(i) % 20 < 12 THEN NULL WHEN hash(i) % 20 < 15 THEN 'web'
         WHEN hash(i) % 20 < 19 THEN 'api' ELSE 'sftp' END AS portal,
    CASE WHEN i >= $n - {IN_FLIGHT} THEN hash(i * 7) % 2
         WHEN hash(i * 7) % 100 < 30 THEN 1 WHEN hash(i * 7) % 100 < 35 THEN 2
         WHEN hash(i * 7) % 100 < 37 THEN 3 ELSE 4 END::UTINYINT AS state,
    TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_milliseconds(i * 1500) AS ts
"""
"""Every value but `state` depends on the row number alone, so a body re-sending a
record carries exactly what the warehouse holds."""

BUILD_SQL = f"""
INSERT INTO rcs_records
SELECT id, campaign, job, team, number, reference, portal, state, ts, NULL, NULL,
       ts + INTERVAL 30 SECOND, ts + to_seconds(hash(id) % 3600)
FROM (SELECT {COLUMNS} FROM range($n) AS r(i))
"""

BODY_SQL = f"""
COPY (
    SELECT campaign, id, job, number, portal, reference,
           CASE WHEN i >= $n THEN 0 WHEN state = 0 THEN 1 ELSE 4 END AS state,
           team, strftime(ts, '%Y-%m-%dT%H:%M:%S.%gZ') AS "timestamp"
    FROM (SELECT i, {COLUMNS} FROM range($n - $half, $n + $half) AS r(i))
) TO '{{path}}' (FORMAT json, ARRAY true)
"""
"""The body as the API sends it: the `half` newest records moved on, `half` new ones."""


def build(path: Path, rows: int) -> None:
    Warehouse(path).migrate()
    with duckdb.connect(str(path)) as con:
        con.execute(BUILD_SQL, {"n": rows})


def write_body(path: Path, rows: int) -> None:
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(BODY_SQL.format(path=path), {"n": rows, "half": BATCH // 2})


def upsert(pristine: Path, work: Path, body: Path) -> float:
    """Seconds for one commit_batch into a fresh copy of the warehouse."""
    shutil.copyfile(pristine, work)
    os.sync()  # the copy's writeback is not billed to the upsert
    wh = Warehouse(work)
    run_id = wh.start_run(RCS_RECORDS, "all", "sync", "incremental")
    now = datetime.now(UTC)
    commit = Commit(RCS_RECORDS, "all", run_id, now, checkpoint=now)
    began = time.perf_counter()
    result = wh.commit_batch(Spool.of(body), commit, include_optional=False, server_limit=None)
    seconds = time.perf_counter() - began
    wh.finish_run(run_id, error=None)
    half = BATCH // 2
    assert (result.updated, result.inserted, result.quarantined) == (half, half, 0), result
    work.unlink()
    return seconds


def main() -> None:
    configure_logging(level="warning")  # stdout holds the figures only
    banner("upsert bench", f"{BATCH:,} records into {', '.join(f'{n:,}' for n in SIZES)} rows")
    figures: dict[str, object] = {"upsert_records": BATCH, "runs": RUNS}
    seconds: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="rcs-upsert-bench-") as tmp:
        for rows in SIZES:
            pristine, body = Path(tmp) / f"rcs-{rows}.duckdb", Path(tmp) / f"body-{rows}.json"
            began = time.perf_counter()
            build(pristine, rows)
            report(
                figures,
                f"build {rows:,} rows (s, not a target)",
                f"build_{rows}_s",
                round(time.perf_counter() - began, 1),
            )
            write_body(body, rows)
            work = Path(tmp) / "work.duckdb"
            seconds[rows] = median([upsert(pristine, work, body) for _ in range(RUNS)])
            report(
                figures,
                f"upsert {BATCH:,} records into {rows:,} rows (s)",
                f"upsert_{rows}_s",
                seconds[rows],
            )
            pristine.unlink()
    if len(SIZES) > 1:
        report(
            figures,
            f"upsert into {SIZES[-1]:,} / into {SIZES[0]:,} rows",
            "upsert_ratio",
            round(seconds[SIZES[-1]] / seconds[SIZES[0]], 2),
        )
    at = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps({"bench": "rcs-sync-upsert", "at": at, **figures}))


if __name__ == "__main__":
    main()
