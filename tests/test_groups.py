"""A body loaded group of parts by group (`loader.GROUP_BYTES`) inside its one
transaction stores exactly what loading it at once stores: records, quarantine, state
history and counts, whatever repeats across groups, and nothing after a kill -9."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcs_sync.model.commits import Commit, LoadResult
from rcs_sync.model.errors import SuspectedTruncation
from rcs_sync.model.responses import Spool
from rcs_sync.model.streams import RCS_RECORDS
from rcs_sync.source.spool import SpoolWriter
from rcs_sync.warehouse import loader
from rcs_sync.warehouse.duckdb_file import Warehouse
from tests.test_loader import T0, WINDOW, record
from tests.test_spool import layout

Snapshot = tuple[list[LoadResult], list[Any], list[Any], list[Any], list[Any]]


def cut(directory: Path, body: bytes, part_bytes: int) -> Spool:
    """The body as the spool writer cuts it into parts of about `part_bytes`."""
    with SpoolWriter(directory, part_bytes=part_bytes) as writer:
        for start in range(0, len(body), 50):
            writer.write(body[start : start + 50])
        return writer.spool()


def load_all(directory: Path, bodies: list[bytes], part_bytes: int | None) -> Snapshot:
    """Load the bodies in turn into a new warehouse, each cut into parts (one group per
    part) or, with `part_bytes` None, whole; what the warehouse then holds."""
    directory.mkdir()
    wh = Warehouse(directory / "rcs.duckdb", lock_timeout=5)
    with wh.held():  # one connection for it all, as a pass holds one
        wh.migrate()
        results = []
        for index, body in enumerate(bodies):
            if part_bytes is None:
                path = directory / f"body-{index}.json"
                path.write_bytes(body)
                spool = Spool.of(path)
            else:
                spool = cut(directory / f"spool-{index}", body, part_bytes)
            run_id = wh.start_run(RCS_RECORDS, "all", "test", "backfill")
            commit = Commit(RCS_RECORDS, "all", run_id, T0, window=None)
            results.append(wh.commit_batch(spool, commit, include_optional=True, server_limit=None))
        return (
            results,
            wh.query(
                "SELECT id, campaign, number, reference, portal, state, timestamp, "
                "content_message, extra FROM rcs_records ORDER BY id"
            ),
            wh.query(
                f"SELECT record_id, reason, raw FROM {RCS_RECORDS.quarantine_table} ORDER BY ALL"
            ),
            wh.query("SELECT * FROM rcs_state_changes ORDER BY ALL"),
            wh.query("SELECT received, inserted, updated, quarantined FROM sync_runs ORDER BY ALL"),
        )


def same_as_whole(tmp_path: Path, bodies: list[bytes], part_bytes: int) -> Snapshot:
    """Load the bodies grouped and whole; assert both warehouses hold the same."""
    grouped = load_all(tmp_path / "grouped", bodies, part_bytes)
    whole = load_all(tmp_path / "whole", bodies, None)
    assert grouped == whole
    return grouped


@pytest.fixture(autouse=True)
def one_group_per_part(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "GROUP_BYTES", 1)


def test_a_key_in_two_groups_keeps_the_last_copy_of_the_highest_state(tmp_path: Path) -> None:
    body = json.dumps(
        [
            record(1, state=1, reference="first"),
            record(2, state=4, reference="read early"),
            *(record(i) for i in range(10, 40)),
            record(1, state=1, reference="last"),
            record(2, state=1, reference="delivered late"),
            record(3, state=9),
        ]
    ).encode()
    results, stored, quarantine, history, _ = same_as_whole(tmp_path, [body], part_bytes=300)
    assert len(cut(tmp_path / "parts", body, 300).parts) > 5
    assert results == [LoadResult(received=35, inserted=32, updated=0, quarantined=3)]
    references = {row[0]: row[3] for row in stored}
    assert (references[1], references[2]) == ("last", "read early")
    assert 3 not in references
    superseded = sorted(
        json.loads(raw)["reference"] for _, reason, raw in quarantine if "dup" in reason
    )
    assert superseded == ["delivered late", "first"]
    assert sorted((k, old, new) for k, old, new, _ in history if k in (1, 2)) == [
        (1, None, 1),
        (2, None, 4),
    ]


def test_groups_without_repeats_match_the_whole_body_and_a_later_pass(tmp_path: Path) -> None:
    first = json.dumps([record(i, state=0) for i in range(1, 60)]).encode()
    second = json.dumps(
        [record(i, state=1 + i % 4, reference="again") for i in range(30, 90)]
    ).encode()
    results, stored, _, history, _ = same_as_whole(tmp_path, [first, second], part_bytes=400)
    assert results[1] == LoadResult(received=60, inserted=30, updated=30, quarantined=0)
    assert len(stored) == 89
    assert (45, 0, 2, T0) in {tuple(h) for h in history}


def test_a_group_duckdb_refuses_falls_back_to_the_whole_body_and_the_slow_path(
    tmp_path: Path,
) -> None:
    """Nested objects get cut inside a record (a part DuckDB refuses); an element that is
    not an object makes DuckDB refuse the whole body (the slow path quarantines it)."""
    items: list[Any] = [record(i, nested=[{"a": 1}, {"b": 2}] * 5) for i in range(1, 30)]
    items.insert(20, 7)
    body = json.dumps(items).encode()
    spool = cut(tmp_path / "parts", body, 200)
    assert any(_not_json(p) for p in spool.parts)
    results, stored, quarantine, _, _ = same_as_whole(tmp_path, [body], part_bytes=200)
    assert results == [LoadResult(received=30, inserted=29, updated=0, quarantined=1)]
    assert [q[1] for q in quarantine] == ["record: not a JSON object"]
    assert json.loads(stored[0][-1]) == {"nested": [{"a": 1}, {"b": 2}] * 5}


def _not_json(part: Path) -> bool:
    try:
        json.loads(part.read_bytes())
    except ValueError:
        return True
    return False


def test_exactly_the_server_limit_over_groups_rolls_back_every_group(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "rcs.duckdb", lock_timeout=5)
    wh.migrate()
    spool = cut(tmp_path / "parts", json.dumps([record(i) for i in range(1, 41)]).encode(), 300)
    assert len(spool.parts) > 3
    run_id = wh.start_run(RCS_RECORDS, "all", "test", "backfill")
    commit = Commit(RCS_RECORDS, "all", run_id, T0, window=WINDOW)
    with pytest.raises(SuspectedTruncation):
        wh.commit_batch(spool, commit, include_optional=False, server_limit=40)
    assert wh.query("SELECT count(*) FROM rcs_records") == [(0,)]
    assert wh.query("SELECT count(*) FROM sync_windows") == [(0,)]


copy = st.fixed_dictionaries(
    {
        "id": st.integers(1, 12),
        "state": st.sampled_from([0, 1, 2, 3, 4, 4, 7]),
        "reference": st.sampled_from(["a", "b", 'x},{"id":3}', "é\n"]),
    },
    optional={"content_message": st.sampled_from(["hi", "},{"])},
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    passes=st.lists(st.lists(copy, min_size=1, max_size=30), min_size=1, max_size=2),
    name=st.sampled_from(["compact", "lines", "pretty"]),
    part_bytes=st.integers(1, 300),
)
def test_any_repeats_across_groups_store_what_the_whole_body_stores(
    tmp_path_factory: pytest.TempPathFactory,
    passes: list[list[dict[str, Any]]],
    name: str,
    part_bytes: int,
) -> None:
    bodies = [layout([record(**c) for c in items], name) for items in passes]
    same_as_whole(tmp_path_factory.mktemp("groups"), bodies, part_bytes)


KILLED_LOAD = """
import sys
import time
from pathlib import Path
from rcs_sync.model.commits import Commit
from rcs_sync.model.responses import Spool
from rcs_sync.model.streams import RCS_RECORDS
from rcs_sync.warehouse import loader
from rcs_sync.warehouse.duckdb_file import Warehouse
from tests.test_loader import T0, WINDOW

