"""`make bench`: throughput and memory of the real CLI against the simulator.

Prints one labelled line per figure, then all figures as one JSON line. Every figure is
the median of RUNS runs. Only 127.0.0.1 is ever contacted. Each part runs against its
own simulator, started and stopped in turn, so only one competes with rcs-sync for
the cores. Sizes (environment, defaults in brackets):

- BENCH_RECORDS [1M]: the one-window backfill, the bare limit, the idle daemon.
- BENCH_SCALE_RECORDS [4M] in BENCH_SCALE_WINDOWS [20] windows: memory flat in the
  amount of data, against a 1-window run of the same window size.
- BENCH_SWEEP [250000,500000,1000000]: one window of each size, to choose the default
  of `[sync] max_records_per_request` (served by the same simulator as the above).
- BENCH_NOOP_RECORDS [100k]: the warehouse behind an incremental pass finding nothing.
- BENCH_LAYOUTS [lines,compact,pretty]: body layouts of the `layouts` part, each a
  one-day backfill of BENCH_RECORDS with the default configuration, beside the bare
  limit on the same bytes.
- BENCH_BIG_DAY [800000]: records per day of the `big_days` part (two such days):
  records the server served over records stored, and the peak RSS.
- BENCH_SLOW_RECORDS [300000] over 30 days for the `slow_link` part: a backfill over a
  slow link (BENCH_SLOW_LATENCY [0.2] s per request, BENCH_SLOW_BANDWIDTH [6e6] bytes/s
  per connection, BENCH_SLOW_SERVER [1.0] s of server time per 100k records) at
  `concurrency = 1` and at the default, against what the link allows.
- BENCH_HUGE [2000000]: records of the `huge_response` part: one window, one response
  (a fresh backfill's first request over data of unknown density), its peak RSS.
- BENCH_MONTH_RECORDS [1500000]: records of the `fast_month` part, a 30-day backfill from
  the simulator on this machine (the writer is what it waits for).
- `nginx_link`: the slow link's bandwidth from a server we did not write: nginx
  (`tests/nginx.py`) serving BENCH_SLOW_RECORDS over 30 days, a body per day laid out
  by DuckDB's JSON writer, each connection capped at BENCH_SLOW_BANDWIDTH (no latency,
  no server time: nginx has neither); skipped, saying so, without nginx.
- BENCH_PARTS [one_window,layouts,big_days,huge_response,slow_link,nginx_link,fast_month,
  scale,noop]: which parts to run, e.g. `one_window,noop` to set the backfill and the
  no-op pass of two trees side by side.
"""

from __future__ import annotations

import compileall
import heapq
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rcs_sim.server import spawn
from rcs_sync.model.durations import format_duration, format_instant
from rcs_sync.model.windows import GRID_ANCHOR, Window, cut
from tests import nginx
from tests.adversarial_helpers import children, cmdline

RCS_SYNC = str(Path(sys.executable).with_name("rcs-sync"))
TOKEN = "bench-token"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
RECORDS = int(os.environ.get("BENCH_RECORDS", "1000000"))
SCALE_RECORDS = int(os.environ.get("BENCH_SCALE_RECORDS", "4000000"))
SCALE_WINDOWS = int(os.environ.get("BENCH_SCALE_WINDOWS", "20"))
SWEEP = tuple(int(n) for n in os.environ.get("BENCH_SWEEP", "250000,500000,1000000").split(","))
NOOP_RECORDS = int(os.environ.get("BENCH_NOOP_RECORDS", "100000"))
MONTH = int(os.environ.get("BENCH_MONTH_RECORDS", "1500000"))
PARTS = os.environ.get(
    "BENCH_PARTS",
    "one_window,layouts,big_days,huge_response,slow_link,nginx_link,fast_month,scale,noop",
).split(",")
LAYOUTS = os.environ.get("BENCH_LAYOUTS", "lines,compact,pretty").split(",")
BIG_DAY = int(os.environ.get("BENCH_BIG_DAY", "800000"))
HUGE = int(os.environ.get("BENCH_HUGE", "2000000"))
SLOW_RECORDS = int(os.environ.get("BENCH_SLOW_RECORDS", "300000"))
SLOW_LATENCY = float(os.environ.get("BENCH_SLOW_LATENCY", "0.2"))
SLOW_BANDWIDTH = float(os.environ.get("BENCH_SLOW_BANDWIDTH", "6e6"))
SLOW_SERVER = float(os.environ.get("BENCH_SLOW_SERVER", "1.0"))
DEFAULT_CONCURRENCY = 4
"""`[api] concurrency` when the config leaves it out."""
ONE_WINDOW = "100000d"
"""A window larger than any span: the whole span in one request."""
SCALE_WINDOW = timedelta(hours=2, minutes=24)
"""The window of the multi-window backfill; holds SCALE_RECORDS / SCALE_WINDOWS records."""
DAEMON_PASSES = 7
"""Passes measured in the daemon (at least): each reading is in clock ticks of 10 ms."""
AGE = "1 HOUR"
"""How long ago the no-op passes' warehouse is made to look loaded (see bench_noop)."""
SPAWN_SLACK = timedelta(minutes=30)
"""Simulated history beyond the windows read: covers the grid rounding and the time the
simulator takes to start (its clock starts at some instant during `spawn`)."""
RECEIVED = re.compile(r"(\d+) received")
PASS_SECONDS = re.compile(r", ([\d.]+)s$", re.MULTILINE)
T = TypeVar("T")


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    stdout: str
    cpu_s: float
    """User + system CPU of the process itself (its children are not counted)."""
    window_peaks_mb: list[float] = field(default_factory=list)
    """Each window's peak RSS (run_measured's `per_window`)."""

    @property
    def received(self) -> int:
        """Records received, from the summary lines a backfill prints on stdout."""
        return sum(int(n) for n in RECEIVED.findall(self.stdout))

    @property
    def pass_seconds(self) -> float:
        """The passes' own time, from those lines: from the first request to the last
        commit, without interpreter start-up, imports or opening the warehouse."""
        return sum(float(n) for n in PASS_SECONDS.findall(self.stdout))


