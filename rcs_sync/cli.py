"""The `rcs-sync` command: a thin layer of click over `app`, `sync`, `service` and `status`.

Every expected failure ends as one redacted line on stderr and a distinct exit code
(see `errors.py`); a traceback is only shown with `-vv`.

Modules that pull in DuckDB and requests are imported inside the commands that need
them: `rcs-sync run` is a small long-lived process that never loads them itself (each
pass runs as a `rcs-sync sync` child), and `--help` stays instant.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import click
import structlog

from rcs_sync import early_stop, startup
from rcs_sync.config import ConfigError, Settings, config_path, load_settings, read_token
from rcs_sync.logs import configure_logging, json_lines, redact
from rcs_sync.model.durations import format_instant, parse_instant
from rcs_sync.model.errors import (
    EXIT_FAILURE,
    EXIT_STOPPED,
    EXIT_UNHEALTHY,
    EXIT_USAGE,
    RcsSyncError,
    Stopped,
    WarehouseUnavailable,
    error_kind,
)
from rcs_sync.model.events import (
    ApiResponse,
    PassEvent,
    PassFailed,
    ScopeFinished,
    SnapshotPublished,
    WriterWait,
    encode,
)
from rcs_sync.model.streams import Stream
from rcs_sync.model.windows import Window

if TYPE_CHECKING:
    from rcs_sync.backend import Backend
    from rcs_sync.daemon.passes import PassEntry
    from rcs_sync.engine.sync import Listener, PassResult, ScopeOutcome
    from rcs_sync.session import App

log = structlog.get_logger(__name__)
NO_SNAPSHOT = (
    "a lake has no snapshot: readers attach the lake itself, read-only, while it is "
    'written (README, "Reading a lake")'
)

Emit = Callable[[PassEvent], None]


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


class _Commands(click.Group):
    """The commands, plus those that live outside the product, imported only when run:
    `simulate` is the simulator's (`rcs_sim`), which nothing else here loads."""

    lazy: ClassVar[dict[str, str]] = {"simulate": "rcs_sim.cli:simulate"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, name = self.lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module), name)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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
    ctx.obj = {"config": config_file, "verbose": verbose, "log_format": log_format}


def _settings(ctx: click.Context) -> Settings:
    return load_settings(config_path(ctx.obj["config"], os.environ))


def _app(ctx: click.Context) -> App:
    with startup.loading():
        from rcs_sync.session import App

    return App(_settings(ctx))


def _backend(ctx: click.Context) -> Backend:
    """The warehouse alone, for commands that never talk to the API."""
    with startup.loading():
        from rcs_sync.backend import Backend

    return Backend(_settings(ctx))


def _emitter() -> Emit:
    def emit(event: PassEvent) -> None:
        click.echo(encode(event))
        sys.stdout.flush()

    return emit


def _listener(emit: Emit | None, label: str) -> AbstractContextManager[Listener | None]:
    """JSON events for the daemon, a progress bar on a terminal, else nothing."""
    if emit is not None:
        return nullcontext(emit)
    if sys.stderr.isatty():
        from rcs_sync.progress import progress_bar

        return progress_bar(label)
    return nullcontext(None)


