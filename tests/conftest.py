"""Shared fixtures: a simulator on 127.0.0.1, a config for it, and the real CLI.

End-to-end tests run `rcs-sync` as a subprocess (real process, real signals, real exit
codes) against a simulator served over HTTP from the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from rcs_sim.server import RunningSimulator, SimConfig, start_simulator
from rcs_sync.model.durations import format_instant
from rcs_sync.model.errors import WarehouseUnavailable
from rcs_sync.warehouse.lake import Lake
from tests.postgres import MISSING, PostgresServer, bindir

RCS_SYNC = str(Path(sys.executable).with_name("rcs-sync"))
KIND = os.environ.get("RCS_SYNC_TEST_KIND", "duckdb")
"""The warehouse kind the `site` fixture installs: `make test-lake` sets `ducklake`."""
TOKEN = "tok-3f9a7c1e5b2d"
"""Distinctive, so a test can scan any output for it."""


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until true; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def log_lines(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of a command's stderr (each `<N>{...}`); fails on any other."""
    events = []
    for line in stderr.splitlines():
        assert line[:1] == "<" and line[1:2].isdigit(), f"not a JSON log line: {line!r}"
        events.append(json.loads(line[line.index(">") + 1 :]))
    return events


def last_error(stderr: str) -> str:
    """The error a failed command ended with: its last log line's `error` (off a
    terminal every line is JSON, `command_failed` or the failure's own event)."""
    return str(log_lines(stderr)[-1]["error"])


def terminal_line(stderr: str) -> str:
    """The failure a command ended with (its last JSON log line), as the one line it
    prints on a terminal: `rcs-sync: config: …`, `rcs-sync: error: …`."""
    event = log_lines(stderr)[-1]
    kind = str(event.get("kind"))
    bare = {"config": "", "usage": "", "stopped": "", "internal": "unexpected error: "}
    prefix = bare.get(kind, "error: ")
    return f"rcs-sync: {prefix}{event['error']}"


@pytest.fixture
def make_sim() -> Iterator[Callable[..., RunningSimulator]]:
    running: list[RunningSimulator] = []

    def make(**config: Any) -> RunningSimulator:
        settings: dict[str, Any] = {
            "frozen": True,
            "records": 5_000,
            "days": 10.0,
            "token": TOKEN,
            **config,
        }
        sim = start_simulator(SimConfig(**settings))
        running.append(sim)
        return sim

    yield make
    for sim in running:
        sim.stop()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value) + '"'