def run_measured(cmd: list[str], env: dict[str, str], *, per_window: bool = False) -> Run:
    """Run a command; its wall time, its own peak RSS and CPU (from wait4, not a sampler).

    With `per_window`, also each window's peak: at every `window_loaded` log line the
    process's high-water mark is read and reset (/proc/PID/clear_refs), so each reading
    covers one window, from the end of the previous one's commit to its own."""
    peaks: list[float] = []
    # Files, so a chatty output never blocks the process.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as errors:
        began = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.PIPE if per_window else errors
        )
        if proc.stderr is not None:
            for line in proc.stderr:
                errors.write(line)
                if b'"window_loaded"' in line:
                    peaks.append(proc_mb(proc.pid, "status", "VmHWM"))
                    Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            errors.seek(0)
            last = errors.read().decode(errors="replace").strip().splitlines()[-3:]
            sys.exit(
                f"bench: {' '.join(cmd[3:])} failed with exit {proc.returncode}: "
                + " | ".join(last)
            )
        out.seek(0)
        stdout = out.read().decode()
    peak = max([usage.ru_maxrss / 1024, *peaks])
    return Run(seconds, peak, stdout, usage.ru_utime + usage.ru_stime, peaks)


def proc_mb(pid: int, file: str, field: str) -> float:
    """A memory figure of /proc/PID/FILE (status: VmRSS, VmHWM; smaps_rollup: Pss), in MB."""
    text = Path(f"/proc/{pid}/{file}").read_text()
    return (
        next(int(line.split()[1]) for line in text.splitlines() if line.startswith(f"{field}:"))
        / 1024
    )


