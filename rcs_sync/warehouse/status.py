"""What `rcs-sync status` reports, read from the warehouse's bookkeeping tables.

The JSON shape built here is a documented interface (README, "status --json"):
add keys freely, never rename or remove one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from rcs_sync.model.durations import format_duration, format_instant
from rcs_sync.model.health import Health, ScopeRuns, evaluate
from rcs_sync.model.streams import Stream
from rcs_sync.model.windows import Window, merge
from rcs_sync.warehouse.duckdb_file import Warehouse
from rcs_sync.warehouse.validation import quote

RUNS_SHOWN = 5
RUN_COLUMNS = (
    "run_id",
    "command",
    "mode",
    "status",
    "started_at",
    "finished_at",
    "windows",
    "received",
    "inserted",
    "updated",
    "quarantined",
    "error",
    "error_kind",
)


def _json_value(value: Any) -> Any:
    return format_instant(value) if isinstance(value, datetime) else value


def collect(
    warehouse: Warehouse, interval: timedelta, now: datetime | None = None
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    scope_runs: list[ScopeRuns] = []
    with warehouse.connect(read_only=True) as con:
        version = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
        present = {
            str(r[0])
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() "
                "WHERE database_name = current_database() AND schema_name = 'main'"
            ).fetchall()
        }
        streams = [_stream_counts(con, stream, present) for stream in warehouse.streams]
        scopes = con.execute(
            "SELECT stream, scope FROM sync_checkpoints UNION SELECT stream, scope FROM sync_runs "
            "UNION SELECT stream, scope FROM sync_windows ORDER BY ALL"
        ).fetchall()
        entries = []
        for stream, scope in scopes:
            checkpoint = con.execute(
                "SELECT checkpoint FROM sync_checkpoints WHERE stream = ? AND scope = ?",
                [stream, scope],
            ).fetchone()
            windows = con.execute(
                "SELECT window_start, window_end FROM sync_windows WHERE stream = ? AND scope = ?",
                [stream, scope],
            ).fetchall()
            runs = con.execute(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM sync_runs WHERE stream = ? AND scope = ? "
                "ORDER BY run_id DESC LIMIT ?",
                [stream, scope, RUNS_SHOWN],
            ).fetchall()
            success = con.execute(
                "SELECT max(finished_at) FROM sync_runs "
                "WHERE stream = ? AND scope = ? AND status = 'ok'",
                [stream, scope],
            ).fetchone()
            latest = con.execute(
                "SELECT error_kind FROM sync_runs WHERE stream = ? AND scope = ? "
                "AND finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 1",
                [stream, scope],
            ).fetchone()
            last_success = success[0] if success else None
            last_kind = latest[0] if latest else None
            scope_runs.append(ScopeRuns(f"{stream}/{scope}", last_success, last_kind))
            cp = checkpoint[0] if checkpoint else None
            entries.append(
                {
                    "stream": stream,
                    "scope": scope,
                    "checkpoint": _json_value(cp),
                    "checkpoint_age_s": round((now - cp).total_seconds(), 1) if cp else None,
                    "last_success": _json_value(last_success),
                    "completed": [
                        [format_instant(w.start), format_instant(w.end)]
                        for w in merge(Window(a, b) for a, b in windows)
                    ],
                    "last_runs": [
                        {k: _json_value(v) for k, v in zip(RUN_COLUMNS, run, strict=True)}
                        for run in runs
                    ],
                }
            )
    verdict: Health = evaluate(scope_runs, interval, now)
    first = streams[0] if streams else {}
    return {
        "healthy": verdict.healthy,
        "problems": verdict.reasons,
        "warehouse": str(warehouse.path),
        "schema_version": version[0] if version else None,
        "records": first.get("records") or 0,
        "quarantined": first.get("quarantined") or 0,
        "scopes": entries,
        "streams": streams,
    }


def _stream_counts(
    con: duckdb.DuckDBPyConnection, stream: Stream, present: set[str]
) -> dict[str, Any]:
    """A stream's records, quarantined records and records per state meaning; None
    counts for a stream whose tables the next migration creates."""
    counts: dict[str, Any] = {"stream": stream.name, "records": None, "quarantined": None}
    meanings = stream.history.meanings if stream.history else {}
    counts["states"] = dict.fromkeys(meanings.values(), 0) if meanings else {}
    if stream.table not in present or stream.quarantine_table not in present:
        return counts
    counts["records"] = _count(con, stream.table)
    counts["quarantined"] = _count(con, stream.quarantine_table)
    if stream.history is not None and meanings:
        state = quote(stream.history.state)
        rows = con.execute(
            f"SELECT {state}, count(*) FROM {quote(stream.table)} GROUP BY ALL"
        ).fetchall()
        counts["states"].update({meanings[value]: n for value, n in rows if value in meanings})
    return counts


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    row = con.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()
    return int(row[0]) if row else 0


def render(report: dict[str, Any]) -> str:
    """A terse human view of `collect`'s output."""
    lines = [
        f"{'healthy' if report['healthy'] else 'UNHEALTHY'}: "
        + ("; ".join(report["problems"]) or "recent passes succeeded"),
        f"warehouse {report['warehouse']} (schema v{report['schema_version']}): "
        f"{report['records']} records, {report['quarantined']} quarantined",
    ]
    if len(report["streams"]) > 1:
        lines[1] = f"warehouse {report['warehouse']} (schema v{report['schema_version']})"
        for counts in report["streams"]:
            states = ", ".join(f"{n} {meaning}" for meaning, n in counts["states"].items())
            lines.append(
                f"{counts['stream']}: {counts['records'] or 0} records, "
                f"{counts['quarantined'] or 0} quarantined" + (f" ({states})" if states else "")
            )
    for entry in report["scopes"]:
        age = entry["checkpoint_age_s"]
        shown_age = (
            format_duration(timedelta(seconds=int(age))) + " ago" if age is not None else "none yet"
        )
        lines.append(
            f"{entry['stream']} / {entry['scope']}: checkpoint "
            f"{entry['checkpoint'] or '-'} ({shown_age})"
        )
        for start, end in entry["completed"]:
            lines.append(f"  completed windows {start} .. {end}")
        for run in entry["last_runs"]:
            lines.append(
                f"  run {run['run_id']}: {run['command']}/{run['mode']} {run['status']} "
                f"at {run['started_at']}: {run['windows']} windows, {run['received']} received, "
                f"{run['inserted']} inserted, {run['updated']} updated, "
                f"{run['quarantined']} quarantined" + (f" — {run['error']}" if run["error"] else "")
            )
    return "\n".join(lines)
