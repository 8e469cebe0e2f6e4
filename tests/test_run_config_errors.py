"""`rcs-sync run` on a configuration problem no restart can fix: exit 2 and one line.

systemd's `RestartPreventExitStatus=2` (deploy/rcs-sync.service, checked in
test_deploy.py) then leaves the unit failed instead of restarting it in a loop.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from rcs_sync.model.errors import EXIT_INSTALL, EXIT_USAGE
from tests.conftest import Site, terminal_line

SiteFactory = Callable[..., Site]

HOLD_A_PORT = """
import socket, sys
held = socket.socket()
held.bind(("127.0.0.1", 0))
held.listen()
print(held.getsockname()[1], flush=True)
sys.stdin.read()
"""
"""Listens on a free loopback port until its stdin closes."""

NOT_LOCAL = "192.0.2.1"
"""TEST-NET-1 (RFC 5737): never an address of this machine. Binding to it fails
locally; nothing is sent."""


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process listens on."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_PORT], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdout is not None and holder.stdin is not None
    try:
        line = holder.stdout.readline()  # "" if the holder died: int() then fails loudly
        yield int(line)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def run_fails_with(s: Site, expected: str, env: dict[str, str] | None = None) -> None:
    result = s.run("run", env=env, timeout=60)

    assert result.returncode == EXIT_USAGE, result.stderr[-2000:]
    assert terminal_line(result.stderr) == expected
    assert "unexpected error" not in result.stderr
    assert not s.db.exists(), "the daemon opened the warehouse before checking its config"


def test_a_metrics_port_taken_by_another_process_is_a_config_error(
    site: SiteFactory, held_port: int
) -> None:
    s = site(records=10)
    s.write_config(metrics={"listen": f"127.0.0.1:{held_port}"})

    run_fails_with(
        s,
        f"rcs-sync: config: [metrics] listen: cannot listen on 127.0.0.1:{held_port}: "
        "address already in use",
    )


def test_a_metrics_address_not_of_this_machine_is_a_config_error(site: SiteFactory) -> None:
    s = site(records=10)
    s.write_config(metrics={"listen": f"{NOT_LOCAL}:9464"})

    run_fails_with(
        s,
        f"rcs-sync: config: [metrics] listen: cannot listen on {NOT_LOCAL}:9464: "
        "cannot assign requested address",
    )


def test_a_missing_token_file_is_a_config_error(site: SiteFactory) -> None:
    s = site(records=10)
    missing = s.dir / "no-such-token"
    s.write_config(api={"token_file": str(missing)})
    env = {k: v for k, v in s.env().items() if k != "RCS_SYNC_TOKEN"}

    run_fails_with(
        s, f"rcs-sync: config: [api] token_file: token file {missing} not found", env=env
    )


def test_a_lake_without_the_lake_extra_is_one_line_naming_the_fix(site: SiteFactory) -> None:
    """The default install (current DuckDB, no extension wheels) asked for a lake: exit 7,
    one line saying what to install, no traceback, nothing requested from the API."""
    s = site(records=10)
    s.catalog = "postgres:dbname=rcs host=127.0.0.1 user=rcs"
    s.write_config()
    for command in ("sync", "status"):
        result = s.run(command, timeout=60)
        assert result.returncode == EXIT_INSTALL, result.stderr[-2000:]
        line = terminal_line(result.stderr)
        assert line.startswith("rcs-sync: error: DuckDB extension ducklake "), line
        assert "pip install 'rcs-sync[lake]'" in line
        assert "Traceback" not in result.stderr
    assert not s.sim.sim.requests
