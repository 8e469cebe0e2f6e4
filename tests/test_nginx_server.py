"""Bodies we did not lay out, from a server we did not write (`tests/nginx.py`).

One backfill per layout of a body big enough to be cut into parts, served gzip-encoded
and chunked by nginx, must store exactly the records in the file; a backfill of several
windows at the default concurrency from an nginx that caps each connection's bandwidth
must keep requests in flight together and store every window's records.

Needs nginx (Debian's nginx package; CI installs it).
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from rcs_sync.model.durations import format_instant
from rcs_sync.model.windows import Window, cut
from tests import nginx
from tests.conftest import RCS_SYNC, TOKEN

pytestmark = pytest.mark.any_kind

START = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., nginx.Nginx]]:
    """Start nginx serving `tmp_path/nginx` with the options given (`nginx.Nginx`)."""
    if nginx.binary() is None:
        pytest.skip(nginx.MISSING)
    started: list[nginx.Nginx] = []

    def make(**options: Any) -> nginx.Nginx:
        served = nginx.Nginx(tmp_path / "nginx", TOKEN, **options)
        started.append(served)
        served.start()
        return served

    yield make
    for served in started:
        served.stop()


def backfill(tmp_path: Path, base_url: str, span: Window, sync: str) -> list[tuple[object, ...]]:
    """`rcs-sync backfill` of `span` with content; the rows stored (none quarantined)."""
    config = tmp_path / "rcs-sync.toml"
    config.write_text(
        f'[api]\nbase_url = "{base_url}"\ninclude_content = true\n[sync]\n{sync}\n'
        f'[warehouse]\npath = "{tmp_path / "rcs.duckdb"}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCS_SYNC")}
    bounds = ("--start", format_instant(span.start), "--end", format_instant(span.end))
    done = subprocess.run(
        [RCS_SYNC, "--config", str(config), "backfill", *bounds],
        env={**env, "RCS_SYNC_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with duckdb.connect(str(tmp_path / "rcs.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM rcs_quarantine").fetchone() == (0,)
        return con.execute(nginx.STORED).fetchall()


@pytest.mark.parametrize("render", [nginx.duckdb_writer, nginx.indented, nginx.compact])
def test_foreign_layouts_gzipped_by_nginx_store_exactly_the_records_in_the_file(
    make_server: Callable[..., nginx.Nginx], tmp_path: Path, render: nginx.Layout
) -> None:
    server = make_server(gzip=True)
    # ~12 MB: more than one spool part (`spool.PART_BYTES`, 8 MB).
    rows = nginx.records(60_000, START, timedelta(days=1))
    render(rows, server.body())
    stored = backfill(
        tmp_path, server.base_url, Window(START, START + timedelta(days=1)), 'window = "100000d"'
    )
    # One request, answered gzip-encoded and chunked: what makes this about nginx.
    assert [line[:3] for line in server.served()] == [["200", "gzip", "chunked"]]
    assert stored == nginx.stored_form(rows)


def test_windows_fetched_together_from_a_bandwidth_capped_nginx_all_land(
    make_server: Callable[..., nginx.Nginx], tmp_path: Path
) -> None:
    server = make_server(routed=True, limit_rate=1 << 20)
    span = Window(START, START + timedelta(days=6))
    windows = cut(span, timedelta(days=1))
    rows = [r for day in server.serve_windows(windows, 3_000) for r in day]
    stored = backfill(tmp_path, server.base_url, span, 'window = "1d"')
    assert stored == nginx.stored_form(rows)
    served = server.served()
    assert [line[0] for line in served] == ["200"] * len(windows)
    # Each request as nginx saw it, [began, ended]: at least two overlapped.
    spans = sorted((float(line[4]) - float(line[5]), float(line[4])) for line in served)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))