def write_config(
    directory: Path,
    base_url: str,
    window: str,
    interval: str = "5m",
    initial_start: datetime | None = None,
    *,
    defaults: bool = False,
    api: str = "",
) -> Path:
    """A config planning every window whole (target_records_per_request far above any
    response), so one window is one request; with `defaults`, the shipped planning."""
    config = directory / "rcs-sync.toml"
    first = f'initial_start = "{format_instant(initial_start)}"\n' if initial_start else ""
    target = "" if defaults else "target_records_per_request = 10000000\n"
    config.write_text(
        f'[api]\nbase_url = "{base_url}"\ntimeout = "120s"\n{api}'
        f'[sync]\nwindow = "{window}"\ninterval = "{interval}"\n{first}{target}'
        f'[warehouse]\npath = "rcs.duckdb"\n',
        encoding="utf-8",
    )
    return config


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def own_peak_rss_mb() -> float:
    """This process's peak RSS. Linux carries it into a child's ru_maxrss (the child
    starts with this process's pages and exec keeps their high-water mark), so a child
    measured at or below it may be reporting this process, not itself."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_backfill(
    base_url: str,
    env: dict[str, str],
    span: tuple[str, str],
    window: str = ONE_WINDOW,
    *,
    per_window: bool = False,
    defaults: bool = False,
    api: str = "",
    stored: list[int] | None = None,
    runs: int = RUNS,
) -> list[Run]:
    """`runs` backfills of `span` through the CLI, each into a new warehouse (the rows it
    ends up holding appended to `stored`)."""
    done = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="rcs-bench-") as tmp:
            config = write_config(Path(tmp), base_url, window, defaults=defaults, api=api)
            run = run_measured(backfill_command(config, span), env, per_window=per_window)
            if run.peak_rss_mb <= own_peak_rss_mb():
                sys.exit("bench: the peak RSS measured is the bench's own; keep heavy work out")
            done.append(run)
            if stored is not None:
                with duckdb.connect(str(Path(tmp) / "rcs.duckdb"), read_only=True) as con:
                    row = con.execute("SELECT count(*) FROM rcs_records").fetchone()
                stored.append(int(row[0]) if row else 0)
    return done


def bench_bare(
    base_url: str, env: dict[str, str], span: tuple[str, str], runs: int = RUNS
) -> list[Run]:
    """`runs` runs of bench/bare_limit.py, each a process of its own like the backfill's
    (its stdout: the seconds without start-up and imports)."""
    cmd = [sys.executable, str(Path(__file__).with_name("bare_limit.py")), base_url, *span]
    return [run_measured(cmd, env) for _ in range(runs)]


def side_by_side(
    base_url: str, env: dict[str, str], span: tuple[str, str], window: str, *, defaults: bool
) -> tuple[list[Run], list[Run]]:
    """RUNS backfills and RUNS bare-limit runs of `span`, taken in turn after one request
    nobody times. A simulator just started answers its first request of a span 0.5-1 s
    slower than the next ones (curl: 1.09 s against 0.30 s for 1M records one per line),
    and a cold start paid by whichever side runs first, or a machine that slows down
    during the part, would tilt the ratio; in turn, both see the same server."""
    warm_up(base_url, env, span)
    backfill: list[Run] = []
    bare: list[Run] = []
    for _ in range(RUNS):
        backfill += bench_backfill(base_url, env, span, window, defaults=defaults, runs=1)
        bare += bench_bare(base_url, env, span, runs=1)
    return backfill, bare


def warm_up(base_url: str, env: dict[str, str], span: tuple[str, str]) -> None:
    """Fetch `span` once and throw the body away."""
    query = urllib.parse.urlencode({"start": span[0], "end": span[1]})
    with urllib.request.urlopen(
        sim_request(f"{base_url}/j/rcs_records?{query}", env), timeout=120
    ) as resp:
        while resp.read(1 << 20):
            pass


def sim_request(url: str, env: dict[str, str]) -> urllib.request.Request:
    """A GET of the simulator with its token."""
    return urllib.request.Request(url, headers={"Authorization": f"Bearer {env['RCS_SIM_TOKEN']}"})


def idle_daemon_rss(base_url: str, env: dict[str, str]) -> list[tuple[float, float]]:
    """Memory of `rcs-sync run` once its first pass (a backfill) is over, sampled RUNS
    times: the daemon's RSS, and the PSS of it with its helpers (the fork server its
    passes are forked from, and multiprocessing's resource tracker), which counts the
    pages they share (the interpreter, libraries) once, not once per process."""
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
                tree = [proc.pid, *children(proc.pid)]
                samples.append(
                    (
                        proc_mb(proc.pid, "status", "VmRSS"),
                        sum(proc_mb(p, "smaps_rollup", "Pss") for p in tree),
                    )
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return samples


def banner(name: str, sizes: str) -> None:
    """The first line of every bench script: what was measured, and on what."""
    print(
        f"rcs-sync {name}: {sizes}, median of {RUNS} runs, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}, duckdb {duckdb.__version__}",
        flush=True,
    )


def last_day_span() -> tuple[str, str]:
    """From a day ago to an hour ahead: a simulator of `--days 0.5` holds all of it."""
    now = datetime.now(UTC)
    return (
        (now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def backfill_command(config: Path, span: tuple[str, str]) -> list[str]:
    """`rcs-sync backfill` of `span` (start, end) with `config`."""
    return [RCS_SYNC, "--config", str(config), "backfill", "--start", span[0], "--end", span[1]]


def report(figures: dict[str, object], label: str, key: str, value: object) -> None:
    """One figure: a labelled line now, and a field of the JSON line at the end."""
    figures[key] = value
    print(f"{label:<48} {value}", flush=True)


def stop(sim: subprocess.Popen[str]) -> None:
    sim.terminate()
    sim.wait(timeout=30)


def bench_one_window(env: dict[str, str], figures: dict[str, object]) -> None:
    """(1) one window of RECORDS records end to end, (2) the bare limit on the same
    bytes, (6) the idle daemon."""
    sim, base_url = spawn(["--records", str(RECORDS), "--days", "0.5"], env)
    try:
        span = last_day_span()
        backfill, bare = side_by_side(base_url, env, span, ONE_WINDOW, defaults=False)
        rate = median([RECORDS / r.seconds for r in backfill])
        report(
            figures,
            "backfill 1 window, end to end (records/s)",
            "backfill_records_per_s",
            round(rate),
        )
        report(
            figures,
            "backfill 1 window, peak RSS (MB)",
            "backfill_peak_rss_mb",
            median([r.peak_rss_mb for r in backfill]),
        )
        bare_rate = median([RECORDS / r.seconds for r in bare])
        bare_inner_rate = median([RECORDS / float(r.stdout) for r in bare])
        report(
            figures,
            "bare limit, end to end (records/s)",
            "bare_records_per_s",
            round(bare_rate),
        )
        report(
            figures,
            "bare limit, peak RSS (MB)",
            "bare_peak_rss_mb",
            median([r.peak_rss_mb for r in bare]),
        )
        report(
            figures,
            "bare limit without start-up and imports (records/s)",
            "bare_inner_records_per_s",
            round(bare_inner_rate),
        )
        report(
            figures,
            "backfill time / bare-limit time, end to end",
            "ratio_to_bare",
            round(bare_rate / rate, 2),
        )
        report(
            figures,
            "backfill time / bare-limit time, both without start-up",
            "ratio_to_bare_inner",
            round(
                median([r.pass_seconds for r in backfill])
                / median([float(r.stdout) for r in bare]),
                2,
            ),
        )
        idle = idle_daemon_rss(base_url, env)
        report(
            figures,
            "idle daemon RSS after its first pass (MB)",
            "idle_daemon_rss_mb",
            median([own for own, _ in idle]),
        )
        report(
            figures,
            "idle daemon, fork server and tracker, PSS (MB)",
            "idle_daemon_tree_pss_mb",
            median([tree for _, tree in idle]),
        )
    finally:
        stop(sim)


def served(base_url: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """The simulator's request log (records and body bytes of each response)."""
    with urllib.request.urlopen(sim_request(f"{base_url}/_sim/requests", env), timeout=30) as resp:
        entries: list[dict[str, Any]] = json.load(resp)
    return [e for e in entries if e["path"] == "/j/rcs_records" and e["status"] == 200]