@cli.command()
@click.option("--team", type=int, help="Only this team (default: the teams in the config).")
@click.option(
    "--events",
    is_flag=True,
    help="Print JSON lines on stdout: API responses, windows, each scope's outcome "
    "(what `rcs-sync run` reads).",
)
@click.option(
    "--publish-snapshot", is_flag=True, help="Publish the analysts' snapshot after the pass."
)
@click.option(
    "--no-wait",
    is_flag=True,
    help="Exit at once (exit 5) if another rcs-sync is writing the warehouse, "
    "instead of waiting for it.",
)
@click.option(
    "--maintain",
    is_flag=True,
    help="After the pass, maintain a lake if due ([maintenance] every; what the daemon does).",
)
@click.pass_context
def sync(
    ctx: click.Context,
    *,
    team: int | None,
    events: bool,
    publish_snapshot: bool,
    no_wait: bool,
    maintain: bool,
) -> None:
    """One pass: first a backfill from initial_start, later incremental, or a catch-up."""
    from rcs_sync.engine.sync import Scope, sync_streams

    app = _app(ctx)
    emit = _emitter() if events else None
    on_response = (
        (lambda status: emit(ApiResponse(event="api_response", status=status))) if emit else None
    )
    on_wait = (
        (lambda pid, waited: emit(WriterWait(event="writer_wait", pid=pid, waited_s=waited)))
        if emit
        else None
    )
    scopes = [Scope(team)] if team is not None else app.scopes()
    try:
        with app.session(
            on_response,
            command="sync",
            scopes=[s.key for s in scopes],
            wait=not no_wait,
            on_wait=on_wait,
            first_contact_fails_fast=not events,  # the daemon's passes keep retrying
            verify=not events,
        ) as api:
            with _listener(emit, "sync") as listener:
                syncers = [app.syncer(api, stream, listener=listener) for stream in app.streams()]
                outcomes = sync_streams(syncers, scopes)
            for outcome in outcomes:
                if emit is not None:
                    emit(_scope_event(app, outcome))
                elif outcome.result is not None:
                    click.echo(_summary(outcome.result, _named(app, outcome.stream)))
            if (
                publish_snapshot
                and any(o.outcome == "ok" for o in outcomes)
                and not app.stop.is_set()
            ):
                _publish(app, emit)
            if maintain and not app.stop.is_set():
                _maintain_if_due(app)
    except Exception as exc:
        # No `scope` event tells the daemon about this one: say how the pass ended.
        if emit is not None and not isinstance(exc, Stopped):
            code = exc.exit_code if isinstance(exc, RcsSyncError) else EXIT_FAILURE
            emit(
                PassFailed(
                    event="failed",
                    kind=error_kind(exc),
                    error=redact(str(exc) or type(exc).__name__),
                    exit_code=code,
                )
            )
        raise
    failed = next((o.error for o in outcomes if o.error is not None), None)
    if failed is not None:
        failed.logged = True  # as `pass_failed` or `token_rejected`, by `sync_all`
        raise failed


def _scope_event(app: App, outcome: ScopeOutcome) -> ScopeFinished:
    """One scope's outcome for the daemon: counts for metrics, the checkpoint for its lag."""
    checkpoint = outcome.result.checkpoint if outcome.result else None
    if checkpoint is None and outcome.outcome != "stopped":
        try:
            checkpoint = app.warehouse.checkpoint(outcome.stream, outcome.scope.key)
        except RcsSyncError:
            checkpoint = None
    return ScopeFinished(
        event="scope",
        stream=outcome.stream.name,
        scope=outcome.scope.key,
        outcome=outcome.outcome,
        summary=outcome.result.summary() if outcome.result else None,
        checkpoint=format_instant(checkpoint) if checkpoint else None,
        error=redact(str(outcome.error)) if outcome.error else None,
        kind=error_kind(outcome.error) if outcome.error else None,
    )


def _publish(app: App, emit: Emit | None) -> None:
    from rcs_sync.warehouse.duckdb_file import Warehouse
    from rcs_sync.warehouse.snapshot import publish_from

    if not isinstance(app.warehouse, Warehouse):
        log.info("snapshot_not_used", reason=NO_SNAPSHOT)
        return
    try:
        published = publish_from(app.warehouse, app.settings.warehouse.snapshot_file)
    except RcsSyncError as exc:
        log.error("snapshot_failed", error=str(exc))
        return
    log.info(
        "snapshot_published",
        path=str(published.path),
        mode=published.mode,
        seconds=round(published.seconds, 3),
    )
    if emit is not None:
        emit(SnapshotPublished(event="snapshot", seconds=published.seconds, mode=published.mode))


def _maintain_if_due(app: App) -> None:
    """The daemon's maintenance, in the pass that found it due, under its writer lock:
    logged as one event; a failure is logged and leaves the pass's outcome alone."""
    from rcs_sync.warehouse import maintenance

    settings = app.settings.maintenance
    try:
        with app.warehouse.connect() as con:
            if not maintenance.due(con, settings, datetime.now(UTC)):
                return
            report = maintenance.maintain(con, settings, stop=app.stop)
    except Stopped:
        raise
    except RcsSyncError as exc:
        log.error("maintenance_failed", error=redact(str(exc)), kind=exc.kind)
        return
    log.info("lake_maintained", **report.figures())


