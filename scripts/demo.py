"""`make demo`: start the simulator, sync into demo/rcs.duckdb, print what landed.

Drives the real `rcs-sync` commands as subprocesses, exactly as a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from rcs_sync.simulator import spawn

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
RCS_SYNC = str(Path(sys.executable).with_name("rcs-sync"))
TOKEN = "demo-token"
RECORDS = 100_000
DAYS = 30

SUMMARY_SQL = """
SELECT count(*) AS messages,
       count(*) FILTER (WHERE state IN (1, 4)) AS delivered,
       count(*) FILTER (WHERE state = 4) AS "read",
       count(*) FILTER (WHERE state IN (2, 3)) AS failed,
       count(*) FILTER (WHERE state = 0) AS pending,
       round(100.0 * count(*) FILTER (WHERE state IN (1, 4))
             / nullif(count(*) FILTER (WHERE state IN (1, 2, 3, 4)), 0), 1) AS delivery_rate_pct,
       round(100.0 * count(*) FILTER (WHERE state = 4)
             / nullif(count(*) FILTER (WHERE state IN (1, 4)), 0), 1) AS read_rate_pct
FROM rcs_records
"""


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    env = {**os.environ, "RCS_SIM_TOKEN": TOKEN, "RCS_SYNC_TOKEN": TOKEN}
    print(f"== starting the API simulator ({RECORDS:,} records over {DAYS} days)")
    sim, base_url = spawn(["--records", str(RECORDS), "--days", str(DAYS)], env)
    try:
        start = (datetime.now(UTC) - timedelta(days=DAYS + 1)).strftime("%Y-%m-%dT00:00:00Z")
        config = DEMO / "rcs-sync.toml"
        config.write_text(
            f'[api]\nbase_url = "{base_url}"\n\n'
            f'[sync]\ninitial_start = "{start}"\n\n'
            f'[warehouse]\npath = "rcs.duckdb"\n',
            encoding="utf-8",
        )
        for step in ("first sync: backfill", "second sync: incremental"):
            print(f"== {step}")
            began = time.monotonic()
            subprocess.run([RCS_SYNC, "--config", str(config), "sync"], env=env, check=True)
            print(f"   ({time.monotonic() - began:.1f}s)")
        print("== status")
        subprocess.run([RCS_SYNC, "--config", str(config), "status"], env=env, check=True)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    with duckdb.connect(str(DEMO / "rcs.duckdb"), read_only=True) as con:
        cursor = con.execute(SUMMARY_SQL)
        names = [d[0] for d in cursor.description or []]
        row = cursor.fetchone() or ()
    print("== delivery and read report (all records)")
    for name, value in zip(names, row, strict=True):
        print(f"   {name:>18}: {value:,}" if isinstance(value, int) else f"   {name:>18}: {value}")
    print(f"\nThe warehouse is {DEMO / 'rcs.duckdb'}; query it with duckdb (read_only=True).")


if __name__ == "__main__":
    main()
