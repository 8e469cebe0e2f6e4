"""The analytics views and `rcs-sync report`, against hand-computed numbers.

Every expected count and rate below was worked out by hand from the table in
`tests/fixtures.py`; `rate(a, b)` is a / b written so the reader can check it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from click.testing import CliRunner, Result

from rcs_sync.cli import cli
from tests.conftest import RCS_SYNC, terminal_line
from tests.fixtures import DAY1, DAY2, DAY3, at, build_warehouse


def rate(numerator: int, denominator: int) -> Any:
    return pytest.approx(numerator / denominator)


def minutes(n: int) -> timedelta:
    return timedelta(minutes=n)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fixture warehouse (and its config) for the tests that only read it."""
    directory = tmp_path_factory.mktemp("report")
    build_warehouse(directory / "rcs.duckdb")
    return write_config(directory)


@pytest.fixture
def private(tmp_path: Path) -> Path:
    """A fixture warehouse of the test's own, for tests that add files beside it."""
    build_warehouse(tmp_path / "rcs.duckdb")
    return write_config(tmp_path)


def write_config(directory: Path, lock_timeout: str = "10s") -> Path:
    # The report never calls the API: any loopback URL will do, and no token is needed.
    config = directory / "rcs-sync.toml"
    config.write_text(
        '[api]\nbase_url = "http://127.0.0.1:9"\n\n'
        f'[warehouse]\npath = "rcs.duckdb"\nlock_timeout = "{lock_timeout}"\n',
        encoding="utf-8",
    )
    return config


def query(config: Path, sql: str, time_zone: str = "UTC") -> list[tuple[Any, ...]]:
    with duckdb.connect(str(config.with_name("rcs.duckdb")), read_only=True) as con:
        con.execute(f"SET TimeZone = '{time_zone}'")
        return con.execute(sql).fetchall()


def report(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), "report", *args])