@cli.command()
@click.option(
    "--no-wait",
    is_flag=True,
    help="Exit at once (exit 5) if another rcs-sync is writing the warehouse.",
)
@click.pass_context
def maintain(ctx: click.Context, no_wait: bool) -> None:
    """Maintain a lake now, due or not: compact small files, rewrite files heavy with
    deletes, expire old snapshots, delete old and orphaned files, within [maintenance]
    budget (a run the budget cuts short says so; the next continues). A DuckDB file is
    only checkpointed. Prints what it did: text on a terminal, else one JSON line."""
    from rcs_sync.warehouse import maintenance

    app = _backend(ctx)
    with app.writer(wait=not no_wait):
        if not app.warehouse.exists():
            raise WarehouseUnavailable(
                f"{app.warehouse.location} does not exist yet: nothing to maintain "
                "(rcs-sync migrate or a first sync creates it)"
            )
        with app.warehouse.held(), app.warehouse.connect() as con:
            report = maintenance.maintain(con, app.settings.maintenance, stop=app.stop)
    click.echo(json.dumps(report.figures()) if json_lines() else maintenance.render(report))


@cli.command()
@click.option("--start", type=Instant(), required=True, help="First record timestamp to read.")
@click.option("--end", type=Instant(), required=True, help="Read up to (excluding) this time.")
@click.option("--team", type=int, help="Only this team (default: the teams in the config).")
@click.option("--force", is_flag=True, help="Re-read windows that were already completed.")
@click.option(
    "--no-wait",
    is_flag=True,
    help="Exit at once (exit 5) if another rcs-sync is writing the warehouse.",
)
@click.pass_context
def backfill(
    ctx: click.Context,
    *,
    start: datetime,
    end: datetime,
    team: int | None,
    force: bool,
    no_wait: bool,
) -> None:
    """Read [START, END) in windows; a rerun resumes, skipping completed windows."""
    from rcs_sync.engine.sync import Scope

    if end <= start:
        raise click.BadParameter("--end must be after --start", param_hint="--end")
    app = _app(ctx)
    scopes = [Scope(team)] if team is not None else app.scopes()
    keys = [s.key for s in scopes]
    with (
        app.session(
            command="backfill", scopes=keys, wait=not no_wait, first_contact_fails_fast=True
        ) as api,
        _listener(None, "backfill") as listener,
    ):
        results = []
        for stream in app.streams():
            syncer = app.syncer(api, stream, listener=listener)
            results += [
                (stream, syncer.backfill(scope, Window(start, end), force=force))
                for scope in scopes
            ]
    for stream, result in results:
        click.echo(_summary(result, _named(app, stream)))


@cli.command()
@click.option(
    "--no-wait",
    is_flag=True,
    help="Exit at once (exit 5) if another `rcs-sync run` serves this warehouse.",
)
@click.pass_context
def run(ctx: click.Context, no_wait: bool) -> None:
    """Run as a daemon: a pass every [sync] interval until SIGTERM or SIGINT.

    Each pass runs as a `rcs-sync sync` child process, so the daemon itself stays
    small. Speaks systemd's notify protocol when $NOTIFY_SOCKET is set (READY,
    STATUS, WATCHDOG, STOPPING) and publishes a read-only snapshot for analysts after
    each successful pass."""
    from rcs_sync.daemon.service import Service

    settings = _settings(ctx)
    read_token(settings.api, os.environ)
    if settings.source is None:
        raise click.UsageError("rcs-sync run needs a config file")
    command = [
        "--config",
        str(settings.source),
        "--log-format",
        ctx.obj["log_format"],
        *(["-v"] * ctx.obj["verbose"]),
    ]
    service = Service(settings, command, pass_entry(), wait=not no_wait)
    ctx.exit(service.run())


