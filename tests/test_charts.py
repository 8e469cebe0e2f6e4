"""`report --chart`: readable date labels at any span, the breakdown `--by` asks for,
the format the extension names, and a bad path as one line with exit 2."""

from __future__ import annotations

import itertools
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from rcs_sync.analytics.chart import TOP, draw, top_rows
from rcs_sync.analytics.report import Report, Row, Selection
from rcs_sync.analytics.sources import Source
from tests.conftest import RCS_SYNC, terminal_line
from tests.fixtures import build_warehouse
from tests.test_report import env_without_token, report, write_config

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("charts")
    build_warehouse(directory / "rcs.duckdb")
    return write_config(directory)


def day_row(day: date, n: int) -> Row:
    messages = 1000 + 37 * (n % 11)
    return Row(day, messages, 900, 600, 50, messages - 950, 900 / 950, 600 / 900)


def fake(by: str, rows: list[Row]) -> Report:
    total = Row(
        None,
        sum(r.messages for r in rows),
        sum(r.delivered for r in rows),
        sum(r.read for r in rows),
        sum(r.failed for r in rows),
        sum(r.pending for r in rows),
        0.9,
        0.6,
    )
    source = Source(Path("rcs.snapshot.duckdb"), True, datetime(2026, 11, 30, tzinfo=UTC))
    return Report(Selection(by=by), source, rows, total, rows if by == "day" else None)


@pytest.mark.parametrize("span", [1, 2, 7, 8, 12, 14, 31, 60, 92, 200, 366])
def test_date_labels_never_overlap(span: int) -> None:
    first = date(2025, 12, 1)
    rows = [day_row(first + timedelta(days=i), i) for i in range(span)]
    figure = draw(fake("day", rows))
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    axes = figure.axes[0]
    labels = [t for t in axes.get_xticklabels() if t.get_text().strip()]
    assert 1 <= len(labels) <= 12
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
    for left, right in itertools.pairwise(boxes):
        assert left.x1 + 4 <= right.x0, (
            f"{span} days: labels overlap: {[t.get_text() for t in labels]}"
        )
    # Every label lies within the figure.
    width = figure.bbox.width
    assert all(b.x0 >= 0 and b.x1 <= width for b in boxes)


def test_the_breakdown_shows_the_top_and_other() -> None:
    rows = [
        Row(100 + i, 10 * (i + 1), 8 * (i + 1), 4 * (i + 1), i + 1, i + 1, 0.8, 0.5)
        for i in range(TOP + 5)
    ]
    rows.append(Row(None, 3, 1, 0, 1, 1, 0.5, 0.0))
    shown = top_rows(fake("campaign", rows))
    assert len(shown) == TOP + 1
    assert shown[0][0] == f"campaign {100 + TOP + 4}"  # the biggest first
    label, other = shown[-1]
    assert label == "other (6 campaigns)"
    rest = sorted(rows, key=lambda r: -r.messages)[TOP:]
    assert other.messages == sum(r.messages for r in rest)
    delivered, failed = sum(r.delivered for r in rest), sum(r.failed for r in rest)
    assert other.delivery_rate == pytest.approx(delivered / (delivered + failed))
    assert [label for label, _ in top_rows(fake("team", rows[:3]))] == [
        "team 102",
        "team 101",
        "team 100",
    ]


MAGIC = {".png": b"\x89PNG\r\n\x1a\n", ".svg": b"<?xml", ".pdf": b"%PDF-"}


@pytest.mark.parametrize("extension", sorted(MAGIC))
@pytest.mark.parametrize("by", ["day", "campaign", "team"])
def test_the_format_follows_the_extension(
    config: Path, tmp_path: Path, extension: str, by: str
) -> None:
    chart = tmp_path / f"rates{extension}"
    result = report(config, "--by", by, "--chart", str(chart))
    assert result.exit_code == 0, result.output
    data = chart.read_bytes()
    assert data.startswith(MAGIC[extension])
    if extension == ".svg":
        text = data.decode()
        assert "<svg" in text
        if by == "campaign":  # the campaigns are drawn, not the days
            assert all(f"campaign {c}" in text for c in (10, 11, 20))
            assert "(no campaign)" in text
            assert "per campaign" in text
        elif by == "team":
            assert "team 1" in text and "team 2" in text
        else:
            assert "per day" in text


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("/nonexistent/x.png", "--chart /nonexistent/x.png: directory /nonexistent does not exist"),
        (
            "{tmp}/x.gif",
            "--chart {tmp}/x.gif: unknown extension '.gif': expected one of .png, .svg, .pdf",
        ),
        (
            "{tmp}/x",
            "--chart {tmp}/x: unknown extension '(none)': expected one of .png, .svg, .pdf",
        ),
        ("{tmp}/dir.png", "--chart {tmp}/dir.png: is a directory"),
    ],
)
def test_a_bad_chart_path_is_one_line_and_exit_2(
    config: Path, tmp_path: Path, name: str, message: str
) -> None:
    (tmp_path / "dir.png").mkdir()
    path = name.format(tmp=tmp_path)
    result = subprocess.run(
        [RCS_SYNC, "--config", str(config), "report", "--chart", path],
        capture_output=True,
        text=True,
        env=env_without_token(),
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr  # one JSON line off a terminal
    assert terminal_line(result.stderr) == f"rcs-sync: {message.format(tmp=tmp_path)}"
    assert result.stdout == ""
