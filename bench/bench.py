"""`make bench`: throughput and memory of the real CLI against the simulator.

Prints one labelled line per figure, then all figures as one JSON line. Every figure is
the median of RUNS runs. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import requests

from rcs_sync.simulator import spawn

RCS_SYNC = str(Path(sys.executable).with_name("rcs-sync"))
TOKEN = "bench-token"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
RECORDS = int(os.environ.get("BENCH_RECORDS", "1000000"))

BARE_COLUMNS = (
    "{campaign:'BIGINT', id:'BIGINT', job:'BIGINT', number:'VARCHAR', portal:'VARCHAR',"
    " reference:'VARCHAR', state:'UTINYINT', team:'BIGINT', timestamp:'TIMESTAMPTZ'}"
)
BARE_TABLE = (
    "CREATE TABLE r (id BIGINT PRIMARY KEY, campaign BIGINT, job BIGINT, team BIGINT,"
    " number VARCHAR, reference VARCHAR, portal VARCHAR, state UTINYINT, timestamp TIMESTAMPTZ)"
)


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    stdout: str


def run_measured(cmd: list[str], env: dict[str, str]) -> Run:
    """Run a command; its wall time and its own peak RSS (from wait4, not a sampler)."""
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd[:3])} failed with exit {proc.returncode}")
    return Run(seconds, usage.ru_maxrss / 1024, out)


def write_config(directory: Path, base_url: str, window: str, interval: str = "5m") -> Path:
    config = directory / "rcs-sync.toml"
    config.write_text(
        f'[api]\nbase_url = "{base_url}"\ntimeout = "120s"\n'
        f'[sync]\nwindow = "{window}"\ninterval = "{interval}"\n'
        f"max_records_per_request = 10000000\n"
        f'[warehouse]\npath = "rcs.duckdb"\n',
        encoding="utf-8",
    )
    return config


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def bench_backfill(base_url: str, env: dict[str, str], span: tuple[str, str]) -> list[Run]:
    runs = []
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory(prefix="rcs-bench-") as tmp:
            config = write_config(Path(tmp), base_url, "100000d")
            cmd = [
                RCS_SYNC,
                "--config",
                str(config),
                "backfill",
                "--start",
                span[0],
                "--end",
                span[1],
            ]
            runs.append(run_measured(cmd, env))
    return runs


def bench_bare(base_url: str, span: tuple[str, str]) -> list[float]:
    """The bare limit: download the same bytes to a file, then read_json + upsert."""
    results = []
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory(prefix="rcs-bare-") as tmp:
            body = Path(tmp) / "body.json"
            began = time.perf_counter()
            with (
                requests.get(
                    f"{base_url}/j/rcs_records",
                    params={"start": span[0], "end": span[1]},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                    stream=True,
                    timeout=120,
                ) as resp,
                body.open("wb") as out,
            ):
                resp.raise_for_status()
                for chunk in resp.iter_content(1 << 20):
                    out.write(chunk)
            with duckdb.connect(str(Path(tmp) / "bare.duckdb")) as con:
                con.execute(BARE_TABLE)
                con.execute(
                    f"INSERT INTO r SELECT id, campaign, job, team, number, reference, portal,"
                    f" state, timestamp FROM read_json(?, format='array', columns={BARE_COLUMNS})"
                    f" ON CONFLICT DO UPDATE SET state = excluded.state",
                    [str(body)],
                )
            results.append(time.perf_counter() - began)
    return results


def idle_daemon_rss(base_url: str, env: dict[str, str]) -> list[float]:
    """RSS of `rcs-sync run` once its first pass (a backfill) is over, sampled 3 times."""
    with tempfile.TemporaryDirectory(prefix="rcs-daemon-") as tmp:
        config = write_config(Path(tmp), base_url, "1d", interval="1h")
        log_path = Path(tmp) / "daemon.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [RCS_SYNC, "--config", str(config), "run"], env=env, stdout=log, stderr=log
            )
        try:
            deadline = time.monotonic() + 300
            while b"snapshot_published" not in log_path.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit("bench: the daemon did not complete its first pass")
                time.sleep(0.2)
            samples = []
            for _ in range(RUNS):
                time.sleep(1)
                status = Path(f"/proc/{proc.pid}/status").read_text()
                rss_kb = next(
                    int(line.split()[1])
                    for line in status.splitlines()
                    if line.startswith("VmRSS:")
                )
                samples.append(rss_kb / 1024)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return samples


def report(figures: dict[str, object], label: str, key: str, value: object, unit: str) -> None:
    figures[key] = value
    print(f"{label:<48} {value} {unit}".rstrip(), flush=True)


def main() -> None:
    env = {**os.environ, "RCS_SIM_TOKEN": TOKEN, "RCS_SYNC_TOKEN": TOKEN}
    print(
        f"rcs-sync bench: {RECORDS:,} records, median of {RUNS} runs, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, duckdb {duckdb.__version__}"
    )
    sim, base_url = spawn(["--records", str(RECORDS), "--days", "0.5"], env)
    figures: dict[str, object] = {"records": RECORDS, "runs": RUNS, "cores": os.cpu_count()}
    try:
        now = datetime.now(UTC)
        span = (
            (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        backfill = bench_backfill(base_url, env, span)
        rate = median([RECORDS / r.seconds for r in backfill])
        report(
            figures,
            "backfill 1 window, end to end (records/s)",
            "backfill_records_per_s",
            round(rate),
            "",
        )
        report(
            figures,
            "backfill 1 window, peak RSS (MB)",
            "backfill_peak_rss_mb",
            median([r.peak_rss_mb for r in backfill]),
            "",
        )
        bare = bench_bare(base_url, span)
        bare_rate = median([RECORDS / s for s in bare])
        report(
            figures,
            "bare limit: download + read_json + upsert (records/s)",
            "bare_records_per_s",
            round(bare_rate),
            "",
        )
        report(
            figures,
            "backfill time / bare-limit time",
            "ratio_to_bare",
            round(bare_rate / rate, 2),
            "",
        )
        report(
            figures,
            "idle daemon RSS after its first pass (MB)",
            "idle_daemon_rss_mb",
            median(idle_daemon_rss(base_url, env)),
            "",
        )
    finally:
        sim.terminate()
        sim.wait(timeout=30)
    print(
        json.dumps(
            {"bench": "rcs-sync", "at": datetime.now(UTC).isoformat(timespec="seconds"), **figures}
        )
    )


if __name__ == "__main__":
    main()
