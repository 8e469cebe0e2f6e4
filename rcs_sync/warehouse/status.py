"""What `rcs-sync status` reports, read from the warehouse's bookkeeping tables.

The JSON shape built here is a documented interface (README, "status --json"):
add keys freely, never rename or remove one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from rcs_sync.model.durations import format_duration, format_instant
from rcs_sync.model.errors import WarehouseDamaged
from rcs_sync.model.health import Health, ScopeRuns, evaluate
from rcs_sync.model.streams import Stream
from rcs_sync.model.windows import Window, merge
from rcs_sync.warehouse.bookkeeping import Bookkeeping
from rcs_sync.warehouse.tables import table_names
from rcs_sync.warehouse.validation import quote

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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
    warehouse: Bookkeeping, interval: timedelta, now: datetime | None = None
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    if not warehouse.exists():
        return _report(
            warehouse,
            Health(False, [f"warehouse {warehouse.location} does not exist yet: run a sync"]),
            None,
            [],
            [],
        )
    deferred = warehouse.deferred_runs()
    outcomes = {int(r["run_id"]): r for r in deferred if r.get("run_id") is not None}
    unwritten = [r for r in deferred if r.get("run_id") is None]
    scope_runs: list[ScopeRuns] = []
    try:
        return _collect(
            warehouse, interval, now, outcomes=outcomes, unwritten=unwritten, scope_runs=scope_runs
        )
    except WarehouseDamaged as exc:
        report = _report(warehouse, Health(False, [str(exc)]), None, [], [])
        return {**report, "damaged": True}


def _collect(
    warehouse: Bookkeeping,
    interval: timedelta,
    now: datetime,
    *,
    outcomes: dict[int, dict[str, Any]],
    unwritten: list[dict[str, Any]],
    scope_runs: list[ScopeRuns],
) -> dict[str, Any]:
    with warehouse.connect(read_only=True) as con:
        warehouse.verify(con)
        version = con.execute("SELECT max(version) FROM schema_migrations").fetchone()
        present = table_names(con)
        streams = [_stream_counts(con, stream, present) for stream in warehouse.streams]
        scopes = {
            (str(a), str(b))
            for a, b in con.execute(
                "SELECT stream, scope FROM sync_checkpoints "
                "UNION SELECT stream, scope FROM sync_runs "
                "UNION SELECT stream, scope FROM sync_windows"
            ).fetchall()
        } | {(str(r.get("stream")), str(r.get("scope"))) for r in unwritten}
        entries = []
        for stream, scope in sorted(scopes):
            checkpoint = con.execute(
                "SELECT checkpoint FROM sync_checkpoints WHERE stream = ? AND scope = ?",
                [stream, scope],
            ).fetchone()
            windows = con.execute(
                "SELECT window_start, window_end FROM sync_windows WHERE stream = ? AND scope = ?",
                [stream, scope],
            ).fetchall()
            rows = con.execute(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM sync_runs WHERE stream = ? AND scope = ? "
                "ORDER BY run_id DESC LIMIT ?",
                [stream, scope, RUNS_SHOWN],
            ).fetchall()
            runs = [
                _with_outcome(dict(zip(RUN_COLUMNS, row, strict=True)), outcomes) for row in rows
            ]
            runs += [
                _deferred_run(r)
                for r in unwritten
                if (r.get("stream"), r.get("scope")) == (stream, scope)
            ]
            runs.sort(key=lambda run: run["started_at"] or EPOCH, reverse=True)
            runs = runs[:RUNS_SHOWN]
            success = con.execute(
                "SELECT max(finished_at) FROM sync_runs "
                "WHERE stream = ? AND scope = ? AND status = 'ok'",
                [stream, scope],
            ).fetchone()
            latest = con.execute(
                f"SELECT {', '.join(RUN_COLUMNS)} FROM sync_runs WHERE stream = ? AND scope = ? "
                "AND finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT 1",
                [stream, scope],
            ).fetchone()
            finished = [run for run in runs if run["finished_at"] is not None]
            if latest is not None:
                finished.append(
                    _with_outcome(dict(zip(RUN_COLUMNS, latest, strict=True)), outcomes)
                )
            last = max(finished, key=lambda run: run["finished_at"], default=None)
            last_success = success[0] if success else None
            last_kind = last["error_kind"] if last and last["status"] != "ok" else None
            failure = (
                f"at {format_instant(last['finished_at'])} ({last['error_kind']}): {last['error']}"
                if last is not None and last["status"] == "failed"
                else None
            )
            scope_runs.append(ScopeRuns(f"{stream}/{scope}", last_success, last_kind, failure))
            cp = checkpoint[0] if checkpoint else None
            entries.append(
                {
                    "stream": stream,
                    "scope": scope,
                    "checkpoint": _json_value(cp),
                    "checkpoint_age_s": round((now - cp).total_seconds(), 1) if cp else None,
                    "last_success": _json_value(last_success),
                    "completed": [
                        [format_instant(w.start), format_instant(min(w.end, now))]
                        for w in merge(Window(a, b) for a, b in windows)
                        if w.start < now
                    ],
                    "last_runs": [{k: _json_value(v) for k, v in run.items()} for run in runs],
                }
            )
    verdict: Health = evaluate(scope_runs, interval, now)
    return _report(warehouse, verdict, version[0] if version else None, entries, streams)


def _report(
    warehouse: Bookkeeping,
    verdict: Health,
    version: int | None,
    entries: list[dict[str, Any]],
    streams: list[dict[str, Any]],
) -> dict[str, Any]:
    first = streams[0] if streams else {}
    return {
        "healthy": verdict.healthy,
        "health": verdict.state,
        "problems": verdict.reasons,
        "warehouse": warehouse.location,
        "schema_version": version,
        "records": first.get("records") or 0,
        "quarantined": first.get("quarantined") or 0,
        "scopes": entries,
        "streams": streams,
        "damaged": False,
    }


def _with_outcome(run: dict[str, Any], outcomes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """A run row, with the outcome deferred for it (`Warehouse.defer_run`) if any."""
    outcome = outcomes.get(int(run["run_id"]))
    if outcome is None or run["status"] != "running":
        return run
    return {
        **run,
        "finished_at": _parsed(outcome.get("finished_at")),
        "status": outcome.get("status"),
        "error": outcome.get("error"),
        "error_kind": outcome.get("error_kind"),
    }


def _deferred_run(record: dict[str, Any]) -> dict[str, Any]:
    """A run not yet written into `sync_runs` (the file could not be written), as a row."""
    run: dict[str, Any] = dict.fromkeys(RUN_COLUMNS)
    run.update({k: record.get(k) for k in RUN_COLUMNS if k in record})
    run.update(windows=0, received=0, inserted=0, updated=0, quarantined=0)
    run["started_at"] = _parsed(record.get("started_at"))
    run["finished_at"] = _parsed(record.get("finished_at"))
    return run


def _parsed(value: object) -> datetime | None:
    return datetime.fromisoformat(value).astimezone(UTC) if isinstance(value, str) else None


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
    health = report.get("health") or ("healthy" if report["healthy"] else "unhealthy")
    lines = [
        f"{health if health == 'healthy' else health.upper()}: "
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
            when = (
                f"at {run['finished_at']}" if run["finished_at"] else f"since {run['started_at']}"
            )
            number = run["run_id"] if run["run_id"] is not None else "(not yet recorded)"
            lines.append(
                f"  run {number}: {run['command']}/{run['mode'] or '-'} {run['status']} "
                f"{when}: {run['windows']} windows, {run['received']} received, "
                f"{run['inserted']} inserted, {run['updated']} updated, "
                f"{run['quarantined']} quarantined" + (f" — {run['error']}" if run["error"] else "")
            )
    return "\n".join(lines)
