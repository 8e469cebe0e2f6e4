"""A realistic local stand-in for the provider's ``GET /j/rcs_records`` API, and for any
further record endpoint described by an :class:`~rcs_sim.endpoints.Endpoint`.

Used by ``make demo``, the test suite and benchmarks. :class:`Simulator` owns the
population (an in-memory DuckDB table, see :mod:`rcs_sim.population`), the server
clock and the fault plan; :func:`start_simulator` and :func:`serve_forever` put it behind
HTTP on 127.0.0.1. Where the spec is silent it behaves in the ways a client must survive —
undocumented truncation, 429s, dropped or reset connections, HTML error pages, malformed
records, clock skew — each switchable at runtime and reproducible from a seed.

Control endpoints (no auth, loopback only): ``GET /_sim/truth``, ``GET /_sim/requests``,
``POST /_sim/advance?seconds=N``, ``POST /_sim/mutate?count=N``, ``POST /_sim/config``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hmac
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, BinaryIO
from urllib.parse import parse_qs, urlsplit

import duckdb

from rcs_sim import endpoints
from rcs_sim.endpoints import Endpoint
from rcs_sim.population import (
    BOUNDS,
    DATABASE,
    FAULT_KINDS,
    PopulationSpec,
    RecordFilter,
    mutate_sql,
    population_statements,
    records_copy_sql,
    truth_sql,
)

RECORDS_PATH = "/j/rcs_records"
TEAMS_PATH = "/j/teams"
MODIFIED_SINCE_MAX_AGE = timedelta(hours=48)
# Everything else shapes the generated population, which is fixed at start.
RUNTIME_FIELDS = frozenset(
    {
        "token",
        "fault_rate",
        "faults",
        "slow_seconds",
        "latency",
        "truncate_at",
        "bounds",
        "extra_fields",
    }
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>Bad Gateway</h1><p>The upstream server is temporarily unavailable."
    b" Please try again later.</p></body></html>\n"
)
# Faults answered with HTTP 200 and a body that is not the JSON array: (content type, body).
_BAD_200 = {
    "html": ("text/html; charset=utf-8", _HTML_ERROR_PAGE),
    "empty_object": ("application/json", b"{}"),
    "null": ("application/json", b"null"),
    "text": ("text/plain; charset=utf-8", b"upstream request timeout\n"),
}
_ERROR_TEXT = {
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


FORMATS = ("lines", "compact", "pretty")
"""Body layouts: one record per line (`[{…}\n,{…}]`), `[{…},{…}]` with no line break,
and the provider's own example (indented objects, one field per line)."""


@dataclass(frozen=True)
class SimConfig:
    """Everything that shapes a simulated provider; see the field comments for units."""

    records: int = 10_000  # records already created at start
    days: float = 30.0  # existing records spread over the `days` before the start clock
    arrival_rate: float = 0.0  # new records per simulated second after start
    future_hours: float = 24.0  # how far ahead arrivals are pre-generated
    teams: int = 3  # team ids 1..teams
    campaigns: int = 20
    seed: int = 1
    token: str = "sim-token"  # noqa: S105 - the accepted Bearer token of a local fake
    frozen: bool = False  # clock stands still; moves only via advance()
    clock_offset: float = 0.0  # with start_time None: server clock = real clock + offset
    start_time: datetime | None = None  # clock at start (default: now, UTC, whole seconds)
    fault_rate: float = 0.0  # fraction of record requests (any endpoint) that get a fault
    faults: tuple[str, ...] = ("429", "500", "503", "drop", "truncate")  # from FAULT_KINDS
    slow_seconds: float = 5.0  # how long a "slow" fault stalls before answering
    latency: float = 0.0  # seconds added to every record request
    truncate_at: int | None = None  # silently serve only the first N matching records
    bounds: str = "[)"  # how start/end apply to `timestamp`, one of BOUNDS
    bad_fraction: float = 0.0  # fraction of records always served malformed
    extra_fields: bool = False  # ~10% of records carry an undocumented "channel" field
    boundary_fraction: float = 0.0  # share of records timestamped exactly at a UTC midnight
    endpoints: tuple[Endpoint, ...] = ()  # further record endpoints served beside RCS
    format: str = "lines"  # body layout, one of FORMATS
    bandwidth: float = 0.0  # bytes/s each connection may send (0: unlimited)
    server_time: float = 0.0  # seconds of server work per 100k records served (its own
    # work included: it only waits for what the query and the layout did not take)
    gzip: bool = False  # gzip bodies for clients that send Accept-Encoding: gzip
    serve_teams: bool = False  # GET /j/teams: id and name of teams 1..teams


