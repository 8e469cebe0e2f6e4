"""`rcs-sync report --html FILE`: the report as one self-contained HTML page.

The same figures as the table (every row, then the total) and the charts (inline SVG,
drawn by `chart.py`: the breakdown `--by` asks for, and the daily rates), with the
selection and the source it was read from. Nothing is fetched: the CSS is inline, the
charts are inline SVG, there is no script, so the page opens offline, from a mail
attachment or a file share, and prints. It reads on a phone: the page follows the
screen's width, the charts scale down, and the wide table scrolls sideways on its own.
Without matplotlib (the `charts` extra) the page has the figures and says the charts
are missing. Without `--channel`, with two or more channels in the warehouse, it adds a
line per channel and draws the charts with a panel per channel.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date
from html import escape
from pathlib import Path

from rcs_sync.analytics import chart
from rcs_sync.analytics.report import COUNTS, RATES, Report, Row, percent

_CSS = """
:root { color-scheme: light; --ink: #1f2328; --muted: #59636e; --line: #d1d9e0;
        --delivery: #1f6feb; --read: #2da44e; --pending: #9a6700; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 72rem; padding: 1rem; color: var(--ink);
       font: 16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 1.35rem; margin: 0 0 .25rem; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
p { margin: .25rem 0; }
.muted { color: var(--muted); font-size: .9rem; overflow-wrap: anywhere; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(9rem, 1fr));
         gap: .75rem; margin: 1rem 0; }
.card { border: 1px solid var(--line); border-radius: .5rem; padding: .6rem .8rem; }
.card b { display: block; font-size: 1.5rem; font-variant-numeric: tabular-nums; }
.card span { color: var(--muted); font-size: .85rem; }
.card.delivery b { color: var(--delivery); }
.card.read b { color: var(--read); }
.card.pending b { color: var(--pending); }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: .35rem .6rem; text-align: right; white-space: nowrap;
         border-bottom: 1px solid var(--line); }
th:first-child, td:first-child { text-align: left; position: sticky; left: 0;
                                 background: #fff; }
thead th { font-size: .85rem; color: var(--muted); font-weight: 600; }
tfoot td { font-weight: 700; border-top: 2px solid var(--ink); border-bottom: 0; }
figure { margin: 1rem 0; }
figure svg { display: block; width: 100%; min-width: 34rem; height: auto; }
figcaption { color: var(--muted); font-size: .85rem; }
"""

_PROLOGUE = re.compile(r"\A.*?(?=<svg)", re.DOTALL)
_SIZE = re.compile(r'(<svg[^>]*?)\s(?:width|height)="[^"]*"')


def render(report: Report, channels: Sequence[Report] = ()) -> str:
    """The page, as one string of HTML; with `channels` (each channel's report), also a
    line per channel and the charts with a panel per channel."""
    selection, total = report.selection, report.total
    title = f"RCS delivery and read rates per {selection.by}"
    cards = "".join(
        f'<div class="card {cls}"><b>{value}</b><span>{label}</span></div>'
        for cls, value, label in (
            ("", f"{total.messages:,}", "messages"),
            ("delivery", percent(total.delivery_rate), "delivery rate"),
            ("read", percent(total.read_rate), "read rate"),
            ("pending", f"{total.pending:,}", "pending (no outcome yet)"),
        )
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{escape(title)}</h1>
<p class="muted">{escape(selection.describe())}</p>
<p class="muted">source: {escape(report.source.describe())}</p>
</header>
<section class="cards" aria-label="totals">{cards}</section>
<p class="muted">delivery rate = delivered / (delivered + failed); read rate = read /
delivered; pending messages have no outcome yet and are left out of both.</p>
{_channel_table(channels)}
{_charts(report, channels)}
<h2>Per {escape(selection.by)}</h2>
<div class="scroll">{_table(report)}</div>
</body>
</html>
"""


def write(report: Report, path: Path, channels: Sequence[Report] = ()) -> None:
    path.write_text(render(report, channels), encoding="utf-8")


def _channel_table(channels: Sequence[Report]) -> str:
    """Each channel's totals (SMS and voicemail drops have no read rate: "-")."""
    if not channels:
        return ""
    head = "".join(f"<th>{escape(name.replace('_', ' '))}</th>" for name in (*COUNTS, *RATES))
    body = "".join(
        f"<tr><td>{escape(chart.channel_name(r))}</td>{_cells(r.total)}</tr>" for r in channels
    )
    return (
        f'<h2>Per channel</h2><div class="scroll"><table><thead><tr><th scope="col">channel'
        f"</th>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _table(report: Report) -> str:
    by = report.selection.by
    head = "".join(f"<th>{escape(name.replace('_', ' '))}</th>" for name in (*COUNTS, *RATES))
    body = "".join(
        f"<tr><td>{escape(_key(by, row.key))}</td>{_cells(row)}</tr>" for row in report.rows
    )
    return (
        f'<table><thead><tr><th scope="col">{escape(by)}</th>{head}</tr></thead>'
        f"<tbody>{body}</tbody>"
        f"<tfoot><tr><td>total</td>{_cells(report.total)}</tr></tfoot></table>"
    )


def _cells(row: Row) -> str:
    counts = "".join(f"<td>{getattr(row, name):,}</td>" for name in COUNTS)
    rates = "".join(f"<td>{escape(percent(getattr(row, name)))}</td>" for name in RATES)
    return counts + rates


def _key(by: str, key: date | int | None) -> str:
    if key is None:
        return f"(no {by})"
    return key.isoformat() if isinstance(key, date) else str(key)


def _charts(report: Report, channels: Sequence[Report] = ()) -> str:
    try:
        chart.require()
    except chart.MatplotlibMissing as exc:
        return f'<p class="muted">No charts: {escape(str(exc))}</p>'
    by = report.selection.by
    figures = []
    if channels:
        width = chart.HTML_WIDTH_IN
        if by != "day":
            panels = chart.channels(channels, width, by_day=False)
            figures.append((panels, f"Messages and rates per {by}, a panel per channel"))
        panels = chart.channels(channels, width, by_day=True)
        figures.append((panels, "Delivery rates per day over volume, a panel per channel"))
    elif by != "day":
        figures.append((chart.breakdown(report), f"Messages and rates per {by}"))
    if report.daily and not channels:
        figures.append(
            (
                chart.daily(report, chart.HTML_WIDTH_IN),
                "Delivery and read rates per day over volume",
            )
        )
    return "".join(
        f'<figure><div class="scroll">{_inline(chart.svg(figure, salt=f"chart{i}"))}</div>'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
        for i, (figure, caption) in enumerate(figures)
    )


def _inline(svg: str) -> str:
    """An SVG document as an element of the page: no XML prologue or doctype, and no
    fixed size, so CSS scales it to the page's width (its viewBox keeps the shape)."""
    element = _PROLOGUE.sub("", svg, count=1)
    for _ in range(2):
        element = _SIZE.sub(r"\1", element, count=1)
    return element.replace("<svg ", '<svg role="img" ', 1)