def bench_layouts(env: dict[str, str], figures: dict[str, object]) -> None:
    """For each body layout: RECORDS records stamped within one day, read as one window
    (one request) with the default configuration otherwise (target, concurrency),
    beside the bare limit on the same bytes in the same run."""
    for layout in LAYOUTS:
        sim, base_url = spawn(["--records", str(RECORDS), "--days", "0.9", "--format", layout], env)
        try:
            now = datetime.now(UTC)
            span = span_from(now - timedelta(days=1), timedelta(days=1, hours=1))
            backfill, bare = side_by_side(base_url, env, span, ONE_WINDOW, defaults=True)
            checked(backfill, RECORDS)
        finally:
            stop(sim)
        rate = median([RECORDS / r.seconds for r in backfill])
        bare_rate = median([RECORDS / r.seconds for r in bare])
        label = f"layout {layout}: backfill 1 day, default config"
        report(figures, f"{label} (records/s)", f"layout_{layout}_records_per_s", round(rate))
        report(
            figures,
            f"{label}, peak RSS (MB)",
            f"layout_{layout}_peak_rss_mb",
            median([r.peak_rss_mb for r in backfill]),
        )
        report(
            figures,
            f"layout {layout}: bare limit (records/s)",
            f"layout_{layout}_bare_records_per_s",
            round(bare_rate),
        )
        report(
            figures,
            f"layout {layout}: backfill time / bare-limit time",
            f"layout_{layout}_ratio_to_bare",
            round(bare_rate / rate, 2),
        )


def bench_big_days(env: dict[str, str], figures: dict[str, object]) -> None:
    """Two days of BIG_DAY records each, default configuration: records the server
    served over records stored (a response thrown away and re-read counts twice)."""
    day = timedelta(days=1)
    history = 3 * day + SPAWN_SLACK
    density = BIG_DAY / day.total_seconds()
    sim, base_url = spawn(
        [
            "--records",
            str(round(density * history.total_seconds())),
            "--days",
            f"{history / day:.6f}",
        ],
        env,
    )
    try:
        first = grid_ceil(datetime.now(UTC) - history, day)
        span = span_from(first, 2 * day)
        stored: list[int] = []
        runs = bench_backfill(base_url, env, span, "1d", defaults=True, stored=stored)
        log = served(base_url, env)
    finally:
        stop(sim)
    report(
        figures,
        f"2 days of {BIG_DAY:,}: records served / records stored",
        "big_days_served_ratio",
        round(sum(e["records"] for e in log) / sum(stored), 3),
    )
    report(
        figures,
        f"2 days of {BIG_DAY:,}: requests per backfill",
        "big_days_requests",
        len(log) / RUNS,
    )
    report(
        figures,
        f"2 days of {BIG_DAY:,}: peak RSS (MB)",
        "big_days_peak_rss_mb",
        median([r.peak_rss_mb for r in runs]),
    )
    report(
        figures,
        f"2 days of {BIG_DAY:,} (records/s)",
        "big_days_records_per_s",
        round(median([s / r.seconds for s, r in zip(stored, runs, strict=True)])),
    )


