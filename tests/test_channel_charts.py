"""`report --chart` and `--html` without `--channel`: a panel per channel present in a
real synced warehouse (RCS, SMS, voicemail drops), each drawn from that channel's rows
of `message_rates_daily`."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from rcs_sim.endpoints import sibling
from rcs_sync.analytics import chart
from rcs_sync.analytics.report import Selection, build_channels
from rcs_sync.config import load_settings
from tests.conftest import Site

imread = pytest.importorskip("matplotlib.image").imread
Rectangle = pytest.importorskip("matplotlib.patches").Rectangle

STREAMS = ["rcs_records", "text_records", "voicemail_drop_records"]
NAMES = {"rcs": "RCS", "sms": "SMS", "voicemail": "Voicemail drop"}


@pytest.fixture
def synced(site: Callable[..., Site]) -> Site:
    endpoints = (
        sibling("text_records", records=400, days=3),
        sibling("voicemail_drop_records", records=150, days=3),
    )
    s = site(sync={"streams": STREAMS}, endpoints=endpoints, records=600, days=3)
    s.ok("sync")
    return s


def per_channel(s: Site) -> dict[str, dict[str, int]]:
    rows = s.query(
        "SELECT channel, sum(messages), sum(delivered) FROM message_rates_daily GROUP BY ALL"
    )
    return {c: {"messages": int(m), "delivered": int(d)} for c, m, d in rows}


def test_the_chart_has_a_panel_per_channel_with_its_own_counts(synced: Site) -> None:
    s = synced
    truth = per_channel(s)
    assert set(truth) == {"rcs", "sms", "voicemail"}
    all_png, one_png = s.dir / "all.png", s.dir / "sms.png"
    s.ok("report", "--chart", str(all_png))
    s.ok("report", "--channel", "sms", "--chart", str(one_png))
    # Three panels of the one channel's height, stacked.
    assert imread(all_png).shape[0] == 3 * imread(one_png).shape[0]

    settings = load_settings(s.config)
    reports = build_channels(settings.warehouse, Selection(), STREAMS)
    figure = chart.channels(reports)
    panels = figure.subfigs
    assert [r.selection.channel for r in reports] == ["rcs", "sms", "voicemail"]
    limits = set()
    for panel, report in zip(panels, reports, strict=True):
        channel = report.selection.channel
        assert channel is not None
        rates, volume = panel.axes
        assert rates.get_title(loc="left").startswith(f"{NAMES[channel]} ")
        bars = sum(p.get_height() for p in volume.patches if isinstance(p, Rectangle))
        assert bars == truth[channel]["messages"], channel
        lines = [line.get_label() for line in rates.get_lines()]
        assert lines == (["delivery rate", "read rate"] if channel == "rcs" else ["delivery rate"])
        limits.add(rates.get_xlim())
    assert len(limits) == 1, "the panels do not share their days"


def test_the_page_has_a_line_and_panels_per_channel(synced: Site) -> None:
    s = synced
    truth = per_channel(s)
    page = s.dir / "page.html"
    s.ok("report", "--by", "campaign", "--html", str(page))
    html = page.read_text(encoding="utf-8")

    table = html[
        html.index("<h2>Per channel</h2>") : html.index("</table>", html.index("<h2>Per channel"))
    ]
    for channel, name in NAMES.items():
        cells = re.search(rf"<tr><td>{name}</td><td>([\d,]+)</td><td>([\d,]+)</td>", table)
        assert cells, name
        assert int(cells.group(1).replace(",", "")) == truth[channel]["messages"]
        assert int(cells.group(2).replace(",", "")) == truth[channel]["delivered"]
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    assert captions == [
        "Messages and rates per campaign, a panel per channel",
        "Delivery rates per day over volume, a panel per channel",
    ]
    for title in (
        "RCS delivery and read rates per day",
        "SMS delivery rates per day",
        "Voicemail drop delivery rates per day",
        "SMS delivery rates per campaign",
    ):
        assert title in html, title

    # One channel asked for: the page and the chart stay that channel's.
    s.ok("report", "--channel", "sms", "--html", str(page))
    assert "Per channel" not in page.read_text(encoding="utf-8")
