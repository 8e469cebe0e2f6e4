"""`rcs-sync report --chart`: daily delivery and read rates over message volume, as a PNG.

matplotlib is an optional extra (`pip install 'rcs-sync[charts]'`): it is heavy, and a
server running the daemon has no use for it. It is imported only when a chart is
asked for, and drawn with the Agg backend on a bare `Figure`, so no display, GUI
toolkit or pyplot global state is involved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from rcs_sync.analytics.report import Report, Row, percent
from rcs_sync.model.errors import EXIT_USAGE, RcsSyncError

if TYPE_CHECKING:
    import numpy
    from matplotlib.axes import Axes
    from numpy.typing import NDArray

WIDTH_IN, HEIGHT_IN, DPI = 11.0, 5.5, 150
DELIVERY_COLOR, READ_COLOR = "#1f6feb", "#2da44e"
OUTCOME_COLOR, PENDING_COLOR, GRID_COLOR = "#d0d7de", "#f5d9a8", "#eaeef2"
VOLUME_HEADROOM = 2.5
"""The volume axis reaches 2.5 x the busiest day, so bars stay in the lower part of the
chart, under the rate lines, which usually sit near the top."""
DAY_TICKS_UP_TO = 14
"""Up to this many days, one tick per day; beyond, matplotlib chooses."""
MARKERS_UP_TO = 62
"""Up to this many days, a dot marks each day's rates; beyond, dots would blur the lines."""


class MatplotlibMissing(RcsSyncError):
    exit_code = EXIT_USAGE

    def __init__(self) -> None:
        super().__init__("--chart needs matplotlib: pip install 'rcs-sync[charts]'")


def require() -> None:
    """Fail now, before any query runs, when the charts extra is not installed."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        raise MatplotlibMissing from None


def write_daily(report: Report, path: Path) -> None:
    """Draw the report's per-day rows (rates as lines, volume as bars) into a PNG."""
    require()
    import numpy  # noqa: PLC0415 - a dependency of matplotlib
    from matplotlib import rc_context  # noqa: PLC0415
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    rows = report.daily
    assert rows is not None, "build the report with daily=True"
    days = numpy.array([row.key for row in rows], dtype="datetime64[D]")
    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    # Long ranges get matplotlib's concise date labels ("Jun", "15", "2025"); the
    # converter is chosen when the first dates are plotted.
    with rc_context({"date.converter": "concise"}):
        rates = figure.add_subplot()
        volume = rates.twinx()
        # The rate axes are drawn over the volume axes, so the lines stay above the bars.
        rates.set_zorder(volume.get_zorder() + 1)
        rates.patch.set_visible(False)
        _volume_bars(volume, days, rows)
        _rate_lines(rates, days, rows)
    if len(rows) <= DAY_TICKS_UP_TO:
        rates.set_xticks(days, labels=[f"{row.key:%a %d %b}" for row in rows])

    lines, labels = rates.get_legend_handles_labels()
    bars, bar_labels = volume.get_legend_handles_labels()
    figure.legend(
        lines + bars, labels + bar_labels, loc="outside lower center", ncols=4, frameon=False
    )
    total = report.total
    rates.set_title(
        f"RCS delivery and read rates, {report.selection.describe()}\n"
        f"{total.messages:,} messages, delivery rate {percent(total.delivery_rate)}, "
        f"read rate {percent(total.read_rate)}, {total.pending:,} pending",
        loc="left",
    )
    figure.savefig(path, format="png")


def _volume_bars(axes: Axes, days: NDArray[numpy.datetime64], rows: list[Row]) -> None:
    """Messages per day; the pending ones stacked on top, since a young day's rates rest
    on few outcomes."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: PLC0415

    settled = [row.messages - row.pending for row in rows]
    axes.bar(days, settled, color=OUTCOME_COLOR, label="messages with an outcome")
    pending = [row.pending for row in rows]
    axes.bar(days, pending, bottom=settled, color=PENDING_COLOR, label="pending (no outcome yet)")
    busiest = max((row.messages for row in rows), default=0)
    axes.set_ylim(0, max(busiest, 1) * VOLUME_HEADROOM)
    axes.set_ylabel("messages per day")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:,.0f}"))
    axes.spines["top"].set_visible(False)


def _rate_lines(axes: Axes, days: NDArray[numpy.datetime64], rows: list[Row]) -> None:
    """Delivery and read rates, 0-100 %; an undefined rate (no outcome yet, nothing
    delivered) is a gap in the line, not a zero."""
    from matplotlib.ticker import PercentFormatter  # noqa: PLC0415

    marker = "o" if len(rows) <= MARKERS_UP_TO else None
    for name, label, color in (
        ("delivery_rate", "delivery rate", DELIVERY_COLOR),
        ("read_rate", "read rate", READ_COLOR),
    ):
        values = [getattr(row, name) for row in rows]
        values = [math.nan if value is None else value for value in values]
        axes.plot(days, values, color=color, linewidth=2, marker=marker, label=label)
    axes.set_ylim(0, 1.02)
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    axes.set_ylabel("delivery and read rates")
    axes.grid(axis="y", color=GRID_COLOR)
    axes.spines["top"].set_visible(False)