@cli.command()
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create the warehouse or apply pending schema migrations, then exit.

    A file written in another storage version than [warehouse] storage_version is
    rewritten into it first, and the snapshot is republished in it."""
    from rcs_sync.warehouse import storage
    from rcs_sync.warehouse.duckdb_file import Warehouse
    from rcs_sync.warehouse.snapshot import publish_from

    app = _backend(ctx)
    file = app.warehouse if isinstance(app.warehouse, Warehouse) else None  # a lake: neither
    with app.writer():
        converted = storage.convert(file) if file else None
        if converted is not None:
            click.echo(f"storage rewritten: {converted.before} -> {converted.after}")
        applied = app.warehouse.migrate()
        click.echo(f"migrations applied: {applied}" if applied else "schema up to date")
        if file is None:
            return
        snapshot = app.settings.warehouse.snapshot_file
        if snapshot.exists() and storage.file_version(snapshot) != storage.warehouse_version(file):
            publish_from(file, snapshot)
            click.echo(f"snapshot republished: {snapshot}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (stable keys).")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Health, checkpoints, completed backfill ranges and the last runs per scope.

    Exits 6 when unhealthy (no successful pass for 3 intervals, or the token is being
    refused), so it doubles as a monitoring probe."""
    from rcs_sync.warehouse import status as status_report

    app = _backend(ctx)
    report = status_report.collect(app.warehouse, app.settings.sync.interval)
    click.echo(json.dumps(report, indent=2) if as_json else status_report.render(report))
    if not report["healthy"]:
        ctx.exit(EXIT_UNHEALTHY)


