"""Bodies we did not lay out, from a server we did not write.

nginx serves the response as a static file, gzip-encoded on the fly (so chunked, with
no length announced) for a client that asks for gzip, with its own `Date`; the file is
rendered by DuckDB's JSON writer or by Python's `json` module (indented with raw UTF-8,
or compact with `\\u` escapes), never by our simulator. Strings hold what a naive cut
would trip on (`},{`, brackets, escaped quotes, `\\n` escapes, non-ASCII), and the body
is big enough to be cut into parts. One backfill of each must store exactly the records
in the file.

Needs nginx (Debian's nginx package; CI installs it).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from rcs_sync.model.durations import format_instant
from tests.adversarial_helpers import closed_port
from tests.conftest import RCS_SYNC, TOKEN, wait_for

pytestmark = pytest.mark.any_kind

RECORDS = 60_000
"""~12 MB of body: more than one spool part (`spool.PART_BYTES`, 8 MB)."""
START = datetime(2026, 11, 1, tzinfo=UTC)
TRICKY = (
    "R},{1",
    "[{]}",
    'say "hi"',
    "back\\slash",
    "two\nlines",
    "tab\tend",
    "é中😀",
    '},\n    {"id": 1}',
    "",
)

NGINX_CONF = """
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{}}
http {{
    log_format served '$status $sent_http_content_encoding $sent_http_transfer_encoding';
    access_log {dir}/access.log served;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    gzip on;
    gzip_types application/json;
    gzip_min_length 0;
    server {{
        listen 127.0.0.1:{port};
        root {dir};
        location = /j/rcs_records {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            default_type application/json;
            try_files /body.json =404;
        }}
    }}
}}
"""


def records() -> list[dict[str, Any]]:
    """The records of the file: every field, `content_message` included, in order of id."""
    rng = random.Random(12)
    out = []
    for index in range(RECORDS):
        at = START + timedelta(seconds=index * 86_000 / RECORDS, milliseconds=rng.randrange(1000))
        out.append(
            {
                "id": index + 1,
                "campaign": rng.randrange(1, 40),
                "job": rng.randrange(1, 90_000),
                "team": rng.randrange(1, 4),
                "number": f"+336{rng.randrange(10**8):08d}",
                "reference": f"{rng.choice(TRICKY)}-{index}",
                "portal": rng.choice(("web", "api", None)),
                "state": rng.randrange(5),
                "timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "content_message": rng.choice(TRICKY) + " " + rng.choice(TRICKY),
            }
        )
    return out


def duckdb_writer(rows: list[dict[str, Any]], path: Path) -> None:
    """DuckDB's own JSON array: `COPY … (FORMAT JSON, ARRAY true)`, from NDJSON."""
    lines = path.with_suffix(".ndjson")
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with duckdb.connect() as con:
        con.execute(
            f"COPY (SELECT * FROM read_json('{lines}', format = 'newline_delimited', "
            "columns = {id: 'BIGINT', campaign: 'BIGINT', job: 'BIGINT', team: 'BIGINT', "
            "number: 'VARCHAR', reference: 'VARCHAR', portal: 'VARCHAR', state: 'INTEGER', "
            "timestamp: 'VARCHAR', content_message: 'VARCHAR'})) "
            f"TO '{path}' (FORMAT JSON, ARRAY true)"
        )
    lines.unlink()


def indented(rows: list[dict[str, Any]], path: Path) -> None:
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")


def compact(rows: list[dict[str, Any]], path: Path) -> None:
    path.write_text(json.dumps(rows, separators=(",", ":")), encoding="ascii")


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """nginx on 127.0.0.1 serving `<dir>/body.json`; yields its base URL and directory."""
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if binary is None:
        pytest.skip("nginx not found: install Debian's nginx package")
    served = tmp_path / "nginx"
    served.mkdir()
    port = closed_port()
    conf = served / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=served, port=port, token=TOKEN))
    proc = subprocess.Popen(
        [binary, "-p", str(served), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: (served / "nginx.pid").exists() or proc.poll() is not None, 10, "nginx")
        if proc.poll() is not None:
            pytest.fail(f"nginx did not start: {proc.stderr.read() if proc.stderr else ''}")
        yield f"http://127.0.0.1:{port}", served
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("render", [duckdb_writer, indented, compact])
def test_nginx_gzip_and_foreign_layouts_store_exactly_the_records_in_the_file(
    nginx: tuple[str, Path], tmp_path: Path, render: Callable[[list[dict[str, Any]], Path], None]
) -> None:
    base_url, served = nginx
    rows = records()
    render(rows, served / "body.json")
    config = tmp_path / "rcs-sync.toml"
    config.write_text(
        f'[api]\nbase_url = "{base_url}"\ninclude_content = true\n'
        '[sync]\nwindow = "100000d"\n'
        f'[warehouse]\npath = "{tmp_path / "rcs.duckdb"}"\n'
    )
    span = (format_instant(START), format_instant(START + timedelta(days=1)))
    done = subprocess.run(
        [RCS_SYNC, "--config", str(config), "backfill", "--start", span[0], "--end", span[1]],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("RCS_SYNC")},
            "RCS_SYNC_TOKEN": TOKEN,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # One request, answered by nginx gzip-encoded and chunked: what makes this about nginx.
    assert (served / "access.log").read_text().split() == ["200", "gzip", "chunked"]
    with duckdb.connect(str(tmp_path / "rcs.duckdb"), read_only=True) as con:
        stored = con.execute(
            "SELECT id, campaign, job, team, number, reference, portal, state, timestamp, "
            "content_message FROM rcs_records ORDER BY id"
        ).fetchall()
        quarantined = con.execute("SELECT count(*) FROM rcs_quarantine").fetchone()
    assert quarantined == (0,)
    expected = [
        (
            r["id"],
            r["campaign"],
            r["job"],
            r["team"],
            r["number"],
            r["reference"],
            r["portal"],
            r["state"],
            datetime.fromisoformat(r["timestamp"]),
            r["content_message"],
        )
        for r in rows
    ]
    assert stored == expected
