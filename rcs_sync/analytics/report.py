"""`rcs-sync report`: messages, outcomes and rates per day, campaign or team.

Everything is read from a stream's daily rates view (its declaration's `rates_view`:
`rcs_rates_daily` for RCS), so the report, the chart and an analyst's own SQL share one
definition of the counts (README, "Analytics"). The report covers the first stream of
`[sync] streams` that has one. Per
campaign or team, the view's daily counts are summed and the rates computed from the
sums: averaging daily rates would weigh a 10-message day like a 10,000-message one.
Without `--channel`, a chart or page also gets every channel's own report
(`build_channels`), for a panel per channel.

The report reads the freshest file (`sources.open_source`): the analysts' snapshot, so
it never delays a running daemon, unless the live file has a newer successful pass and
no writer holds it (a one-shot `sync` after the daemon stopped); `--source` insists on
one. Its footer names the file and how fresh it is.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path

import duckdb
from rich import box
from rich.console import Console
from rich.table import Table

from rcs_sync.analytics.sources import Source, open_source
from rcs_sync.config import ConfigError, WarehouseSettings
from rcs_sync.model.errors import WarehouseUnavailable
from rcs_sync.model.streams import Stream, named
from rcs_sync.warehouse.validation import literal, quote

GROUPINGS = ("day", "campaign", "team")
"""What a report row can stand for; each is a column of the rates view."""
COUNTS = ("messages", "delivered", "read", "failed", "pending")
RATES = ("delivery_rate", "read_rate")
CHANNEL_STREAMS = {
    "rcs": "rcs_records",
    "sms": "text_records",
    "voicemail": "voicemail_drop_records",
}
"""Each channel of `message_rates_daily` and the stream it comes from."""
CHANNELS = tuple(CHANNEL_STREAMS)
PIPED_WIDTH = 160
"""Rich assumes 80 columns off a terminal; a file or a pager gets whole lines instead."""

_QUERY = """
SELECT {key} AS key, grouping({key}) = 1 AS is_total,
       coalesce(sum(messages), 0)::BIGINT AS messages,
       coalesce(sum(delivered), 0)::BIGINT AS delivered,
       coalesce(sum("read"), 0)::BIGINT AS "read",
       coalesce(sum(failed), 0)::BIGINT AS failed,
       coalesce(sum(pending), 0)::BIGINT AS pending,
       sum(delivered) / nullif(sum(delivered) + sum(failed), 0) AS delivery_rate,
       sum("read") / nullif(sum(delivered), 0) AS read_rate
FROM {view}
WHERE {where}
GROUP BY ROLLUP ({key})
ORDER BY is_total, key NULLS LAST
"""
"""One row per key, then the total (ROLLUP), all from the same sums; the grand total
of an empty selection has NULL sums, hence the coalesce."""


@dataclass(frozen=True)
class Selection:
    """Which messages a report covers, and how it groups them.

    Days are calendar days in `time_zone`; `since` is the first day included and
    `until` the first day excluded, so consecutive ranges never overlap.
    """

    by: str = "day"
    since: date | None = None
    until: date | None = None
    team: int | None = None
    time_zone: str = "UTC"
    channel: str | None = None
    """`rcs`, `sms` or `voicemail`: read from `message_rates_daily` instead of the
    stream's own rates view."""

    def __post_init__(self) -> None:
        if self.by not in GROUPINGS:
            raise ValueError(f"cannot group by {self.by!r}: expected one of {GROUPINGS}")
        if self.channel is not None and self.channel not in CHANNEL_STREAMS:
            raise ValueError(f"unknown channel {self.channel!r}: expected one of {CHANNELS}")

    def describe(self) -> str:
        """The selection in words, for a footer or a chart title."""
        days = (
            f"{self.since or 'first day'} ≤ day < {self.until}"
            if self.until
            else f"days from {self.since}"
            if self.since
            else "all days"
        )
        team = f", team {self.team}" if self.team is not None else ""
        channel = f", channel {self.channel}" if self.channel is not None else ""
        return f"{days} ({self.time_zone}){team}{channel}"


@dataclass(frozen=True)
class Row:
    key: date | int | None
    """The day, campaign or team; None for records without a campaign or team."""
    messages: int
    delivered: int
    read: int
    failed: int
    pending: int
    delivery_rate: float | None
    read_rate: float | None


@dataclass(frozen=True)
class Report:
    selection: Selection
    source: Source
    rows: list[Row]
    total: Row
    daily: list[Row] | None
    """Per-day rows of the same selection, for the chart; None unless asked for."""
    team_names: dict[int, str] = field(default_factory=dict)
    """Team names from the `teams` dimension, when it is synced (empty otherwise)."""


def canonical_time_zone(name: str) -> str:
    """The time zone's name as DuckDB (ICU) spells it; ValueError when it has none."""
    with duckdb.connect() as con:
        return _time_zone(con, name)


def _time_zone(con: duckdb.DuckDBPyConnection, name: str) -> str:
    row = con.execute(
        "SELECT name FROM pg_timezone_names() WHERE lower(name) = lower(?) "
        "ORDER BY name = ? DESC LIMIT 1",
        [name, name],
    ).fetchone()
    if row is None:
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name like 'Europe/Paris'")
    return str(row[0])


def reported(names: Sequence[str], channel: str | None = None) -> Stream:
    """The stream the report covers: the channel's, if one is asked for (it must be
    configured), else the first of `names` with a rates view."""
    if channel is not None:
        name = CHANNEL_STREAMS[channel]
        if name not in names:
            raise ConfigError("[sync] streams", f"channel {channel} needs the stream {name}")
        return named(name)
    for name in names:
        stream = named(name)
        if stream.rates_view is not None:
            return stream
    raise ConfigError("[sync] streams", "no stream listed has delivery and read rates to report")


