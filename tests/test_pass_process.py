"""Passes forked from the fork server, as the daemon runs them: the real server, the real
CLI, a real simulator over loopback and a real DuckDB file."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rcs_sync.cli import pass_entry
from rcs_sync.daemon.passes import PassProcess
from rcs_sync.daemon.service import PASS
from rcs_sync.model.errors import EXIT_STOPPED, EXIT_USAGE
from tests.adversarial_helpers import cmdline, descendants
from tests.conftest import Site, wait_for

pytestmark = pytest.mark.kinds

SiteFactory = Callable[..., Site]


def forked(s: Site, *args: str) -> PassProcess:
    argv = ["--config", str(s.config), "--log-format", "json", *args]
    return PassProcess(pass_entry(), argv, s.env())


def finish(p: PassProcess) -> tuple[int, list[dict[str, object]]]:
    events = [json.loads(line) for line in p.lines]
    return p.wait(), events


def test_a_forked_pass_syncs_reports_its_events_and_is_named_for_ps(site: SiteFactory) -> None:
    s = site(records=400, days=3, latency=0.2)
    assert "RCS_SYNC_TOKEN" not in os.environ, "the token must reach the pass through `env`"
    p = forked(s, *PASS)
    first = json.loads(next(p.lines))  # so the pass is running: the first of many requests
    title = cmdline(p.pid or 0).decode()
    code, events = finish(p)

    assert code == 0, events
    assert first["event"] == "planned"
    assert title.startswith("rcs-sync --config ") and title.rstrip("\0").endswith(" ".join(PASS))
    scopes = [e for e in events if e["event"] == "scope"]
    assert [e["outcome"] for e in scopes] == ["ok"]
    assert s.query("SELECT count(*) FROM rcs_records") == [(400,)]


def test_a_forked_pass_exits_with_the_commands_code(site: SiteFactory) -> None:
    s = site(records=10, days=1)
    code, events = finish(
        PassProcess(pass_entry(), ["--config", str(s.dir / "missing.toml"), *PASS], s.env())
    )
    assert (code, events) == (EXIT_USAGE, [])


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.01, 0.05, 0.2])
def test_a_stop_at_any_early_moment_of_a_forked_pass_exits_130(
    site: SiteFactory, delay: float
) -> None:
    """From the instant after the fork, through the CLI's set-up, into the pass: the
    server keeps the stop signals blocked, so the child starts with SIGTERM (what the
    daemon forwards) pending."""
    s = site(records=500, days=10, latency=0.5)
    p = forked(s, *PASS)
    time.sleep(delay)  # varies the moment only; the assertion must hold for any of them
    assert p.pid is not None
    os.kill(p.pid, signal.SIGTERM)
    code, events = finish(p)
    assert code == EXIT_STOPPED, f"SIGTERM {delay}s after the fork: exit {code}"
    assert all(e["event"] != "scope" or e["outcome"] == "stopped" for e in events)


def test_sigint_stops_a_running_forked_pass_with_130(site: SiteFactory) -> None:
    """Ctrl-C reaches a pass with its daemon (one process group). Only once the pass
    runs: in the instant after the fork, CPython's fork server still ignores SIGINT
    (`passes.py`), and the daemon's forwarded SIGTERM is what stops the pass then."""
    s = site(records=500, days=10, latency=0.5)
    p = forked(s, *PASS)
    first = json.loads(next(p.lines))
    assert p.pid is not None
    os.kill(p.pid, signal.SIGINT)
    code, events = finish(p)
    assert first["event"] == "planned"
    assert code == EXIT_STOPPED, f"SIGINT to a running pass: exit {code}"
    assert all(e["event"] != "scope" or e["outcome"] == "stopped" for e in events)


@pytest.mark.any_kind
def test_a_dead_server_is_started_again_for_the_next_pass(site: SiteFactory) -> None:
    s = site(records=50, days=1)
    assert finish(forked(s, *PASS))[0] == 0
    servers = [p for p in descendants(os.getpid()) if b"forkserver" in cmdline(p)]
    assert len(servers) == 1
    os.kill(servers[0], signal.SIGKILL)
    stat = Path(f"/proc/{servers[0]}/stat")
    wait_for(lambda: stat.read_text().split(") ")[1][0] == "Z", 10, "the server to die")

    code, events = finish(forked(s, *PASS))
    assert code == 0
    assert [e["outcome"] for e in events if e["event"] == "scope"] == ["ok"]
