"""`rcs-sync report --chart`: the report's figures drawn, as PNG, SVG or PDF.

- `--by day`: daily delivery and read rates (lines, 0-100 %) over the message volume
  (bars, pending on top, right axis). Date labels stay readable at any span: one per
  day up to a week, then matplotlib's concise labels at a thinned set of days, weeks or
  months (never more than ~10 labels).
- `--by campaign` or `--by team`: that breakdown, the `TOP` biggest by messages plus
  "other" (their counts summed, rates computed from the sums): message volume on the
  left, delivery and read rates on the right, one row each.

Without `--channel`, with more than one channel in the warehouse (RCS, SMS, voicemail
drops), the chart has one panel per channel, top to bottom, each that channel's figure
for the grouping from `message_rates_daily`; daily panels share one span of days, so a
day lines up across them. SMS and voicemail drops have no read state: their panels
draw delivery rates only.

The format follows the file's extension (`FORMATS`). matplotlib is an optional extra
(`pip install 'rcs-sync[charts]'`): it is heavy, and a server running the daemon has no
use for it. It is imported only when a chart is asked for, and drawn with the Agg
backend on a bare `Figure`, so no display, GUI toolkit or pyplot global state is
involved.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rcs_sync.analytics.report import Report, Row, percent
from rcs_sync.model.errors import EXIT_USAGE, RcsSyncError

if TYPE_CHECKING:
    import numpy
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure
    from numpy.typing import NDArray

    Days = tuple[NDArray[numpy.datetime64], list[Row]]

WIDTH_IN, HEIGHT_IN, DPI = 11.0, 5.5, 150
DELIVERY_COLOR, READ_COLOR = "#1f6feb", "#2da44e"
OUTCOME_COLOR, PENDING_COLOR, GRID_COLOR = "#d0d7de", "#f5d9a8", "#eaeef2"
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
"""The file extensions a chart can be written as, and matplotlib's name of the format."""
VOLUME_HEADROOM = 2.5
"""The volume axis reaches 2.5 x the busiest day, so bars stay in the lower part of the
chart, under the rate lines, which usually sit near the top."""
DAY_TICKS_UP_TO = 7
"""Up to this many days, one label per day ("Mon 16 Nov"); beyond, concise thinned labels."""
MAX_DATE_LABELS = 10
MARKERS_UP_TO = 62
"""Up to this many days, a dot marks each day's rates; beyond, dots would blur the lines."""
HTML_WIDTH_IN = 7.5
"""Charts of the HTML page are narrower, so their text stays legible on a phone."""
TOP = 12
"""Campaigns or teams drawn one by one; the rest are summed into "other"."""
CHANNEL_NAMES = {"rcs": "RCS", "sms": "SMS", "voicemail": "Voicemail drop"}


class MatplotlibMissing(RcsSyncError):
    exit_code = EXIT_USAGE

    def __init__(self) -> None:
        super().__init__("--chart needs matplotlib: pip install 'rcs-sync[charts]'")


class BadChartPath(RcsSyncError):
    """A chart file that cannot be written: a usage error, said in one line."""

    exit_code = EXIT_USAGE


def require() -> None:
    """Fail now, before any query runs, when the charts extra is not installed."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        raise MatplotlibMissing from None


def check_path(path: Path, option: str = "--chart") -> str:
    """The format `path`'s extension asks for; BadChartPath unless it is one we write
    and its directory exists and is writable (checked before any query runs)."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise BadChartPath(
            f"{option} {path}: unknown extension {path.suffix or '(none)'!r}: "
            f"expected one of {', '.join(FORMATS)}"
        )
    check_directory(path, option)
    return fmt


