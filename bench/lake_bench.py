"""`make bench` (in the lake virtualenv): the warehouse as a DuckLake on PostgreSQL beside
the DuckDB file, on this machine, with a PostgreSQL server of its own on 127.0.0.1.

- backfill: BENCH_LAKE_RECORDS [1M] records in one window through the real CLI against
  the simulator, into a DuckDB file and into a lake (`[warehouse] kind = "ducklake"`):
  records/s and peak RSS, then the lake's Parquet files and catalog rows.
- upsert: BENCH_UPSERT_RECORDS [100k] records (half the newest moving on, half new) into
  tables of BENCH_UPSERT_SIZES [1M,20M] rows: `MERGE INTO` on the lake against
  `INSERT … ON CONFLICT` on the file, the statement and its commit timed; then the
  lake's files and catalog rows, and one maintenance run over them.
- readers: while a writer commits a small pass every BENCH_READER_PAUSE [0.2] s into
  the 1M-row lake, a reader's query latency (p50/p95 of BENCH_READER_QUERIES [40]):
  on a connection kept attached, and attaching afresh for each query (what a BI tool
  opening a connection per query pays); and the catalog's PostgreSQL connections.
- passes: BENCH_LAKE_PASSES [1000] small passes (25 records each, maintained every 100):
  the most live data files maintenance leaves (the issue's target: at most 20) and the
  most 100 passes leave before it (once: the run takes a few minutes).

Every figure is the median of RUNS runs. Prints one labelled line per figure, then all
figures as one JSON line.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from upsert_bench import COLUMNS

from bench import (
    RUNS,
    TOKEN,
    backfill_command,
    banner,
    last_day_span,
    median,
    report,
    run_measured,
    stop,
    write_config,
)
from rcs_sim.server import spawn
from rcs_sync.config import MaintenanceSettings
from rcs_sync.warehouse import maintenance
from rcs_sync.warehouse.extensions import LAKE_EXTENSIONS, NO_DOWNLOADS, load
from tests.lake_passes import small_passes
from tests.postgres import PostgresServer, bindir

RECORDS = int(os.environ.get("BENCH_LAKE_RECORDS", "1000000"))
BATCH = int(os.environ.get("BENCH_UPSERT_RECORDS", "100000"))
SIZES = tuple(int(n) for n in os.environ.get("BENCH_UPSERT_SIZES", "1000000,20000000").split(","))
READER_PAUSE = float(os.environ.get("BENCH_READER_PAUSE", "0.2"))
READER_QUERIES = int(os.environ.get("BENCH_READER_QUERIES", "40"))
EXTENSIONS = Path(tempfile.gettempdir()) / "rcs-lake-bench-extensions"
PASSES = int(os.environ.get("BENCH_LAKE_PASSES", "1000"))
READER_SQL = "SELECT state, count(*) FROM records GROUP BY state ORDER BY state"

TABLE = (
    "records (id BIGINT{key}, campaign BIGINT, job BIGINT, team BIGINT, number VARCHAR, "
    "reference VARCHAR, portal VARCHAR, state UTINYINT, ts TIMESTAMPTZ)"
)
ROWS = f"SELECT {COLUMNS} FROM range($first, $last) AS r(i)"
"""Rows `first` to `last` of a table of `n` (its newest records still in flight)."""
SET = "campaign = s.campaign, state = s.state, ts = s.ts"
UPSERT = {
    "lake": "MERGE INTO records USING _batch s ON records.id = s.id "
    f"WHEN MATCHED THEN UPDATE SET {SET} WHEN NOT MATCHED THEN INSERT *",
    "file": f"INSERT INTO records SELECT * FROM _batch ON CONFLICT (id) DO UPDATE SET "
    f"{SET.replace('s.', 'excluded.')}",
}


def lake_connection(
    catalog: str, data: Path, *, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(config={**NO_DOWNLOADS, "memory_limit": "2GB", "threads": 2})
    load(con, LAKE_EXTENSIONS, EXTENSIONS)
    mode = ", READ_ONLY" if read_only else ""
    con.execute(f"ATTACH 'ducklake:{catalog}' AS lake (DATA_PATH '{data}'{mode})")
    con.execute("USE lake")
    return con


def catalog_rows(pg: PostgresServer, database: str) -> int:
    """Rows in all of the catalog's tables (snapshots, files, column statistics, …)."""
    tables = pg.psql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        database,
    ).split()
    counts = " UNION ALL ".join(f"SELECT count(*) AS n FROM {t}" for t in tables)
    return int(pg.psql(f"SELECT sum(n) FROM ({counts}) c", database).strip() or 0)


def snapshots(pg: PostgresServer, database: str) -> int:
    return int(pg.psql("SELECT count(*) FROM ducklake_snapshot", database).strip())


