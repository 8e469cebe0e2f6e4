"""`report --html FILE`: one self-contained page with the report's figures and charts,
rendered in headless Chromium (Debian's `chromium` package; `.ci/run` installs it),
which must show the figures and log no console message."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rcs_sync.analytics.report import percent
from tests.conftest import terminal_line
from tests.fixtures import build_warehouse
from tests.test_report import report, report_json, write_config

pytestmark = pytest.mark.timeout(180)

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return found


def render(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Chromium on `page` with a new empty profile; stderr carries its console log."""
    profile.mkdir()
    return subprocess.run(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def console(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("html")
    build_warehouse(directory / "rcs.duckdb")
    return write_config(directory)


def cells(html: str, section: str) -> list[list[str]]:
    block = re.search(rf"<{section}>(.*?)</{section}>", html, re.DOTALL)
    assert block, f"no <{section}>"
    return [
        [
            re.sub(r"<[^>]+>", "", cell).strip()
            for cell in re.findall(r"<t[dh][^>]*>.*?</t[dh]>", row)
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", block.group(1), re.DOTALL)
    ]


def test_the_console_check_sees_console_messages(tmp_path: Path) -> None:
    page = tmp_path / "canary.html"
    page.write_text('<!DOCTYPE html><p>x</p><script>console.error("canary-7f3")</script>')
    result = render(page, tmp_path / "profile", "--dump-dom")
    assert any("canary-7f3" in line for line in console(result)), result.stderr[-2000:]


@pytest.mark.parametrize("by", ["campaign", "day"])
def test_the_page_shows_the_figures_in_chromium(config: Path, tmp_path: Path, by: str) -> None:
    pytest.importorskip("matplotlib")
    page = tmp_path / "report.html"
    result = report(config, "--by", by, "--html", str(page))
    assert result.exit_code == 0, result.output
    assert f"html: {page}" in result.stdout
    html = page.read_text(encoding="utf-8")
    # Self-contained: nothing to fetch.
    assert not re.search(r"<(link|script|img|iframe)\b", html)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html
    assert not re.search(r"url\((?!#)", html)  # only the charts' own clip paths

    rendered = render(page, tmp_path / "profile", "--dump-dom")
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert console(rendered) == []
    dom = rendered.stdout
    assert cells(dom, "tfoot") == [["total", "15", "9", "5", "3", "3", "75.0 %", "55.6 %"]]
    rows = cells(dom, "tbody")
    # The same figures as the table and the JSON report.
    expected = [
        [
            "(no campaign)" if row[by] is None else str(row[by]),
            *(f"{row[name]:,}" for name in ("messages", "delivered", "read", "failed", "pending")),
            *(percent(row[name]) for name in ("delivery_rate", "read_rate")),
        ]
        for row in report_json(config, "--by", by)
    ]
    assert rows == expected
    if by == "campaign":
        assert dom.count("<svg") == 2  # the breakdown, then the days
        assert "campaign 20" in dom
    else:
        assert len(rows) == 3
        assert dom.count("<svg") == 1
    for figure in ("15", "75.0 %", "55.6 %", "pending"):
        assert figure in dom
    assert 'name="viewport"' in dom

    # On a phone-sized screen; the screenshot is for people to look at.
    shot = tmp_path / "phone.png"
    phone = render(
        page, tmp_path / "profile-phone", f"--screenshot={shot}", "--window-size=390,844"
    )
    assert phone.returncode == 0, phone.stderr[-2000:]
    assert console(phone) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_bad_html_path_is_one_line_and_exit_2(config: Path) -> None:
    result = report(config, "--html", "/nonexistent/report.html")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1, result.stderr  # one JSON line off a terminal
    assert terminal_line(result.stderr) == (
        "rcs-sync: --html /nonexistent/report.html: directory /nonexistent does not exist"
    )