@dataclass
class Site:
    """One rcs-sync installation under test: its config, its database, its simulator."""

    dir: Path
    sim: RunningSimulator
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Settings given to write_config so far; later calls add to them."""
    program: tuple[str, ...] = (RCS_SYNC,)
    """How `rcs-sync` is started: the installed script, or a helper that registers
    another stream first (`tests/widget_stream.py`)."""
    catalog: str | None = None
    """A lake's catalog (`kind = "ducklake"`), None for a DuckDB file."""
    lake: Lake | None = None
    """The lake as the tests read it: attached once per site (the extensions' load
    costs ~0.7 s), each query seeing the last commit."""

    @property
    def data_path(self) -> Path:
        return self.dir / "lake-data"

    def warehouse_config(self) -> dict[str, Any]:
        """The `[warehouse]` section of this site's kind."""
        if self.catalog is None:
            return {"path": "rcs.duckdb", "lock_timeout": "10s"}
        return {
            "kind": "ducklake",
            "catalog": self.catalog,
            "data_path": str(self.data_path),
            "spool_dir": str(self.dir / "spool"),
            "lock_timeout": "10s",
        }

    @property
    def config(self) -> Path:
        return self.dir / "rcs-sync.toml"

    @property
    def db(self) -> Path:
        return self.dir / "rcs.duckdb"

    def write_config(self, **sections: dict[str, Any]) -> None:
        """(Re)write the config: defaults for a test, plus every override given so far."""
        for name, values in sections.items():
            self.overrides[name] = {**self.overrides.get(name, {}), **values}
        start = self.sim.sim.now() - timedelta(days=self.sim.sim.config.days + 1)
        defaults: dict[str, dict[str, Any]] = {
            "api": {
                "base_url": self.sim.base_url,
                "timeout": "5s",
                "retry_budget": "30s",
                "backoff_initial": "50ms",
                "backoff_max": "1s",
            },
            "sync": {
                "initial_start": format_instant(start.replace(hour=0, minute=0, second=0)),
                # The simulator may change any record; keep them all within the horizon.
                "update_horizon": f"{int(self.sim.sim.config.days) + 2}d",
                # Every window read alone: tests count day windows and time passes by
                # them. Joined windows have their own tests (test_joined_windows.py),
                # and `make soak` runs with them on, as deployed.
                "min_records_per_request": 0,
            },
            "warehouse": self.warehouse_config(),
        }
        for name, values in self.overrides.items():
            defaults[name] = {**defaults.get(name, {}), **values}
        text = "\n".join(
            f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())
            for name, values in defaults.items()
        )
        self.config.write_text(text, encoding="utf-8")

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RCS_SYNC")}
        return {**env, "RCS_SYNC_TOKEN": TOKEN, **extra}

    def command(self, *args: str) -> list[str]:
        return [*self.program, "--config", str(self.config), *args]

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = self.run(*args)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """The warehouse, whichever its kind: the file, or the lake attached and `USE`d."""
        if self.catalog is None:
            with duckdb.connect(str(self.db), read_only=read_only) as con:
                yield con
            return
        if self.lake is None:
            self.lake = Lake(self.catalog, str(self.data_path), spool_dir=self.spool)
        with self.lake.connect(read_only=read_only) as con:
            yield con

    def close(self) -> None:
        """Detach the lake, if this site attached one."""
        if self.lake is not None:
            self.lake.close()

    @property
    def spool(self) -> Path:
        """Where response bodies are spooled (beside the file by default)."""
        return self.dir / "spool" if self.catalog else self.db.with_name(self.db.name + ".spool")

    @property
    def location(self) -> str:
        """The warehouse as rcs-sync's messages name it."""
        return f"lake ducklake:{self.catalog}" if self.catalog else f"warehouse {self.db}"

    def lock(self, role: str = "writer") -> Path:
        """The one-writer lock file of `role` (`writer_lock.py`): named after the file,
        or after a lake's spool directory."""
        anchor = self.spool if self.catalog else self.db
        return anchor.with_name(f".{anchor.name}.{role}.lock")

    def exists(self) -> bool:
        """Whether a pass has created the warehouse (a lake: its tables)."""
        if self.catalog is None:
            return self.db.exists()
        try:
            return bool(self.query("SELECT 1 FROM duckdb_tables() WHERE table_name = 'sync_runs'"))
        except WarehouseUnavailable:  # a catalog not initialised yet
            return False

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with self.connect(read_only=True) as con:
            return con.execute(sql, params or []).fetchall()

    def execute(self, sql: str, params: list[Any] | None = None) -> None:
        with self.connect() as con:
            con.execute(sql, params or [])

    def table(self) -> dict[int, int]:
        return dict(self.query("SELECT id, state FROM rcs_records"))

    def assert_converged(self) -> None:
        """Every valid record of the simulator present exactly once, in its latest state."""
        _, truth, bad = self.sim.sim.snapshot()
        table = self.table()
        missing = truth.keys() - table.keys()
        wrong = {i: (table[i], s) for i, s in truth.items() if i in table and table[i] != s}
        extra = table.keys() - truth.keys()
        assert not missing, f"{len(missing)} records missing, e.g. {sorted(missing)[:5]}"
        assert not wrong, f"{len(wrong)} records in a stale state, e.g. {list(wrong.items())[:5]}"
        assert not extra - bad, f"unexpected ids {sorted(extra)[:5]}"
        assert not extra & bad, "malformed records reached the table"


@contextmanager
def site_factory(
    tmp_path: Path, make_sim: Callable[..., RunningSimulator], catalog: Callable[[], str | None]
) -> Iterator[Callable[..., Site]]:
    """Sites in `tmp_path`, each on a new simulator and, when `catalog` gives one, a
    lake; their lakes detached after the block."""
    made: list[Site] = []

    def make(
        sync: dict[str, Any] | None = None, api: dict[str, Any] | None = None, **sim_config: Any
    ) -> Site:
        s = Site(tmp_path, make_sim(**sim_config), catalog=catalog())
        s.write_config(sync=sync or {}, api=api or {})
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.close()


@pytest.fixture
def site(
    tmp_path: Path, make_sim: Callable[..., RunningSimulator], request: pytest.FixtureRequest
) -> Iterator[Callable[..., Site]]:
    """An installation of the kind `RCS_SYNC_TEST_KIND` names (a lake: a new database on
    the session's PostgreSQL server per site)."""

    def catalog() -> str | None:
        if KIND != "ducklake":
            return None
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return server.catalog(server.create_database())

    with site_factory(tmp_path, make_sim, catalog) as make:
        yield make


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a lake, deselect from the suites run on every kind the tests about the DuckDB
    file itself (`duckdb_only`: damage, snapshot, storage versions, file locks) and those
    the warehouse's kind changes nothing in (`any_kind`: HTTP, TLS, the API's clock;
    or no `site` at all): the default run has run them."""
    if KIND == "duckdb":
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        once = item.get_closest_marker("duckdb_only") or item.get_closest_marker("any_kind")
        siteless = "site" not in getattr(item, "fixturenames", ())
        kinds = item.get_closest_marker("kinds") and not item.get_closest_marker("lake")
        (dropped if once or (kinds and siteless) else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session's lake tests (`tests/postgres.py`)."""
    found = bindir()
    if found is None:
        pytest.skip(MISSING)
    server = PostgresServer(found).start()
    yield server
    server.stop()
