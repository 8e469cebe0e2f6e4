"""The `rcs-sync` command: a thin layer of click over `app`, `sync` and `status`.

Every expected failure ends as one redacted line on stderr and a distinct exit code
(see `errors.py`); a traceback is only shown with `-v -v`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
import structlog
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from rcs_sync import status as status_report
from rcs_sync.app import App
from rcs_sync.config import ConfigError, config_path, load_settings
from rcs_sync.durations import parse_instant
from rcs_sync.errors import EXIT_FAILURE, EXIT_USAGE, RcsSyncError
from rcs_sync.logs import configure_logging, redact
from rcs_sync.simulator import BOUNDS, FAULT_KINDS, SimConfig, serve_forever
from rcs_sync.sync import Listener, PassResult, Scope
from rcs_sync.windows import Window

log = structlog.get_logger(__name__)


class Instant(click.ParamType[datetime]):
    name = "ISO-8601"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_instant(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    metavar="PATH",
    help="Config file [default: $RCS_SYNC_CONFIG, else ./rcs-sync.toml].",
)
@click.option("-v", "--verbose", count=True, help="-v: debug logs; -vv: also tracebacks.")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default="auto",
    show_default=True,
    help="auto = console on a terminal, JSON lines otherwise.",
)
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, verbose: int, log_format: str) -> None:
    """Keep a DuckDB warehouse in step with the provider's RCS delivery records."""
    as_json = None if log_format == "auto" else log_format == "json"
    configure_logging(json=as_json, level="debug" if verbose else "info")
    ctx.obj = {"config": config_file, "verbose": verbose}


def _app(ctx: click.Context) -> App:
    path = config_path(ctx.obj["config"], os.environ)
    return App(load_settings(path))


@cli.command()
@click.option("--team", type=int, help="Only this team (default: the teams in the config).")
@click.pass_context
def sync(ctx: click.Context, team: int | None) -> None:
    """One pass: first a backfill from initial_start, later incremental, or a catch-up."""
    app = _app(ctx)
    app.token()
    app.warehouse.migrate()
    scopes = [Scope(team)] if team is not None else app.scopes()
    api = app.api()
    try:
        with _progress("sync") as listener:
            results = [app.syncer(api, listener=listener).sync(scope) for scope in scopes]
    finally:
        api.close()
    for result in results:
        click.echo(_summary(result))


