"""The HTTP client against the simulator over real HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from rcs_sim.server import RunningSimulator
from rcs_sync.model.errors import (
    ApiUnavailable,
    ApiUnreachable,
    AuthRejected,
    BadBody,
    BadRequest,
)
from rcs_sync.model.responses import Response
from rcs_sync.source.client import ApiClient, RetryPolicy, parse_retry_after
from tests.conftest import TOKEN

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_retry_after_in_seconds_and_http_date_forms() -> None:
    assert parse_retry_after("7", NOW) == 7.0
    later = format_datetime(NOW + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, NOW) == 30.0
    earlier = format_datetime(NOW - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(earlier, NOW) == 0.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


def client(
    sim: RunningSimulator,
    tmp_path: Path,
    *,
    budget: float = 10,
    token: Callable[[], str] = lambda: TOKEN,
) -> ApiClient:
    return ApiClient(
        sim.base_url,
        token,
        connect_timeout=2,
        read_timeout=2,
        retry=RetryPolicy(
            timedelta(seconds=budget), timedelta(milliseconds=20), timedelta(milliseconds=200)
        ),
        spool_dir=tmp_path / "spool",
    )


def params(sim: RunningSimulator) -> dict[str, str]:
    now = sim.sim.now()
    return {
        "start": (now - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def read_body(response: Response) -> bytes:
    return response.body.whole().read_bytes()


SimFactory = Callable[..., RunningSimulator]


def test_a_successful_fetch_spools_the_body_and_reads_the_server_clock(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    sim = make_sim(records=300)
    sim.sim.advance(3600)  # the server clock now runs an hour ahead of ours
    seen: list[Response] = []

    def consume(response: Response) -> bytes:
        seen.append(response)
        return read_body(response)

    body = client(sim, tmp_path).fetch("/j/rcs_records", params(sim), consume)
    assert body.startswith(b"[") and body.rstrip().endswith(b"]")
    [response] = seen
    assert response.body.size == len(body)
    assert not any(p.exists() for p in response.body.parts), "the spool outlives its response"
    assert response.server_sent_at is not None
    # Taken from the Date header, minus the round trip: never after the server's clock.
    assert response.server_sent_at <= sim.sim.now()
    assert response.server_sent_at > sim.sim.now() - timedelta(seconds=5)


def test_403_is_not_retried(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(records=10)
    with pytest.raises(AuthRejected, match="token rejected"):
        client(sim, tmp_path, token=lambda: "nope").fetch("/j/rcs_records", params(sim), read_body)
    assert len(sim.sim.requests) == 1


def test_400_is_not_retried(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(records=10)
    with pytest.raises(BadRequest, match="HTTP 400"):
        client(sim, tmp_path).fetch("/j/rcs_records", {"start": "garbage"}, read_body)
    assert len(sim.sim.requests) == 1


@pytest.mark.parametrize("kind", ["429", "500", "503", "drop", "truncate", "html", "reset"])
def test_each_transient_fault_is_retried_until_it_passes(
    make_sim: SimFactory, tmp_path: Path, kind: str
) -> None:
    sim = make_sim(records=2_000, fault_rate=1.0, faults=(kind,))
    attempts = 0

    def token() -> str:
        """Called once per attempt: the fault clears for the second one."""
        nonlocal attempts
        attempts += 1
        if attempts == 2:
            sim.sim.update_config(fault_rate=0.0)
        return TOKEN

    bodies: list[bytes] = []

    def consume(response: Response) -> None:
        bodies.append(read_body(response))

    client(sim, tmp_path, token=token).fetch("/j/rcs_records", params(sim), consume)
    assert [r.fault for r in sim.sim.requests] == [kind, None]
    assert len(bodies) == 1, "a faulty body reached the consumer"
    assert bodies[0].rstrip().endswith(b"]")


def test_429_waits_for_retry_after(make_sim: SimFactory, tmp_path: Path) -> None:
    sim = make_sim(records=10, fault_rate=1.0, faults=("429",))
    began = time.monotonic()
    with pytest.raises(ApiUnavailable, match="HTTP 429"):
        client(sim, tmp_path, budget=2.5).fetch("/j/rcs_records", params(sim), read_body)
    attempts = len(sim.sim.requests)
    assert 2 <= attempts <= 4
    # Retry-After says 1 s (or an HTTP-date 2 s ahead): the client never came back sooner.
    assert time.monotonic() - began >= attempts - 1


def test_a_consumer_rejecting_the_body_triggers_a_refetch(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    sim = make_sim(records=10)
    calls = 0

    def consume(response: Response) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BadBody("parser refused it")
        return calls

    assert client(sim, tmp_path).fetch("/j/rcs_records", params(sim), consume) == 2
    assert len(sim.sim.requests) == 2


def test_slow_responses_time_out_and_are_marked_splittable(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    sim = make_sim(records=10, fault_rate=1.0, faults=("slow",), slow_seconds=3)
    with pytest.raises(ApiUnavailable) as raised:
        client(sim, tmp_path, budget=1).fetch("/j/rcs_records", params(sim), read_body)
    assert raised.value.splittable
    assert "timed out" in str(raised.value)


def _unreached(base_url: str, tmp_path: Path, *, fail_fast: bool, budget: float) -> ApiClient:
    return ApiClient(
        base_url,
        lambda: TOKEN,
        connect_timeout=2,
        read_timeout=2,
        retry=RetryPolicy(
            timedelta(seconds=budget), timedelta(milliseconds=20), timedelta(milliseconds=200)
        ),
        spool_dir=tmp_path / "spool",
        first_contact_fails_fast=fail_fast,
    )


def _closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("base_url", "cause"),
    [
        (None, "connection refused"),
        ("https://rcs-sync-test.invalid", "unknown host"),
    ],
)
def test_a_first_request_that_cannot_connect_fails_at_once_naming_base_url(
    tmp_path: Path, base_url: str | None, cause: str
) -> None:
    url = base_url or f"http://127.0.0.1:{_closed_port()}"
    api = _unreached(url, tmp_path, fail_fast=True, budget=60)
    began = time.monotonic()
    with pytest.raises(ApiUnreachable) as failure:
        api.fetch("/j/rcs_records", {"start": "a", "end": "b"}, read_body)
    assert time.monotonic() - began < 5
    assert str(failure.value).startswith(f"cannot connect to [api] base_url {url}: ")
    assert cause in str(failure.value)


def test_without_fail_fast_or_after_a_success_the_retry_budget_applies(
    make_sim: SimFactory, tmp_path: Path
) -> None:
    daemon = _unreached(f"http://127.0.0.1:{_closed_port()}", tmp_path, fail_fast=False, budget=1)
    began = time.monotonic()
    with pytest.raises(ApiUnavailable) as failure:
        daemon.fetch("/j/rcs_records", {"start": "a", "end": "b"}, read_body)
    assert not isinstance(failure.value, ApiUnreachable)
    assert time.monotonic() - began >= 0.9

    sim = make_sim(records=10)
    api = _unreached(sim.base_url, tmp_path, fail_fast=True, budget=1)
    api.fetch("/j/rcs_records", params(sim), read_body)
    sim.stop()  # the server goes away after a first success: an outage, retried
    began = time.monotonic()
    with pytest.raises(ApiUnavailable) as failure:
        api.fetch("/j/rcs_records", params(sim), read_body)
    assert not isinstance(failure.value, ApiUnreachable)
    assert time.monotonic() - began >= 0.9
