"""`make demo`: start the simulator, sync RCS and SMS (and teams) into demo/rcs.duckdb,
print what landed: both channels.

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

from rcs_sim.server import spawn

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
RCS_SYNC = str(Path(sys.executable).with_name("rcs-sync"))
TOKEN = "demo-token"
RECORDS = 100_000
DAYS = 30


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    env = {**os.environ, "RCS_SIM_TOKEN": TOKEN, "RCS_SYNC_TOKEN": TOKEN}
    print(f"== starting the API simulator ({RECORDS:,} records over {DAYS} days)")
    sim, base_url = spawn(
        ["--records", str(RECORDS), "--days", str(DAYS), "--streams", "text_records,teams"], env
    )
    try:
        start = (datetime.now(UTC) - timedelta(days=DAYS + 1)).strftime("%Y-%m-%dT00:00:00Z")
        config = DEMO / "rcs-sync.toml"
        config.write_text(
            f'[api]\nbase_url = "{base_url}"\n\n'
            f'[sync]\ninitial_start = "{start}"\n'
            'streams = ["rcs_records", "text_records", "teams"]\n\n'
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
    for channel in ("rcs", "sms"):
        print(f"== {channel}: delivery and read report, per team")
        report = [RCS_SYNC, "--config", str(config), "report", "--by", "team"]
        subprocess.run([*report, "--channel", channel], env=env, check=True)
    print(f"\nThe warehouse is {DEMO / 'rcs.duckdb'}: `rcs-sync --config {config} report`,")
    print("or SQL with duckdb.connect(path, read_only=True); see README, Analytics.")


if __name__ == "__main__":
    main()