def bench_huge_response(env: dict[str, str], figures: dict[str, object]) -> None:
    """One response of HUGE records (one window, default configuration): the memory
    bound must hold whatever a complete response holds."""
    sim, base_url = spawn(["--records", str(HUGE), "--days", "0.9"], env)
    try:
        span = span_from(datetime.now(UTC) - timedelta(days=1), timedelta(days=1, hours=1))
        runs = checked(bench_backfill(base_url, env, span, ONE_WINDOW, defaults=True), HUGE)
        requests = len(served(base_url, env)) / RUNS
    finally:
        stop(sim)
    label = f"1 response of {HUGE:,}"
    report(figures, f"{label}: requests per backfill", "huge_requests", requests)
    report(
        figures,
        f"{label}: peak RSS (MB)",
        "huge_peak_rss_mb",
        median([r.peak_rss_mb for r in runs]),
    )
    report(
        figures,
        f"{label} (records/s)",
        "huge_records_per_s",
        round(median([HUGE / r.seconds for r in runs])),
    )


def bench_fast_month(env: dict[str, str], figures: dict[str, object]) -> None:
    """A 30-day backfill of MONTH records from the simulator on this machine, default
    configuration: daily windows that arrive faster than they load, so the writer is
    what the backfill waits for."""
    day = timedelta(days=1)
    history = 30 * day + SPAWN_SLACK
    sim, base_url = spawn(["--records", str(MONTH), "--days", f"{history / day:.6f}"], env)
    try:
        span = span_from(datetime.now(UTC) - 30 * day, 30 * day + timedelta(hours=1))
        warm_up(base_url, env, span)
        runs = checked(bench_backfill(base_url, env, span, "1d", defaults=True), MONTH)
    finally:
        stop(sim)
    label = f"30 days of {MONTH:,}, fast server"
    rate = round(median([r.received / r.seconds for r in runs]))
    peak = median([r.peak_rss_mb for r in runs])
    report(figures, f"{label} (records/s)", "month_records_per_s", rate)
    report(figures, f"{label}: peak RSS (MB)", "month_peak_rss_mb", peak)