def check_directory(path: Path, option: str) -> None:
    """BadChartPath unless `path` can be written: its directory exists and is writable."""
    directory = path.parent
    if not directory.is_dir():
        raise BadChartPath(f"{option} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BadChartPath(f"{option} {path}: directory {directory} is not writable")
    if path.is_dir():
        raise BadChartPath(f"{option} {path}: is a directory")


def write(report: Report, path: Path) -> None:
    """Draw the report's chart into `path`, in the format its extension names."""
    _write(path, lambda: draw(report))


def _write(path: Path, make: Callable[[], Figure]) -> None:
    """Check `path` before drawing (a bad path fails before the work), then save."""
    fmt = check_path(path)
    figure = make()
    try:
        _save(figure, path, fmt)
    except OSError as exc:
        raise BadChartPath(f"--chart {path}: {exc.strerror or exc}") from None


def svg(figure: Figure, *, salt: str = "rcs-sync") -> str:
    """A figure as an SVG document (for the HTML report: give each figure of a page its
    own `salt`, so their element ids differ)."""
    out = io.StringIO()
    _save(figure, out, "svg", salt)
    return out.getvalue()


def _save(figure: Figure, target: Path | io.StringIO, fmt: str, salt: str = "rcs-sync") -> None:
    from matplotlib import rc_context  # noqa: PLC0415

    # No creation date, so the same report gives the same bytes; SVG text stays text
    # (searchable, selectable, a fraction of the size of glyphs drawn as paths).
    metadata: dict[str, str | None] = (
        {"Date": None} if fmt == "svg" else {"CreationDate": None} if fmt == "pdf" else {}
    )
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        figure.savefig(target, format=fmt, metadata=metadata)


def draw(report: Report) -> Figure:
    """The figure for the report's grouping: daily lines and bars, or the breakdown."""
    require()
    if report.selection.by == "day":
        return daily(report)
    return breakdown(report)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _title(report: Report, what: str) -> str:
    total = report.total
    read = f"read rate {percent(total.read_rate)}, " if _has_read(report) else ""
    return (
        f"{channel_name(report)} {what}, {report.selection.describe()}\n"
        f"{total.messages:,} messages, delivery rate {percent(total.delivery_rate)}, "
        f"{read}{total.pending:,} pending"
    )


def channel_name(report: Report) -> str:
    """How a chart names the report's channel: RCS unless another is selected."""
    return CHANNEL_NAMES[report.selection.channel or "rcs"]


def _has_read(report: Report) -> bool:
    """Only RCS has a read state; SMS and voicemail drops stop at delivered."""
    return report.selection.channel in (None, "rcs")


def _rates(report: Report) -> str:
    return "delivery and read rates" if _has_read(report) else "delivery rates"


def daily(report: Report, width: float = WIDTH_IN) -> Figure:
    """Rates as lines over volume as bars, one point per day (`width` in inches)."""
    figure = _figure(width, HEIGHT_IN * min(1.0, width / WIDTH_IN * 1.25))
    _draw_daily(figure, report, width)
    return figure


def _draw_daily(
    target: Figure | SubFigure, report: Report, width: float, span: Days | None = None
) -> None:
    """The daily chart into a figure or one panel of one; `span`: the days its axis
    shows (all of the report's rows, or those of every panel)."""
    import numpy  # noqa: PLC0415 - a dependency of matplotlib

    rows = report.daily if report.daily is not None else report.rows
    days = numpy.array([row.key for row in rows], dtype="datetime64[D]")
    rates = target.add_subplot()
    volume = rates.twinx()
    # The rate axes are drawn over the volume axes, so the lines stay above the bars.
    rates.set_zorder(volume.get_zorder() + 1)
    rates.patch.set_visible(False)
    _volume_bars(volume, days, rows)
    _rate_lines(rates, days, rows, read=_has_read(report))
    _date_axis(rates, *(span or (days, rows)))

    lines, labels = rates.get_legend_handles_labels()
    bars, bar_labels = volume.get_legend_handles_labels()
    target.legend(
        lines + bars,
        labels + bar_labels,
        loc="outside lower center",
        ncols=4 if width >= WIDTH_IN else 2,
        frameon=False,
    )
    rates.set_title(_title(report, f"{_rates(report)} per day"), loc="left")


def _date_axis(axes: Axes, days: NDArray[numpy.datetime64], rows: list[Row]) -> None:
    """One label per day for a week or less; beyond, at most MAX_DATE_LABELS concise
    labels on days, weeks or months ("Jun", "15", "2025"), which never overlap."""
    import numpy  # noqa: PLC0415
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter  # noqa: PLC0415

    if len(rows) == 0:
        return
    if len(rows) <= DAY_TICKS_UP_TO:
        axes.set_xticks(days, labels=[f"{row.key:%a}\n{row.key:%d %b}" for row in rows])
    else:
        locator = AutoDateLocator(minticks=3, maxticks=MAX_DATE_LABELS)  # type: ignore[no-untyped-call]
        axes.xaxis.set_major_locator(locator)
        axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    # Half a day of margin either side, so the first and last bars are whole; more for
    # a few days, so one day is a bar, not a wall.
    margin = numpy.timedelta64(max(12, 6 * (DAY_TICKS_UP_TO - len(rows))), "h")
    axes.set_xlim(days[0] - margin, days[-1] + margin)


def _volume_bars(axes: Axes, days: NDArray[numpy.datetime64], rows: list[Row]) -> None:
    """Messages per day; the pending ones stacked on top, since a young day's rates rest
    on few outcomes."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: PLC0415

    settled = [row.messages - row.pending for row in rows]
    width = 0.8 if len(rows) <= 120 else 1.0
    axes.bar(days, settled, width=width, color=OUTCOME_COLOR, label="messages with an outcome")
    pending = [row.pending for row in rows]
    axes.bar(
        days,
        pending,
        width=width,
        bottom=settled,
        color=PENDING_COLOR,
        label="pending (no outcome yet)",
    )
    busiest = max((row.messages for row in rows), default=0)
    axes.set_ylim(0, max(busiest, 1) * VOLUME_HEADROOM)
    axes.set_ylabel("messages per day")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))
    axes.spines["top"].set_visible(False)


def _rate_lines(
    axes: Axes, days: NDArray[numpy.datetime64], rows: list[Row], *, read: bool = True
) -> None:
    """Delivery and read rates (`read`: the channel has a read state), 0-100 %; an
    undefined rate (no outcome yet, nothing delivered) is a gap in the line, not a zero."""
    from matplotlib.ticker import PercentFormatter  # noqa: PLC0415

    marker = "o" if len(rows) <= MARKERS_UP_TO else None
    lines = [("delivery_rate", "delivery rate", DELIVERY_COLOR)]
    if read:
        lines.append(("read_rate", "read rate", READ_COLOR))
    for name, label, color in lines:
        values = [getattr(row, name) for row in rows]
        values = [math.nan if value is None else value for value in values]
        axes.plot(days, values, color=color, linewidth=2, marker=marker, label=label)
    axes.set_ylim(0, 1.02)
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    axes.set_ylabel("delivery and read rates" if read else "delivery rate")
    axes.grid(axis="y", color=GRID_COLOR)
    axes.spines["top"].set_visible(False)


def top_rows(report: Report, top: int = TOP) -> list[tuple[str, Row]]:
    """The `top` biggest keys by messages, labelled, then "other" for the rest (counts
    summed, rates from the sums), biggest first."""
    by = report.selection.by
    ranked = sorted(report.rows, key=lambda row: (-row.messages, str(row.key)))
    shown = [(_label(by, row.key), row) for row in ranked[:top]]
    rest = ranked[top:]
    if rest:
        other = _sum(rest)
        shown.append((f"other ({len(rest):,} {by}s)", other))
    return shown


def _label(by: str, key: object) -> str:
    return f"(no {by})" if key is None else f"{by} {key}"


def _sum(rows: list[Row]) -> Row:
    delivered = sum(row.delivered for row in rows)
    failed = sum(row.failed for row in rows)
    read = sum(row.read for row in rows)
    return Row(
        key=None,
        messages=sum(row.messages for row in rows),
        delivered=delivered,
        read=read,
        failed=failed,
        pending=sum(row.pending for row in rows),
        delivery_rate=delivered / (delivered + failed) if delivered + failed else None,
        read_rate=read / delivered if delivered else None,
    )


def breakdown(report: Report, width: float = WIDTH_IN) -> Figure:
    """Per campaign or team: volume bars on the left, rate bars on the right."""
    figure = _figure(width, _breakdown_height(report))
    _draw_breakdown(figure, report, width)
    return figure


def _breakdown_height(report: Report) -> float:
    return max(3.5, 1.6 + 0.42 * max(len(top_rows(report)), 1))


def _draw_breakdown(target: Figure | SubFigure, report: Report, width: float) -> None:
    from matplotlib.ticker import FuncFormatter, PercentFormatter  # noqa: PLC0415

    shown = top_rows(report)
    volume, rates = target.subplots(1, 2, sharey=True, width_ratios=(1, 1.3))
    labels = [label for label, _ in shown]
    positions = list(range(len(shown)))
    settled = [row.messages - row.pending for _, row in shown]
    pending = [row.pending for _, row in shown]
    volume.barh(positions, settled, color=OUTCOME_COLOR, label="messages with an outcome")
    stacked = volume.barh(
        positions, pending, left=settled, color=PENDING_COLOR, label="pending (no outcome yet)"
    )
    volume.bar_label(
        stacked, labels=[f"{row.messages:,}" for _, row in shown], padding=3, fontsize="small"
    )
    volume.margins(x=0.15)
    volume.set_yticks(positions, labels=labels)
    volume.invert_yaxis()  # the biggest on top
    volume.set_xlabel("messages")
    volume.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))
    volume.grid(axis="x", color=GRID_COLOR)
    volume.set_axisbelow(True)

    bar = 0.38 if _has_read(report) else 0.6
    bars = [(0.0, "delivery_rate", "delivery rate", DELIVERY_COLOR)]
    if _has_read(report):
        bars = [
            (-bar / 2, "delivery_rate", "delivery rate", DELIVERY_COLOR),
            (bar / 2, "read_rate", "read rate", READ_COLOR),
        ]
    for offset, name, label, color in bars:
        values = [getattr(row, name) for _, row in shown]
        drawn = rates.barh(
            [p + offset for p in positions],
            [0 if value is None else value for value in values],
            height=bar,
            color=color,
            label=label,
        )
        rates.bar_label(
            drawn, labels=[percent(value) for value in values], padding=3, fontsize="small"
        )
    rates.set_xlim(0, 1.15)
    rates.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    rates.xaxis.set_major_formatter(PercentFormatter(xmax=1))
    rates.set_xlabel(_rates(report))
    rates.grid(axis="x", color=GRID_COLOR)
    rates.set_axisbelow(True)
    rates.tick_params(axis="y", left=False)
    for axes in (volume, rates):
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)

    handles, names = [], []
    for axes in (volume, rates):
        h, n = axes.get_legend_handles_labels()
        handles += h
        names += n
    target.legend(
        handles,
        names,
        loc="outside lower center",
        ncols=4 if width >= WIDTH_IN else 2,
        frameon=False,
    )
    by = report.selection.by
    volume.set_title(_title(report, f"{_rates(report)} per {by}"), loc="left")


def channels(
    reports: Sequence[Report], width: float = WIDTH_IN, *, by_day: bool | None = None
) -> Figure:
    """One panel per channel's report, top to bottom: its daily rates over volume (the
    days' axis the same in every panel, spanning all of them), or its breakdown;
    `by_day` chooses (default: daily when the reports are by day)."""
    import numpy  # noqa: PLC0415

    require()
    daily_panels = all(r.selection.by == "day" for r in reports) if by_day is None else by_day
    heights = [
        HEIGHT_IN * min(1.0, width / WIDTH_IN * 1.25) if daily_panels else _breakdown_height(r)
        for r in reports
    ]
    figure = _figure(width, sum(heights))
    panels = figure.subfigures(len(reports), 1, height_ratios=heights, squeeze=False)[:, 0]
    every = sorted(
        {row.key: row for r in reports for row in (r.daily or r.rows)}.items(),
        key=lambda item: str(item[0]),
    )
    days = numpy.array([key for key, _ in every], dtype="datetime64[D]")
    for panel, report in zip(panels, reports, strict=True):
        if daily_panels:
            _draw_daily(panel, report, width, (days, [row for _, row in every]))
        else:
            _draw_breakdown(panel, report, width)
    return figure


def write_channels(reports: Sequence[Report], path: Path) -> None:
    """Draw every channel's panel into `path`, in the format its extension names."""
    _write(path, lambda: channels(reports))