def build(
    settings: WarehouseSettings,
    selection: Selection,
    *,
    stream: Stream,
    daily: bool = False,
    source: str = "auto",
) -> Report:
    """Run the report's query over `stream`'s rates against the freshest file (`source`,
    see `sources.open_source`); with `daily`, also the per-day rows a chart needs."""
    con, chosen = open_source(settings, source, stream=stream.name)
    with con:
        # SET takes no parameters; only a name listed by pg_timezone_names() gets here.
        con.execute(f"SET TimeZone = '{_time_zone(con, selection.time_zone)}'")
        try:
            *rows, total = _rows(con, stream, selection, selection.by)
            days = None
            if daily:
                days = rows if selection.by == "day" else _rows(con, stream, selection, "day")[:-1]
            names = _team_names(con) if selection.by == "team" else {}
        except duckdb.CatalogException:
            raise WarehouseUnavailable(
                f"{chosen.path} has no analytics views yet: run `rcs-sync migrate`"
            ) from None
    return Report(selection, chosen, rows, total, days, names)


def build_channels(
    settings: WarehouseSettings,
    selection: Selection,
    names: Sequence[str],
    *,
    source: str = "auto",
) -> list[Report]:
    """Each channel's report (with its daily rows), for a chart per channel: those whose
    stream is among `names` and which hold messages in the selection, in `CHANNELS`
    order; none unless there are two or more (one channel is the plain report)."""
    found = [
        report
        for channel, name in CHANNEL_STREAMS.items()
        if name in names
        for report in [
            build(
                settings,
                replace(selection, channel=channel),
                stream=named(name),
                daily=True,
                source=source,
            )
        ]
        if report.total.messages
    ]
    return found if len(found) > 1 else []


def _team_names(con: duckdb.DuckDBPyConnection) -> dict[int, str]:
    """id -> name from `teams`, if that dimension is synced into the file."""
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'teams' "
        "AND schema_name = 'main' AND database_name = current_database()"
    ).fetchone()
    if not exists or not exists[0]:
        return {}
    return {int(i): str(n) for i, n in con.execute("SELECT id, name FROM teams").fetchall() if n}


def _rows(
    con: duckdb.DuckDBPyConnection, stream: Stream, selection: Selection, by: str
) -> list[Row]:
    """Rows for each `by` key in the selection, then the total row."""
    where, params = ["true"], []
    for clause, value in (
        ("day >= ?", selection.since),
        ("day < ?", selection.until),
        ("team = ?", selection.team),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    if selection.channel is not None:
        view = f"(SELECT * FROM message_rates_daily WHERE channel = {literal(selection.channel)})"
    else:
        assert stream.rates_view is not None
        view = quote(stream.rates_view)
    sql = _QUERY.format(key=by, view=view, where=" AND ".join(where))
    rows = [Row(key, *values) for key, _, *values in con.execute(sql, params).fetchall()]
    if selection.channel not in (None, "rcs"):  # SMS and voicemail have no read state
        rows = [replace(row, read_rate=None) for row in rows]
    return rows


def to_json(report: Report) -> str:
    """A list of objects with stable keys; days as ISO dates, rates as floats or null."""
    return json.dumps([_named_record(report, row) for row in report.rows], indent=2)


def to_csv(report: Report) -> str:
    """A header and one line per row; an empty field is a NULL rate (or key)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([report.selection.by, *COUNTS, *RATES])
    for row in report.rows:
        record = _record(report.selection.by, row)
        writer.writerow(["" if value is None else value for value in record.values()])
    return out.getvalue()


def _named_record(report: Report, row: Row) -> dict[str, object]:
    """The row's record; by team with teams synced, its `team_name` after the team."""
    record = _record(report.selection.by, row)
    if not report.team_names:
        return record
    key, *rest = record.items()
    name = report.team_names.get(row.key) if isinstance(row.key, int) else None
    return dict([key, ("team_name", name), *rest])


def _record(by: str, row: Row) -> dict[str, object]:
    fields = asdict(row)
    key = fields.pop("key")
    return {by: key.isoformat() if isinstance(key, date) else key, **fields}


def print_table(report: Report, *, chart: Path | None = None, html: Path | None = None) -> None:
    """The terminal view: one line per key, a total line, then where the data came from."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=PIPED_WIDTH)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, show_footer=True, footer_style="bold")
    total = report.total
    table.add_column(report.selection.by, footer="total", no_wrap=True)
    for name in COUNTS:
        table.add_column(name, footer=f"{getattr(total, name):,}", justify="right", no_wrap=True)
    for name in RATES:
        # Two-line headers ("delivery / rate") keep the table within 80 columns.
        header = name.replace("_", "\n")
        table.add_column(header, footer=percent(getattr(total, name)), justify="right")
    for row in report.rows:
        table.add_row(
            _key(row.key, report.team_names),
            *(f"{getattr(row, name):,}" for name in COUNTS),
            *(percent(getattr(row, name)) for name in RATES),
        )
    console.print(table)
    console.print(report.selection.describe(), highlight=False)
    console.print(f"source: {report.source.describe()}", highlight=False)
    if chart is not None:
        console.print(f"chart: {chart}", highlight=False)
    if html is not None:
        console.print(f"html: {html}", highlight=False)


def _key(key: date | int | None, names: dict[int, str] | None = None) -> str:
    if isinstance(key, int) and names and key in names:
        return f"{key} {names[key]}"
    return "(none)" if key is None else key.isoformat() if isinstance(key, date) else str(key)


def percent(rate: float | None) -> str:
    """Rates as percentages; "-" where the rate is undefined (no outcome, or none delivered)."""
    return "-" if rate is None else f"{100 * rate:.1f} %"
