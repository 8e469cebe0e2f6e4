"""One writer per warehouse: a second `sync`, `backfill` or `run` waits for the first
(or, with `--no-wait`, exits 5 at once), across processes and past a kill -9."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Site, log_lines, terminal_line, wait_for

pytestmark = pytest.mark.kinds

SiteFactory = Callable[..., Site]


def full_windows(s: Site) -> Counter[tuple[str, str]]:
    """How often each window was requested in full (without modified_since)."""
    return Counter(
        (r.params["start"], r.params["end"])
        for r in s.sim.sim.requests
        if "modified_since" not in r.params
    )


def holding(s: Site) -> bool:
    """Whether some rcs-sync has written its PID into the writer lock file."""
    path = s.lock()
    return path.exists() and path.read_text().strip().isdigit()


def test_two_syncs_at_once_read_each_window_once(site: SiteFactory, tmp_path: Path) -> None:
    # 61 windows at 1 s each, [api] concurrency at a time: the first sync holds the
    # warehouse until the second is seen waiting for it, however slowly that one starts;
    # then the latency goes.
    s = site(records=3_000, days=60, latency=1.0)
    first_err, second_err = tmp_path / "first.stderr", tmp_path / "second.stderr"
    with first_err.open("w") as err1, second_err.open("w") as err2:
        first = subprocess.Popen(
            s.command("sync"), env=s.env(), stdout=subprocess.PIPE, stderr=err1, text=True
        )
        try:
            wait_for(lambda: len(s.sim.sim.requests) >= 1, 30, "the first sync's first request")
            assert holding(s)
            second = subprocess.Popen(
                s.command("sync"), env=s.env(), stdout=subprocess.PIPE, stderr=err2, text=True
            )
            wait_for(
                lambda: "writer_lock_wait" in second_err.read_text() or second.poll() is not None,
                60,
                "the second sync to wait for the first",
            )
            assert first.poll() is None, "the first sync ended before the second waited"
        finally:
            s.sim.sim.update_config(latency=0.0)
            out, _ = first.communicate(timeout=120)
        second_out, _ = second.communicate(timeout=120)
    assert first.returncode == 0, first_err.read_text()[-2000:]
    assert second.returncode == 0, second_err.read_text()[-2000:]
    windows = full_windows(s)
    assert windows and max(windows.values()) == 1, "a window was read twice"
    served = sum(r.records for r in s.sim.sim.requests)
    assert served <= len(s.sim.sim.truth()) * 1.1
    assert "backfill" in out and "incremental" in second_out
    waits = [e for e in log_lines(second_err.read_text()) if e["event"] == "writer_lock_wait"]
    assert len(waits) == 1 and waits[0]["holder_pid"] == first.pid
    assert waits[0]["level"] == "warning"
    s.assert_converged()


@pytest.mark.any_kind
def test_no_wait_exits_5_at_once_with_one_line(site: SiteFactory) -> None:
    # 31 windows at 1 s each, one at a time: the first sync holds the warehouse until the
    # refused commands are done however slowly they start; then the latency goes.
    s = site(records=2_000, days=30, latency=1.0, api={"concurrency": 1})
    first = subprocess.Popen(
        s.command("sync"), env=s.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: holding(s), 30, "the first sync to hold the warehouse")
        for args in (
            ("sync", "--no-wait"),
            ("backfill", "--start", "2026-01-01", "--end", "2026-01-02", "--no-wait"),
        ):
            began = time.monotonic()
            refused = s.run(*args)
            assert refused.returncode == 5, refused.stderr
            assert time.monotonic() - began < 10
            assert len(refused.stderr.splitlines()) == 1, refused.stderr
            assert terminal_line(refused.stderr) == (
                f"rcs-sync: error: {s.location} is in use by another rcs-sync "
                f"(PID {first.pid}); not waiting (--no-wait)"
            )
        # Readers never wait for the writer lock.
        assert s.run("status").returncode != 5
        assert first.poll() is None, "the first sync ended before the refusals were checked"
    finally:
        s.sim.sim.update_config(latency=0.0)
        first.communicate(timeout=120)
    assert first.returncode == 0
    # A refused command is no failed pass: status stays clean.
    assert s.ok("status")


def test_a_holder_killed_with_sigkill_leaves_no_stale_lock(site: SiteFactory) -> None:
    s = site(records=2_000, days=6, latency=0.5)
    first = subprocess.Popen(
        s.command("sync"), env=s.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for(lambda: holding(s) and len(s.sim.sim.requests) >= 1, 30, "the first sync running")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    result = s.run("sync", "--no-wait")
    assert result.returncode == 0, result.stderr[-2000:]
    s.assert_converged()


@pytest.mark.any_kind
def test_a_second_daemon_on_the_same_warehouse_waits_or_exits_5(site: SiteFactory) -> None:
    s = site(records=500, sync={"interval": "1s"})
    log = s.dir / "daemon.log"
    with log.open("wb") as out:
        first = subprocess.Popen(s.command("run"), env=s.env(), stdout=out, stderr=out)
    try:
        wait_for(lambda: "pass_complete" in log.read_text(), 30, "the first daemon's pass")
        refused = s.run("run", "--no-wait", timeout=30)
        assert refused.returncode == 5, refused.stderr
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
        assert terminal_line(refused.stderr) == (
            f"rcs-sync: error: {s.location} is in use by another daemon "
            f"(PID {first.pid}); not waiting (--no-wait)"
        )
        second = subprocess.Popen(
            s.command("run"), env=s.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            time.sleep(1.5)
            assert second.poll() is None, "the second daemon should wait, not exit"
            first.send_signal(signal.SIGTERM)
            assert first.wait(timeout=20) == 0
            wait_for(
                lambda: s.lock("daemon").read_text().strip() == str(second.pid),
                30,
                "the second daemon to take over",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            _, err = second.communicate(timeout=20)
        assert second.returncode == 0, err[-2000:]
        waits = [e for e in log_lines(err) if e["event"] == "daemon_lock_wait"]
        assert len(waits) == 1 and waits[0]["holder_pid"] == first.pid
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