def parquet_files(data: Path) -> int:
    return sum(1 for _ in data.rglob("*.parquet"))


def bench_backfill(pg: PostgresServer, env: dict[str, str], figures: dict[str, object]) -> None:
    sim, base_url = spawn(["--records", str(RECORDS), "--days", "0.5"], env)
    try:
        span = last_day_span()
        for kind in ("file", "lake"):
            runs, files, rows = [], [], []
            for _ in range(RUNS):
                with tempfile.TemporaryDirectory(prefix="rcs-lake-bench-") as tmp:
                    config = write_config(Path(tmp), base_url, "100000d")
                    database = pg.create_database()
                    if kind == "lake":
                        text = config.read_text(encoding="utf-8").replace(
                            'path = "rcs.duckdb"\n',
                            f'kind = "ducklake"\ncatalog = "{pg.catalog(database)}"\n'
                            'data_path = "lake-data"\nspool_dir = "spool"\n',
                        )
                        config.write_text(text, encoding="utf-8")
                    runs.append(run_measured(backfill_command(config, span), env))
                    if kind == "lake":
                        files.append(parquet_files(Path(tmp) / "lake-data"))
                        rows.append(catalog_rows(pg, database))
            report(
                figures,
                f"backfill {RECORDS:,}, {kind} (records/s)",
                f"backfill_{kind}_records_per_s",
                round(median([RECORDS / r.seconds for r in runs])),
            )
            report(
                figures,
                f"backfill {RECORDS:,}, {kind}, peak RSS (MB)",
                f"backfill_{kind}_peak_rss_mb",
                median([r.peak_rss_mb for r in runs]),
            )
            if kind == "lake":
                report(
                    figures,
                    "  lake after it: Parquet files",
                    "backfill_lake_files",
                    median([float(n) for n in files]),
                )
                report(
                    figures,
                    "  lake after it: catalog rows",
                    "backfill_lake_catalog_rows",
                    median([float(n) for n in rows]),
                )
    finally:
        stop(sim)


def stage(con: duckdb.DuckDBPyConnection, rows: int, run: int) -> None:
    """The batch of run `run` into a table of `rows`: `half` updates, `half` new."""
    half = BATCH // 2
    n = rows + run * half
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _batch AS {ROWS}",
        {"n": n, "first": n - half, "last": n + half},
    )
    con.execute("UPDATE _batch SET state = CASE WHEN state = 0 THEN 1 ELSE 4 END")


def timed_upsert(con: duckdb.DuckDBPyConnection, kind: str) -> float:
    began = time.perf_counter()
    con.execute("BEGIN")
    con.execute(UPSERT[kind])
    con.execute("COMMIT")
    return time.perf_counter() - began


def bench_upserts(pg: PostgresServer, tmp: Path, figures: dict[str, object]) -> None:
    for rows in SIZES:
        database = pg.create_database()
        data = tmp / f"lake-{rows}"
        connections = {
            "lake": lake_connection(pg.catalog(database), data),
            "file": duckdb.connect(
                str(tmp / f"file-{rows}.duckdb"), config={"memory_limit": "2GB", "threads": 2}
            ),
        }
        seconds: dict[str, float] = {}
        for kind, con in connections.items():
            con.execute(
                f"CREATE TABLE {TABLE.format(key=' PRIMARY KEY' if kind == 'file' else '')}"
            )
            began = time.perf_counter()
            con.execute(f"INSERT INTO records {ROWS}", {"n": rows, "first": 0, "last": rows})
            report(
                figures,
                f"build {rows:,} rows, {kind} (s, not a target)",
                f"build_{kind}_{rows}_s",
                round(time.perf_counter() - began, 1),
            )
            times = []
            for run in range(RUNS):
                stage(con, rows, run)
                times.append(timed_upsert(con, kind))
            seconds[kind] = median(times)
            report(
                figures,
                f"upsert {BATCH:,} into {rows:,}, {kind} (s)",
                f"upsert_{kind}_{rows}_s",
                seconds[kind],
            )
        lake = connections["lake"]
        report(
            figures, f"  lake of {rows:,}: Parquet files", f"lake_{rows}_files", parquet_files(data)
        )
        report(
            figures,
            f"  lake of {rows:,}: catalog rows",
            f"lake_{rows}_catalog_rows",
            catalog_rows(pg, database),
        )
        done = maintenance.maintain(lake, MaintenanceSettings())
        report(
            figures,
            f"  lake of {rows:,}: maintenance (s)",
            f"lake_{rows}_maintenance_s",
            done.seconds,
        )
        report(
            figures,
            f"  lake of {rows:,}: live data files before -> after",
            f"lake_{rows}_live_files",
            f"{done.data_files_before} -> {done.data_files_after}",
        )
        for con in connections.values():
            con.close()


def _percentile(values: list[float], q: int) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 1)


