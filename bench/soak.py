"""`make soak`: the long adversarial run (issue 6); `tests/test_adversarial.py` is the
fast part.

Seeded SIGKILLs of backfills, incremental passes and the daemon's pass processes, the
30 % fault mix over bigger populations, skewed clocks, boundary records under every
bounds semantics, state changes landing during passes, and full disks. After each
trial the DuckDB table is compared with the simulator's truth. Prints a summary table
and exits 1 if any record was lost or duplicated, or any trial misbehaved (a rerun that
failed, did not resume, or a file that did not open).

    .venv/bin/python bench/soak.py                 # the full run, ~20-30 min on 2 cores
    .venv/bin/python bench/soak.py --scale 0.2     # a reduced run
    .venv/bin/python bench/soak.py --only kill     # scenarios whose name contains "kill"

Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rcs_sim.population import BOUNDS, FAULT_KINDS
from rcs_sync.config import SyncSettings
from rcs_sync.model.durations import format_instant
from tests.adversarial_helpers import (
    Comparison,
    backfill_kill_trial,
    catchup_kill_trial,
    compare,
    descendants,
    fill,
    incremental_kill_trial,
    make_site,
    mount_tmpfs,
    opens_cleanly,
    pause,
    runs_command,
    spool_leftovers,
    unmount,
    wait_until,
    windows_done,
)
from tests.conftest import Site


@dataclass
class Scenario:
    name: str
    trials: int = 0
    checked: int = 0
    lost: int = 0
    duplicated: int = 0
    problems: list[str] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def record(self, comparison: Comparison, label: str) -> None:
        """One comparison with the truth; anything off is also a problem, with its label."""
        self.checked += comparison.checked
        self.lost += comparison.lost
        self.duplicated += comparison.duplicated
        if not comparison.ok:
            self.problems.append(f"{label}: {comparison}")

    def checked_pass(self, site: Site, label: str, *, at_last_request: bool = False) -> None:
        """One `sync`, counted as a trial: a failure is a problem, a success is compared
        with the truth (as of the pass's last request, for a running clock)."""
        result = site.run("sync")
        self.trials += 1
        if result.returncode != 0:
            self.problem(f"{label}: exit {result.returncode}")
            return
        clock_us = last_request_us(site) if at_last_request else None
        self.record(compare(site, clock_us), label)

    def problem(self, text: str) -> None:
        self.problems.append(text)


def last_request_us(site: Site) -> int:
    moment = site.sim.sim.requests[-1].server_time
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


class Soak:
    def __init__(self, root: Path, scale: float, seed: int) -> None:
        self.root = root
        self.scale = scale
        self.seed = seed
        self.sites = 0
        self.results: list[Scenario] = []

    def n(self, full: int, minimum: int = 1) -> int:
        return max(minimum, round(full * self.scale))

    def site(self, sync: dict[str, Any] | None = None, **sim: Any) -> Site:
        """A site read as deployed: sparse windows joined (the tests' sites read every
        window alone)."""
        self.sites += 1
        joined = {"min_records_per_request": SyncSettings.min_records_per_request, **(sync or {})}
        return make_site(self.root / f"site-{self.sites}", sync=joined, **sim)

    def done(self, site: Site) -> None:
        site.sim.stop()
        shutil.rmtree(site.dir, ignore_errors=True)

    def run(self, name: str, body: Callable[[Scenario], None]) -> None:
        scenario = Scenario(name)
        began = time.monotonic()
        print(f"-- {name}", file=sys.stderr, flush=True)
        try:
            body(scenario)
        except Exception as exc:  # a crashed scenario is a failed one, reported as such
            scenario.problem(f"scenario crashed: {type(exc).__name__}: {exc}")
        scenario.seconds = time.monotonic() - began
        self.results.append(scenario)

    # --- scenarios -------------------------------------------------------------------

    def strike_passes(
        self,
        s: Scenario,
        *,
        sites: int,
        salt: int,
        faults: bool = False,
        command: str = "sync",
        sig: signal.Signals = signal.SIGKILL,
        catchup: bool = False,
    ) -> None:
        """Per site: signal its first backfill (`sync`, or the `backfill` command), then
        optionally a catch-up, then two incremental passes; each at a seeded moment,
        each followed by a rerun and a comparison with the truth."""
        rng = random.Random(self.seed + salt)
        for index in range(self.n(sites)):
            seed = rng.randrange(1 << 30)
            trial_rng = random.Random(seed)
            days = trial_rng.randrange(4, 12)
            extra: dict[str, Any] = {}
            if faults:
                extra = {"fault_rate": 0.3, "faults": tuple(k for k in FAULT_KINDS if k != "slow")}
            site = self.site(
                records=trial_rng.randrange(1_000, 12_000),
                days=days,
                latency=trial_rng.choice((0.0, 0.02, 0.05)),
                bounds=trial_rng.choice(BOUNDS),
                seed=seed % 10_000,
                **extra,
            )
            if faults:
                site.write_config(api={"backoff_initial": "10ms", "backoff_max": "200ms"})
            try:
                trials = [backfill_kill_trial(site, seed, days, sig=sig, command=command)]
                if catchup:
                    trials.append(catchup_kill_trial(site, seed + 1, days))
                trials += [incremental_kill_trial(site, seed + k, sig=sig) for k in (2, 3)]
                for trial in trials:
                    s.trials += 1
                    assert trial.comparison is not None
                    label = f"site {index} {trial}"
                    s.record(trial.comparison, label)
                    s.notes[f"{trial.kind}: exit {trial.exit_code} on {trial.signal.name}"] += 1
                    if trial.rerun_exit != 0:
                        s.problem(f"{label}: rerun exited {trial.rerun_exit}")
                    elif not trial.resumed:
                        s.problem(f"{label}: the rerun did not resume")
                leftovers = spool_leftovers(site)
                if leftovers:
                    s.notes["response bodies left behind in the spool"] += leftovers
            finally:
                self.done(site)

    def concurrent_passes(self, s: Scenario) -> None:
        """Two `rcs-sync` processes on one warehouse at once (a cron job and the daemon,
        a backfill and a sync), while states change: both succeed, nothing is lost."""
        rng = random.Random(self.seed + 16)
        for index in range(self.n(6, 2)):
            days = rng.randrange(3, 9)
            site = self.site(
                records=rng.randrange(2_000, 15_000),
                days=days,
                latency=rng.uniform(0.01, 0.1),
                seed=rng.randrange(10_000),
            )
            now = site.sim.sim.now()
            backfill = (
                "backfill",
                "--start",
                format_instant(now - timedelta(days=days + 1)),
                "--end",
                format_instant(now - timedelta(hours=rng.uniform(1, 30))),
            )
            try:
                for round_ in range(3):
                    pair = [("sync",), ("sync",) if round_ != 1 else backfill]
                    procs = [
                        subprocess.Popen(
                            site.command(*args),
                            env=site.env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            text=True,
                        )
                        for args in pair
                    ]
                    site.sim.sim.advance(rng.uniform(1, 60))
                    site.sim.sim.mutate(rng.randrange(1, 100))
                    for proc, args in zip(procs, pair, strict=True):
                        _, err = proc.communicate(timeout=300)
                        s.trials += 1
                        s.notes[f"{args[0]} beside another pass: exit {proc.returncode}"] += 1
                        if proc.returncode != 0:
                            line = (err.strip().splitlines() or [""])[-1]
                            s.problem(f"concurrent #{index}.{round_} {args[0]}: {line[:160]}")
                    if site.run("sync").returncode != 0:
                        s.problem(f"concurrent #{index}.{round_}: the pass after failed")
                    s.record(compare(site), f"concurrent #{index}.{round_}")
            finally:
                self.done(site)

    def kill_daemon_passes(self, s: Scenario) -> None:
        """`rcs-sync run` with a 1 s interval; SIGKILL its pass processes at seeded moments.
        The daemon carries on, and its later passes converge."""
        rng = random.Random(self.seed + 10)
        for index in range(self.n(3)):
            site = self.site(
                sync={"interval": "1s"}, records=rng.randrange(2_000, 8_000), days=6, latency=0.05
            )
            try:
                self._daemon_trials(s, site, index, rng)
            finally:
                self.done(site)

    def _daemon_trials(self, s: Scenario, site: Site, index: int, rng: random.Random) -> None:
        log = site.dir / "daemon.log"
        with log.open("wb") as out:
            daemon = subprocess.Popen(site.command("run"), env=site.env(), stdout=out, stderr=out)
        killed: set[int] = set()
        target: list[int] = []

        def fresh_pass() -> bool:
            target[:] = [
                p for p in descendants(daemon.pid) if runs_command(p, "sync") and p not in killed
            ]
            return bool(target)

        try:
            for _ in range(self.n(12, 3)):
                site.sim.sim.advance(rng.uniform(5, 120))
                site.sim.sim.mutate(rng.randrange(1, 40))
                wait_until(fresh_pass, 60, "a pass process", poll=0.002)
                pause(rng.uniform(0, 0.9))
                for pid in target:
                    killed.add(pid)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        s.notes["pass ended first"] += 1
                    else:
                        s.notes["kill landed"] += 1
                s.trials += 1
                snapshot = site.dir / "rcs.snapshot.duckdb"
                if snapshot.exists():
                    try:
                        opens_cleanly(snapshot)
                    except Exception as exc:  # what an analyst would see
                        s.problem(f"daemon {index}: the snapshot did not open: {exc}")
                if daemon.poll() is not None:
                    s.problem(f"daemon {index} exited {daemon.returncode} after a kill")
                    return
            # Two whole passes after the last change, then stop and compare.
            passes = _count(log, '"pass_complete"')
            wait_until(lambda: _count(log, '"pass_complete"') >= passes + 2, 120, "2 passes")
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(timeout=30)
        if code != 0:
            s.problem(f"daemon {index} stopped with exit {code}")
        opens_cleanly(site)
        s.record(compare(site), f"daemon {index}")

    def fault_mix(self, s: Scenario) -> None:
        """30 % of requests faulted, every kind, over 100k-200k records: backfill plus
        incremental passes with state changes."""
        rng = random.Random(self.seed + 11)
        seen: Counter[str] = Counter()
        for index in range(self.n(3)):
            records = self.n(rng.randrange(100_000, 200_000), 5_000)
            site = self.site(
                sync={"window": rng.choice(("1d", "12h", "6h"))},
                records=records,
                days=rng.randrange(10, 30),
                fault_rate=0.3,
                faults=FAULT_KINDS,
                slow_seconds=1.3,
                extra_fields=True,
                seed=rng.randrange(10_000),
            )
            site.write_config(api={"timeout": "1s", "backoff_max": "500ms"})
            try:
                for round_ in range(self.n(8, 2)):
                    if round_:
                        site.sim.sim.advance(rng.uniform(30, 900))
                        site.sim.sim.mutate(rng.randrange(100, 2_000))
                    s.checked_pass(site, f"fault mix {index} pass {round_}")
                seen.update(r.fault for r in site.sim.sim.requests if r.fault)
            finally:
                self.done(site)
        missing = set(FAULT_KINDS) - set(seen)
        s.notes[f"faults drawn: {sum(seen.values())}"] += 1
        if missing and self.scale >= 1:
            s.problem(f"fault kinds never drawn: {sorted(missing)}")

    def clocks(self, s: Scenario) -> None:
        """Server clock 15 min ahead / behind, running (not frozen), with arrivals and
        state changes; clock_skew set to the documented margin."""
        rng = random.Random(self.seed + 12)
        for index in range(self.n(6, 2)):
            offset = (900, -900)[index % 2] * rng.uniform(0.5, 1.0)
            site = self.site(
                sync={"clock_skew": "20m"},
                frozen=False,
                clock_offset=offset,
                records=rng.randrange(3_000, 20_000),
                days=rng.randrange(2, 8),
                arrival_rate=rng.uniform(0.5, 5),
                seed=rng.randrange(10_000),
            )
            try:
                site.ok("sync")
                for round_ in range(self.n(5, 2)):
                    site.sim.sim.mutate(rng.randrange(10, 200))
                    label = f"clock {offset:+.0f}s pass {round_}"
                    s.checked_pass(site, label, at_last_request=True)
            finally:
                self.done(site)

    def boundaries(self, s: Scenario) -> None:
        """Records exactly on window boundaries under each bounds semantics, day and hour
        windows, incremental passes with changes."""
        rng = random.Random(self.seed + 13)
        for index in range(self.n(12, 4)):
            bounds = BOUNDS[index % len(BOUNDS)]
            site = self.site(
                sync={"window": rng.choice(("1d", "1d", "6h", "1h"))},
                records=rng.randrange(2_000, 30_000),
                days=rng.randrange(2, 10),
                bounds=bounds,
                boundary_fraction=rng.uniform(0.01, 0.2),
                seed=rng.randrange(10_000),
            )
            try:
                for round_ in range(3):
                    if round_:
                        site.sim.sim.advance(rng.uniform(10, 600))
                        site.sim.sim.mutate(rng.randrange(10, 300))
                    s.checked_pass(site, f"bounds {bounds} #{index} pass {round_}")
            finally:
                self.done(site)

    def changes_during_passes(self, s: Scenario) -> None:
        """A thread changes states (and moves the clock) after every request the server
        sees, while backfills and incremental passes run."""
        rng = random.Random(self.seed + 14)
        for index in range(self.n(6, 2)):
            site = self.site(
                records=rng.randrange(3_000, 30_000),
                days=rng.randrange(3, 12),
                latency=rng.uniform(0.02, 0.2),
                seed=rng.randrange(10_000),
            )
            stop = threading.Event()
            meddle = partial(_meddle, site, stop, random.Random(rng.randrange(1 << 30)))
            meddler = threading.Thread(target=meddle)
            meddler.start()
            try:
                for _ in range(4):
                    result = site.run("sync")
                    s.trials += 1
                    if result.returncode != 0:
                        s.problem(f"meddled #{index}: exit {result.returncode}")
            finally:
                stop.set()
                meddler.join()
            try:
                if site.run("sync").returncode != 0:
                    s.problem(f"meddled #{index}: the last pass failed")
                s.record(compare(site), f"meddled #{index}")
            finally:
                self.done(site)

    def disk_full(self, s: Scenario) -> None:
        """The warehouse on a small tmpfs, filled to a seeded level before a pass: the
        pass fails cleanly or succeeds, earlier data stays, a rerun after freeing space
        converges."""
        rng = random.Random(self.seed + 15)
        for index in range(self.n(8, 2)):
            directory = self.root / f"disk-{index}"
            problem = mount_tmpfs(directory, "96m")
            if problem is not None:
                s.notes[f"skipped: cannot mount a tmpfs ({problem})"] += 1
                return
            try:
                self.sites += 1
                site = make_site(directory, records=60_000, days=6, seed=rng.randrange(10_000))
                try:
                    now = site.sim.sim.now()
                    first = site.run(
                        "backfill",
                        "--start",
                        format_instant(now - timedelta(days=8)),
                        "--end",
                        format_instant(now - timedelta(days=rng.uniform(2, 5))),
                    )
                    if first.returncode != 0:
                        s.problem(f"disk #{index}: the first backfill failed")
                        continue
                    before = site.table()
                    windows = windows_done(site)
                    filler = fill(directory, rng.randrange(50_000, 6_000_000))
                    result = site.run("sync")
                    s.trials += 1
                    s.notes[f"exit {result.returncode} on a full disk"] += 1
                    line = (result.stderr.strip().splitlines() or [""])[-1]
                    if result.returncode not in (0, 5) or "Traceback" in result.stderr:
                        s.notes[f"  e.g. {line[:110]}"] += 1
                    opens_cleanly(site)
                    after = site.table()
                    changed = sum(1 for i, st in before.items() if after.get(i) != st)
                    if changed or windows_done(site) < windows:
                        s.problem(f"disk #{index}: committed data lost after the failure")
                    filler.unlink()
                    if site.run("sync").returncode != 0:
                        s.problem(f"disk #{index}: the rerun after freeing space failed")
                    s.record(compare(site), f"disk #{index}")
                finally:
                    site.sim.stop()
            finally:
                unmount(directory)

    # --- report ---------------------------------------------------------------------------

    def report(self) -> bool:
        header = f"{'scenario':<40} {'trials':>7} {'records checked':>16} {'lost':>6}"
        header += f" {'duplicated':>11} {'problems':>9} {'time':>7}"
        lines = [header, "-" * len(header)]
        for r in self.results:
            lines.append(
                f"{r.name:<40} {r.trials:>7} {r.checked:>16,} {r.lost:>6} {r.duplicated:>11}"
                f" {len(r.problems):>9} {r.seconds:>6.0f}s"
            )
        total = Scenario("total")
        for r in self.results:
            total.trials += r.trials
            total.checked += r.checked
            total.lost += r.lost
            total.duplicated += r.duplicated
            total.problems += r.problems
            total.seconds += r.seconds
        lines += ["-" * len(header)]
        lines.append(
            f"{'total':<40} {total.trials:>7} {total.checked:>16,} {total.lost:>6}"
            f" {total.duplicated:>11} {len(total.problems):>9} {total.seconds:>6.0f}s"
        )
        print("\n".join(lines))
        for r in self.results:
            for note, count in sorted(r.notes.items()):
                print(f"  {r.name}: {note}: {count}")
        for problem in total.problems:
            print(f"PROBLEM {problem}")
        return not (total.lost or total.duplicated or total.problems)


def _meddle(site: Site, stop: threading.Event, rng: random.Random) -> None:
    """After each request the server sees, move its clock and change some states."""
    seen = 0
    while not stop.is_set():
        count = len(site.sim.sim.requests)
        if count > seen:
            seen = count
            site.sim.sim.advance(rng.uniform(0, 30))
            site.sim.sim.mutate(rng.randrange(1, 50))
        stop.wait(0.005)


def _count(log: Path, needle: str) -> int:
    return log.read_text(errors="replace").count(needle) if log.exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full run")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--only", default="", help="run scenarios whose name contains this")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rcs-soak-") as tmp:
        soak = Soak(Path(tmp), args.scale, args.seed)
        scenarios: list[tuple[str, Callable[[Scenario], None]]] = [
            (
                "SIGKILL sync: backfill, catch-up, incr.",
                partial(soak.strike_passes, sites=40, salt=0, catchup=True),
            ),
            (
                "SIGKILL under 30% faults",
                partial(soak.strike_passes, sites=10, salt=1, faults=True),
            ),
            (
                "SIGKILL `backfill` cmd, then sync",
                partial(soak.strike_passes, sites=10, salt=2, command="backfill"),
            ),
            ("SIGKILL the daemon's passes", soak.kill_daemon_passes),
            (
                "SIGTERM at seeded moments",
                partial(soak.strike_passes, sites=10, salt=3, sig=signal.SIGTERM),
            ),
            ("30% fault mix, 100k-200k records", soak.fault_mix),
            ("server clock +-15 min, running", soak.clocks),
            ("boundary records x 4 bounds", soak.boundaries),
            ("state changes during passes", soak.changes_during_passes),
            ("two passes at once", soak.concurrent_passes),
            ("disk full mid-pass (tmpfs)", soak.disk_full),
        ]
        for name, body in scenarios:
            if args.only.lower() in name.lower():
                soak.run(name, body)
        ok = soak.report()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
