"""A pass process stopped by SIGTERM or SIGINT at any moment of its life exits 130.

These are `rcs-sync sync` processes started the way a supervisor or a soak run starts
them (the daemon forks its passes instead: `test_pass_process.py`). Most trials start
them with the stop signals blocked (`pass_process.stop_signals_blocked`), so one sent
while the interpreter itself starts up stays pending until `rcs_sync/__main__.py` has
its handler in place. The others start it plainly and pick the moment from what the
process reports on stderr.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import pytest

from rcs_sync.daemon.passes import stop_signals_blocked
from rcs_sync.daemon.service import PASS
from rcs_sync.model.errors import EXIT_STOPPED
from tests.conftest import Site, wait_for

SiteFactory = Callable[..., Site]

ROOT = Path(__file__).resolve().parent.parent
MODULE = [sys.executable, "-m", "rcs_sync"]


def script_command() -> list[str]:
    """What the installed `rcs-sync` script runs, read from pyproject.toml's entry point."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["rcs-sync"].split(":")
    return [
        sys.executable,
        "-c",
        f"import sys; from {module} import {function}; sys.exit({function}())",
    ]


class Pass:
    """A `sync --events --publish-snapshot` process, its stderr read line by line as it
    comes so a test can signal it right after a given line.

    With `log_pipe` its stderr is a pipe of that many bytes, not read until the signal
    is sent: the pass soon blocks writing a log line."""

    def __init__(
        self, s: Site, entry: list[str], *, blocked: bool = True, log_pipe: int | None = None
    ) -> None:
        command = [*entry, "--config", str(s.config), "--log-format", "json", *PASS]
        read_end, write_end = os.pipe()
        if log_pipe is not None:
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, log_pipe)
        with stop_signals_blocked() if blocked else nullcontext():
            self.proc = subprocess.Popen(
                command, env=s.env(), stdout=subprocess.PIPE, stderr=write_end, text=True
            )
        os.close(write_end)
        self._stderr = open(read_end, encoding="utf-8", errors="replace")  # noqa: SIM115
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        if log_pipe is None:
            self._reader.start()

    def _read(self) -> None:
        with self._stderr:
            for line in self._stderr:
                with self._seen:
                    self.lines.append(line.rstrip("\n"))
                    self._seen.notify_all()

    def blocked_writing_its_log(self) -> bool:
        assert self.proc.poll() is None, f"the pass ended first: exit {self.proc.returncode}"
        return "pipe_write" in Path(f"/proc/{self.proc.pid}/wchan").read_text()

    def wait_line(self, pattern: str, timeout: float = 60) -> None:
        wanted = re.compile(pattern)
        with self._seen:
            found = self._seen.wait_for(
                lambda: any(wanted.search(line) for line in self.lines), timeout
            )
        assert found, f"no stderr line matching {pattern!r}:\n{self.stderr()[-3000:]}"

    def stderr(self) -> str:
        with self._seen:
            return "\n".join(self.lines)

    def stopped_cleanly(self, sig: signal.Signals, what: str) -> None:
        """Signal the process; it must exit 130, without a traceback, with whole events."""
        self.proc.send_signal(sig)
        if not self._reader.is_alive():
            self._reader.start()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{what}: still running 30s later (hung?)\n{self.stderr()[-3000:]}")
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        out = self.proc.stdout.read() if self.proc.stdout else ""
        self._reader.join(timeout=60)
        err = self.stderr()
        assert self.proc.returncode == EXIT_STOPPED, (
            f"{what}: exit {self.proc.returncode}\n{err[-3000:]}"
        )
        assert "Traceback" not in err, f"{what}:\n{err[-3000:]}"
        for line in out.splitlines():
            json.loads(line)


def slow_site(site: SiteFactory) -> Site:
    """A pass of at least 11 requests of 0.5 s each: it cannot finish before the signal."""
    return site(records=500, days=10, latency=0.5)


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.01, 0.03, 0.08, 0.15, 0.3, 0.45, 0.6])
def test_sigterm_at_any_early_moment_of_a_pass_exits_130(site: SiteFactory, delay: float) -> None:
    """From interpreter start-up through the imports and set-up into the pass."""
    p = Pass(slow_site(site), MODULE)
    time.sleep(delay)  # varies the moment only; the assertion must hold for any of them
    p.stopped_cleanly(signal.SIGTERM, f"SIGTERM {delay}s after start")


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.15])
def test_sigint_at_an_early_moment_exits_130(site: SiteFactory, delay: float) -> None:
    p = Pass(slow_site(site), MODULE)
    time.sleep(delay)
    p.stopped_cleanly(signal.SIGINT, f"SIGINT {delay}s after start")


@pytest.mark.parametrize("delay", [0.0, 0.03, 0.15])
def test_the_rcs_sync_script_stops_the_same_way(site: SiteFactory, delay: float) -> None:
    p = Pass(slow_site(site), script_command())
    time.sleep(delay)
    p.stopped_cleanly(signal.SIGTERM, f"SIGTERM {delay}s after the script started")


@pytest.mark.parametrize("module", ["click", "requests"])
def test_sigterm_during_the_imports_exits_130(site: SiteFactory, module: str) -> None:
    """Started plainly: `-X importtime` reports each finished import on stderr, and the
    signal follows `module`'s (one the CLI imports, one the command imports before it
    installs its own handler)."""
    p = Pass(slow_site(site), [sys.executable, "-X", "importtime", *MODULE[1:]], blocked=False)
    p.wait_line(rf"^import time:.*\|\s+{re.escape(module)}$")
    p.stopped_cleanly(signal.SIGTERM, f"SIGTERM after importing {module}")


@pytest.mark.parametrize("trial", range(3))
def test_sigterm_during_the_migrations_exits_130(site: SiteFactory, trial: int) -> None:
    """A new warehouse gets several migrations, each logged; the signal follows the
    first, so it often lands in a statement or in the logging of the next."""
    p = Pass(slow_site(site), MODULE, blocked=False)
    p.wait_line(r'"event": "migration_applied"')
    p.stopped_cleanly(signal.SIGTERM, "SIGTERM during the migrations")


def test_sigterm_once_the_pass_is_reading_exits_130(site: SiteFactory) -> None:
    s = slow_site(site)
    p = Pass(s, MODULE, blocked=False)
    wait_for(lambda: len(s.sim.sim.requests) > 0, 60, "the pass's first request")
    p.stopped_cleanly(signal.SIGTERM, "SIGTERM during the first request")


def test_a_stop_while_the_pass_writes_its_log_exits_130(site: SiteFactory) -> None:
    """The signal interrupts a log write made under structlog's output lock: a handler
    that logged would wait for that lock forever."""
    s = site(records=2_000, days=10, sync={"window": "1h"})
    p = Pass(s, MODULE, log_pipe=4096)
    wait_for(p.blocked_writing_its_log, 60, "the pass to block writing its log")
    p.stopped_cleanly(signal.SIGTERM, "SIGTERM during a log write")
