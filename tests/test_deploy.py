"""The files in deploy/: units systemd accepts without a warning, a sandbox rated 2.0 or
better by `systemd-analyze security`, and wiring that matches the code and the config.

The systemd checks run the host's own tools (systemd 252 on Debian 12) and are skipped,
with the reason, where those tools are missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rcs_sync.config import CONFIG_ENV, CREDENTIAL_NAME, load_settings
from rcs_sync.model.durations import parse_instant
from rcs_sync.model.errors import EXIT_STOPPED, EXIT_USAGE

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DAEMON = "rcs-sync.service"
BACKFILL = "rcs-sync-backfill.service"
UNITS = (DAEMON, BACKFILL)
INSTALLED_SCRIPT = "/opt/rcs-sync/bin/rcs-sync"
MAX_EXPOSURE = 2.0
EXPOSURE_LINE = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not found: systemd is not installed here")
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def settings(unit: str, section: str) -> list[tuple[str, str]]:
    """The `Key=value` lines of one section of a deploy/ file, in order (keys may repeat).

    Section "" holds the lines before any section header: all of an env file.
    """
    current = ""
    found = []
    for raw in (DEPLOY / unit).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            found.append((key, value))
    return found


def setting(unit: str, key: str) -> str:
    (value,) = [value for name, value in settings(unit, "Service") if name == key]
    return value


@pytest.mark.parametrize("unit", UNITS)
def test_units_verify_without_warnings(unit: str, tmp_path: Path) -> None:
    # verify insists that ExecStart= names an executable: the copies point at this
    # venv's script instead of /opt/rcs-sync. systemd 252 does not resolve User=, so the
    # rcs-sync user need not exist here (test_sysusers_creates_the_service_account checks
    # the account the units run as).
    analyze = systemd_tool("systemd-analyze")
    script = Path(sys.executable).with_name("rcs-sync")
    assert script.is_file(), f"{script} is missing: install the package into this venv"
    for name in UNITS:  # both: the backfill unit refers to the daemon's
        text = (DEPLOY / name).read_text(encoding="utf-8")
        assert INSTALLED_SCRIPT in text
        (tmp_path / name).write_text(text.replace(INSTALLED_SCRIPT, str(script)), encoding="utf-8")

    result = run(
        analyze,
        "verify",
        "--man=no",
        "--generators=no",
        "--recursive-errors=yes",
        str(tmp_path / unit),
    )

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output == ""


@pytest.mark.parametrize("unit", UNITS)
def test_sandbox_exposure_is_at_most_2(unit: str) -> None:
    analyze = systemd_tool("systemd-analyze")
    result = run(analyze, "security", "--offline=true", str(DEPLOY / unit))

    assert result.returncode == 0, result.stderr
    match = EXPOSURE_LINE.search(result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_backfill_runs_like_the_daemon() -> None:
    # Everything from User= on (identity, state, config, credential, sandbox) must match,
    # so a backfill can write the daemon's files and is confined the same way.
    daemon = settings(DAEMON, "Service")
    backfill = settings(BACKFILL, "Service")

    def identity_and_sandbox(lines: list[tuple[str, str]]) -> list[tuple[str, str]]:
        return lines[[key for key, _ in lines].index("User") :]

    assert identity_and_sandbox(backfill) == identity_and_sandbox(daemon)


def test_daemon_is_not_restarted_on_errors_a_restart_cannot_fix() -> None:
    # `rcs-sync run` ends with EXIT_USAGE on a bad config, a missing or unreadable token
    # and an unbindable [metrics] listen (test_run_config_errors.py). It never ends with
    # EXIT_AUTH (3): a refused token fails each pass and the daemon carries on
    # (test_service.py, test_rejected_token_is_unhealthy_until_the_token_file_is_fixed).
    prevented = {int(code) for code in setting(DAEMON, "RestartPreventExitStatus").split()}

    assert setting(DAEMON, "Restart") == "on-failure"
    assert prevented == {EXIT_USAGE}
    assert setting(DAEMON, "SuccessExitStatus") == str(EXIT_STOPPED)


def test_backfill_is_never_restarted() -> None:
    # Its OnFailure= hands over to the daemon; restarting a failed backfill would stop
    # the daemon again (Conflicts=), so there is no Restart= and nothing to prevent.
    keys = {key for key, _ in settings(BACKFILL, "Service")}

    assert not keys & {"Restart", "RestartPreventExitStatus"}


def test_backfill_stops_the_daemon_for_its_duration_and_restarts_it() -> None:
    unit = dict(settings(BACKFILL, "Unit"))

    assert unit["Conflicts"] == DAEMON
    assert DAEMON in unit["After"].split()
    assert unit["OnSuccess"] == unit["OnFailure"] == DAEMON


def test_backfill_env_example_fills_the_backfill_command() -> None:
    env = dict(settings("backfill.env", ""))
    command = setting(BACKFILL, "ExecStart")

    assert set(re.findall(r"\$\{?(\w+)", command)) == set(env)
    assert parse_instant(env["BACKFILL_START"]) < parse_instant(env["BACKFILL_END"])


def test_units_hand_over_config_and_token_where_rcs_sync_looks() -> None:
    config_dir = Path("/etc") / setting(DAEMON, "ConfigurationDirectory")

    assert setting(DAEMON, "Environment") == f"{CONFIG_ENV}={config_dir / 'rcs-sync.toml'}"
    assert setting(DAEMON, "LoadCredential") == f"{CREDENTIAL_NAME}:{config_dir / 'token'}"


def test_server_config_loads_and_writes_only_to_the_state_directory() -> None:
    loaded = load_settings(DEPLOY / "rcs-sync.toml")
    state_dir = Path("/var/lib") / setting(DAEMON, "StateDirectory")

    assert loaded.warehouse.path.parent == state_dir
    assert loaded.warehouse.spool_path.parent == state_dir
    assert loaded.warehouse.snapshot_file.parent == state_dir  # readable by the group
    assert loaded.api.token_file is None
    assert loaded.api.base_url.startswith("https://")


def test_sysusers_creates_the_service_account(tmp_path: Path) -> None:
    sysusers = systemd_tool("systemd-sysusers")
    result = run(
        sysusers, f"--root={tmp_path}", "--dry-run", str(DEPLOY / "sysusers.d" / "rcs-sync.conf")
    )

    assert result.returncode == 0, result.stderr
    assert f"Creating group '{setting(DAEMON, 'Group')}'" in result.stderr
    assert f"Creating user '{setting(DAEMON, 'User')}'" in result.stderr
