"""Analytics on a 10M-record warehouse: the daily-rates view and `rcs-sync report`.

Builds the warehouse with the real migrations in a temp dir (a year of records, ~200
campaigns in bursts, 5 teams, realistic state shares), then times (median of RUNS):

- the `rcs_rates_daily` view summed by day x campaign over every record, in a UTC and
  in a Europe/Paris session (target: 0.5 s);
- `rcs-sync report` for one month, as a subprocess, wall time (target: 1 s), next to
  the floor any command pays: `rcs-sync report --help` (interpreter and CLI start-up).

BENCH_RUNS and BENCH_RECORDS override the sizes. Prints one labelled line per figure,
then all figures as one JSON line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from bench import RUNS, banner, median, report
from rcs_sync.logs import configure_logging
from rcs_sync.warehouse.duckdb_file import Warehouse

RECORDS = int(os.environ.get("BENCH_RECORDS", "10000000"))
RCS_SYNC = str(Path(sys.executable).with_name("rcs-sync"))
MONTH = ("2025-06-01", "2025-07-01")

RECORDS_SQL = """
INSERT INTO rcs_records (id, campaign, job, team, state, "timestamp", first_seen_at, updated_at)
SELECT i + 1, 1000 + c, 500000 + i // 2000, 1 + c % 5,
       CASE WHEN h < 10 THEN 0 WHEN h < 310 THEN 1 WHEN h < 360 THEN 2 WHEN h < 380 THEN 3
            ELSE 4 END,
       ts, ts, ts + INTERVAL 1 HOUR
FROM (
    SELECT i, hash(i // 5000) % 200 AS c, hash(i * 7) % 1000 AS h,
           TIMESTAMPTZ '2025-01-01 00:00:00+00' + to_microseconds(i * (31536000000000 // $n)) AS ts
    FROM range($n) AS r(i)
)
"""
"""A year of records in bursts of 5,000 per campaign; states: 1 % sent (pending), 30 %
delivered, 5 % failed, 2 % rejected, 62 % read."""

DAY_BY_CAMPAIGN_SQL = """
SELECT day, campaign, sum(messages), sum(delivered), sum("read"), sum(failed), sum(pending),
       sum(delivered) / nullif(sum(delivered) + sum(failed), 0) AS delivery_rate,
       sum("read") / nullif(sum(delivered), 0) AS read_rate
FROM rcs_rates_daily
GROUP BY day, campaign
"""


def build(path: Path) -> None:
    Warehouse(path).migrate()
    with duckdb.connect(str(path)) as con:
        con.execute(RECORDS_SQL, {"n": RECORDS})


def time_view(path: Path, time_zone: str) -> tuple[float, int]:
    """Median seconds of the day x campaign query, and how many rows it returns."""
    seconds, rows = [], 0
    with duckdb.connect(str(path), read_only=True) as con:
        con.execute(f"SET TimeZone = '{time_zone}'")
        for _ in range(RUNS):
            began = time.perf_counter()
            rows = len(con.execute(DAY_BY_CAMPAIGN_SQL).fetchall())
            seconds.append(time.perf_counter() - began)
    return median(seconds), rows


def time_command(*args: str) -> float:
    seconds = []
    for _ in range(RUNS):
        began = time.perf_counter()
        subprocess.run([RCS_SYNC, *args], check=True, capture_output=True)
        seconds.append(time.perf_counter() - began)
    return median(seconds)


def main() -> None:
    configure_logging(level="warning")  # stdout holds the figures only
    banner("analytics bench", f"{RECORDS:,} records")
    figures: dict[str, object] = {"records": RECORDS, "runs": RUNS}
    with tempfile.TemporaryDirectory(prefix="rcs-analytics-bench-") as tmp:
        db, config = Path(tmp) / "rcs.duckdb", Path(tmp) / "rcs-sync.toml"
        build(db)
        config.write_text(
            '[api]\nbase_url = "http://127.0.0.1:9"\n\n[warehouse]\npath = "rcs.duckdb"\n',
            encoding="utf-8",
        )
        for time_zone, key in (("UTC", "view_utc_s"), ("Europe/Paris", "view_paris_s")):
            seconds, rows = time_view(db, time_zone)
            label = f"rcs_rates_daily by day x campaign, {rows:,} rows, {time_zone} (s)"
            report(figures, f"{label} [target 0.5]", key, seconds)
        since, until = MONTH
        month = ("--config", str(config), "report", "--since", since, "--until", until)
        report(
            figures,
            f"rcs-sync report --since {since} --until {until} (s) [target 1]",
            "report_month_s",
            time_command(*month),
        )
        report(
            figures,
            "  the same --by campaign --tz Europe/Paris (s)",
            "report_month_campaign_paris_s",
            time_command(*month, "--by", "campaign", "--tz", "Europe/Paris"),
        )
        report(
            figures,
            "  floor: rcs-sync report --help (s)",
            "startup_s",
            time_command("report", "--help"),
        )
    at = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps({"bench": "rcs-sync-analytics", "at": at, **figures}))


if __name__ == "__main__":
    main()
