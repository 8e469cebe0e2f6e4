"""nginx as the API: a server we did not write, serving bodies we did not lay out.

Debian's `nginx` package (`.ci/run` installs it), run in the foreground as one process
(`master_process off`, so no workers change user) with every path in a directory of its
own, listening on 127.0.0.1 only. `/j/rcs_records` answers with a static file: the one
body, or, `routed`, the file named for the request's `start` (`body_name`), so each
window of a backfill gets its own records. `gzip` encodes on the fly (chunked, no length
announced) for a client that asks; `limit_rate` caps each connection's bandwidth, as a
distant server's link would. One access-log line per request (`served`): status,
content and transfer encodings, bytes sent, when it ended and how long it took.

Also `records` and the layouts that render them: DuckDB's JSON writer, and Python's
`json` indented (raw UTF-8) or compact (`\\u` escapes), with strings that hold what a
naive cut of a body would trip on.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from rcs_sync.model.durations import format_instant
from rcs_sync.model.windows import Window
from tests.adversarial_helpers import closed_port

MISSING = "nginx not found: install Debian's nginx package (.ci/run installs it)"
START_TIMEOUT = 10.0

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
"""String contents for `reference` and `content_message`."""

CONF = """
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{}}
http {{
    log_format served '$status $sent_http_content_encoding $sent_http_transfer_encoding '
                      '$body_bytes_sent $msec $request_time';
    access_log {dir}/access.log served;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    gzip {gzip};
    gzip_types application/json;
    gzip_min_length 0;
    server {{
        listen 127.0.0.1:{port};
        root {dir};
        location = /j/rcs_records {{
            if ($http_authorization != "Bearer {token}") {{ return 401; }}
            default_type application/json;
            {limit}
            try_files {file} =404;
        }}
    }}
}}
"""

Layout = Callable[[list[dict[str, Any]], Path], None]


def binary() -> str | None:
    """nginx's path, or None when it is not installed (/usr/sbin is often off PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


class Nginx:
    """One nginx serving `dir`; `start()` returns its base URL, `stop()` ends it."""

    def __init__(
        self,
        dir: Path,
        token: str,
        *,
        gzip: bool = False,
        routed: bool = False,
        limit_rate: int | None = None,
    ) -> None:
        found = binary()
        if found is None:
            raise RuntimeError(MISSING)
        self.binary = found
        self.dir = dir
        self.port = closed_port()
        dir.mkdir(parents=True, exist_ok=True)
        (dir / "bodies").mkdir(exist_ok=True)
        limit = f"limit_rate {limit_rate};" if limit_rate else ""
        file = "/bodies/$arg_start.json" if routed else "/body.json"
        (dir / "nginx.conf").write_text(
            CONF.format(
                dir=dir,
                port=self.port,
                token=token,
                gzip="on" if gzip else "off",
                limit=limit,
                file=file,
            )
        )
        self._proc: subprocess.Popen[str] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        self._proc = subprocess.Popen(
            [self.binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not (self.dir / "nginx.pid").exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                error = self._proc.stderr.read() if self._proc.stderr else ""
                self.stop()
                raise RuntimeError(f"nginx did not start: {error.strip()}")
            time.sleep(0.02)
        return self.base_url

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)

    def served(self) -> list[list[str]]:
        """The access log, a list of fields per request."""
        log = self.dir / "access.log"
        return [line.split() for line in log.read_text().splitlines()] if log.exists() else []

    def body(self) -> Path:
        """Where the one body goes (not `routed`)."""
        return self.dir / "body.json"

    def window_body(self, window: Window) -> Path:
        """Where a `routed` server keeps the body of `window`."""
        return self.dir / "bodies" / body_name(window)

    def serve_windows(
        self, windows: list[Window], per_window: int
    ) -> Iterator[list[dict[str, Any]]]:
        """Write each window's body (`per_window` records, ids following on, laid out by
        `duckdb_writer`) for a `routed` server, yielding its records one window at a
        time, so a caller that keeps none holds one window's worth."""
        for index, window in enumerate(windows):
            rows = records(
                per_window, window.start, window.span, seed=index, first_id=index * per_window + 1
            )
            duckdb_writer(rows, self.window_body(window))
            yield rows


def body_name(window: Window) -> str:
    """The file a request for `window` is answered from: its `start` as the client sends
    it (percent-encoded, as nginx's `$arg_start` holds it), then `.json`."""
    start, _end = window.request_bounds()
    return urllib.parse.quote_plus(format_instant(start)) + ".json"


def records(
    count: int, start: datetime, span: timedelta, *, seed: int = 12, first_id: int = 1
) -> list[dict[str, Any]]:
    """`count` records evenly over `span` from `start`, ids from `first_id` in order,
    every field set (`content_message` too); strings from `TRICKY`."""
    rng = random.Random(seed)
    out = []
    step = span.total_seconds() / count
    for index in range(count):
        at = start + timedelta(seconds=index * step, milliseconds=rng.randrange(1000))
        at = min(at, start + span - timedelta(milliseconds=1))
        out.append(
            {
                "id": first_id + index,
                "campaign": rng.randrange(1, 40),
                "job": rng.randrange(1, 90_000),
                "team": rng.randrange(1, 4),
                "number": f"+336{rng.randrange(10**8):08d}",
                "reference": f"{rng.choice(TRICKY)}-{index}",
                "portal": rng.choice(("web", "api", None)),
                "state": rng.randrange(5),
                "timestamp": at.astimezone(UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                "content_message": rng.choice(TRICKY) + " " + rng.choice(TRICKY),
            }
        )
    return out


def duckdb_writer(rows: list[dict[str, Any]], path: Path) -> None:
    """DuckDB's own JSON array (`COPY … (FORMAT JSON, ARRAY true)`: a record per line,
    tab-indented), read from NDJSON."""
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


def stored_form(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The rows as `STORED` reads them back from the warehouse."""
    return [
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


STORED = (
    "SELECT id, campaign, job, team, number, reference, portal, state, timestamp, "
    "content_message FROM rcs_records ORDER BY id"
)
