"""The /metrics endpoint, scraped over HTTP and parsed as Prometheus would parse it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from rcs_sync.config import parse_listen
from rcs_sync.daemon.metrics import REASONS, Metrics

HOST = "127.0.0.1"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

Series = dict[tuple[tuple[str, str], ...], float]


@pytest.fixture
def served() -> Iterator[tuple[Metrics, int]]:
    metrics = Metrics()
    port = metrics.serve(HOST, 0)
    yield metrics, port
    metrics.close()


def scrape(port: int) -> dict[str, Series]:
    """Sample name → {sorted label pairs: value}, from a real scrape."""
    response = requests.get(f"http://{HOST}:{port}/metrics", timeout=5)
    response.raise_for_status()
    samples: dict[str, Series] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def finish(
    metrics: Metrics,
    *,
    scope: str = "all",
    outcome: str = "ok",
    reason: str | None = None,
    duration_s: float = 1.0,
    received: int = 0,
    inserted: int = 0,
    updated: int = 0,
    quarantined: int = 0,
    checkpoint: datetime | None = None,
    now: datetime = NOW,
) -> None:
    """A pass of stream "rcs" with zero counts unless given, so each test states only what
    matters."""
    metrics.pass_finished(
        stream="rcs",
        scope=scope,
        outcome=outcome,
        reason=reason,
        duration_s=duration_s,
        received=received,
        inserted=inserted,
        updated=updated,
        quarantined=quarantined,
        checkpoint=checkpoint,
        now=now,
    )


def test_scrape_reports_exact_samples(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    finish(
        metrics,
        duration_s=0.2,
        received=10,
        inserted=6,
        updated=3,
        quarantined=1,
        checkpoint=NOW - timedelta(seconds=90),
    )
    finish(
        metrics, scope="7", outcome="failed", reason="api", duration_s=12.0, received=5, inserted=5
    )
    finish(metrics, scope="7", outcome="auth_failed", duration_s=0.05)
    for status in (200, 200, 503, None):
        metrics.api_request(status)
    metrics.snapshot_published(0.3)

    samples = scrape(port)

    def key(**labels: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(labels.items()))

    # Every (outcome, reason) series exists from the first pass, at 0 until it happens.
    zeros = {
        key(stream="rcs", scope=scope, outcome=outcome, reason=reason): 0
        for scope in ("all", "7")
        for outcome, reasons in REASONS.items()
        for reason in reasons
    }
    assert samples["rcs_sync_passes_total"] == {
        **zeros,
        key(stream="rcs", scope="all", outcome="ok", reason=""): 1,
        key(stream="rcs", scope="7", outcome="failed", reason="api"): 1,
        key(stream="rcs", scope="7", outcome="auth_failed", reason="auth"): 1,
    }
    assert samples["rcs_sync_records_total"] == {
        key(stream="rcs", operation="received"): 15,
        key(stream="rcs", operation="inserted"): 11,
        key(stream="rcs", operation="updated"): 3,
        key(stream="rcs", operation="quarantined"): 1,
    }
    assert samples["rcs_sync_api_requests_total"] == {
        key(status="200"): 2,
        key(status="503"): 1,
        key(status="error"): 1,
    }
    # Only the "ok" pass sets a last success, and only a known checkpoint sets a lag.
    assert samples["rcs_sync_last_success_timestamp_seconds"] == {
        key(stream="rcs", scope="all"): NOW.timestamp()
    }
    assert samples["rcs_sync_checkpoint_lag_seconds"] == {key(stream="rcs", scope="all"): 90.0}

    buckets = samples["rcs_sync_pass_duration_seconds_bucket"]
    assert buckets[key(stream="rcs", le="0.05")] == 1
    assert buckets[key(stream="rcs", le="0.25")] == 2
    assert buckets[key(stream="rcs", le="10.0")] == 2
    assert buckets[key(stream="rcs", le="30.0")] == 3
    assert buckets[key(stream="rcs", le="3600.0")] == 3
    assert buckets[key(stream="rcs", le="+Inf")] == 3
    assert samples["rcs_sync_pass_duration_seconds_count"] == {key(stream="rcs"): 3}
    assert samples["rcs_sync_pass_duration_seconds_sum"][key(stream="rcs")] == pytest.approx(12.25)

    assert samples["rcs_sync_snapshot_publish_seconds_count"] == {(): 1}
    assert samples["rcs_sync_snapshot_publish_seconds_sum"][()] == pytest.approx(0.3)
    assert samples["rcs_sync_snapshot_publish_seconds_bucket"][key(le="0.25")] == 0
    assert samples["rcs_sync_snapshot_publish_seconds_bucket"][key(le="0.5")] == 1


def test_gauges_follow_the_latest_pass(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    later = NOW + timedelta(minutes=5)
    finish(metrics, checkpoint=NOW - timedelta(seconds=90))
    finish(metrics, outcome="failed", now=later, checkpoint=NOW - timedelta(seconds=90))

    samples = scrape(port)

    scope = (("scope", "all"), ("stream", "rcs"))
    assert samples["rcs_sync_last_success_timestamp_seconds"] == {scope: NOW.timestamp()}
    assert samples["rcs_sync_checkpoint_lag_seconds"] == {scope: 390.0}


def test_instances_do_not_share_state(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    other = Metrics()
    other_port = other.serve(HOST, 0)
    try:
        finish(metrics, received=4)
        metrics.api_request(200)

        assert other_port != port
        samples = scrape(other_port)
        assert "rcs_sync_passes_total" not in samples
        assert "rcs_sync_api_requests_total" not in samples
        assert samples["rcs_sync_snapshot_publish_seconds_count"] == {(): 0}
        assert scrape(port)["rcs_sync_api_requests_total"] == {(("status", "200"),): 1}
    finally:
        other.close()


def test_close_frees_the_port() -> None:
    metrics = Metrics()
    port = metrics.serve(HOST, 0)
    assert scrape(port)
    metrics.close()
    metrics.close()

    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://{HOST}:{port}/metrics", timeout=5)
    again = Metrics()
    assert again.serve(HOST, port) == port
    again.close()


def test_serve_twice_is_refused(served: tuple[Metrics, int]) -> None:
    metrics, _port = served
    with pytest.raises(RuntimeError, match="already running"):
        metrics.serve(HOST, 0)


def test_unknown_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="outcome must be one of ok, failed, auth_failed"):
        finish(Metrics(), outcome="success")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (" 127.0.0.1:9464 ", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_listen_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected HOST:PORT"),
        ("9464", "expected HOST:PORT"),
        (":9464", "expected HOST:PORT"),
        ("127.0.0.1", "expected HOST:PORT"),
        ("::1:9464", "IPv6 addresses in brackets"),
        ("[::1]", "IPv6 addresses in brackets"),
        ("[localhost]:9464", "not an IPv6 address"),
        ("127.0.0.1:", "port must be an integer from 0 to 65535"),
        ("127.0.0.1:http", "port must be an integer from 0 to 65535"),
        ("127.0.0.1:-1", "port must be an integer from 0 to 65535"),
        ("127.0.0.1:65536", "port must be an integer from 0 to 65535"),
        ("127.0.0.1:²", "port must be an integer from 0 to 65535"),
    ],
)
def test_parse_listen_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_listen(text)
    assert repr(text) in str(info.value)
