"""HTTP client for the provider's record endpoints.

The body is streamed straight to a spool file and handed to a `consume` callback (the
warehouse loader), so a response is never held in memory, let alone twice. Retries
wrap download *and* consumption: a body that turns out not to be a complete JSON array
is fetched again, and nothing downstream ever sees it.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import requests
import structlog
from requests.adapters import BaseAdapter
from tenacity import RetryCallState, Retrying, retry_if_exception

from rcs_sync.model.errors import (
    ApiUnavailable,
    ApiUnreachable,
    AuthRejected,
    BadBody,
    BadRequest,
    Stopped,
    TransientApiError,
    WarehouseUnavailable,
)
from rcs_sync.model.responses import Deadline, Response, Spool
from rcs_sync.model.throttle import Change, Throttle
from rcs_sync.source.spool import SpoolWriter

log = structlog.get_logger(__name__)

T = TypeVar("T")

CHUNK = 1 << 20
WHITESPACE = b" \t\r\n"
SPLITTABLE_STATUSES = {502, 504}
"""Gateway failures that typically mean "this response is too big or too slow"."""


@dataclass(frozen=True)
class RetryPolicy:
    budget: timedelta
    initial: timedelta
    maximum: timedelta


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a `Retry-After` header in either of its two forms."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def parse_date_header(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def describe_endpoint(base_url: str) -> str:
    """The host an error refers to, never a URL with parameters."""
    return urlsplit(base_url).netloc


class ApiClient:
    def __init__(
        self,
        base_url: str,
        token: Callable[[], str],
        *,
        connect_timeout: float,
        read_timeout: float,
        retry: RetryPolicy,
        spool_dir: Path,
        ca_bundle: Path | None = None,
        stop: threading.Event | None = None,
        on_response: Callable[[int | None], None] | None = None,
        transport: BaseAdapter | None = None,
        throttle: Throttle | None = None,
        first_contact_fails_fast: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._timeouts = (connect_timeout, read_timeout)
        self._retry = retry
        self._spool_dir = spool_dir
        self._stop = stop or threading.Event()
        self._transport = transport
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self.throttle = throttle or Throttle()
        """How many requests a pass may keep in flight; 429s and Retry-After lower it."""
        # Passed on every request: requests lets $REQUESTS_CA_BUNDLE override a
        # Session-level verify (psf/requests#3829), which would drop [api] ca_bundle.
        self._verify: str | bool = str(ca_bundle) if ca_bundle else True
        self._host = describe_endpoint(base_url)
        self._on_response = on_response or (lambda _status: None)
        """Told each response's status, None for no response (metrics)."""
        self._fail_fast = first_contact_fails_fast
        """One-shot commands: until a first response, no connection at all (refused,
        unknown host, TLS failure) is a wrong `[api] base_url`, not an outage."""
        self._contacted = False
        """Whether any response (whatever its status) has come back in this process."""

    @property
    def _session(self) -> requests.Session:
        """One session per thread: concurrent fetches never share a connection pool's
        cookies or adapters' state across threads."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["Accept"] = "application/json"
            session.headers["User-Agent"] = "rcs-sync"
            # requests asks for gzip/deflate by default and decodes as it streams.
            if self._transport is not None:
                # Tests drive the whole client over a fake one: nothing reaches the network.
                session.mount("http://", self._transport)
                session.mount("https://", self._transport)
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    @property
    def retry_budget(self) -> timedelta:
        return self._retry.budget

    def fetch(
        self,
        path: str,
        params: Mapping[str, str],
        consume: Callable[[Response], T],
        deadline: Deadline | None = None,
    ) -> T:
        """GET `path`, spool the body, and return `consume(response)`, retrying transient
        failures (of either step) with exponential backoff and jitter until `deadline`
        (by default the retry budget from now)."""
        limit = deadline or Deadline(time.monotonic() + self._retry.budget.total_seconds())
        retrying = Retrying(
            retry=retry_if_exception(
                lambda exc: isinstance(exc, TransientApiError) and not self._hopeless(exc)
            ),
            stop=lambda state: time.monotonic() >= limit.after(_failure(state)),
            wait=partial(self._wait, limit),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._fetch_once(path, params, consume)
        except TransientApiError as exc:
            if self._hopeless(exc):
                raise ApiUnreachable(
                    f"cannot connect to [api] base_url {self.base_url}: {exc}"
                ) from None
            raise ApiUnavailable(
                f"API at {self._host} still failing after retries: {exc}",
                splittable=exc.splittable,
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _hopeless(self, exc: BaseException) -> bool:
        """A first request that could not connect at all, in a one-shot command."""
        return (
            self._fail_fast
            and not self._contacted
            and isinstance(exc, TransientApiError)
            and exc.unreachable
        )

    def _fetch_once(
        self, path: str, params: Mapping[str, str], consume: Callable[[Response], T]
    ) -> T:
        spool: Spool | None = None
        try:
            with SpoolWriter(self._spool_dir) as writer:
                response = self._download(path, params, writer)
                spool = writer.spool()
            return consume(Response(spool, *response))
        except OSError as exc:  # not a network error: those are RcsSyncErrors by now
            raise _spool_failed(self._spool_dir, exc) from None
        finally:
            if spool is not None:
                spool.remove()

    def _download(
        self, path: str, params: Mapping[str, str], out: SpoolWriter
    ) -> tuple[datetime, datetime | None]:
        headers = {"Authorization": f"Bearer {self._token()}"}
        sent_at = datetime.now(UTC)
        started = time.monotonic()
        try:
            with self._session.get(
                self.base_url + path,
                params=dict(params),
                headers=headers,
                timeout=self._timeouts,
                stream=True,
                verify=self._verify,
            ) as resp:
                elapsed = time.monotonic() - started
                self._contacted = True
                self._on_response(resp.status_code)
                self._check_status(resp)
                _spool(resp, out, self._stop)
                self._log_change(self.throttle.succeeded())
        except requests.Timeout as exc:
            self._on_response(None)
            raise TransientApiError(f"timed out ({type(exc).__name__})", splittable=True) from None
        except requests.ConnectionError as exc:
            self._on_response(None)
            cause = _unreachable(exc)
            raise TransientApiError(
                f"connection failed ({type(exc).__name__}{': ' + cause if cause else ''})",
                unreachable=cause is not None,
            ) from None
        except requests.RequestException as exc:
            self._on_response(None)
            raise TransientApiError(f"connection failed ({type(exc).__name__})") from None
        date = parse_date_header(resp.headers.get("Date"))
        server_sent_at = date - timedelta(seconds=elapsed) if date else None
        log.debug("api_response", path=path, status=resp.status_code, bytes=out.size)
        return sent_at, server_sent_at

    def _check_status(self, resp: requests.Response) -> None:
        status = resp.status_code
        if status == 200:
            content_type = resp.headers.get("Content-Type", "application/json")
            if "json" not in content_type.lower():
                raise BadBody(f"HTTP 200 with content type {content_type!r}, not JSON")
            return
        detail = _snippet(resp)
        if status == 403:
            raise AuthRejected(f"token rejected by {self._host} (HTTP 403)")
        if status == 429 or status >= 500:
            # An HTTP-date is read against the server's own clock (its Date header), so
            # clock skew between us and the server cannot stretch or cancel the wait.
            server_now = parse_date_header(resp.headers.get("Date")) or datetime.now(UTC)
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), server_now)
            if status == 429 or retry_after is not None:
                self._log_change(self.throttle.pushed_back(f"HTTP {status}"))
            raise TransientApiError(
                f"HTTP {status}",
                retry_after=retry_after,
                splittable=status in SPLITTABLE_STATUSES,
            )
        raise BadRequest(f"API at {self._host} refused the request (HTTP {status}): {detail}")

    @staticmethod
    def _log_change(change: Change | None) -> None:
        if change is None:
            return
        if change.after < change.before:
            log.warning(
                "concurrency_lowered",
                before=change.before,
                after=change.after,
                reason=change.reason,
            )
        else:
            log.info(
                "concurrency_raised", before=change.before, after=change.after, reason=change.reason
            )

    def _wait(self, limit: Deadline, state: RetryCallState) -> float:
        exc = _failure(state)
        base = self._retry.initial.total_seconds() * 2 ** (state.attempt_number - 1)
        wait = random.uniform(0, min(base, self._retry.maximum.total_seconds()))  # full jitter
        if isinstance(exc, TransientApiError) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        remaining = limit.after(exc) - time.monotonic()
        return max(0.0, min(wait, remaining))

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise Stopped("stop requested")

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = _failure(state)
        log.warning(
            "api_retry",
            attempt=state.attempt_number,
            error=str(exc),
            wait=round(state.upcoming_sleep, 2),
        )


def _unreachable(exc: requests.ConnectionError) -> str | None:
    """Why no connection could be made at all, if that is what happened: refused,
    unknown host, TLS failure. None for a connection lost or reset midway."""
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        reason = re.search(
            r"certificate verify failed[^)'\"]*|wrong version number|SSL[^)'\"]*", text
        )
        return f"TLS failure, {reason.group(0).strip() if reason else 'handshake failed'}"
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return "connection refused"
    if (
        any(isinstance(e, socket.gaierror) for e in chain)
        or "NameResolutionError" in text
        or "Failed to resolve" in text
        or "Name or service not known" in text
    ):
        return "unknown host (DNS lookup failed)"
    if "No route to host" in text or "Network is unreachable" in text:
        return "no route to host"
    return None


def _failure(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def _spool(resp: requests.Response, out: SpoolWriter, stop: threading.Event) -> None:
    """Copy the body to `out`, checking it is framed like a JSON array.

    DuckDB happily reads a truncated `[{...},` as one record, so the first and last
    non-blank bytes are checked here, in passing, without keeping the body.
    """
    size = 0
    first: int | None = None
    last: int | None = None
    for chunk in resp.iter_content(CHUNK):
        if stop.is_set():
            raise Stopped("stop requested during a download")
        if not chunk:
            continue
        out.write(chunk)
        size += len(chunk)
        if first is None:
            stripped = chunk.lstrip(WHITESPACE)
            if stripped:
                first = stripped[0]
        stripped_end = chunk.rstrip(WHITESPACE)
        if stripped_end:
            last = stripped_end[-1]
    if first != ord("[") or last != ord("]"):
        raise BadBody(f"HTTP 200 but the body ({size} bytes) is not a complete JSON array")


def _spool_failed(spool_dir: Path, exc: OSError) -> WarehouseUnavailable:
    reason = exc.strerror or type(exc).__name__
    return WarehouseUnavailable(f"cannot write a response body in {spool_dir}: {reason}")


def _snippet(resp: requests.Response) -> str:
    with contextlib.suppress(requests.RequestException):
        text = resp.raw.read(300, decode_content=True).decode("utf-8", "replace")
        return " ".join(text.split())[:200]
    return ""
