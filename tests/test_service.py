"""`rcs-sync run` as a real process: systemd notify, signals, outages, readers, metrics."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TOKEN, Site, log_lines, wait_for

SiteFactory = Callable[..., Site]


class Daemon:
    """A running `rcs-sync run` with a notify socket owned by the test."""

    def __init__(self, site: Site, proc: subprocess.Popen[bytes], sock: socket.socket, log: Path):
        self.site = site
        self.proc = proc
        self.sock = sock
        self.log = log
        self.messages: list[dict[str, str]] = []

    def receive(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except TimeoutError:
            return
        self.messages.append(dict(line.split("=", 1) for line in data.splitlines()))

    def wait_message(
        self, key: str, timeout: float = 30, value: str | None = None
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if key in message and (value is None or message[key] == value):
                    self.messages.remove(message)
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(
                    f"no {key}= notification within {timeout}s; log:\n{self.logs()[-2000:]}"
                )
            self.receive(remaining)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        return [
            json.loads(line[3:])
            for line in self.logs().splitlines()
            if line.startswith("<") and line[1].isdigit()
        ]

    def stop(self, timeout: float = 10) -> tuple[int, float]:
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - began


@contextmanager
def daemon(
    site: Site, *, watchdog_usec: int = 1_000_000, env: dict[str, str] | None = None
) -> Iterator[Daemon]:
    sock_path = site.dir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    log = site.dir / "daemon.log"
    environment = {
        **(env or site.env()),
        "NOTIFY_SOCKET": str(sock_path),
        "WATCHDOG_USEC": str(watchdog_usec),
    }
    with log.open("wb") as out:
        proc = subprocess.Popen(site.command("run"), env=environment, stdout=out, stderr=out)
    running = Daemon(site, proc, sock, log)
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def passes_ok(d: Daemon) -> int:
    """Successful passes so far, from the daemon's own log (reading the database from
    this process would pin an old snapshot: DuckDB shares one instance per path)."""
    return sum(1 for e in d.events() if e["event"] == "pass_complete")


def snapshots(d: Daemon) -> int:
    return sum(1 for e in d.events() if e["event"] == "snapshot_published")


def test_notifies_systemd_syncs_and_stops_cleanly_on_sigterm(site: SiteFactory) -> None:
    s = site(records=3_000, sync={"interval": "1s"})
    with daemon(s) as d:
        ready = d.wait_message("READY", value="1")
        assert "warehouse ready" in ready.get("STATUS", "")
        d.wait_message("STATUS")  # after the first pass
        d.wait_message("WATCHDOG", value="1", timeout=5)
        s.sim.sim.advance(60)
        s.sim.sim.mutate(25)
        before = passes_ok(d)
        wait_for(lambda: passes_ok(d) > before + 1, 30, "two more passes")
        code, took = d.stop()
        assert code == 0
        assert took < 10
        d.wait_message("STOPPING", value="1", timeout=5)
        events = [e["event"] for e in d.events()]
        summaries = [e for e in d.events() if e["event"] == "pass_complete"]
        assert "daemon_stopped" in events
        assert (
            summaries
            and {
                "mode",
                "windows",
                "received",
                "inserted",
                "updated",
                "quarantined",
                "duration_s",
                "checkpoint_lag_s",
            }
            <= summaries[-1].keys()
        )
        assert TOKEN not in d.logs()
    s.assert_converged()


def test_sigterm_during_a_pass_exits_promptly_and_a_rerun_completes(site: SiteFactory) -> None:
    s = site(records=20_000, days=40, latency=0.3, sync={"interval": "1h"})
    with daemon(s) as d:
        d.wait_message("READY")
        wait_for(lambda: len(s.sim.sim.requests) >= 5, 60, "the backfill to be under way")
        code, took = d.stop()
        assert code == 0
        assert took < 10
    [(status,)] = s.query("SELECT status FROM sync_runs ORDER BY run_id DESC LIMIT 1")
    assert status == "stopped"
    s.sim.sim.update_config(latency=0.0)
    s.ok("sync")
    s.assert_converged()


def test_sigterm_during_a_retry_backoff_exits_promptly(site: SiteFactory) -> None:
    s = site(records=500, fault_rate=1.0, faults=("503",), sync={"interval": "1h"})
    s.write_config(api={"retry_budget": "10m", "backoff_initial": "30s", "backoff_max": "5m"})
    with daemon(s) as d:
        d.wait_message("READY")
        wait_for(lambda: "api_retry" in d.logs(), 30, "the daemon to sleep in a retry backoff")
        code, took = d.stop()
        assert code == 0
        assert took < 10


def test_api_outage_then_recovery_turns_status_unhealthy_then_healthy(site: SiteFactory) -> None:
    s = site(records=2_000, sync={"interval": "1s"})
    s.write_config(api={"retry_budget": "200ms", "backoff_initial": "10ms"})
    with daemon(s) as d:
        d.wait_message("READY")
        wait_for(lambda: passes_ok(d) >= 1, 30, "a first successful pass")
        assert s.run("status").returncode == 0
        s.sim.sim.update_config(fault_rate=1.0, faults=("500", "503", "drop"))
        s.sim.sim.advance(30)
        s.sim.sim.mutate(40)
        wait_for(lambda: s.run("status").returncode == 6, 60, "status to turn unhealthy")
        report = json.loads(s.run("status", "--json").stdout)
        assert not report["healthy"]
        assert "last successful pass" in report["problems"][0]
        assert d.proc.poll() is None, "the daemon died during the outage"
        s.sim.sim.update_config(fault_rate=0.0)
        wait_for(lambda: s.run("status").returncode == 0, 60, "status to turn healthy again")
        assert d.stop()[0] == 0
    s.assert_converged()


def test_rejected_token_is_unhealthy_until_the_token_file_is_fixed(site: SiteFactory) -> None:
    s = site(records=1_000, sync={"interval": "1s"})
    token_file = s.dir / "token"
    token_file.write_text("not-the-token\n")
    token_file.chmod(0o600)
    s.write_config(api={"token_file": str(token_file)})
    env = {k: v for k, v in s.env().items() if k != "RCS_SYNC_TOKEN"}
    with daemon(s, env=env) as d:
        d.wait_message("READY")
        message = d.wait_message("STATUS")
        assert "token rejected" in message["STATUS"]
        assert s.run("status", env=env).returncode == 6
        token_file.write_text(TOKEN + "\n")  # rotated, no restart
        wait_for(
            lambda: s.run("status", env=env).returncode == 0, 30, "recovery with the new token"
        )
        assert d.stop()[0] == 0
        rejected = [e for e in d.events() if e["event"] == "token_rejected"]
        assert rejected and all(e["level"] == "error" for e in rejected)
        assert "<3>" in d.logs()
    s.assert_converged()


def test_readers_of_the_main_file_delay_passes_and_snapshot_readers_never_block(
    site: SiteFactory,
) -> None:
    s = site(records=3_000, sync={"interval": "1s"})
    with daemon(s) as d:
        d.wait_message("READY")
        wait_for(lambda: snapshots(d) >= 1, 30, "a first pass and snapshot")
        snapshot = duckdb.connect(str(s.dir / "rcs.snapshot.duckdb"), read_only=True)
        try:
            # A long-lived snapshot reader: passes and snapshots keep coming around it.
            before = snapshots(d)
            wait_for(
                lambda: snapshots(d) >= before + 2,
                30,
                "snapshots published while a snapshot reader is connected",
            )
            assert snapshot.execute("SELECT count(*) FROM rcs_records").fetchone() is not None
            # A reader on the main file holds the lock for a few seconds: the daemon waits.
            s.sim.sim.advance(30)
            s.sim.sim.mutate(50)
            with duckdb.connect(str(s.db), read_only=True) as main:
                main.execute("SELECT count(*) FROM rcs_records").fetchone()
                time.sleep(3)
            wait_for(lambda: snapshots(d) >= before + 4, 30, "passes after the reader left")
        finally:
            snapshot.close()
        assert d.stop()[0] == 0
    s.assert_converged()


def test_metrics_are_served_on_loopback(site: SiteFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    s = site(records=1_000, sync={"interval": "1s"})
    s.write_config(metrics={"listen": f"127.0.0.1:{port}"})
    with daemon(s) as d:
        d.wait_message("READY")
        wait_for(lambda: passes_ok(d) >= 2, 30, "two passes")
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        ok = samples[
            (
                "rcs_sync_passes_total",
                (("outcome", "ok"), ("reason", ""), ("scope", "all"), ("stream", "rcs_records")),
            )
        ]
        assert ok >= 2
        assert samples[("rcs_sync_api_requests_total", (("status", "200"),))] >= 2
        received = samples[
            ("rcs_sync_records_total", (("operation", "received"), ("stream", "rcs_records")))
        ]
        assert received >= len(s.sim.sim.truth())
        assert d.stop()[0] == 0


HOLD_READ_ONLY = (
    "import duckdb, sys, time\n"
    "while True:\n"
    "    try:\n"
    "        con = duckdb.connect(sys.argv[1], read_only=True)\n"
    "        break\n"
    "    except duckdb.IOException:\n"
    "        time.sleep(0.05)  # a pass is writing this instant\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)
"""An analyst's read-only connection to the live file, held until stdin closes."""


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_pass_that_never_gets_the_file_is_counted_logged_recorded_and_shown(
    site: SiteFactory,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Three intervals (15 s) outlast a failed pass: degraded, not yet unhealthy.
    s = site(records=1_000, sync={"interval": "5s"})
    s.write_config(metrics={"listen": f"127.0.0.1:{port}"}, warehouse={"lock_timeout": "4s"})
    failed = (
        "rcs_sync_passes_total",
        (
            ("outcome", "failed"),
            ("reason", "warehouse"),
            ("scope", "all"),
            ("stream", "rcs_records"),
        ),
    )
    with daemon(s) as d:
        d.wait_message("READY")
        wait_for(lambda: passes_ok(d) >= 1, 30, "a first successful pass")
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_READ_ONLY, str(s.db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdin is not None
        try:
            assert holder.stdout.readline().strip() == "held"
            wait_for(lambda: scrape(port).get(failed, 0) >= 1, 30, "a failed pass counted")
            # While the file stays locked, status (a reader too) already shows the failure.
            status = s.run("status", "--json")
            report = json.loads(status.stdout)
            assert status.returncode == 0, report["problems"]
            assert report["health"] == "degraded" and report["healthy"]
            assert any("the last pass failed" in p for p in report["problems"])
            [scope] = report["scopes"]
            latest = scope["last_runs"][0]
            assert latest["status"] == "failed" and latest["error_kind"] == "warehouse"
            assert f"PID {holder.pid}" in latest["error"]
        finally:
            holder.stdin.close()
            holder.wait(timeout=10)
        before = passes_ok(d)
        wait_for(lambda: passes_ok(d) > before, 30, "a pass after the reader left")
        assert d.stop()[0] == 0
    events = log_lines(d.logs())  # every line JSON, with its priority
    waits = [e for e in events if e["event"] == "warehouse_lock_wait"]
    assert waits and waits[0]["level"] == "warning" and waits[0]["holder_pid"] == holder.pid
    errors = [e for e in events if e["event"] == "command_failed"]
    assert errors and all(e["kind"] == "warehouse" and e["level"] == "error" for e in errors)
    assert all("<3>" + "{" in line for line in d.logs().splitlines() if "command_failed" in line)
    runs = json.loads(s.ok("status", "--json").stdout)["scopes"][0]["last_runs"]
    written = [r for r in runs if r["status"] == "failed"]
    assert written and all(r["run_id"] is not None for r in written), runs
    assert written[0]["error_kind"] == "warehouse"
