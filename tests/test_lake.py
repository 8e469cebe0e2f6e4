"""A lake warehouse (`kind = "ducklake"`) under what only a lake allows or risks:
readers on the lake while a daemon writes it, kill -9 in the middle of a commit to a
catalog in PostgreSQL, and the README's time travel. The suites shared with the DuckDB
file run on the lake as well (`kinds`, `make test-lake`)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rcs_sim.server import RunningSimulator
from tests.adversarial_helpers import signal_pass
from tests.conftest import Site, log_lines, site_factory, wait_for
from tests.postgres import PostgresServer

pytestmark = pytest.mark.lake

README = Path(__file__).resolve().parent.parent / "README.md"
LAKE_BLOCKS = re.findall(
    r"^```sql-lake\n(.*?)^```$", README.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE
)
LakeFactory = Callable[..., Site]


@pytest.fixture
def lake(
    tmp_path: Path, make_sim: Callable[..., RunningSimulator], postgres_server: PostgresServer
) -> Iterator[LakeFactory]:
    """Sites on a lake whatever `RCS_SYNC_TEST_KIND` says."""
    catalog = postgres_server.catalog
    with site_factory(tmp_path, make_sim, lambda: catalog(postgres_server.create_database())) as m:
        yield m


@contextmanager
def daemon(s: Site) -> Iterator[Path]:
    log = s.dir / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(s.command("run"), env=s.env(), stdout=out, stderr=out)
    try:
        yield log
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def passes(log: Path) -> int:
    return log.read_text(errors="replace").count("pass_complete")


READER = """
import json, sys, rcs_sync
con = rcs_sync.connect(sys.argv[1])
source = con.execute("SELECT source, path FROM rcs_source").fetchone()
count = con.execute("SELECT count(*) FROM rcs_records").fetchone()[0]
print(json.dumps([*source, count]))
"""


def read_as_analyst(s: Site) -> list[object]:
    """`rcs_sync.connect(config)` in another process: [source, path, records]."""
    out = subprocess.run(
        [sys.executable, "-c", READER, str(s.config)],
        env=s.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result: list[object] = json.loads(out)
    return result


def test_readers_attach_the_lake_while_a_daemon_writes_it_and_see_each_commit(
    lake: LakeFactory,
) -> None:
    s = lake(records=3_000, days=3, sync={"interval": "1s"})
    with daemon(s) as log:
        wait_for(lambda: passes(log) >= 1, 90, "the daemon's first pass")
        # A reader that stays connected across passes: each query sees the last commit.
        with s.connect(read_only=True) as reader:
            for _ in range(2):
                s.sim.sim.advance(60)
                s.sim.sim.mutate(200)
                truth = s.sim.sim.truth()
                wait_for(
                    lambda t=truth: (
                        dict(reader.execute("SELECT id, state FROM rcs_records").fetchall()) == t
                    ),  # type: ignore[misc]
                    90,
                    "the open reader to see the daemon's commit",
                )
            # Readers in other processes, and the analysts' commands, meanwhile.
            written = passes(log)
            source, path, count = read_as_analyst(s)
            assert (source, count) == ("lake", len(s.sim.sim.truth()))
            assert path == s.location and "password" not in path
            status = s.run("status", "--json")
            assert status.returncode == 0, status.stderr[-2000:]
            assert json.loads(status.stdout)["warehouse"] == s.location
            report = s.run("report")
            assert report.returncode == 0, report.stderr[-2000:]
            assert f"source: {s.location} (last commit " in report.stdout
            wait_for(lambda: passes(log) > written, 90, "a pass committed while readers read")
    refused = s.run("report", "--source", "snapshot")
    assert refused.returncode == 5
    assert "a lake has no snapshot" in refused.stderr and "Traceback" not in refused.stderr


KILLS = 4


def test_kill_9_in_the_middle_of_commits_leaves_data_and_bookkeeping_agreeing(
    lake: LakeFactory,
) -> None:
    """Each window's records, its run's counts and the checkpoint commit together to the
    PostgreSQL catalog: after a kill -9 at a seeded moment of an incremental pass whose
    commit is large, the rows the killed run touched are exactly those its run record
    counts, and the checkpoint is the run's or the one before."""
    s = lake(records=20_000, days=3, latency=0.05)
    s.ok("sync")
    rng = random.Random(7)
    outcomes = []
    for _ in range(KILLS):
        [(before,)] = s.query("SELECT max(checkpoint) FROM sync_checkpoints")
        s.sim.sim.advance(60)
        s.sim.sim.mutate(4_000)
        code = signal_pass(s, ("sync",), after_requests=1, delay=rng.uniform(0.0, 1.5))
        [(run_id, started, inserted, updated, windows, checkpoint)] = s.query(
            "SELECT run_id, started_at, inserted, updated, windows, checkpoint FROM sync_runs "
            "ORDER BY run_id DESC LIMIT 1"
        )
        [(touched,)] = s.query("SELECT count(*) FROM rcs_records WHERE updated_at >= ?", [started])
        assert touched == inserted + updated, (code, run_id, touched, inserted, updated)
        [(now,)] = s.query("SELECT max(checkpoint) FROM sync_checkpoints")
        assert now == (checkpoint or before), (code, now, checkpoint, before)
        outcomes.append((code, windows))
    s.ok("sync")
    s.assert_converged()
    assert any(code == -9 for code, _ in outcomes), outcomes


def test_the_readmes_time_travel_runs_on_a_lake_the_passes_wrote(lake: LakeFactory) -> None:
    assert len(LAKE_BLOCKS) >= 2
    s = lake(records=1_000, days=2)
    s.ok("sync")
    s.sim.sim.advance(60)
    s.sim.sim.mutate(100)
    s.ok("sync")
    for sql in LAKE_BLOCKS:
        with s.connect(read_only=True) as con:
            assert con.execute(sql).fetchall(), sql


def test_a_snapshot_is_not_published_for_a_lake_and_the_pass_says_so(lake: LakeFactory) -> None:
    s = lake(records=200, days=1)
    result = s.ok("sync", "--publish-snapshot")
    said = [e for e in log_lines(result.stderr) if e["event"] == "snapshot_not_used"]
    assert len(said) == 1 and "readers attach the lake" in said[0]["reason"]
    assert not list(s.dir.glob("*.duckdb"))
    migrated = s.ok("migrate")
    assert migrated.stdout.strip() == "schema up to date"


def test_a_lake_on_a_sqlite_catalog_syncs_and_is_read(
    tmp_path: Path, make_sim: Callable[..., RunningSimulator]
) -> None:
    """One host, no PostgreSQL: the catalog in a SQLite file (its extension from the
    extra's wheel too)."""
    with site_factory(tmp_path, make_sim, lambda: f"sqlite:{tmp_path / 'catalog.sqlite'}") as m:
        s = m(records=500, days=2)
        s.ok("sync")
        s.assert_converged()
        assert read_as_analyst(s) == ["lake", s.location, 500]
