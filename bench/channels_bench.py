"""The cost of tiered re-reads (issue 16): with 3 days of SMS in the warehouse and changes
only in the last 30 minutes, what share of the SMS records does a pass re-read, and does
the table then equal the provider's?

`python bench/channels_bench.py` (BENCH_SMS_RECORDS [300000] over 3 days). Three figures:

- `first_pass`: the real CLI's pass right after the backfill, against the simulator,
  after changes to records of the last 30 minutes; table compared with the provider's.
- `after_an_hour`: the same with the ledger moved back an hour (as if no pass had run
  for an hour: every cell of the hourly tier is due at once; the per-pass budget of
  `model/reread.py` takes the most overdue, the following passes the rest).
- `steady`: 24 hours of 5-minute passes planned by `model/reread.py` from that pass's
  real ledger, each weighted by the records the warehouse holds per cell (the planner
  is what decides the cost; the clock cannot be moved under the real CLI): the first
  hour's passes (draining what the gap left) apart from the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rcs_sim.endpoints import sibling
from rcs_sim.server import SimConfig, start_simulator
from rcs_sync.model.durations import format_instant
from rcs_sync.model.reread import default_tiers, plan_reread
from rcs_sync.model.windows import Fetch, Window

RCS_SYNC = str(Path(sys.executable).with_name("rcs-sync"))
TOKEN = "bench-token"
RECORDS = int(os.environ.get("BENCH_SMS_RECORDS", "300000"))
SMS = "/j/text_records"
HORIZON = timedelta(days=7)


def main() -> None:
    endpoint = sibling("text_records", records=RECORDS, days=3)
    config = SimConfig(records=10, days=3, frozen=True, token=TOKEN, endpoints=(endpoint,))
    with tempfile.TemporaryDirectory() as tmp, start_simulator(config) as running:
        sim = running.sim
        directory = Path(tmp)
        start = sim.now() - timedelta(days=4)
        (directory / "rcs-sync.toml").write_text(
            f'[api]\nbase_url = "{running.base_url}"\n[sync]\n'
            f'initial_start = "{format_instant(start)}"\nstreams = ["text_records"]\n'
            '[warehouse]\npath = "rcs.duckdb"\n',
            encoding="utf-8",
        )
        env = {**os.environ, "RCS_SYNC_TOKEN": TOKEN}
        db = directory / "rcs.duckdb"

        def sync() -> None:
            command = [RCS_SYNC, "--config", str(directory / "rcs-sync.toml"), "sync"]
            subprocess.run(command, env=env, check=True, capture_output=True)

        def one_pass() -> dict[str, object]:
            sim.endpoint_mutate(SMS, 200, newer_than=1800)
            before = len(sim.requests)
            sync()
            served = sum(r.records for r in sim.requests[before:] if r.path == SMS)
            assert all("modified_since" not in r.params for r in sim.requests)
            with duckdb.connect(str(db), read_only=True) as con:
                table = dict(con.execute("SELECT id, state FROM text_records").fetchall())
            return {
                "records_read": served,
                "share": round(served / RECORDS, 4),
                "table_equals_provider": table == sim.endpoint_truth(SMS),
            }

        sync()  # the backfill: 3 days of SMS
        figures: dict[str, object] = {"records": RECORDS, "first_pass": one_pass()}
        with duckdb.connect(str(db)) as con:
            con.execute("UPDATE sync_windows SET fetched_at = fetched_at - INTERVAL 1 HOUR")
        figures["after_an_hour"] = one_pass()
        figures["steady"] = steady(db)
    for name, value in figures.items():
        print(f"{name}: {value}")
    print(json.dumps(figures))


def steady(db: Path) -> dict[str, float]:
    """Shares of the records re-read by 288 planned 5-minute passes from the real ledger."""
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT window_start, window_end, fetched_at FROM sync_windows"
        ).fetchall()
        hours = dict(
            con.execute(
                "SELECT time_bucket(INTERVAL 1 HOUR, timestamp)::TIMESTAMPTZ, count(*) "
                "FROM text_records GROUP BY 1"
            ).fetchall()
        )
    latest: dict[Window, Fetch] = {}
    for a, b, f in rows:
        fetch = Fetch(Window(a.astimezone(UTC), b.astimezone(UTC)), f.astimezone(UTC))
        if fetch.window not in latest or latest[fetch.window].fetched_at < fetch.fetched_at:
            latest[fetch.window] = fetch
    total = sum(hours.values())
    now = datetime.now(UTC)
    tiers = default_tiers(HORIZON)
    shares = []
    for n in range(1, 289):
        moment = now + n * timedelta(minutes=5)
        due = plan_reread(moment, moment, HORIZON, tiers=tiers, fetches=list(latest.values()))
        latest.update((w, Fetch(w, moment)) for w in due)
        read = sum(c for hour, c in hours.items() if any(w.start <= hour < w.end for w in due))
        shares.append(read / total)
    # The first hour still drains what the budget left of the pass after the gap.
    draining, rest = shares[:12], shares[12:]
    return {
        "first_hour_max_share": round(max(draining), 4),
        "max_share": round(max(rest), 4),
        "mean_share": round(sum(rest) / len(rest), 4),
    }


if __name__ == "__main__":
    main()