WRITER = """
import sys, time
sys.path.insert(0, sys.argv[4])
from lake_bench import lake_connection
from pathlib import Path
con = lake_connection(sys.argv[1], Path(sys.argv[2]))
n = 0
print("ready", flush=True)
while True:
    con.execute("BEGIN")
    con.execute("UPDATE records SET state = 4 WHERE id BETWEEN ? AND ?", [n * 50, n * 50 + 49])
    con.execute("COMMIT")
    n += 1
    time.sleep(float(sys.argv[3]))
"""


def bench_readers(pg: PostgresServer, tmp: Path, figures: dict[str, object]) -> None:
    database = pg.create_database()
    catalog, data = pg.catalog(database), tmp / "lake-readers"
    with lake_connection(catalog, data) as con:
        con.execute(f"CREATE TABLE {TABLE.format(key='')}")
        con.execute(f"INSERT INTO records {ROWS}", {"n": SIZES[0], "first": 0, "last": SIZES[0]})
    rows_before, snapshots_before = catalog_rows(pg, database), snapshots(pg, database)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WRITER,
            catalog,
            str(data),
            str(READER_PAUSE),
            str(Path(__file__).parent),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        kept = lake_connection(catalog, data, read_only=True)
        attached: list[float] = []
        fresh: list[float] = []
        for _ in range(READER_QUERIES):
            began = time.perf_counter()
            kept.execute(READER_SQL).fetchall()
            attached.append(time.perf_counter() - began)
            began = time.perf_counter()
            with lake_connection(catalog, data, read_only=True) as con:
                con.execute(READER_SQL).fetchall()
            fresh.append(time.perf_counter() - began)
        connections = int(
            pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}'").strip()
        )
        commits = snapshots(pg, database) - snapshots_before
        rows_after = catalog_rows(pg, database)
        kept.close()
    finally:
        writer.kill()
        writer.wait()
    for name, values in (("kept attached", attached), ("attached afresh", fresh)):
        key = name.replace(" ", "_")
        report(
            figures,
            f"reader query while passes commit, {name}: p50 (ms)",
            f"reader_{key}_p50_ms",
            _percentile(values, 50),
        )
        report(
            figures,
            f"reader query while passes commit, {name}: p95 (ms)",
            f"reader_{key}_p95_ms",
            _percentile(values, 95),
        )
    report(figures, "  snapshots committed meanwhile (catalog)", "reader_snapshots", commits)
    report(
        figures,
        "  catalog rows per small commit",
        "catalog_rows_per_commit",
        round((rows_after - rows_before) / max(1, commits), 1),
    )
    report(figures, "  PostgreSQL connections: writer + 1 reader", "pg_connections", connections)


def bench_passes(pg: PostgresServer, tmp: Path, figures: dict[str, object]) -> None:
    started = time.perf_counter()
    reports, _records = small_passes(pg.catalog(pg.create_database()), tmp / "passes", PASSES)
    elapsed = time.perf_counter() - started
    label = f"{PASSES:,} small passes"
    report(
        figures,
        f"{label}: live data files after maintenance, most",
        "passes_files_max",
        max(r.data_files_after for r in reports),
    )
    report(
        figures,
        f"{label}: live data files before maintenance, most",
        "passes_files_before",
        max(r.data_files_before for r in reports),
    )
    report(figures, f"{label}: seconds per pass", "passes_s_per_pass", round(elapsed / PASSES, 3))


def main() -> None:
    found = bindir()
    if found is None:
        sys.exit("bench: PostgreSQL is not installed (Debian: apt-get install postgresql)")
    banner(
        "lake bench", f"{RECORDS:,} records, {BATCH:,} into {', '.join(f'{n:,}' for n in SIZES)}"
    )
    print(f"load average {os.getloadavg()}", flush=True)
    figures: dict[str, object] = {"runs": RUNS, "cores": os.cpu_count()}
    figures["load_before"] = os.getloadavg()
    env = {**os.environ, "RCS_SYNC_TOKEN": TOKEN, "RCS_SIM_TOKEN": TOKEN}
    pg = PostgresServer(found).start()
    try:
        with tempfile.TemporaryDirectory(prefix="rcs-lake-bench-") as tmp:
            parts = os.environ.get("BENCH_LAKE_PARTS", "backfill,upsert,readers,passes").split(",")
            if "backfill" in parts:
                bench_backfill(pg, env, figures)
            if "upsert" in parts:
                bench_upserts(pg, Path(tmp), figures)
            if "readers" in parts:
                bench_readers(pg, Path(tmp), figures)
            if "passes" in parts:
                bench_passes(pg, Path(tmp), figures)
    finally:
        pg.stop()
    figures["load_after"] = os.getloadavg()
    print(f"load average {os.getloadavg()}", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
