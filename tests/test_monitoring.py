"""The monitoring in deploy/, checked with Prometheus' own tool against a real daemon.

promtool (Debian's prometheus package; CI installs it) checks and unit-tests the alert
rules, lints a live `/metrics` scrape of `rcs-sync run` after a pass against the
simulator, and parses the Grafana dashboard's queries. Every metric name the rules,
their unit tests and the dashboard use must appear in that scrape.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from rcs_sim.endpoints import sibling
from rcs_sim.server import SimConfig, start_simulator
from rcs_sync.config import SyncSettings, load_settings
from rcs_sync.daemon.metrics import Metrics
from rcs_sync.daemon.service import lag_bound
from tests.conftest import TOKEN, Site, wait_for
from tests.test_service import daemon

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "rcs-sync-alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "rcs-sync-alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "rcs-sync.json"

PROMETHEUS_OWN = {"up"}
"""Series Prometheus itself writes for every scrape target."""

PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
}
GRAFANA_RANGES = re.compile(r"\$__(?:range|rate_interval|interval)\b")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: install Debian's prometheus package")
    return subprocess.run(
        [path, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers left once strings,
    label matchers, ranges and grouping label lists are gone, minus functions (followed
    by "(") and keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = re.findall(r"(?<![\w.$])[A-Za-z_:][\w:]*(?![\w:]|\s*\()", text)
    return set(names) - PROMQL_WORDS


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job="rcs-sync"} == 0', {"up"}),
        ("time() - a_seconds > 900", {"a_seconds"}),
        ('increase(a_total{outcome="failed", x=~"$instance"}[15m]) > 0', {"a_total"}),
        (
            "histogram_quantile(0.9, sum by (le, stream) (rate(a_bucket[$__range]))) / b",
            {"a_bucket", "b"},
        ),
        ("a unless on (scope) b offset 5m or c", {"a", "b", "c"}),
    ],
)
def test_metric_names_finds_the_selected_series_only(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


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
    sms = sibling("text_records", records=200, days=3)
    config = SimConfig(frozen=True, records=1_000, days=3.0, token=TOKEN, endpoints=(sms,))
    sim = start_simulator(config)
    try:
        s = Site(tmp_path_factory.mktemp("scrape"), sim)
        s.write_config(
            sync={"interval": "1h", "streams": ["rcs_records", "text_records"]},
            metrics={"listen": f"127.0.0.1:{port}"},
        )
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


def test_each_stream_exports_the_checkpoint_lag_it_has_by_design(scrape: str) -> None:
    """The alert on the checkpoint lag allows for this: none for RCS (modified_since),
    the last tier's `every` (a day by default) for SMS, re-read in tiers."""
    [family] = [
        f
        for f in text_string_to_metric_families(scrape)
        if f.name == "rcs_sync_checkpoint_lag_bound_seconds"
    ]
    bounds = {(s.labels["stream"], s.labels["scope"]): s.value for s in family.samples}

    assert bounds == {("rcs_records", "all"): 0.0, ("text_records", "all"): 86_400.0}


def test_a_configured_last_tier_is_the_designed_lag(tmp_path: Path) -> None:
    config = tmp_path / "rcs-sync.toml"
    config.write_text(
        '[api]\nbase_url = "http://127.0.0.1:9"\n'
        '[sync]\nstreams = ["rcs_records", "text_records", "call_records", "teams"]\n'
        "[streams.text_records]\n"
        'reread = [{ age = "1d", every = "0s" }, { age = "horizon", every = "6h" }]\n',
        encoding="utf-8",
    )
    settings = load_settings(config)

    assert lag_bound(settings, "text_records") == timedelta(hours=6)
    assert lag_bound(settings, "call_records") == timedelta(days=1)  # the default tiers
    assert lag_bound(settings, "rcs_records") == lag_bound(settings, "teams") == timedelta(0)


def test_alert_rules_pass_promtool_check_rules() -> None:
    alerts = re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(encoding="utf-8"), re.M)

    result = promtool("check", "rules", str(RULES))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts)} rules found" in result.stdout


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_are_written_for_the_shipped_interval() -> None:
    # "Three intervals" in every window and threshold, for the interval the server
    # config ships (the built-in default): change them together.
    interval = load_settings(DEPLOY / "rcs-sync.toml").sync.interval
    three = int(3 * interval.total_seconds())
    exprs = re.findall(r"^\s*expr: (.*)$", RULES.read_text(encoding="utf-8"), re.M)

    assert interval == SyncSettings.interval
    assert {r for e in exprs for r in re.findall(r"\[(\w+)\]", e)} == {f"{three // 60}m"}
    assert {int(n) for e in exprs for n in re.findall(r"> (\d+)$", e)} - {0} == {three}


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


def dashboard_queries() -> list[str]:
    """Every panel target's `expr`, then the template variables' metric queries."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["query"]["query"])
            assert match, variable
            exprs.append(match.group(1))
    return exprs


def test_dashboard_uses_every_exported_metric_and_nothing_else(scrape: str) -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_queries()))
    families = {family.name for family in Metrics().registry.collect()}

    assert used <= set(samples(scrape))
    unused = {f for f in families if not any(n == f or n.startswith(f + "_") for n in used)}
    assert not unused


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    # promtool parses the queries as recording rules, Grafana's variables filled in.
    rules = []
    for number, expr in enumerate(dashboard_queries()):
        query = GRAFANA_RANGES.sub("1h", expr).replace("$instance", ".+")
        assert "$" not in query, f"unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{number}", "expr": query})
    path = tmp_path / "dashboard-queries.yml"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))

    result = promtool("check", "rules", str(path))

    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_consistent() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = dashboard["panels"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}

    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert set(re.findall(r"\$(\w+)", target["expr"])) - {"__range"} <= variables
    assert {"datasource", "instance"} <= variables
