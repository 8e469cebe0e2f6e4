"""The monitoring in deploy/, checked with Prometheus' own tool against a real daemon.

promtool (Debian's prometheus package; CI installs it) checks and unit-tests the alert
rules and lints a live `/metrics` scrape of `rcs-sync run` after a pass against the
simulator. Every metric name the rules and their unit tests use must appear in that
scrape.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from rcs_sim.server import SimConfig, start_simulator
from tests.conftest import TOKEN, Site, wait_for
from tests.test_service import daemon

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "rcs-sync-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "rcs-sync-alerts.test.yml"

PROMETHEUS_OWN = {"up"}
"""Series Prometheus itself writes for every scrape target."""


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: install Debian's prometheus package")
    return subprocess.run(
        [path, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def samples(text: str) -> dict[str, float]:
    """Sample name → the sum of its values, from exposition text."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0) + sample.value
    return totals


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`/metrics` of a real `rcs-sync run` once its first pass and snapshot are done."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sim = start_simulator(SimConfig(frozen=True, records=1_000, days=3.0, token=TOKEN))
    try:
        s = Site(tmp_path_factory.mktemp("scrape"), sim)
        s.write_config(sync={"interval": "1h"}, metrics={"listen": f"127.0.0.1:{port}"})
        url = f"http://127.0.0.1:{port}/metrics"
        with daemon(s) as d:
            d.wait_message("READY", value="1")
            text = ""

            def after_a_pass() -> bool:
                nonlocal text
                text = requests.get(url, timeout=5).text
                values = samples(text)
                return (
                    values.get("rcs_sync_snapshot_publish_seconds_count", 0) >= 1
                    and values.get("rcs_sync_last_success_timestamp_seconds", 0) > 0
                )

            wait_for(after_a_pass, 60, "a successful pass and snapshot in /metrics")
            assert d.stop()[0] == 0
    finally:
        sim.stop()
    return text


def test_live_scrape_passes_promtool_check_metrics(scrape: str) -> None:
    result = promtool("check", "metrics", stdin=scrape)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_alert_rules_pass_promtool_check_rules() -> None:
    alerts = re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(encoding="utf-8"), re.M)

    result = promtool("check", "rules", str(RULES))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts)} rules found" in result.stdout


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_shown_to_fire() -> None:
    # A firing expectation pins the alert's labels (severity) and rendered annotations.
    alerts = set(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(encoding="utf-8"), re.M))
    evaluations = RULE_TESTS.read_text(encoding="utf-8").split("- eval_time:")[1:]
    fired = {
        match.group(1)
        for block in evaluations
        if "exp_labels:" in block and (match := re.search(r"alertname: (\w+)", block))
    }

    assert alerts == fired


def test_rules_and_their_tests_name_only_exported_metrics(scrape: str) -> None:
    exported = set(samples(scrape))
    rules = RULES.read_text(encoding="utf-8")
    tests = RULE_TESTS.read_text(encoding="utf-8")
    series = set(re.findall(r"series: '(\w+)\{", tests))

    assert set(re.findall(r"\brcs_sync_\w+", rules + tests)) <= exported
    assert series <= exported | PROMETHEUS_OWN
    assert series >= {"rcs_sync_passes_total", "rcs_sync_last_success_timestamp_seconds"}
