"""`make bench-peer`: the same records through dlt and through rcs-sync, side by side.

BENCH_PEER_RECORDS [200000] records over two days from the simulator; each tool loads
them into a new DuckDB file, RUNS times (BENCH_RUNS [3]); the wall time and peak RSS of
each process (from wait4), their medians, and how many times faster rcs-sync is. dlt
runs in its own virtualenv (PEER_PYTHON, which the Makefile target creates in
.venv-peer): its dependencies never mix with ours. Beside them, the bare limit of
`make bench` on the same span (`bare_limit.py`: one request, one `read_json` + `INSERT`,
nothing else): what any loader on this machine can reach, as a multiple of dlt too.
"""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import (  # bench/bench.py: this script's directory is on sys.path
    RUNS,
    TOKEN,
    Run,
    banner,
    bench_backfill,
    bench_bare,
    byte_compile,
    checked,
    median,
    report,
    run_measured,
    span_from,
    stop,
    warm_up,
)
from rcs_sim.server import spawn

RECORDS = int(os.environ.get("BENCH_PEER_RECORDS", "200000"))
PEER_PYTHON = os.environ.get("PEER_PYTHON", ".venv-peer/bin/python")


def main() -> None:
    if not Path(PEER_PYTHON).exists():
        sys.exit(f"bench-peer: {PEER_PYTHON} not found (make bench-peer creates it)")
    env = {**os.environ, "RCS_SIM_TOKEN": TOKEN, "RCS_SYNC_TOKEN": TOKEN}
    byte_compile()
    banner("bench-peer", f"{RECORDS:,} records")
    figures: dict[str, object] = {"records": RECORDS, "runs": RUNS}
    sim, base_url = spawn(["--records", str(RECORDS), "--days", "2.1"], env)
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        span = span_from(now - timedelta(days=2, hours=6), timedelta(days=2, hours=7))
        warm_up(base_url, env, span)
        ours = checked(bench_backfill(base_url, env, span, "1d", defaults=True), RECORDS)
        bare = bench_bare(base_url, env, span)
        peer: list[Run] = []
        for _ in range(RUNS):
            with tempfile.TemporaryDirectory(prefix="rcs-peer-") as tmp:
                script = str(Path(__file__).with_name("peer_dlt.py"))
                run = run_measured([PEER_PYTHON, script, base_url, *span, tmp], env)
                if abs(int(run.stdout.strip()) - RECORDS) > RECORDS * 0.02:
                    sys.exit(f"bench-peer: dlt loaded {run.stdout.strip()} records")
                peer.append(run)
    finally:
        stop(sim)
    ours_rate = median([RECORDS / r.seconds for r in ours])
    peer_rate = median([RECORDS / r.seconds for r in peer])
    report(figures, "rcs-sync backfill (records/s)", "ours_records_per_s", round(ours_rate))
    report(
        figures, "rcs-sync peak RSS (MB)", "ours_peak_rss_mb", median([r.peak_rss_mb for r in ours])
    )
    report(figures, "dlt merge into DuckDB (records/s)", "dlt_records_per_s", round(peer_rate))
    report(figures, "dlt peak RSS (MB)", "dlt_peak_rss_mb", median([r.peak_rss_mb for r in peer]))
    report(figures, "rcs-sync / dlt, records/s", "ratio", round(ours_rate / peer_rate, 1))
    bare_rate = median([RECORDS / r.seconds for r in bare])
    report(figures, "bare limit, same span (records/s)", "bare_records_per_s", round(bare_rate))
    report(figures, "bare limit / dlt, records/s", "bare_ratio", round(bare_rate / peer_rate, 1))


if __name__ == "__main__":
    main()
