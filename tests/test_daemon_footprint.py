"""What the long-lived `rcs-sync run` process holds, and what the commands that never talk
to the API load: their module lists, read from inside them.

import-linter checks the imports the source code states; this checks the running
daemon, lazy imports and third-party chains included. A `sitecustomize` on the daemon's
PYTHONPATH (test instrumentation, not product code) writes `sys.modules` to a file on
SIGUSR2; the test asks at READY=1, before the first pass has reported anything, and
again after that pass.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Site, wait_for
from tests.test_service import daemon

SiteFactory = Callable[..., Site]

HEAVY = (
    "duckdb",
    "requests",
    "urllib3",
    "tenacity",
    "matplotlib",
    "numpy",
    "rcs_sim",
    "rcs_sync.engine",
    "rcs_sync.source",
    "rcs_sync.warehouse",
    "rcs_sync.analytics",
    "rcs_sync.session",
)
"""What `daemon/service.py`'s docstring promises the daemon never loads: the record
machinery and its libraries (each pass forks from a server that imported them), the
charts, and the simulator. (rich is not among them: `import structlog` loads it.)"""

SITECUSTOMIZE = """
import json, os, signal, sys

def _dump(_signum, _frame):
    path = os.path.join(os.environ["FOOTPRINT_DIR"], f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as out:
        json.dump(sorted(sys.modules), out)
    os.replace(path + ".tmp", path)

signal.signal(signal.SIGUSR2, _dump)
"""


def modules_of(pid: int, directory: Path) -> list[str]:
    dump = directory / f"{pid}.json"
    dump.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR2)
    wait_for(dump.exists, 10, f"process {pid} to list its modules")
    modules: list[str] = json.loads(dump.read_text())
    return modules


def among(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    """The modules that are one of `packages` or inside one."""
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)]


def hooked_env(s: Site, tmp_path: Path, hook_source: str) -> dict[str, str]:
    """`s`'s environment with `hook_source` as a sitecustomize on PYTHONPATH, dumping
    into `tmp_path`."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(hook_source)
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    return s.env(PYTHONPATH=path, FOOTPRINT_DIR=str(tmp_path))


def test_the_daemon_holds_no_record_machinery_charts_or_simulator(
    site: SiteFactory, tmp_path: Path
) -> None:
    s = site(records=2_000, latency=0.5, sync={"interval": "1h"})
    env = hooked_env(s, tmp_path, SITECUSTOMIZE)
    with daemon(s, env=env) as d:
        d.wait_message("READY", value="1")
        at_ready = modules_of(d.proc.pid, tmp_path)
        d.wait_message("STATUS")  # the first pass has ended and been reported
        after_pass = modules_of(d.proc.pid, tmp_path)
        assert d.stop()[0] == 0

    assert "rcs_sync.daemon.service" in at_ready, "the dump must come from the daemon"
    assert among(at_ready, HEAVY) == []
    assert among(after_pass, HEAVY) == []
    assert s.query("SELECT count(*) FROM rcs_records") == [(2_000,)]


AT_EXIT = """
import atexit, json, os, sys

def _dump():
    with open(os.path.join(os.environ["FOOTPRINT_DIR"], f"{os.getpid()}.json"), "w") as out:
        json.dump(sorted(sys.modules), out)

atexit.register(_dump)
"""

API_SIDE = ("requests", "urllib3", "rcs_sync.source", "rcs_sync.engine", "rcs_sync.session")
"""What only a pass needs: the HTTP stack, the engine and the session that wires them."""


def test_status_migrate_and_maintain_load_no_http_stack_or_engine(
    site: SiteFactory, tmp_path: Path
) -> None:
    s = site(records=500)
    s.ok("sync")
    env = hooked_env(s, tmp_path, AT_EXIT)
    for command in ("status", "migrate", "maintain", "sync"):
        for dump in tmp_path.glob("*.json"):
            dump.unlink()
        done = s.run(command, env=env)
        assert done.returncode == 0, done.stderr
        (dump,) = tmp_path.glob("*.json")
        modules: list[str] = json.loads(dump.read_text())
        assert "rcs_sync.warehouse.duckdb_file" in modules, command
        loaded = among(modules, API_SIDE)
        if command == "sync":  # the check can see them
            assert "requests" in loaded and "rcs_sync.session" in loaded
        else:
            assert loaded == [], command