loader.GROUP_BYTES = 1
wh = Warehouse(Path(sys.argv[1]))
run_id = wh.start_run(RCS_RECORDS, "all", "test", "backfill")
parts = tuple(Path(p) for p in sys.argv[2:])
wh.commit_batch(
    Spool(parts, 0), Commit(RCS_RECORDS, "all", run_id, T0, window=WINDOW),
    include_optional=False, server_limit=None,
)
"""


def writer_once_read(pipe: Path, proc: subprocess.Popen[bytes]) -> int:
    """The pipe opened for writing, which succeeds once a reader has it open."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or proc.poll() is not None:
                raise
            if time.monotonic() > deadline:
                raise TimeoutError("the load never opened its second part") from None
        time.sleep(0.01)


def test_a_kill_between_groups_leaves_nothing_of_the_body(tmp_path: Path) -> None:
    """The second part is a pipe: once the load opens it, the first group is applied
    inside the open transaction, and the process is killed there."""
    wh = Warehouse(tmp_path / "rcs.duckdb", lock_timeout=5)
    wh.migrate()
    first = tmp_path / "part-0.json"
    # Larger than the head sampled for undocumented fields, which must not reach the pipe.
    first.write_text(json.dumps([record(i, reference="r" * 400) for i in range(1, 8000)]))
    second = tmp_path / "part-1.json"
    os.mkfifo(second)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_LOAD, str(wh.path), str(first), str(second)], env=env
    )
    try:
        os.close(writer_once_read(second, proc))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert wh.query("SELECT count(*) FROM rcs_records") == [(0,)]
    assert wh.query("SELECT count(*) FROM rcs_state_changes") == [(0,)]
    assert wh.query("SELECT count(*) FROM sync_windows") == [(0,)]
    second.unlink()
    second.write_text(json.dumps([record(9000)]))
    run_id = wh.start_run(RCS_RECORDS, "all", "test", "backfill")
    commit = Commit(RCS_RECORDS, "all", run_id, T0, window=WINDOW)
    result = wh.commit_batch(
        Spool((first, second), 0), commit, include_optional=False, server_limit=None
    )
    assert result.inserted == 8000
    assert wh.query("SELECT count(*) FROM sync_windows") == [(1,)]