@dataclass(frozen=True)
class RequestLog:
    """One record request as the server saw it (the token is never kept)."""

    params: dict[str, str]
    status: int | None  # None when the connection was dropped before any response
    records: int  # records in the (full, pre-fault) response body
    fault: str | None
    server_time: datetime
    path: str = RECORDS_PATH
    bytes: int = 0  # body bytes of a 200 as laid out (before any gzip)

    def to_json(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "server_time": _iso(self.server_time)}


@dataclass(frozen=True)
class Fault:
    """A drawn fault: its kind, the fraction of the body sent before a truncate/reset,
    and whether a 429 states Retry-After as an HTTP-date rather than seconds."""

    kind: str
    cut: float
    retry_after_date: bool


class BadRequest(ValueError):
    """Request parameters the API answers with 400."""


def _to_us(moment: datetime) -> int:
    return (moment - _EPOCH) // _US


def _from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _validate(config: SimConfig) -> None:
    """Reject configurations that would fail later in a less obvious place."""
    _check(isinstance(config.records, int) and config.records >= 0, "records must be >= 0")
    _check(config.days > 0 and config.future_hours > 0, "days and future_hours must be > 0")
    _check(config.arrival_rate >= 0, "arrival_rate must be >= 0")
    _check(config.teams >= 1 and config.campaigns >= 1, "teams and campaigns must be >= 1")
    _check(isinstance(config.token, str) and config.token != "", "token must be non-empty")
    _check(0 <= config.fault_rate <= 1, "fault_rate must be within [0, 1]")
    _check(0 <= config.bad_fraction <= 1, "bad_fraction must be within [0, 1]")
    _check(0 <= config.boundary_fraction <= 1, "boundary_fraction must be within [0, 1]")
    unknown = set(config.faults) - set(FAULT_KINDS)
    _check(not unknown, f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
    _check(config.slow_seconds >= 0 and config.latency >= 0, "delays must be >= 0")
    _check(
        config.truncate_at is None
        or (isinstance(config.truncate_at, int) and config.truncate_at >= 0),
        "truncate_at must be None or an int >= 0",
    )
    _check(config.bounds in BOUNDS, f"bounds must be one of {BOUNDS}")
    _check(config.format in FORMATS, f"format must be one of {FORMATS}")
    _check(config.bandwidth >= 0 and config.server_time >= 0, "network shaping must be >= 0")
    _check(isinstance(config.extra_fields, bool), "extra_fields must be a bool")
    paths = [RECORDS_PATH, *(e.path for e in config.endpoints)]
    _check(len(set(paths)) == len(paths), "every endpoint needs a path of its own")
    for endpoint in config.endpoints:
        problem = endpoints.check(endpoint)
        _check(problem is None, problem or "")


def _parse_time(params: dict[str, str], name: str) -> int | None:
    """ISO 8601 with ``Z`` or an offset, fractional seconds optional; naive means UTC."""
    raw = params.get(name, "")
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise BadRequest(f"{name}: not an ISO 8601 datetime: {raw!r}") from None
    return _to_us(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _span(params: dict[str, str]) -> tuple[int, int]:
    start, end = _parse_time(params, "start"), _parse_time(params, "end")
    if start is None or end is None:
        raise BadRequest("start and end are required")
    if end < start:
        raise BadRequest("end is before start")
    return start, end


def _modified_since(params: dict[str, str], now_us: int) -> int | None:
    since = _parse_time(params, "modified_since")
    if since is not None and not now_us - MODIFIED_SINCE_MAX_AGE // _US <= since <= now_us:
        raise BadRequest("modified_since must lie within the past 48 hours")
    return since


def parse_request(params: dict[str, str], now_us: int) -> RecordFilter:
    """Validate ``/j/rcs_records`` query parameters as the real API does (400 on error)."""
    start, end = _span(params)
    team: int | None = None
    if params.get("team"):
        try:
            team = int(params["team"])
        except ValueError:
            raise BadRequest(f"team: not an integer: {params['team']!r}") from None
    includes = {part.strip() for part in params.get("include", "").split(",")} - {""}
    if includes - {"content_message"}:
        raise BadRequest(f"include: unsupported {sorted(includes - {'content_message'})}")
    since = _modified_since(params, now_us)
    return RecordFilter(start, end, team, since, "content_message" in includes)


def parse_endpoint_request(
    params: dict[str, str], now_us: int, endpoint: Endpoint | None = None
) -> RecordFilter:
    """Validate the query of an :class:`Endpoint`: ``start``, ``end``, and, where it
    takes them, ``modified_since``, ``team`` and ``include``."""
    start, end = _span(params)
    known = {"start", "end"}
    if endpoint is None or endpoint.modified_since:
        known.add("modified_since")
    if endpoint is not None and endpoint.team is not None:
        known.add("team")
    if endpoint is not None and endpoint.optional:
        known.add("include")
    unsupported = sorted(set(params) - known)
    if unsupported:
        raise BadRequest(f"unsupported parameters {unsupported}")
    team = None
    if "team" in params:
        try:
            team = int(params["team"])
        except ValueError:
            raise BadRequest(f"team: not an integer: {params['team']!r}") from None
    includes = {part.strip() for part in params.get("include", "").split(",")} - {""}
    optional = {name for name, _ in endpoint.optional} if endpoint else set()
    if includes - optional:
        raise BadRequest(f"include: unsupported {sorted(includes - optional)}")
    return RecordFilter(start, end, team, _modified_since(params, now_us), bool(includes))


def parse_teams_request(params: dict[str, str]) -> RecordFilter:
    """``GET /j/teams``: ``start`` and ``end`` (required, as on every endpoint), ``team``."""
    start, end = _span(params)
    unsupported = sorted(set(params) - {"start", "end", "team"})
    if unsupported:
        raise BadRequest(f"unsupported parameters {unsupported}")
    try:
        team = int(params["team"]) if "team" in params else None
    except ValueError:
        raise BadRequest(f"team: not an integer: {params['team']!r}") from None
    return RecordFilter(start, end, team)


class Simulator:
    """The population, the server clock and the fault plan; thread-safe, no HTTP."""

    def __init__(self, config: SimConfig) -> None:
        _validate(config)
        self._config = config
        self._lock = threading.Lock()  # clock, mutations, fault plan
        self._cursor_lock = threading.Lock()
        if config.start_time is None:
            start = (datetime.now(UTC) + timedelta(seconds=config.clock_offset)).replace(
                microsecond=0
            )
        else:
            start = config.start_time
            start = start if start.tzinfo else start.replace(tzinfo=UTC)
        self._start_us = _to_us(start)
        self._started = time.monotonic_ns()
        self._advanced_us = 0
        self._mutation_rounds = 0
        self._rng = random.Random(config.seed)
        self.requests: list[RequestLog] = []
        self._con = duckdb.connect(":memory:")
        # Compressed on checkpoint: ~55 bytes a record, precomputed JSON included.
        self._con.execute(f"ATTACH ':memory:' AS {DATABASE} (COMPRESS)")
        spec = PopulationSpec(
            seed=config.seed,
            n_past=config.records,
            n_future=round(config.arrival_rate * config.future_hours * 3600),
            start_ms=self._start_us // 1000,
            past_ms=round(config.days * 86_400_000),
            future_ms=round(config.future_hours * 3_600_000),
            teams=config.teams,
            campaigns=config.campaigns,
            bad_fraction=config.bad_fraction,
            boundary_fraction=config.boundary_fraction,
        )
        for statement in population_statements(spec):
            self._con.execute(statement)
        self._endpoints = {
            e.path: (e, f"{DATABASE}.endpoint_{n}") for n, e in enumerate(config.endpoints)
        }
        self.team_names: dict[int, str] = {n: f"Team {n}" for n in range(1, config.teams + 1)}
        """What `GET /j/teams` serves (with `serve_teams`); tests rename and remove teams."""
        for endpoint, table in self._endpoints.values():
            self._con.execute(
                endpoints.population_sql(
                    endpoint, table, seed=config.seed, start_ms=self._start_us // 1000
                )
            )

    @property
    def config(self) -> SimConfig:
        return self._config

    def now_us(self) -> int:
        """Server clock in epoch microseconds."""
        elapsed = 0 if self._config.frozen else (time.monotonic_ns() - self._started) // 1000
        return self._start_us + self._advanced_us + elapsed

    def now(self) -> datetime:
        """Server clock, tz-aware UTC."""
        return _from_us(self.now_us())

    def advance(self, seconds: float) -> None:
        """Move the frozen clock forward; a running clock cannot be steered."""
        if not self._config.frozen:
            raise RuntimeError("advance() needs a frozen clock (SimConfig(frozen=True))")
        if seconds < 0:
            raise ValueError("the clock never goes backwards")
        with self._lock:
            self._advanced_us += round(seconds * 1_000_000)

    def mutate(self, count: int) -> list[int]:
        """Change the state of ``count`` seeded-random visible records now; returns their ids.

        Fewer are changed when fewer visible records are still sent, delivered or failed.
        """
        if count < 0:
            raise ValueError("count must be >= 0")
        with self._lock:
            self._mutation_rounds += 1
            sql = mutate_sql(self.now_us() // 1000, self._config.seed, self._mutation_rounds, count)
            with self._cursor() as cur:
                return sorted(row[0] for row in cur.execute(sql).fetchall())

    def snapshot(self) -> tuple[datetime, dict[int, int], set[int]]:
        """Clock, :meth:`truth` and :meth:`bad_ids`, all as of one instant."""
        now_us = self.now_us()
        truth, bad = self.truth_at(now_us)
        return _from_us(now_us), truth, bad

    def truth_at(self, clock_us: int) -> tuple[dict[int, int], set[int]]:
        """:meth:`truth` and :meth:`bad_ids` as of a server clock in epoch microseconds
        (e.g. the moment of a pass's last request, with a running clock)."""
        truth: dict[int, int] = {}
        bad: set[int] = set()
        with self._cursor() as cur:
            for record_id, state, bad_kind in cur.execute(truth_sql(clock_us // 1000)).fetchall():
                if bad_kind:
                    bad.add(record_id)
                else:
                    truth[record_id] = state
        return truth, bad

    def serves(self, path: str) -> bool:
        """Whether ``path`` is a record endpoint: RCS or one of ``config.endpoints``."""
        return (
            path == RECORDS_PATH
            or path in self._endpoints
            or (path == TEAMS_PATH and self._config.serve_teams)
        )

    def parse(self, path: str, params: dict[str, str], now_us: int) -> RecordFilter:
        """Validate a record request to ``path`` (BadRequest: a 400)."""
        if path == RECORDS_PATH:
            return parse_request(params, now_us)
        if path == TEAMS_PATH:
            return parse_teams_request(params)
        return parse_endpoint_request(params, now_us, self._endpoints[path][0])

    def endpoint_truth(self, path: str) -> dict[int, int]:
        """key -> state of every visible record of the endpoint at ``path``, now."""
        _, table = self._endpoints[path]
        with self._cursor() as cur:
            return dict(cur.execute(endpoints.truth_sql(table, self.now_us() // 1000)).fetchall())

    def endpoint_mutate(self, path: str, count: int, newer_than: float | None = None) -> list[int]:
        """Move ``count`` seeded-random visible records of the endpoint at ``path`` (those
        created in the last ``newer_than`` seconds, if given) to their next state now;
        returns their keys."""
        if count < 0:
            raise ValueError("count must be >= 0")
        endpoint, table = self._endpoints[path]
        with self._lock:
            self._mutation_rounds += 1
            sql = endpoints.mutate_sql(
                endpoint,
                table,
                clock_ms=self.now_us() // 1000,
                seed=self._config.seed,
                round_=self._mutation_rounds,
                count=count,
                newer_than_ms=None if newer_than is None else round(newer_than * 1000),
            )
            with self._cursor() as cur:
                return sorted(row[0] for row in cur.execute(sql).fetchall())

    def truth(self) -> dict[int, int]:
        """id -> current state of every valid visible record: what a perfect sync holds now."""
        return self.snapshot()[1]

    def bad_ids(self) -> set[int]:
        """Ids of visible records served malformed (they belong in quarantine)."""
        return self.snapshot()[2]

    def update_config(self, **changes: object) -> None:
        """Change runtime settings (faults, latency, truncation, token, bounds, extra fields)."""
        fixed = set(changes) - RUNTIME_FIELDS
        if fixed:
            raise ValueError(
                f"cannot change {sorted(fixed)} at runtime; only {sorted(RUNTIME_FIELDS)}"
            )
        faults = changes.get("faults")
        if isinstance(faults, list):  # from the JSON of POST /_sim/config
            changes["faults"] = tuple(faults)
        # Values are checked by _validate below, not by the type checker.
        new = dataclasses.replace(self._config, **changes)  # type: ignore[arg-type]
        _validate(new)
        self._config = new

    def draw_fault(self) -> Fault | None:
        """Next entry of the seeded fault plan (reproducible for a sequential client)."""
        config = self._config
        with self._lock:
            if not config.faults or self._rng.random() >= config.fault_rate:
                return None
            kind = self._rng.choice(config.faults)
            return Fault(kind, self._rng.uniform(0.2, 0.8), self._rng.random() < 0.3)

    def write_records(
        self, flt: RecordFilter, clock_us: int, path: Path, endpoint: str = RECORDS_PATH
    ) -> int:
        """Write the records of ``endpoint`` matching ``flt`` as of the clock to ``path``;
        returns the count.

        The file holds one ``,{…}`` line per record in the `lines` layout, else each
        record in the configured layout followed by a comma (see `_body_file`).
        """
        config = self._config
        if endpoint == TEAMS_PATH:
            with self._lock:
                teams = sorted(self.team_names.items())
            lines = [
                _team_text(config.format, {"id": n, "name": name})
                for n, name in teams
                if flt.team is None or flt.team == n
            ]
            path.write_text("".join(lines), encoding="utf-8")
            return len(lines)
        if endpoint == RECORDS_PATH:
            sql = records_copy_sql(
                flt,
                clock_ms=clock_us // 1000,
                bounds=config.bounds,
                extra_fields=config.extra_fields,
                limit=config.truncate_at,
                path=str(path),
                layout=config.format,
            )
        else:
            described, table = self._endpoints[endpoint]
            sql = endpoints.records_copy_sql(
                described,
                table,
                flt,
                clock_ms=clock_us // 1000,
                bounds=config.bounds,
                limit=config.truncate_at,
                path=str(path),
                layout=config.format,
            )
        with self._cursor() as cur:
            row = cur.execute(sql).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self._con.close()

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection of its own per call: DuckDB connections are not shared across
        threads. Making and closing one both go through the parent connection, which
        DuckDB lets only one thread use at a time (it refuses, rather than waits)."""
        with self._cursor_lock:
            cur = self._con.cursor()
        try:
            yield cur
        finally:
            with self._cursor_lock:
                cur.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sim: Simulator, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.sim = sim
        self.stopping = threading.Event()
        shm = Path("/dev/shm")  # noqa: S108 - mkdtemp below; RAM-backed spool when available
        self.spool = Path(
            tempfile.mkdtemp(prefix="rcs-sim-", dir=shm if os.access(shm, os.W_OK) else None)
        )
        # Runs on stop(), or at exit for a simulator that was never stopped.
        self.remove_spool = weakref.finalize(self, shutil.rmtree, self.spool, ignore_errors=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that went away and requests cut short by stop()."""
        if self.stopping.is_set() or isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rcs-sim/1.0"
    timeout = 60
    disable_nagle_algorithm = True
    server: _Server
    clock_us: int | None = None
    body_bytes: int = 0

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: every API request is kept in ``Simulator.requests`` instead."""

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header carries the server clock as of the request, skew included."""
        clock_us = self.server.sim.now_us() if self.clock_us is None else self.clock_us
        return formatdate(clock_us / 1e6 if timestamp is None else timestamp, usegmt=True)

    def do_GET(self) -> None:
        self.clock_us = self.server.sim.now_us()
        url = urlsplit(self.path)
        if self.server.sim.serves(url.path):
            self._records(url.path, _params(url.query))
        elif url.path == "/_sim/truth":
            now, truth, bad = self.server.sim.snapshot()
            self._send_json(
                200,
                {"now": _iso(now), "records": sorted(truth.items()), "bad_ids": sorted(bad)},
            )
        elif url.path == "/_sim/requests":
            self._send_json(200, [entry.to_json() for entry in self.server.sim.requests])
        else:
            self._send_json(404, {"error": "not found"})

    def do_POST(self) -> None:
        self.clock_us = self.server.sim.now_us()
        url = urlsplit(self.path)
        params = _params(url.query)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        sim = self.server.sim
        try:
            if url.path == "/_sim/advance":
                sim.advance(float(params.get("seconds", "")))
                self._send_json(200, {"now": _iso(sim.now())})
            elif url.path == "/_sim/mutate":
                self._send_json(200, {"ids": sim.mutate(int(params.get("count", "")))})
            elif url.path == "/_sim/config":
                changes = json.loads(body or b"{}")
                if not isinstance(changes, dict):
                    raise ValueError("the body must be a JSON object")
                sim.update_config(**changes)
                self._send_json(200, {"ok": True})
            else:
                self._send_json(404, {"error": "not found"})
        except (ValueError, RuntimeError, TypeError) as exc:
            self._send_json(400, {"error": str(exc)})

    def _records(self, endpoint: str, params: dict[str, str]) -> None:
        sim = self.server.sim
        if sim.config.latency:
            self.server.stopping.wait(sim.config.latency)
        clock_us = self.clock_us = sim.now_us()
        self.body_bytes = 0
        status, records, fault, respond = self._plan_records(endpoint, params, clock_us)
        # Logged before answering, so the log follows arrival order for a sequential client.
        kept = {key: value for key, value in params.items() if "token" not in key.lower()}
        log = RequestLog(
            kept, status, records, fault, _from_us(clock_us), endpoint, self.body_bytes
        )
        sim.requests.append(log)
        respond()

    def _plan_records(
        self, endpoint: str, params: dict[str, str], clock_us: int
    ) -> tuple[int | None, int, str | None, Callable[[], None]]:
        """Decide the answer: (status, records, fault kind, a callable that sends it)."""
        sim = self.server.sim
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), sim.config.token.encode()
        ):
            error = {"error": "forbidden", "detail": "missing or invalid token"}
            return 403, 0, None, partial(self._send_json, 403, error)
        try:
            flt = sim.parse(endpoint, params, clock_us)
        except BadRequest as exc:
            error = {"error": "bad request", "detail": str(exc)}
            return 400, 0, None, partial(self._send_json, 400, error)
        fault = sim.draw_fault()
        kind = fault.kind if fault else None
        if fault and kind not in ("slow", "truncate", "reset"):
            status = None if kind == "drop" else 200 if kind in _BAD_200 else int(fault.kind)
            return status, 0, kind, partial(self._send_fault, fault, clock_us)
        if kind == "slow" and self.server.stopping.wait(sim.config.slow_seconds):
            return None, 0, kind, self._hang_up
        path = self.server.spool / f"{uuid.uuid4().hex}.jsonl"
        working = time.monotonic()
        records = sim.write_records(flt, clock_us, path, endpoint)
        path = _body_file(path, sim.config.format)
        self.body_bytes = path.stat().st_size
        # `server_time` is the whole of it: the simulator's own work counts towards it.
        owed = sim.config.server_time * records / 100_000 - (time.monotonic() - working)
        if owed > 0 and self.server.stopping.wait(owed):
            path.unlink(missing_ok=True)
            return None, 0, kind, self._hang_up
        body_fault = fault if kind in ("truncate", "reset") else None
        gzipped = sim.config.gzip and "gzip" in (self.headers.get("Accept-Encoding") or "")
        return 200, records, kind, partial(self._send_array, path, body_fault, gzipped)

    def _send_fault(self, fault: Fault, clock_us: int) -> None:
        """Answer with an error status, an HTML page, or nothing at all (``drop``)."""
        if fault.kind == "drop":
            self._hang_up()
        elif fault.kind in _BAD_200:
            self._send(200, *_BAD_200[fault.kind])
        elif fault.kind == "429":
            retry_after = "1"
            if fault.retry_after_date:
                retry_after = formatdate(clock_us // 1_000_000 + 2, usegmt=True)
            self._send_json(429, {"error": "too many requests"}, [("Retry-After", retry_after)])
        else:
            self._send_json(int(fault.kind), {"error": _ERROR_TEXT[int(fault.kind)]})

    def _send_array(self, path: Path, fault: Fault | None, gzipped: bool = False) -> None:
        """Send the body file (see `_body_file`), then delete it: gzip-encoded when
        asked, at most `bandwidth` bytes/s.

        ``truncate`` omits Content-Length and closes early (the client sees a complete but
        unterminated array); ``reset`` promises the full length, sends part, then RSTs.
        """
        try:
            if gzipped:
                path = _gzip_file(path)
            length = path.stat().st_size
            cut = length if fault is None else max(1, int(length * fault.cut))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if gzipped:
                self.send_header("Content-Encoding", "gzip")
            if fault is not None and fault.kind == "truncate":
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            with path.open("rb") as body:
                self._send_bytes(body, cut)
        finally:
            path.unlink(missing_ok=True)
            path.with_suffix(".jsonl").unlink(missing_ok=True)
        if fault is not None and fault.kind == "reset":
            # Linger 0 turns close() into a RST; the fd closes once rfile lets go of it.
            linger = struct.pack("ii", 1, 0)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            self.close_connection = True
            self.connection.close()
            self.rfile.close()

    def _send_bytes(self, body: BinaryIO, count: int) -> None:
        """The first `count` bytes of `body`: zero-copy, or paced to `bandwidth`."""
        self.wfile.flush()
        rate = self.server.sim.config.bandwidth
        if not rate:
            if count:
                self.connection.sendfile(body, 0, count)
            return
        started, sent, step = time.monotonic(), 0, 64 << 10
        while sent < count:
            block = body.read(min(step, count - sent))
            if not block:
                return
            self.connection.sendall(block)
            sent += len(block)
            ahead = sent / rate - (time.monotonic() - started)
            if ahead > 0 and self.server.stopping.wait(ahead):
                return

    def _hang_up(self) -> None:
        self.close_connection = True

    def _send_json(
        self, status: int, payload: object, headers: list[tuple[str, str]] | None = None
    ) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self._send(status, "application/json", body, headers or [])

    def _send(
        self,
        status: int,
        content_type: str,
        body: bytes,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers or []:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def _body_file(records: Path, layout: str) -> Path:
    """The whole body, `[` … `]`, around the records `write_records` wrote in `layout`.

    The simulator shares the cores with the client it serves, so it never handles the
    bytes in Python: DuckDB wrote them laid out, the kernel copies them here."""
    body = records.with_suffix(".json")
    lines = layout == "lines"
    skip_head, skip_tail = (1, 0) if lines else (0, 1)  # the first comma, or the last
    with body.open("wb") as out, records.open("rb") as source:
        out.write(b"[")
        out.flush()
        count = max(0, records.stat().st_size - skip_head - skip_tail)
        offset = skip_head
        while count > 0:
            copied = os.copy_file_range(source.fileno(), out.fileno(), count, offset)
            if not copied:
                raise OSError(f"{records} ended {count} bytes early")
            offset += copied
            count -= copied
        out.write(b"\n]" if layout == "pretty" else b"]")
    records.unlink(missing_ok=True)
    return body


def _team_text(layout: str, team: dict[str, object]) -> str:
    """One team as `write_records` writes records in `layout`."""
    if layout == "lines":
        return "," + json.dumps(team) + "\n"
    if layout == "compact":
        return json.dumps(team, separators=(",", ":")) + ","
    return "\n   " + json.dumps(team, indent=3).replace("\n", "\n   ") + ","


def _gzip_file(body: Path) -> Path:
    """`body` gzip-compressed (level 1: the simulator should not be the bottleneck)."""
    packed = body.with_suffix(".json.gz")
    with body.open("rb") as source, gzip.open(packed, "wb", compresslevel=1) as out:
        shutil.copyfileobj(source, out, 1 << 20)
    body.unlink(missing_ok=True)
    return packed


def _params(query: str) -> dict[str, str]:
    """First value of each query parameter (``+`` decodes to a space, as on real servers)."""
    return {name: values[0] for name, values in parse_qs(query, keep_blank_values=True).items()}


class RunningSimulator:
    """A simulator served on 127.0.0.1 by a background thread; stop() or use ``with``."""

    def __init__(self, sim: Simulator, server: _Server) -> None:
        self.sim = sim
        self.port: int = server.server_port
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._server = server
        # A short poll interval keeps stop() fast (shutdown waits for the next poll).
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="rcs-sim", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and free the population; idempotent."""
        if self._server.stopping.is_set():
            return
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server.remove_spool()
        self.sim.close()

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_simulator(config: SimConfig, port: int = 0) -> RunningSimulator:
    """Generate the population and serve it on 127.0.0.1:port (0 picks a free port)."""
    sim = Simulator(config)
    try:
        server = _Server(sim, port)
    except BaseException:
        sim.close()
        raise
    return RunningSimulator(sim, server)


def serve_forever(config: SimConfig, port: int, ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT (call from the main thread); ``ready(port)`` once listening."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with start_simulator(config, port) as running:
            if ready is not None:
                ready(running.port)
            while not stop.wait(0.5):  # a timed wait lets signal handlers run promptly
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def spawn(options: list[str], env: Mapping[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Run `python -m rcs_sim --port 0 OPTIONS` (what `rcs-sync simulate` runs) as a child
    process, as the demo and the benchmarks do; returns it and the base URL it announced."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "rcs_sim", "--port", "0", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=dict(env),
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    if match is None:
        process.kill()
        process.wait()
        raise RuntimeError(f"the simulator did not start (it said {line!r})")
    return process, match.group(0)
