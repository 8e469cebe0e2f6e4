"""`rcs_sync.connect()`, the analysts' Python entry point, and `report --source`: the
freshest file, read-only, with the views, and every call sees the newest published data
even while older connections of the same process stay open."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

import rcs_sync
from rcs_sync.config import ConfigError
from rcs_sync.model.errors import WarehouseLocked, WarehouseUnavailable
from tests.fixtures import build_warehouse
from tests.test_report import report, write_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    build_warehouse(tmp_path / "rcs.duckdb")
    return write_config(tmp_path, lock_timeout="1s")


def live(config: Path) -> Path:
    return config.with_name("rcs.duckdb")


def snapshot(config: Path) -> Path:
    return config.with_name("rcs.snapshot.duckdb")


def publish(config: Path) -> None:
    """Publish as the daemon does: from another process."""
    code = (
        "import sys; from pathlib import Path; from rcs_sync.warehouse.snapshot import publish; "
        "publish(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(live(config)), str(snapshot(config))],
        check=True,
        timeout=60,
        capture_output=True,
    )


def add_records(config: Path, first_id: int, count: int, *, ok_pass: bool = False) -> None:
    now = datetime.now(UTC)
    with duckdb.connect(str(live(config))) as con:
        con.execute(
            'INSERT INTO rcs_records (id, team, campaign, state, "timestamp", first_seen_at, '
            "updated_at) SELECT i, 1, 10, 1, ?, ?, ? FROM range(?, ?) AS r(i)",
            [now, now, now, first_id, first_id + count],
        )
        if ok_pass:
            con.execute(
                "INSERT INTO sync_runs (stream, scope, command, mode, started_at, finished_at, "
                "status) VALUES ('rcs_records', 'all', 'sync', 'incremental', ?, ?, 'ok')",
                [now - timedelta(seconds=1), now],
            )


def count(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute("SELECT sum(messages) FROM rcs_rates_daily").fetchone()
    assert row is not None
    return int(row[0])


def source_of(con: duckdb.DuckDBPyConnection) -> str:
    row = con.execute("SELECT source FROM rcs_source").fetchone()
    assert row is not None
    return str(row[0])


def test_connect_is_the_one_exported_name() -> None:
    assert rcs_sync.__all__ == ["connect"]
    signature = inspect.signature(rcs_sync.connect)
    assert list(signature.parameters) == ["config", "source"]
    assert signature.parameters["config"].default is None
    assert signature.parameters["source"].kind is inspect.Parameter.KEYWORD_ONLY
    assert signature.parameters["source"].default == "auto"
    assert rcs_sync.connect.__doc__


def test_a_connection_is_read_only_with_the_views(config: Path) -> None:
    publish(config)
    with rcs_sync.connect(config) as con:
        assert source_of(con) == "snapshot"
        assert count(con) == 15
        assert con.execute("SELECT count(*) FROM rcs_message_timings").fetchone() == (8,)
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("DELETE FROM rcs_records")


def test_each_call_sees_the_newest_snapshot_while_older_connections_stay_open(
    config: Path,
) -> None:
    publish(config)
    first = rcs_sync.connect(config)
    plain = duckdb.connect(str(snapshot(config)), read_only=True)
    assert count(first) == count(plain) == 15
    # Two more publishes: a full copy, then the spare generation the first connection
    # holds cannot be refreshed in place, so another copy; each connect sees the newest.
    seen = []
    for batch in range(2):
        add_records(config, 1000 + 100 * batch, 10)
        publish(config)
        with rcs_sync.connect(config) as newer:
            seen.append(count(newer))
    assert seen == [25, 35]
    assert count(first) == 15  # the old connection keeps the data it saw
    # DuckDB's own connect() hands back the instance `plain` opened: the old data.
    with duckdb.connect(str(snapshot(config)), read_only=True) as stale:
        assert count(stale) == 15
    first.close()
    plain.close()


@contextmanager
def hold(path: Path) -> Iterator[None]:
    """Another process holding the live file for writing, as a daemon's commit does."""
    code = (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
        "print('ready', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "ready"
    try:
        yield
    finally:
        holder.kill()
        holder.wait()


def test_auto_reads_the_live_file_when_it_has_a_newer_pass(config: Path) -> None:
    publish(config)
    add_records(config, 1000, 5, ok_pass=True)  # a one-shot sync after the daemon stopped
    with rcs_sync.connect(config) as con:
        assert (source_of(con), count(con)) == ("live", 20)
    with rcs_sync.connect(config, source="snapshot") as con:
        assert (source_of(con), count(con)) == ("snapshot", 15)
    result = report(config)
    assert result.exit_code == 0, result.output
    assert f"source: {live(config)} (live file, last successful pass " in result.stdout
    assert ["total", "20"] in [line.split()[:2] for line in result.stdout.splitlines()]
    snap = report(config, "--source", "snapshot")
    assert f"source: {snapshot(config)} (snapshot as of " in snap.stdout


def test_auto_reads_the_snapshot_when_its_pass_is_as_new(config: Path) -> None:
    add_records(config, 1000, 5, ok_pass=True)
    publish(config)
    with rcs_sync.connect(config) as con:
        assert (source_of(con), count(con)) == ("snapshot", 20)
    with rcs_sync.connect(config, source="live") as con:
        assert source_of(con) == "live"


def test_auto_leaves_a_live_file_a_writer_holds(config: Path) -> None:
    publish(config)
    add_records(config, 1000, 5, ok_pass=True)
    with hold(live(config)):
        with rcs_sync.connect(config) as con:  # newer, but a writer is at work
            assert (source_of(con), count(con)) == ("snapshot", 15)
        with pytest.raises(WarehouseLocked, match=r"locked by another process \(PID \d+\)"):
            rcs_sync.connect(config, source="live")  # waits lock_timeout (1s), then gives up


def test_errors(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with pytest.raises(WarehouseUnavailable, match="does not exist yet"):
        rcs_sync.connect(config)
    with pytest.raises(WarehouseUnavailable, match="no snapshot at"):
        rcs_sync.connect(config, source="snapshot")
    with pytest.raises(ConfigError):
        rcs_sync.connect(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="source must be one of"):
        rcs_sync.connect(config, source="newest")  # type: ignore[arg-type]


def test_the_readme_notebook_example_runs(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    [example] = [
        block
        for block in re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
        if "connect(" in block
    ]
    example = textwrap.dedent(example)
    assert "rcs_sync.connect(" in example
    publish(config)
    code = re.sub(r'rcs_sync\.connect\("[^"]*"\)', f'rcs_sync.connect("{config}")', example)
    exec(compile(code, "README.md", "exec"), {})
    shown = capsys.readouterr().out
    assert "snapshot" in shown and "delivery_rate" in shown