def report_json(config: Path, *args: str) -> list[dict[str, Any]]:
    result = report(config, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


# ---------------------------------------------------------------- the views

DAILY_COLUMNS = (
    "day, team, campaign, messages, state_sent, state_delivered, state_failed, "
    'state_rejected, state_read, delivered, "read", failed, pending, delivery_rate, read_rate'
)


def test_rates_daily_view_in_utc(shared: Path) -> None:
    rows = query(
        shared,
        f"SELECT {DAILY_COLUMNS} FROM rcs_rates_daily ORDER BY day, team, campaign NULLS LAST",
    )
    # day, team, campaign, messages, by state (sent, delivered, failed, rejected, read),
    # delivered, read, failed, pending, delivery_rate, read_rate
    assert rows == [
        (DAY1, 1, 10, 3, 0, 1, 1, 0, 1, 2, 1, 1, 0, rate(2, 3), rate(1, 2)),
        (DAY1, 1, 11, 2, 1, 0, 0, 0, 1, 1, 1, 0, 1, rate(1, 1), rate(1, 1)),
        (DAY1, 2, 20, 3, 0, 1, 0, 1, 1, 2, 1, 1, 0, rate(2, 3), rate(1, 2)),
        (DAY2, 1, 10, 1, 0, 0, 0, 0, 1, 1, 1, 0, 0, rate(1, 1), rate(1, 1)),
        (DAY2, 1, 11, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, rate(1, 1), rate(0, 1)),
        (DAY2, 2, 20, 2, 0, 0, 1, 0, 1, 1, 1, 1, 0, rate(1, 2), rate(1, 1)),
        (DAY2, 2, None, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, rate(1, 1), rate(0, 1)),
        # Only pending messages: both rates are undefined.
        (DAY3, 1, 10, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, None, None),
        (DAY3, 2, 20, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, None, None),
    ]


def test_rates_daily_view_follows_the_session_time_zone(shared: Path) -> None:
    # Record 8, sent at DAY1 23:30 UTC, is on DAY2 in Paris.
    rows = query(
        shared,
        f"SELECT {DAILY_COLUMNS} FROM rcs_rates_daily WHERE campaign = 20 ORDER BY day",
        time_zone="Europe/Paris",
    )
    assert rows == [
        (DAY1, 2, 20, 2, 0, 1, 0, 1, 0, 1, 0, 1, 0, rate(1, 2), rate(0, 1)),
        (DAY2, 2, 20, 3, 0, 0, 1, 0, 2, 2, 2, 1, 0, rate(2, 3), rate(2, 2)),
        (DAY3, 2, 20, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, None, None),
    ]


def test_rates_campaign_view(shared: Path) -> None:
    rows = query(
        shared,
        "SELECT campaign, first_message_at, last_message_at, messages, state_sent, "
        'state_delivered, state_failed, state_rejected, state_read, delivered, "read", '
        "failed, pending, delivery_rate, read_rate "
        "FROM rcs_rates_campaign ORDER BY campaign NULLS LAST",
    )
    assert rows == [
        (10, at(DAY1, 9), at(DAY3, 10), 5, 1, 1, 1, 0, 2, 3, 2, 1, 1, rate(3, 4), rate(2, 3)),
        (11, at(DAY1, 10), at(DAY2, 8, 30), 3, 1, 1, 0, 0, 1, 2, 1, 0, 1, rate(2, 2), rate(1, 2)),
        (20, at(DAY1, 11), at(DAY3, 11), 6, 1, 1, 1, 1, 2, 3, 2, 2, 1, rate(3, 5), rate(2, 3)),
        (None, at(DAY2, 12), at(DAY2, 12), 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, rate(1, 1), rate(0, 1)),
    ]


def test_message_timings_view(shared: Path) -> None:
    rows = query(
        shared,
        "SELECT id, sent_at, delivered_observed_at, read_observed_at, time_to_deliver, "
        "time_to_read, first_seen_state FROM rcs_message_timings ORDER BY id",
    )
    assert rows == [
        (1, at(DAY1, 9), at(DAY1, 9, 5), at(DAY1, 9, 35), minutes(5), minutes(35), 0),
        (2, at(DAY1, 9, 5), at(DAY1, 9, 10), None, minutes(5), None, 0),
        (3, at(DAY1, 9, 10), None, None, None, None, 0),  # failed: never delivered
        # Already read when first seen: when it was delivered or read is unknown.
        (4, at(DAY1, 10), at(DAY1, 10, 5), at(DAY1, 10, 5), None, None, 4),
        (5, at(DAY1, 10, 5), None, None, None, None, 0),  # still pending
        (6, at(DAY1, 11), at(DAY1, 11, 10), None, minutes(10), None, 0),
        # Delivered and read between two passes, across midnight.
        (8, at(DAY1, 23, 30), at(DAY2, 0, 10), at(DAY2, 0, 10), minutes(40), minutes(40), 0),
        # First seen delivered: no time to deliver; the read was seen happen.
        (9, at(DAY2, 8), at(DAY2, 8, 5), at(DAY2, 10), None, minutes(120), 1),
    ]


# ---------------------------------------------------------------- the report command


def row(key: object, counts: tuple[int, int, int, int, int], rates: tuple[Any, Any]) -> Any:
    """One expected report object; `key` goes under the --by name given in `expect`."""
    messages, delivered, read, failed, pending = counts
    return key, {
        "messages": messages,
        "delivered": delivered,
        "read": read,
        "failed": failed,
        "pending": pending,
        "delivery_rate": rates[0],
        "read_rate": rates[1],
    }


def expect(by: str, *rows: Any) -> list[dict[str, Any]]:
    return [{by: key, **values} for key, values in rows]


D1, D2, D3 = DAY1.isoformat(), DAY2.isoformat(), DAY3.isoformat()
NO_RATES = (None, None)

CASES: dict[str, tuple[list[str], list[dict[str, Any]]]] = {
    "by day, UTC (default)": (
        [],
        expect(
            "day",
            row(D1, (8, 5, 3, 2, 1), (rate(5, 7), rate(3, 5))),
            row(D2, (5, 4, 2, 1, 0), (rate(4, 5), rate(2, 4))),
            row(D3, (2, 0, 0, 0, 2), NO_RATES),
        ),
    ),
    "by day, Europe/Paris: record 8 moves to DAY2": (
        ["--tz", "Europe/Paris"],
        expect(
            "day",
            row(D1, (7, 4, 2, 2, 1), (rate(4, 6), rate(2, 4))),
            row(D2, (6, 5, 3, 1, 0), (rate(5, 6), rate(3, 5))),
            row(D3, (2, 0, 0, 0, 2), NO_RATES),
        ),
    ),
    "by campaign: rates from summed counts, no campaign last": (
        ["--by", "campaign"],
        expect(
            "campaign",
            row(10, (5, 3, 2, 1, 1), (rate(3, 4), rate(2, 3))),
            row(11, (3, 2, 1, 0, 1), (rate(2, 2), rate(1, 2))),
            row(20, (6, 3, 2, 2, 1), (rate(3, 5), rate(2, 3))),
            row(None, (1, 1, 0, 0, 0), (rate(1, 1), rate(0, 1))),
        ),
    ),
    "by team": (
        ["--by", "team"],
        expect(
            "team",
            row(1, (8, 5, 3, 1, 2), (rate(5, 6), rate(3, 5))),
            row(2, (7, 4, 2, 2, 1), (rate(4, 6), rate(2, 4))),
        ),
    ),
    "one team, by day": (
        ["--team", "2"],
        expect(
            "day",
            row(D1, (3, 2, 1, 1, 0), (rate(2, 3), rate(1, 2))),
            row(D2, (3, 2, 1, 1, 0), (rate(2, 3), rate(1, 2))),
            row(D3, (1, 0, 0, 0, 1), NO_RATES),
        ),
    ),
    "one day (--until excluded), by campaign": (
        ["--since", D2, "--until", D3, "--by", "campaign"],
        expect(
            "campaign",
            row(10, (1, 1, 1, 0, 0), (rate(1, 1), rate(1, 1))),
            row(11, (1, 1, 0, 0, 0), (rate(1, 1), rate(0, 1))),
            row(20, (2, 1, 1, 1, 0), (rate(1, 2), rate(1, 1))),
            row(None, (1, 1, 0, 0, 0), (rate(1, 1), rate(0, 1))),
        ),
    ),
    "one Paris day, by team": (
        ["--since", D2, "--until", D3, "--by", "team", "--tz", "Europe/Paris"],
        expect(
            "team",
            row(1, (2, 2, 1, 0, 0), (rate(2, 2), rate(1, 2))),
            row(2, (4, 3, 2, 1, 0), (rate(3, 4), rate(2, 3))),
        ),
    ),
    "from DAY2 on, one team": (
        ["--since", D2, "--team", "1"],
        expect(
            "day",
            row(D2, (2, 2, 1, 0, 0), (rate(2, 2), rate(1, 2))),
            row(D3, (1, 0, 0, 0, 1), NO_RATES),
        ),
    ),
    "nothing selected": (["--until", D1], []),
}


@pytest.mark.parametrize("case", CASES)
def test_report_json(shared: Path, case: str) -> None:
    args, expected = CASES[case]
    assert report_json(shared, *args) == expected


def test_report_csv(shared: Path) -> None:
    result = report(shared, "--by", "campaign", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "campaign,messages,delivered,read,failed,pending,delivery_rate,read_rate\n"
        f"10,5,3,2,1,1,0.75,{2 / 3!r}\n"
        "11,3,2,1,0,1,1.0,0.5\n"
        f"20,6,3,2,2,1,0.6,{2 / 3!r}\n"
        ",1,1,0,0,0,1.0,0.0\n"
    )
    days = report(shared, "--format", "csv", "--since", D3)
    assert days.stdout.splitlines()[1:] == [f"{D3},2,0,0,0,2,,"]


def test_report_table_has_a_total_row_and_names_its_source(shared: Path) -> None:
    result = report(shared, "--by", "team")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["1", "8", "5", "3", "1", "2", "83.3", "%", "60.0", "%"] in lines
    assert ["2", "7", "4", "2", "2", "1", "66.7", "%", "50.0", "%"] in lines
    assert ["total", "15", "9", "5", "3", "3", "75.0", "%", "55.6", "%"] in lines
    assert f"source: {shared.with_name('rcs.duckdb')} (live file, " in result.stdout
    assert "all days (UTC)" in result.stdout


def test_the_snapshot_is_read_when_there_is_one(private: Path) -> None:
    live, snapshot = private.with_name("rcs.duckdb"), private.with_name("rcs.snapshot.duckdb")
    as_of = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    snapshot.write_bytes(live.read_bytes())
    with duckdb.connect(str(snapshot)) as con:
        con.execute("CREATE TABLE snapshot_info (as_of TIMESTAMPTZ NOT NULL)")
        con.execute("INSERT INTO snapshot_info VALUES (?)", [as_of])
        con.execute("DELETE FROM rcs_records WHERE team = 2")  # tells the files apart
    # A daemon is writing to the live file: the report neither waits for it nor delays it.
    with duckdb.connect(str(live)):
        result = subprocess.run(
            [RCS_SYNC, "--config", str(private), "report", "--by", "team"],
            capture_output=True,
            text=True,
            env=env_without_token(),
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert f"source: {snapshot} (snapshot as of 2026-03-04T05:06:07Z)" in result.stdout
    totals = [line.split() for line in result.stdout.splitlines() if line.startswith(" total")]
    assert totals == [["total", "8", "5", "3", "1", "2", "83.3", "%", "60.0", "%"]]


def env_without_token() -> dict[str, str]:
    hidden = ("RCS_SYNC", "CREDENTIALS_DIRECTORY")
    return {k: v for k, v in os.environ.items() if not k.startswith(hidden)}


def test_errors_are_one_line_with_the_usual_exit_codes(tmp_path: Path) -> None:
    config = write_config(tmp_path, lock_timeout="0s")
    missing = subprocess.run(
        [RCS_SYNC, "--config", str(config), "report"],
        capture_output=True,
        text=True,
        env=env_without_token(),
        timeout=60,
        check=False,
    )
    assert missing.returncode == 5
    assert len(missing.stderr.splitlines()) == 1
    assert terminal_line(missing.stderr) == (
        f"rcs-sync: error: warehouse {tmp_path / 'rcs.duckdb'} does not exist yet: run a sync"
    )
    duckdb.connect(str(tmp_path / "rcs.duckdb")).close()  # a file without the views
    result = report(config)
    assert result.exit_code == 1
    assert "has no analytics views yet: run `rcs-sync migrate`" in str(result.exception)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "2026-02-30"], "Invalid value for '--since'"),
        (["--until", "yesterday"], "Invalid value for '--until'"),
        (["--since", "2026-03-02", "--until", "2026-03-02"], "--until must be after --since"),
        (["--tz", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
        (["--by", "week"], "Invalid value for '--by'"),
        (["--format", "xml"], "Invalid value for '--format'"),
    ],
)
def test_bad_options_are_usage_errors(shared: Path, args: list[str], message: str) -> None:
    result = report(shared, *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_time_zone_names_are_case_insensitive(shared: Path) -> None:
    assert (
        report_json(shared, "--tz", "europe/paris")
        == CASES["by day, Europe/Paris: record 8 moves to DAY2"][1]
    )


# ---------------------------------------------------------------- the chart


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, which must come first."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_chart(shared: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    chart = tmp_path / "rates.png"
    result = report(shared, "--by", "campaign", "--chart", str(chart))
    assert result.exit_code == 0, result.output
    assert f"chart: {chart}" in result.stdout
    data = chart.read_bytes()
    assert len(data) > 10_000
    width, height = png_size(data)
    assert 800 <= width <= 4000
    assert 400 <= height <= 3000
    assert width > height


def test_chart_without_matplotlib(
    shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    chart = tmp_path / "rates.png"
    result = report(shared, "--chart", str(chart))
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert terminal_line(result.stderr) == (
        "rcs-sync: --chart needs matplotlib: pip install 'rcs-sync[charts]'"
    )
    assert result.stdout == ""
    assert not chart.exists()