class TimeZoneName(click.ParamType[str]):
    """A time zone checked against DuckDB's own list (ICU), the one the report's session
    uses: a typo is a usage error before any file is opened."""

    name = "ZONE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from rcs_sync.analytics.report import canonical_time_zone

        try:
            return canonical_time_zone(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DAY = click.DateTime(formats=["%Y-%m-%d"])


@cli.command()
@click.option("--since", type=DAY, metavar="DATE", help="First day included (YYYY-MM-DD).")
@click.option(
    "--until",
    type=DAY,
    metavar="DATE",
    help="First day excluded: --since 2026-03-01 --until 2026-04-01 is March.",
)
@click.option(
    "--by", type=click.Choice(["day", "campaign", "team"]), default="day", show_default=True
)
@click.option("--team", type=int, help="Only this team.")
@click.option(
    "--tz",
    "time_zone",
    type=TimeZoneName(),
    default="UTC",
    show_default=True,
    help="Time zone of the days (where a day starts and ends), e.g. Europe/Paris.",
)
@click.option(
    "--format",
    "output",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--source",
    type=click.Choice(["auto", "snapshot", "live"]),
    default="auto",
    show_default=True,
    help="The file to read: auto is the snapshot, or the live file when it has a newer "
    "successful pass and no process is writing to it.",
)
@click.option(
    "--chart",
    type=click.Path(path_type=Path),
    metavar="FILE.png|svg|pdf",
    help="Also draw the rates: per day over message volume, or per campaign or team (the "
    "format follows the extension; needs the charts extra).",
)
@click.option(
    "--html",
    type=click.Path(path_type=Path),
    metavar="FILE.html",
    help="Also write the report as one self-contained HTML page: the table and the charts.",
)
@click.option(
    "--channel",
    type=click.Choice(("rcs", "sms", "voicemail")),
    help="One channel of message_rates_daily (its stream must be in [sync] streams).",
)
@click.pass_context
def report(
    ctx: click.Context,
    *,
    channel: str | None,
    since: datetime | None,
    until: datetime | None,
    by: str,
    team: int | None,
    time_zone: str,
    output: str,
    source: str,
    chart: Path | None,
    html: Path | None,
) -> None:
    """Delivery and read rates per day, campaign or team.

    Messages, delivered, read, failed, pending, delivery_rate = delivered / (delivered +
    failed), read_rate = read / delivered; read-only, from the freshest of the analysts'
    snapshot and the warehouse (--source). --since is included, --until excluded."""
    from rcs_sync.analytics import chart as charts
    from rcs_sync.analytics import report as reports

    if since and until and until <= since:
        raise click.UsageError("--until must be after --since")
    if chart is not None:
        try:
            charts.require()
            charts.check_path(chart)
        except (charts.MatplotlibMissing, charts.BadChartPath) as exc:
            _fail(str(exc), exc.exit_code, kind="usage", prefix="")
    if html is not None:
        try:
            charts.check_directory(html, "--html")
        except charts.BadChartPath as exc:
            _fail(str(exc), exc.exit_code, kind="usage", prefix="")
    selection = reports.Selection(
        by=by,
        since=since.date() if since else None,
        until=until.date() if until else None,
        team=team,
        time_zone=time_zone,
        channel=channel,
    )
    settings = _settings(ctx)
    result = reports.build(
        settings.warehouse,
        selection,
        stream=reports.reported(settings.sync.streams, channel),
        source=source,
        daily=html is not None,
    )
    drawn = chart is not None or html is not None
    per_channel = (
        reports.build_channels(settings.warehouse, selection, settings.sync.streams, source=source)
        if drawn and channel is None
        else []
    )
    if chart is not None and per_channel:
        charts.write_channels(per_channel, chart)
    elif chart is not None:
        charts.write(result, chart)
    if html is not None:
        from rcs_sync.analytics import html as pages

        try:
            pages.write(result, html, per_channel)
        except OSError as exc:
            click.echo(f"rcs-sync: --html {html}: {exc.strerror or exc}", err=True)
            ctx.exit(EXIT_USAGE)
    if output == "json":
        click.echo(reports.to_json(result))
    elif output == "csv":
        click.echo(reports.to_csv(result), nl=False)
    else:
        reports.print_table(result, chart=chart, html=html)


def _named(app: App, stream: Stream) -> Stream | None:
    """The stream a summary line names: none when it is the only one configured."""
    return stream if len(app.settings.sync.streams) > 1 else None


def _summary(result: PassResult, stream: Stream | None = None) -> str:
    data = result.summary()
    checkpoint = data["checkpoint"] or "unchanged"
    prefix = f"{stream.name}/" if stream is not None else ""
    return (
        f"{prefix}{data['scope']}: {data['mode']}, {data['windows']} windows, "
        f"{data['received']} received, {data['inserted']} inserted, {data['updated']} updated, "
        f"{data['quarantined']} quarantined, checkpoint {checkpoint}, {data['duration_s']}s"
    )


def pass_entry() -> PassEntry:
    """How the daemon runs `rcs-sync ARGV` in its forked passes: the fork server imports
    everything `rcs-sync sync` needs once, so a pass imports nothing."""
    from rcs_sync.daemon.passes import PassEntry

    return PassEntry(
        _pass_main, preload=("rcs_sync.cli", "rcs_sync.session", "rcs_sync.warehouse.snapshot")
    )


def _pass_main(argv: list[str]) -> None:
    """Each of the daemon's passes, in a process forked with the stop signals blocked."""
    early_stop.install()
    main(argv)


def main(args: list[str] | None = None) -> None:
    """Entry point: run the CLI on `args` (default: the command line), turning every
    failure into one line and an exit code: plain text on a terminal, otherwise one
    JSON log line like every other (`command_failed`), unless the failure was already
    logged as an event of its own (`pass_failed`, `token_rejected`)."""
    # Record data never becomes world-readable: DuckDB creates its WAL and spill files
    # with the process umask (0644 under the usual 022); the database is 0640 anyway.
    os.umask(os.umask(0) | 0o027)
    configure_logging()  # until the options are read: a usage error is logged too
    ctx: click.Context | None = None
    try:
        ctx = cli.make_context("rcs-sync", sys.argv[1:] if args is None else args)
        with ctx:
            cli.invoke(ctx)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        _fail("interrupted", EXIT_STOPPED, kind="stopped", prefix="")
    except click.ClickException as exc:
        code = EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
        if not json_lines():
            exc.show()
            sys.exit(code)
        _fail(exc.format_message(), code, kind="usage")
    except ConfigError as exc:
        _fail(redact(str(exc)), exc.exit_code, kind="config", prefix="")
    except RcsSyncError as exc:
        _fail(redact(str(exc)), exc.exit_code, kind=exc.kind, logged=exc.logged)
    except Exception as exc:
        if ctx is not None and ctx.obj and ctx.obj["verbose"] >= 2:
            raise
        _fail(
            f"{type(exc).__name__}: {redact(str(exc))} (run with -vv for a traceback)",
            EXIT_FAILURE,
            kind="internal",
            prefix="unexpected error: ",
        )


def _fail(
    message: str, code: int, *, kind: str, prefix: str = "error: ", logged: bool = False
) -> NoReturn:
    """End the command with `code` and one line saying why (see `main`)."""
    if not json_lines():
        click.echo(f"rcs-sync: {prefix}{message}", err=True)
    elif not logged:
        log.log(
            logging.WARNING if code == EXIT_STOPPED else logging.ERROR,
            "command_failed",
            error=message,
            kind=kind,
            exit_code=code,
        )
    sys.exit(code)