def bench_slow_link(env: dict[str, str], figures: dict[str, object]) -> None:
    """A 30-day backfill over a slow link at `concurrency = 1` and at the default,
    against what the link allows: (body bytes / bandwidth + server time + one round
    trip) summed over the requests, divided by the concurrency."""
    days = 30
    history = timedelta(days=days) + SPAWN_SLACK
    density = SLOW_RECORDS / (days * 86400)
    sim, base_url = spawn(
        [
            "--records",
            str(round(density * history.total_seconds())),
            "--days",
            f"{history / timedelta(days=1):.6f}",
            "--latency",
            str(SLOW_LATENCY),
            "--bandwidth",
            str(SLOW_BANDWIDTH),
            "--server-time",
            str(SLOW_SERVER),
        ],
        env,
    )
    results: dict[int, tuple[list[Run], list[dict[str, Any]]]] = {}
    try:
        first = grid_ceil(datetime.now(UTC) - history, timedelta(days=1))
        span = span_from(first, timedelta(days=days - 1))
        for concurrency in (1, DEFAULT_CONCURRENCY):
            before = len(served(base_url, env))
            api = "" if concurrency == DEFAULT_CONCURRENCY else f"concurrency = {concurrency}\n"
            runs = bench_backfill(base_url, env, span, "1d", defaults=True, api=api)
            results[concurrency] = (runs, served(base_url, env)[before:])
    finally:
        stop(sim)
    seconds = {c: median([r.seconds for r in runs]) for c, (runs, _) in results.items()}
    for concurrency, (_, log) in results.items():
        link = [
            e["bytes"] / SLOW_BANDWIDTH + SLOW_SERVER * e["records"] / 100_000 + SLOW_LATENCY
            for e in log
        ]
        allowed = sum(link) / RUNS / concurrency
        label = f"slow link, 30 days, concurrency {concurrency}"
        report_link(figures, label, f"slow_c{concurrency}", seconds[concurrency], allowed)
        slotted = packed(link[: len(link) // RUNS], concurrency)
        report(
            figures,
            f"{label}: the link, requests in {concurrency} slots (s)",
            f"slow_c{concurrency}_slots_s",
            round(slotted, 3),
        )
    report(
        figures,
        f"slow link: concurrency 1 / concurrency {DEFAULT_CONCURRENCY}",
        "slow_speedup",
        round(seconds[1] / seconds[DEFAULT_CONCURRENCY], 2),
    )


def bench_nginx_link(env: dict[str, str], figures: dict[str, object]) -> None:
    """`slow_link`'s 30 days at `concurrency = 1` and at the default, from nginx capping
    each connection at SLOW_BANDWIDTH, each against what that link allows: the body
    bytes nginx logged ÷ the bandwidth, summed, ÷ the concurrency."""
    if nginx.binary() is None:
        print(f"nginx link: skipped, {nginx.MISSING}")
        return
    day = timedelta(days=1)
    span = Window(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 31, tzinfo=UTC))
    seconds: dict[int, float] = {}
    allowed: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="rcs-nginx-") as tmp:
        server = nginx.Nginx(Path(tmp), TOKEN, routed=True, limit_rate=round(SLOW_BANDWIDTH))
        windows = cut(span, day)
        # A day at a time, none kept: the bench's own peak RSS must stay under the backfill's.
        total = sum(len(d) for d in server.serve_windows(windows, SLOW_RECORDS // len(windows)))
        server.start()
        try:
            bounds = span_from(span.start, span.span)
            for concurrency in (1, DEFAULT_CONCURRENCY):
                before = len(server.served())
                api = "" if concurrency == DEFAULT_CONCURRENCY else f"concurrency = {concurrency}\n"
                runs = checked(
                    bench_backfill(server.base_url, env, bounds, "1d", defaults=True, api=api),
                    total,
                )
                sent = sum(int(line[3]) for line in server.served()[before:])
                seconds[concurrency] = median([r.seconds for r in runs])
                allowed[concurrency] = sent / SLOW_BANDWIDTH / RUNS / concurrency
        finally:
            server.stop()
    for concurrency, taken in seconds.items():
        label = f"nginx link, 30 days, concurrency {concurrency}"
        report_link(figures, label, f"nginx_c{concurrency}", taken, allowed[concurrency])
    report(
        figures,
        f"nginx link: concurrency 1 / concurrency {DEFAULT_CONCURRENCY}",
        "nginx_speedup",
        round(seconds[1] / seconds[DEFAULT_CONCURRENCY], 2),
    )


def report_link(
    figures: dict[str, object], label: str, key: str, seconds: float, allowed: float
) -> None:
    """A backfill's time, what its link allows, and the one over the other."""
    report(figures, f"{label} (s)", f"{key}_s", seconds)
    report(figures, f"{label}: what the link allows (s)", f"{key}_link_s", round(allowed, 3))
    report(
        figures,
        f"{label}: time / what the link allows",
        f"{key}_ratio_to_link",
        round(seconds / allowed, 2),
    )


def packed(durations: list[float], slots: int) -> float:
    """When the last of these requests ends, each sent in turn as soon as one of
    `slots` is free: whole requests cannot be shared out evenly (29 days in 4 slots
    take 8 rounds, not 7.25), which the sum divided by the concurrency leaves out."""
    free = [0.0] * slots
    for duration in durations:
        heapq.heapreplace(free, free[0] + duration)
    return max(free)


def grid_ceil(instant: datetime, size: timedelta) -> datetime:
    """The first window boundary at or after `instant`: the CLI cuts spans on a grid
    (rcs_sync.model.windows.cut), so a span starting on it is read as whole windows."""
    return GRID_ANCHOR - ((GRID_ANCHOR - instant) // size) * size


def span_from(start: datetime, length: timedelta) -> tuple[str, str]:
    return format_instant(start), format_instant(start + length)


def checked(runs: list[Run], expected: int) -> list[Run]:
    """Fail rather than report a rate for a span that did not hold the records meant."""
    got = statistics.median(r.received for r in runs)
    if abs(got - expected) > expected * 0.02:
        sys.exit(f"bench: expected ~{expected:,} records per run, received {got:,}")
    return runs


def bench_scale(env: dict[str, str], figures: dict[str, object]) -> None:
    """(3) peak RSS flat in the amount of data: SCALE_WINDOWS windows vs one of the same
    size; (7) one window of each BENCH_SWEEP size, for `max_records_per_request`.

    The simulator spreads records evenly over its history, so a span holds records in
    proportion to its length; every span read here lies wholly inside that history.
    """
    if max(SWEEP) > SCALE_RECORDS:
        sys.exit("bench: BENCH_SWEEP sizes must not exceed BENCH_SCALE_RECORDS")
    per_window = SCALE_RECORDS // SCALE_WINDOWS
    density = per_window / SCALE_WINDOW.total_seconds()
    history = (SCALE_WINDOWS + 1) * SCALE_WINDOW + SPAWN_SLACK
    began = datetime.now(UTC)
    sim, base_url = spawn(
        [
            "--records",
            str(round(density * history.total_seconds())),
            "--days",
            f"{history / timedelta(days=1):.6f}",
        ],
        env,
    )
    try:
        ready = datetime.now(UTC)
        if ready - began > SPAWN_SLACK:
            sys.exit("bench: the simulator took longer to start than SPAWN_SLACK")
        first = grid_ceil(ready - history, SCALE_WINDOW)
        window = format_duration(SCALE_WINDOW)
        many = checked(
            bench_backfill(
                base_url,
                env,
                span_from(first, SCALE_WINDOWS * SCALE_WINDOW),
                window,
                per_window=True,
            ),
            SCALE_RECORDS,
        )
        one = checked(
            bench_backfill(base_url, env, span_from(first, SCALE_WINDOW), window), per_window
        )
        sweep = {
            n: checked(
                bench_backfill(base_url, env, span_from(first, timedelta(seconds=n / density))),
                n,
            )
            for n in SWEEP
        }
    finally:
        stop(sim)
    label = f"backfill {SCALE_WINDOWS} windows of {per_window:,}"
    report(
        figures,
        f"{label} (records/s)",
        "scale_records_per_s",
        round(median([r.received / r.seconds for r in many])),
    )
    many_rss = median([r.peak_rss_mb for r in many])
    one_rss = median([r.peak_rss_mb for r in one])
    report(figures, f"{label}, peak RSS (MB)", "scale_peak_rss_mb", many_rss)
    report(
        figures,
        f"backfill 1 window of {per_window:,}, peak RSS (MB)",
        "scale_one_window_peak_rss_mb",
        one_rss,
    )
    report(
        figures,
        f"peak RSS, {SCALE_WINDOWS} windows / 1 window",
        "scale_rss_ratio",
        round(many_rss / one_rss, 3),
    )
    window_peaks = [statistics.median(r.window_peaks_mb) for r in many]
    report(
        figures,
        f"{label}, each window's peak RSS: median (MB)",
        "scale_window_peak_rss_mb",
        median(window_peaks),
    )
    report(
        figures,
        f"{label}, each window's peak RSS: lowest / highest (MB)",
        "scale_window_peak_rss_range_mb",
        [
            round(min(min(r.window_peaks_mb) for r in many), 1),
            round(max(max(r.window_peaks_mb) for r in many), 1),
        ],
    )
    report(
        figures,
        "median window peak RSS / 1 window",
        "scale_window_rss_ratio",
        round(median(window_peaks) / one_rss, 3),
    )
    tail = max(1, SCALE_WINDOWS // 4)
    report(
        figures,
        f"median window peak RSS, last {tail} / first {tail} windows",
        "scale_window_rss_trend",
        median(
            [
                statistics.median(r.window_peaks_mb[-tail:])
                / statistics.median(r.window_peaks_mb[:tail])
                for r in many
            ]
        ),
    )
    for n, runs in sweep.items():
        report(
            figures,
            f"sweep: 1 window of {n:,}, peak RSS (MB)",
            f"sweep_{n}_peak_rss_mb",
            median([r.peak_rss_mb for r in runs]),
        )
        report(
            figures,
            f"sweep: 1 window of {n:,} (records/s)",
            f"sweep_{n}_records_per_s",
            round(median([r.received / r.seconds for r in runs])),
        )


def scope_summary(run: Run) -> dict[str, Any]:
    """The pass summary from the `scope` event `rcs-sync sync --events` prints."""
    for line in run.stdout.splitlines():
        event = json.loads(line)
        if event.get("event") == "scope" and event.get("summary"):
            summary: dict[str, Any] = event["summary"]
            return summary
    sys.exit("bench: `rcs-sync sync --events` printed no scope summary")


def children_cpu_s(pid: int) -> float:
    """CPU of the children `pid` has reaped (cutime + cstime in /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def daemon_noop_passes(config: Path, env: dict[str, str]) -> list[float]:
    """CPU of each of DAEMON_PASSES passes `rcs-sync run` forks after its first two (which copy
    the warehouse whole into the analysts' snapshot: there is no spare generation yet):
    what its fork server's reaped children cost, read between passes (each logs
    `pass_complete`)."""
    log_path = config.with_name("daemon.log")
    with log_path.open("wb") as log:
        proc = subprocess.Popen([RCS_SYNC, "--config", str(config), "run"], env=env, stderr=log)
    deadline = time.monotonic() + 120

    def wait(condition: Callable[[], T | None], what: str) -> T:
        while (found := condition()) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"bench: the daemon: no {what}")
            time.sleep(0.01)
        return found

    def fork_server() -> int | None:
        return next(
            (p for p in children(proc.pid) if b"forkserver" in cmdline(p)),
            None,
        )

    def idle(server: int, after: int) -> tuple[int, float] | None:
        """(passes completed, their CPU) once more than `after` are and none runs."""
        if children(server):
            return None
        done = log_path.read_bytes().count(b'"pass_complete"')
        cpu = children_cpu_s(server)
        if done <= after or children(server):
            return None
        return done, cpu

    try:
        server = wait(fork_server, "fork server")
        done, cpu = wait(partial(idle, server, 1), "first two passes")
        per_pass = []
        for _ in range(max(RUNS, DAEMON_PASSES)):
            now_done, now_cpu = wait(partial(idle, server, done), "next pass")
            per_pass.append((now_cpu - cpu) / (now_done - done))
            done, cpu = now_done, now_cpu
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return per_pass


def bench_noop(env: dict[str, str], figures: dict[str, object]) -> None:
    """(4) An incremental pass that finds nothing new, over NOOP_RECORDS records.

    The simulator's clock is frozen, so nothing changes between passes; each pass still
    re-reads the few records last modified within its `overlap` (received, not written).
    Then `rcs-sync run` forks passes that also publish the analysts' snapshot. Records
    are first aged by AGE (their `updated_at`), as if loaded long ago: otherwise each
    snapshot refresh would copy them again, as it does for `snapshot.OVERLAP` after a
    load, and the figure would be of the load's wake, not of a pass finding nothing.
    The whole process's cost is set against the pass alone (its summary's `duration_s`
    and `cpu_s`, which leave out interpreter start-up and imports) and against
    `rcs-sync --help`.
    """
    history = timedelta(days=30)
    sim, base_url = spawn(["--records", str(NOOP_RECORDS), "--days", "30", "--frozen"], env)
    try:
        with tempfile.TemporaryDirectory(prefix="rcs-noop-") as tmp:
            start = datetime.now(UTC) - history - timedelta(days=1)
            config = write_config(Path(tmp), base_url, "1d", initial_start=start)
            cmd = [RCS_SYNC, "--config", str(config), "sync", "--events"]
            first = scope_summary(run_measured(cmd, env))
            if first["mode"] != "backfill" or first["inserted"] != NOOP_RECORDS:
                sys.exit(f"bench: the first sync should load {NOOP_RECORDS:,} records: {first}")
            runs = [run_measured(cmd, env) for _ in range(RUNS)]
            with duckdb.connect(str(Path(tmp) / "rcs.duckdb")) as con:
                con.execute(f"UPDATE rcs_records SET updated_at = updated_at - INTERVAL {AGE}")
            config = write_config(Path(tmp), base_url, "1d", interval="2s", initial_start=start)
            forked = daemon_noop_passes(config, env)
    finally:
        stop(sim)
    passes = [scope_summary(r) for r in runs]
    for summary in passes:
        if summary["mode"] != "incremental" or summary["inserted"] or summary["updated"]:
            sys.exit(f"bench: expected an incremental pass that writes nothing: {summary}")
    floor = [run_measured([RCS_SYNC, "--help"], env) for _ in range(RUNS)]
    label = "incremental pass, nothing new"
    report(figures, f"{label}: process wall (s)", "noop_wall_s", median([r.seconds for r in runs]))
    report(figures, f"{label}: process CPU (s)", "noop_cpu_s", median([r.cpu_s for r in runs]))
    report(
        figures,
        f"{label}: the pass alone, wall (s)",
        "noop_pass_s",
        median([float(s["duration_s"]) for s in passes]),
    )
    report(
        figures,
        f"{label}: the pass alone, CPU (s)",
        "noop_pass_cpu_s",
        median([float(s["cpu_s"]) for s in passes]),
    )
    report(
        figures,
        f"{label}: a pass the daemon forks, CPU (s)",
        "noop_daemon_pass_cpu_s",
        median(forked),
    )
    report(
        figures,
        f"{label}: records re-read (overlap)",
        "noop_received",
        round(statistics.median(int(s["received"]) for s in passes)),
    )
    report(
        figures,
        "start-up floor: `rcs-sync --help`, CPU (s)",
        "startup_cpu_s",
        median([r.cpu_s for r in floor]),
    )


def byte_compile() -> None:
    """Compile rcs-sync's modules first, as pip does when it installs a package. The
    Makefile installs it editable, whose modules Python compiles on first import and
    keeps, except where PYTHONDONTWRITEBYTECODE is set (as on the machine the README's
    figures come from): each backfill would then compile its ~50 modules again, ~30 ms
    that an installed rcs-sync never pays, nor dlt, which pip installed."""
    compileall.compile_dir(Path(__file__).resolve().parents[1] / "rcs_sync", quiet=1)


def main() -> None:
    env = {**os.environ, "RCS_SIM_TOKEN": TOKEN, "RCS_SYNC_TOKEN": TOKEN}
    byte_compile()
    banner("bench", f"{RECORDS:,} records")
    figures: dict[str, object] = {
        "records": RECORDS,
        "runs": RUNS,
        "cores": os.cpu_count(),
        "scale_records": SCALE_RECORDS,
        "scale_windows": SCALE_WINDOWS,
        "noop_records": NOOP_RECORDS,
    }
    parts = {
        "one_window": bench_one_window,
        "layouts": bench_layouts,
        "big_days": bench_big_days,
        "huge_response": bench_huge_response,
        "slow_link": bench_slow_link,
        "nginx_link": bench_nginx_link,
        "fast_month": bench_fast_month,
        "scale": bench_scale,
        "noop": bench_noop,
    }
    unknown = set(PARTS) - parts.keys()
    if unknown:
        sys.exit(f"bench: unknown BENCH_PARTS {sorted(unknown)}; known: {sorted(parts)}")
    for name in PARTS:
        parts[name](env, figures)
    print(
        json.dumps(
            {"bench": "rcs-sync", "at": datetime.now(UTC).isoformat(timespec="seconds"), **figures}
        )
    )


if __name__ == "__main__":
    main()