@cli.command()
@click.option("--start", type=Instant(), required=True, help="First record timestamp to read.")
@click.option("--end", type=Instant(), required=True, help="Read up to (excluding) this time.")
@click.option("--team", type=int, help="Only this team (default: the teams in the config).")
@click.option("--force", is_flag=True, help="Re-read windows that were already completed.")
@click.pass_context
def backfill(
    ctx: click.Context, start: datetime, end: datetime, team: int | None, force: bool
) -> None:
    """Read [START, END) in windows; a rerun resumes, skipping completed windows."""
    if end <= start:
        raise click.BadParameter("--end must be after --start", param_hint="--end")
    app = _app(ctx)
    app.token()
    app.warehouse.migrate()
    scopes = [Scope(team)] if team is not None else app.scopes()
    api = app.api()
    try:
        with _progress("backfill") as listener:
            results = [
                app.syncer(api, listener=listener).backfill(scope, Window(start, end), force=force)
                for scope in scopes
            ]
    finally:
        api.close()
    for result in results:
        click.echo(_summary(result))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stable keys).")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Checkpoints, their age, completed backfill ranges and the last runs per scope."""
    app = _app(ctx)
    report = status_report.collect(app.warehouse)
    click.echo(json.dumps(report, indent=2) if as_json else status_report.render(report))


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--records", type=click.IntRange(0), default=10_000, show_default=True)
@click.option("--days", type=click.FloatRange(0, min_open=True), default=30.0, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--teams", type=click.IntRange(1), default=3, show_default=True)
@click.option("--campaigns", type=click.IntRange(1), default=20, show_default=True)
@click.option("--arrival-rate", type=click.FloatRange(0), default=0.0, help="New records/s.")
@click.option("--frozen", is_flag=True, help="Clock moves only via POST /_sim/advance.")
@click.option("--clock-offset", type=float, default=0.0, help="Server clock skew, seconds.")
@click.option("--fault-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option(
    "--faults",
    default="429,500,503,drop,truncate",
    show_default=True,
    help=f"Comma-separated fault kinds from: {', '.join(FAULT_KINDS)}.",
)
@click.option("--latency", type=click.FloatRange(0), default=0.0, help="Seconds per request.")
@click.option("--truncate-at", type=click.IntRange(1), help="Silently cut responses at N records.")
@click.option("--bounds", type=click.Choice(BOUNDS), default="[)", show_default=True)
@click.option("--bad-fraction", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--extra-fields", is_flag=True, help="Add an undocumented field to some records.")
def simulate(
    *,
    port: int,
    records: int,
    days: float,
    seed: int,
    teams: int,
    campaigns: int,
    arrival_rate: float,
    frozen: bool,
    clock_offset: float,
    fault_rate: float,
    faults: str,
    latency: float,
    truncate_at: int | None,
    bounds: str,
    bad_fraction: float,
    extra_fields: bool,
) -> None:
    """Serve the built-in API simulator on 127.0.0.1 (token: $RCS_SIM_TOKEN or sim-token)."""
    kinds = tuple(k.strip() for k in faults.split(",") if k.strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise click.BadParameter(
            f"unknown fault kind(s): {', '.join(unknown)}", param_hint="--faults"
        )
    config = SimConfig(
        records=records,
        days=days,
        arrival_rate=arrival_rate,
        teams=teams,
        campaigns=campaigns,
        seed=seed,
        token=os.environ.get("RCS_SIM_TOKEN", SimConfig.token),
        frozen=frozen,
        clock_offset=clock_offset,
        fault_rate=fault_rate,
        faults=kinds,
        latency=latency,
        truncate_at=truncate_at,
        bounds=bounds,
        bad_fraction=bad_fraction,
        extra_fields=extra_fields,
    )

    def ready(bound: int) -> None:
        click.echo(f"simulator listening on http://127.0.0.1:{bound}")
        sys.stdout.flush()

    serve_forever(config, port, ready)


def _summary(result: PassResult) -> str:
    data = result.summary()
    checkpoint = data["checkpoint"] or "unchanged"
    return (
        f"{data['scope']}: {data['mode']}, {data['windows']} windows, "
        f"{data['received']} received, {data['inserted']} inserted, {data['updated']} updated, "
        f"{data['quarantined']} quarantined, checkpoint {checkpoint}, {data['duration_s']}s"
    )


@contextmanager
def _progress(label: str) -> Iterator[Listener | None]:
    """A progress bar (windows, records, ETA) on a terminal; plain log lines otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("windows · {task.fields[records]:,} records"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        tasks: dict[str, TaskID] = {}

        def listener(event: str, data: dict[str, object]) -> None:
            scope = str(data["scope"])
            if event == "planned":
                tasks[scope] = progress.add_task(
                    f"{label} {scope}", total=int(str(data["windows"])), records=0
                )
            elif event == "window" and scope in tasks:
                task = progress.tasks[tasks[scope]]
                progress.update(
                    tasks[scope],
                    advance=1,
                    records=int(task.fields["records"]) + int(str(data["received"])),
                )

        configure_logging(json=False, level="warning")
        yield listener


def main() -> None:
    """Entry point: run the CLI, turning every failure into one line and an exit code."""
    ctx: click.Context | None = None
    try:
        ctx = cli.make_context("rcs-sync", sys.argv[1:])
        with ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("rcs-sync: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except ConfigError as exc:
        click.echo(f"rcs-sync: {redact(str(exc))}", err=True)
        sys.exit(EXIT_USAGE)
    except RcsSyncError as exc:
        click.echo(f"rcs-sync: error: {redact(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if ctx is not None and ctx.obj and ctx.obj["verbose"] >= 2:
            raise
        click.echo(
            f"rcs-sync: unexpected error: {type(exc).__name__}: {redact(str(exc))} "
            "(run with -vv for a traceback)",
            err=True,
        )
        sys.exit(EXIT_FAILURE)
