"""TOML configuration → typed, validated settings, plus the API token lookup.

Everything is checked at load time so a typo or a bad value stops the daemon at start,
with one line naming the key, instead of surfacing hours later in the middle of a pass.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import structlog

from rcs_sync.logs import register_secret
from rcs_sync.model.durations import as_utc, format_duration, parse_duration, parse_instant
from rcs_sync.model.errors import EXIT_USAGE, RcsSyncError
from rcs_sync.model.reread import Tier, check_tiers
from rcs_sync.model.streams import RCS_RECORDS, registered

CONFIG_ENV = "RCS_SYNC_CONFIG"
DEFAULT_CONFIG_FILE = "rcs-sync.toml"
TOKEN_ENV = "RCS_SYNC_TOKEN"  # noqa: S105 - a variable name, not a secret
CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"  # set by systemd for LoadCredential=
CREDENTIAL_NAME = "token"
NUMBER_KEY_ENV = "RCS_SYNC_NUMBER_KEY"
NUMBER_KEY_CREDENTIAL = "number_key"
PGPASS_CREDENTIAL = "pgpass"  # a libpq password file for a lake's PostgreSQL catalog
WAREHOUSE_KINDS = ("duckdb", "ducklake")
CATALOG_KINDS = ("postgres:", "sqlite:")
_CATALOG_PASSWORD = re.compile(r"password\s*=|://[^/@]*:[^/@]*@", re.IGNORECASE)
_FILE_ONLY = ("path", "snapshot_path", "storage_version")
# The API rejects modified_since older than 48 hours (server clock).
MODIFIED_SINCE_LIMIT = timedelta(hours=48)

_MILLISECOND = timedelta(milliseconds=1)
_SECOND = timedelta(seconds=1)
_HOUR = timedelta(hours=1)
# A token file is one short line; anything bigger is a mis-pointed path whose contents
# must not end up in an HTTP header.
_MAX_TOKEN_BYTES = 16 * 1024
_MEMORY_LIMIT = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B|B|%)", re.IGNORECASE)
_MISSING = object()

_log = structlog.get_logger(__name__)
_warned_world_readable: set[Path] = set()


class ConfigError(RcsSyncError):
    """A configuration problem worded for the operator: one line, naming where it is.

    ``key`` is "[section] name" for a setting, "[section]" for a table, or the file
    path for problems with the file as a whole.
    """

    key: str
    exit_code = EXIT_USAGE
    kind = "config"

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config: {key}: {problem}")
        self.key = key


NumberMode = Literal["plain", "hash", "mask"]
NUMBER_MODES: tuple[NumberMode, ...] = ("plain", "hash", "mask")
"""How `[warehouse] number` stores phone numbers (`warehouse/privacy.py` does it)."""


@dataclass(frozen=True)
class ApiSettings:
    base_url: str  # no trailing slash; https unless the host is loopback
    token_file: Path | None = None
    teams: tuple[int, ...] = ()  # empty: one pass over everything the token sees
    include_content: bool = False
    timeout: timedelta = timedelta(seconds=30)
    connect_timeout: timedelta = timedelta(seconds=10)
    retry_budget: timedelta = timedelta(minutes=2)  # retrying a window and its halves share
    backoff_initial: timedelta = timedelta(milliseconds=500)
    backoff_max: timedelta = timedelta(seconds=30)
    ca_bundle: Path | None = None  # extra CAs; TLS verification is never disabled
    concurrency: int = 4  # windows fetched at once by full passes (1: one at a time)
    server_limit: int | None = None  # a count the server is known to cut responses at:
    # a response of exactly this many records is evidence of truncation (its window split)


@dataclass(frozen=True)
class SyncSettings:
    initial_start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    window: timedelta = timedelta(days=1)
    update_horizon: timedelta = timedelta(days=7)
    interval: timedelta = timedelta(minutes=5)
    overlap: timedelta = timedelta(minutes=2)  # modified_since = checkpoint - overlap
    clock_skew: timedelta = timedelta(minutes=5)
    target_records_per_request: int = 500_000  # windows are planned from the density
    # already seen to stay under this; a larger response is still loaded, never re-read
    min_records_per_request: int = 20_000  # consecutive windows expected to hold fewer
    # together are read as one request (at most 16 windows; 0: never)
    min_window: timedelta = timedelta(seconds=1)  # splitting stops here
    streams: tuple[str, ...] = (RCS_RECORDS.name,)  # registered stream names, synced in order


@dataclass(frozen=True)
class WarehouseSettings:
    kind: str = "duckdb"  # "duckdb": one DuckDB file; "ducklake": a DuckLake (catalog, data_path)
    path: Path = Path("rcs.duckdb")  # loaded configs resolve it against the file's directory
    catalog: str | None = None  # ducklake: "postgres:dbname=… host=… user=…" or "sqlite:PATH"
    data_path: str | None = None  # ducklake: the Parquet files' directory, shared mount or URL
    spool_dir: Path | None = None  # None: see spool_path (required for a lake)
    lock_timeout: timedelta = timedelta(seconds=60)
    memory_limit: str = "300MB"
    threads: int = 2

    snapshot_path: Path | None = None  # None: see snapshot_file
    number: str = "plain"  # how phone numbers are stored: plain, hash (HMAC-SHA256) or mask
    number_key_file: Path | None = None  # the secret for number = "hash"
    storage_version: str = "v1.1.0"  # the DuckDB release files are written for (README)

    @property
    def spool_path(self) -> Path:
        """Where response bodies are spooled: ``spool_dir``, else "<path>.spool" beside the DB."""
        return self.spool_dir or self.path.with_name(self.path.name + ".spool")

    @property
    def lock_anchor(self) -> Path:
        """What the one-writer locks are named after (`writer_lock.py`): the file, or a
        lake's spool directory (the lake has no file on this host)."""
        return self.spool_path if self.kind == "ducklake" else self.path

    @property
    def label(self) -> str:
        """The warehouse as messages name it (a lake's catalog never holds a password)."""
        if self.kind == "ducklake":
            return f"lake ducklake:{self.catalog}"
        return f"warehouse {self.path}"

    @property
    def snapshot_file(self) -> Path:
        """The analysts' read-only copy: ``snapshot_path``, else "<stem>.snapshot.duckdb"."""
        return self.snapshot_path or self.path.with_name(self.path.stem + ".snapshot.duckdb")


@dataclass(frozen=True)
class MetricsSettings:
    listen: str | None = None  # "127.0.0.1:9464" serves Prometheus metrics; None: off


@dataclass(frozen=True)
class MaintenanceSettings:
    """A lake's upkeep (`warehouse/maintenance.py`); a DuckDB file needs none."""

    enabled: bool = True  # false: the daemon's passes never maintain (another host's do)
    every: timedelta = timedelta(hours=1)  # run after the daemon's first pass this long since
    expire_snapshots_after: timedelta = timedelta(days=7)  # time travel reaches back this far
    remove_files_after: timedelta = timedelta(hours=1)  # unreferenced and orphaned files
    # are deleted once this old: a reader's query or another writer's open transaction
    # lasting longer may find a file gone
    budget: timedelta = timedelta(seconds=60)  # no further DuckLake call starts after this
    # long (the first always runs, so "0s" is one call per run)


@dataclass(frozen=True)
class Settings:
    api: ApiSettings
    sync: SyncSettings = field(default_factory=SyncSettings)
    warehouse: WarehouseSettings = field(default_factory=WarehouseSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    maintenance: MaintenanceSettings = field(default_factory=MaintenanceSettings)
    source: Path | None = None
    reread: Mapping[str, tuple[Tier, ...]] = field(default_factory=dict)
    """`[streams.NAME] reread`: the re-read tiers of streams without `modified_since`."""
    reread_budget: Mapping[str, float] = field(default_factory=dict)
    """`[streams.NAME] reread_budget`: the share of the horizon's cells their passes
    re-read beyond the must-reads (`model/reread.py`, default `DEFAULT_BUDGET`)."""


_SCHEMA = {
    "api": ApiSettings,
    "sync": SyncSettings,
    "warehouse": WarehouseSettings,
    "metrics": MetricsSettings,
    "maintenance": MaintenanceSettings,
}


def config_path(cli_value: str | None, env: Mapping[str, str]) -> Path:
    """Choose the config file: --config, then $RCS_SYNC_CONFIG, then ./rcs-sync.toml."""
    return Path(cli_value or env.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE).expanduser()


def load_settings(path: Path) -> Settings:
    """Read and validate ``path``; relative paths inside it are relative to its directory."""
    source = path.expanduser().absolute()
    try:
        document = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            str(source), f"file not found (pass --config or set {CONFIG_ENV})"
        ) from None
    except OSError as exc:
        raise ConfigError(str(source), f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(source), "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(source), f"invalid TOML: {exc}") from None

    tables = _split_sections(document, source.parent)
    api = _api(tables["api"])  # checked in this order: the first problem is the one named
    sync = _sync(tables["sync"])
    reread, budgets = _stream_sections(document.get("streams", {}), sync)
    return Settings(
        api=api,
        sync=sync,
        warehouse=_warehouse(tables["warehouse"]),
        metrics=_metrics(tables["metrics"]),
        maintenance=_maintenance(tables["maintenance"]),
        source=source,
        reread=reread,
        reread_budget=budgets,
    )


def _stream_sections(
    value: object, sync: SyncSettings
) -> tuple[dict[str, tuple[Tier, ...]], dict[str, float]]:
    """`[streams.NAME]` of streams without `modified_since` (`model/reread.py`): their
    `reread` tiers and `reread_budget`."""
    if not isinstance(value, dict):
        raise ConfigError("[streams]", f"expected a table of streams, got {_show(value)}")
    tiers: dict[str, tuple[Tier, ...]] = {}
    budgets: dict[str, float] = {}
    for name, section in value.items():
        key = f"[streams.{name}]"
        if not any(s.name == name for s in registered()):
            raise ConfigError(key, "unknown stream")
        stream = next(s for s in registered() if s.name == name)
        if not isinstance(section, dict):
            raise ConfigError(key, f"expected a table, got {_show(section)}")
        unknown = sorted(set(section) - {"reread", "reread_budget"})
        if unknown:
            raise ConfigError(f"{key} {unknown[0]}", "unknown key; known: reread, reread_budget")
        for option in sorted(set(section) & {"reread", "reread_budget"}):
            if stream.modified_since or not stream.windowed:
                raise ConfigError(
                    f"{key} {option}",
                    "only streams read in windows without modified_since re-read",
                )
        if "reread" in section:
            tiers[name] = _tiers(f"{key} reread", section["reread"], sync)
        if "reread_budget" in section:
            budgets[name] = _budget(f"{key} reread_budget", section["reread_budget"])
    return tiers, budgets


def _budget(key: str, value: object) -> float:
    """A share of the horizon's cells: above 0, at most 1 (1: every cell due)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigError(
            key, f"expected a share of the horizon's cells in (0, 1], e.g. 0.1, got {_show(value)}"
        )
    return float(value)


def _tiers(key: str, tiers: object, sync: SyncSettings) -> tuple[Tier, ...]:
    """`reread = [{ age = "1h", every = "0s" }, …]`: checked against the update horizon,
    which `age = "horizon"` names."""
    shape = "a list of tiers like [{ age = '1h', every = '0s' }, …]"
    if not isinstance(tiers, list) or not all(isinstance(t, dict) for t in tiers):
        raise ConfigError(key, f"expected {shape}, got {_show(tiers)}")
    parsed = []
    for tier in tiers:
        if set(tier) != {"age", "every"}:
            raise ConfigError(key, f"each tier has exactly age and every: {shape}")
        try:
            age = tier["age"]
            until = sync.update_horizon if age == "horizon" else parse_duration(age)
            parsed.append(Tier(until, parse_duration(tier["every"])))
        except (ValueError, TypeError) as exc:
            raise ConfigError(key, str(exc)) from None
    problem = check_tiers(parsed, sync.update_horizon)
    if problem:
        raise ConfigError(key, problem)
    return tuple(parsed)


def read_token(api: ApiSettings, env: Mapping[str, str]) -> str:
    """Return the API token: $RCS_SYNC_TOKEN, systemd credential, then ``api.token_file``.

    Called on every pass so a rotated token is used without a restart; costs one env
    lookup or one small file read. A blank $RCS_SYNC_TOKEN counts as unset. The token
    is registered for log redaction, and no message here ever contains it.
    """
    from_env = env.get(TOKEN_ENV, "").strip()
    if from_env:
        return _accept_token(from_env, TOKEN_ENV)
    credentials = env.get(CREDENTIALS_ENV)
    if credentials and (credential := Path(credentials) / CREDENTIAL_NAME).is_file():
        return _token_from_file(credential, f"${CREDENTIALS_ENV}/{CREDENTIAL_NAME}")
    if api.token_file is not None:
        return _token_from_file(api.token_file, "[api] token_file")
    raise ConfigError(
        "[api] token_file",
        f"no API token: set {TOKEN_ENV}, provide a systemd credential named "
        f"'{CREDENTIAL_NAME}' (LoadCredential={CREDENTIAL_NAME}:...), or set [api] token_file",
    )


def read_number_key(warehouse: WarehouseSettings, env: Mapping[str, str]) -> bytes:
    """The secret for hashing phone numbers: $RCS_SYNC_NUMBER_KEY, the systemd
    credential `number_key`, then ``[warehouse] number_key_file``; like the token, it
    never appears in a message."""
    from_env = env.get(NUMBER_KEY_ENV, "").strip()
    if from_env:
        return _accept_token(from_env, NUMBER_KEY_ENV).encode()
    credentials = env.get(CREDENTIALS_ENV)
    if credentials and (credential := Path(credentials) / NUMBER_KEY_CREDENTIAL).is_file():
        return _token_from_file(credential, f"${CREDENTIALS_ENV}/{NUMBER_KEY_CREDENTIAL}").encode()
    if warehouse.number_key_file is not None:
        return _token_from_file(warehouse.number_key_file, "[warehouse] number_key_file").encode()
    raise ConfigError(
        "[warehouse] number_key_file",
        f"number = 'hash' needs a secret: set {NUMBER_KEY_ENV}, provide a systemd "
        f"credential named '{NUMBER_KEY_CREDENTIAL}', or set [warehouse] number_key_file",
    )


def _token_from_file(path: Path, key: str) -> str:
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            raw = handle.read(_MAX_TOKEN_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(key, f"token file {path} not found") from None
    except OSError as exc:
        raise ConfigError(key, f"cannot read token file {path}: {exc.strerror}") from None
    if mode & stat.S_IROTH and path not in _warned_world_readable:
        _warned_world_readable.add(path)
        _log.warning("token_file_world_readable", path=str(path), fix=f"chmod o-r {path}")
    if len(raw) > _MAX_TOKEN_BYTES:
        raise ConfigError(key, f"token file {path} is too large to be a token")
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(key, f"token file {path} is not UTF-8 text") from None
    if not token:
        raise ConfigError(key, f"token file {path} is empty")
    return _accept_token(token, f"{key} ({path})")


def _accept_token(token: str, key: str) -> str:
    # Anything outside visible ASCII would break or be rejected in the Authorization
    # header, and the HTTP library's error message could then echo the token.
    if not all("!" <= char <= "~" for char in token):
        raise ConfigError(key, "token contains whitespace, control or non-ASCII characters")
    register_secret(token)
    return token


class _Table:
    """One TOML table; its allowed keys are the field names of the matching dataclass."""

    def __init__(self, section: str, values: Mapping[str, object], base_dir: Path) -> None:
        self.section = section
        self.base_dir = base_dir
        self._values = values

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"[{self.section}] {name}", problem)

    def get(self, name: str) -> object:
        return self._values.get(name, _MISSING)

    def string(self, name: str, default: str) -> str:
        value = self.get(name)
        if value is _MISSING:
            return default
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, f"expected a non-empty string, got {_show(value)}")
        return value.strip()

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"expected true or false, got {_show(value)}")
        return value

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        value = self.get(name)
        if value is _MISSING:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(name, f"expected an integer, got {_show(value)}")
        if value < minimum:
            raise self.error(name, f"must be at least {minimum}, got {value}")
        return value

    def optional_integer(self, name: str, *, minimum: int) -> int | None:
        if self.get(name) is _MISSING:
            return None
        return self.integer(name, minimum, minimum=minimum)

    def duration(self, name: str, default: timedelta, *, minimum: timedelta) -> timedelta:
        value = self.get(name)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise self.error(name, f"expected a duration like '30s' or '1h30m', got {_show(value)}")
        try:
            parsed = parse_duration(value)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None
        if parsed < minimum:
            raise self.error(name, f"must be at least {format_duration(minimum)}, got {value!r}")
        return parsed

    def instant(self, name: str, default: datetime) -> datetime:
        value = self.get(name)
        if value is _MISSING:
            return default
        # TOML has native date-times and dates; quoted strings are accepted too.
        if isinstance(value, datetime):
            return as_utc(value)
        if isinstance(value, date):
            return datetime(value.year, value.month, value.day, tzinfo=UTC)
        if not isinstance(value, str):
            raise self.error(
                name, f"expected a time like '2026-01-01T00:00:00Z', got {_show(value)}"
            )
        try:
            return parse_instant(value)
        except ValueError as exc:
            raise self.error(name, str(exc)) from None

    def path(self, name: str) -> Path | None:
        value = self.get(name)
        if value is _MISSING:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, f"expected a path, got {_show(value)}")
        return self.base_dir / Path(value.strip()).expanduser()


_REPLACED = {
    ("sync", "max_records_per_request"): (
        "removed: a response is never re-read for its size; use [sync] "
        "target_records_per_request (window planning) and, if the server is known to cut "
        "responses at a count, [api] server_limit"
    ),
}
"""Keys that were removed, with what replaced them (a one-line config error)."""


def _show(value: object) -> str:
    """A short rendering of a bad value for an error line (TOML spelling for booleans)."""
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _split_sections(document: Mapping[str, object], base_dir: Path) -> dict[str, _Table]:
    """Check sections and key names before any value.

    A typo is then reported as a typo, not as a confusing consequence of the default
    it silently left in place (e.g. "min_window longer than window").
    """
    sections = ", ".join(f"[{name}]" for name in _SCHEMA)
    for name, value in document.items():
        if name in _SCHEMA or name == "streams":
            continue
        if isinstance(value, dict):
            raise ConfigError(f"[{name}]", f"unknown section; expected one of {sections}")
        raise ConfigError(name, f"unknown top-level key; settings belong in {sections}")
    tables = {}
    for name, schema in _SCHEMA.items():
        values = document.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}]", f"expected a table, got {_show(values)}")
        known = [item.name for item in fields(schema)]
        for key in values:
            if (name, key) in _REPLACED:
                raise ConfigError(f"[{name}] {key}", _REPLACED[name, key])
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
                raise ConfigError(f"[{name}] {key}", f"unknown key; {hint}")
        tables[name] = _Table(name, values, base_dir)
    return tables


def _api(table: _Table) -> ApiSettings:
    settings = ApiSettings(
        base_url=_base_url(table),
        token_file=table.path("token_file"),
        teams=_teams(table),
        include_content=table.boolean("include_content", ApiSettings.include_content),
        timeout=table.duration("timeout", ApiSettings.timeout, minimum=_MILLISECOND),
        connect_timeout=table.duration(
            "connect_timeout", ApiSettings.connect_timeout, minimum=_MILLISECOND
        ),
        retry_budget=table.duration("retry_budget", ApiSettings.retry_budget, minimum=timedelta()),
        backoff_initial=table.duration(
            "backoff_initial", ApiSettings.backoff_initial, minimum=_MILLISECOND
        ),
        backoff_max=table.duration("backoff_max", ApiSettings.backoff_max, minimum=_MILLISECOND),
        ca_bundle=table.path("ca_bundle"),
        concurrency=table.integer("concurrency", ApiSettings.concurrency, minimum=1),
        server_limit=table.optional_integer("server_limit", minimum=1),
    )
    if settings.backoff_max < settings.backoff_initial:
        raise table.error("backoff_max", "must not be shorter than backoff_initial")
    if settings.ca_bundle is not None and not settings.ca_bundle.is_file():
        raise table.error("ca_bundle", f"{settings.ca_bundle} is not a file")
    return settings


def _base_url(table: _Table) -> str:
    value = table.get("base_url")
    if value is _MISSING:
        raise table.error("base_url", "required, e.g. base_url = 'https://api.example.com'")
    if not isinstance(value, str):
        raise table.error("base_url", f"expected a URL string, got {_show(value)}")
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # Deliberately not echoed: the value holds a credential.
        raise table.error(
            "base_url", f"must not contain credentials; use {TOKEN_ENV} or token_file"
        )
    try:
        parts.port  # noqa: B018 - the property validates the port
    except ValueError:
        raise table.error("base_url", f"has an invalid port, got {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise table.error("base_url", f"expected a URL like 'https://api.example.com', got {url!r}")
    if parts.query or parts.fragment:
        raise table.error("base_url", f"must not contain a query or fragment, got {url!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise table.error(
            "base_url", f"must use https (http is allowed only for loopback hosts), got {url!r}"
        )
    return url


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _teams(table: _Table) -> tuple[int, ...]:
    value = table.get("teams")
    if value is _MISSING:
        return ApiSettings.teams
    if not isinstance(value, list) or not all(
        isinstance(team, int) and not isinstance(team, bool) and team >= 0 for team in value
    ):
        raise table.error("teams", f"expected a list of team ids like [12, 34], got {_show(value)}")
    if len(set(value)) != len(value):
        raise table.error("teams", f"lists a team more than once: {_show(value)}")
    return tuple(value)


def _sync(table: _Table) -> SyncSettings:
    settings = SyncSettings(
        initial_start=table.instant("initial_start", SyncSettings.initial_start),
        window=table.duration("window", SyncSettings.window, minimum=_SECOND),
        update_horizon=table.duration(
            "update_horizon", SyncSettings.update_horizon, minimum=_SECOND
        ),
        interval=table.duration("interval", SyncSettings.interval, minimum=_SECOND),
        overlap=table.duration("overlap", SyncSettings.overlap, minimum=timedelta()),
        clock_skew=table.duration("clock_skew", SyncSettings.clock_skew, minimum=timedelta()),
        target_records_per_request=table.integer(
            "target_records_per_request", SyncSettings.target_records_per_request, minimum=1
        ),
        min_records_per_request=table.integer(
            "min_records_per_request", SyncSettings.min_records_per_request, minimum=0
        ),
        min_window=table.duration("min_window", SyncSettings.min_window, minimum=_SECOND),
        streams=_streams(table),
    )
    if settings.min_window > settings.window:
        raise table.error("min_window", "must not be longer than window")
    if settings.overlap + settings.clock_skew >= MODIFIED_SINCE_LIMIT:
        raise table.error(
            "overlap",
            f"overlap + clock_skew must stay under {MODIFIED_SINCE_LIMIT // _HOUR}h, "
            "the API's limit for modified_since",
        )
    return settings


def _streams(table: _Table) -> tuple[str, ...]:
    """Names of registered stream declarations (`model/streams.py`)."""
    value = table.get("streams")
    if value is _MISSING:
        return SyncSettings.streams
    if not isinstance(value, list) or not value or not all(isinstance(n, str) for n in value):
        raise table.error(
            "streams", f"expected a list of stream names like ['rcs_records'], got {_show(value)}"
        )
    known = [stream.name for stream in registered()]
    for name in value:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
            raise table.error("streams", f"unknown stream {name!r}; {hint}")
    if len(set(value)) != len(value):
        raise table.error("streams", f"lists a stream more than once: {_show(value)}")
    return tuple(value)


def _warehouse(table: _Table) -> WarehouseSettings:
    memory_limit = table.string("memory_limit", WarehouseSettings.memory_limit)
    if not _MEMORY_LIMIT.fullmatch(memory_limit):
        raise table.error(
            "memory_limit", f"expected a size like '1GB', '512MiB' or '50%', got {memory_limit!r}"
        )
    kind = table.string("kind", WarehouseSettings.kind)
    if kind not in WAREHOUSE_KINDS:
        raise table.error("kind", f"expected one of {', '.join(WAREHOUSE_KINDS)}, got {kind!r}")
    lake = _lake(table) if kind == "ducklake" else None
    if lake is None:
        for name in ("catalog", "data_path"):
            if table.get(name) is not _MISSING:
                raise table.error(name, 'only for kind = "ducklake"')
    return WarehouseSettings(
        kind=kind,
        catalog=lake[0] if lake else None,
        data_path=lake[1] if lake else None,
        path=table.path("path") or table.base_dir / WarehouseSettings.path,
        spool_dir=table.path("spool_dir"),
        lock_timeout=table.duration(
            "lock_timeout", WarehouseSettings.lock_timeout, minimum=timedelta()
        ),
        memory_limit=memory_limit,
        threads=table.integer("threads", WarehouseSettings.threads, minimum=1),
        snapshot_path=table.path("snapshot_path"),
        number=_number(table),
        number_key_file=table.path("number_key_file"),
        storage_version=_storage_version(table),
    )


def _lake(table: _Table) -> tuple[str, str]:
    """A lake's catalog and data path; the keys only a DuckDB file has are refused."""
    for name in _FILE_ONLY:
        if table.get(name) is not _MISSING:
            raise table.error(
                name, 'means nothing for kind = "ducklake" (readers attach the lake itself)'
            )
    for name in ("catalog", "data_path", "spool_dir"):
        if table.get(name) is _MISSING:
            raise table.error(name, 'required for kind = "ducklake"')
    catalog = table.string("catalog", "")
    # Never echo the value: it may hold the very password refused here.
    if _CATALOG_PASSWORD.search(catalog):
        raise table.error(
            "catalog",
            "holds a password: leave it out and let libpq read it from PGPASSWORD, "
            f"PGPASSFILE or a systemd credential named '{PGPASS_CREDENTIAL}' "
            f"(LoadCredential={PGPASS_CREDENTIAL}:…, a libpq password file)",
        )
    if not catalog.startswith(CATALOG_KINDS):
        raise table.error(
            "catalog",
            "expected a DuckLake catalog like 'postgres:dbname=rcs host=db user=rcs' "
            "or 'sqlite:/var/lib/rcs-sync/catalog.sqlite'",
        )
    if catalog.startswith("sqlite:"):
        sqlite = Path(catalog.removeprefix("sqlite:")).expanduser()
        catalog = f"sqlite:{sqlite if sqlite.is_absolute() else table.base_dir / sqlite}"
    data = table.string("data_path", "")
    if "://" not in data:
        local = Path(data).expanduser()
        data = str(local if local.is_absolute() else table.base_dir / local)
    return catalog, data


def libpq_environment(env: Mapping[str, str]) -> dict[str, str]:
    """What libpq needs set to find a lake catalog's password: nothing when PGPASSWORD
    or PGPASSFILE is set (or none is needed), else PGPASSFILE at the systemd credential
    `pgpass` when there is one. Only the file's path is passed on, never its content."""
    if env.get("PGPASSWORD") or env.get("PGPASSFILE"):
        return {}
    credentials = env.get(CREDENTIALS_ENV)
    if credentials and (passfile := Path(credentials) / PGPASS_CREDENTIAL).is_file():
        return {"PGPASSFILE": str(passfile)}
    return {}


_STORAGE_VERSION = re.compile(r"v\d+\.\d+\.\d+|latest")


def _storage_version(table: _Table) -> str:
    """A DuckDB release name ("v1.1.0") or "latest"; DuckDB itself knows which exist."""
    version = table.string("storage_version", WarehouseSettings.storage_version)
    if not _STORAGE_VERSION.fullmatch(version):
        raise table.error(
            "storage_version",
            f"expected a DuckDB version like 'v1.1.0', or 'latest', got {version!r}",
        )
    return version


def _number(table: _Table) -> str:
    mode = table.string("number", WarehouseSettings.number)
    if mode not in NUMBER_MODES:
        raise table.error("number", f"expected one of {', '.join(NUMBER_MODES)}, got {mode!r}")
    return mode


def _metrics(table: _Table) -> MetricsSettings:
    value = table.get("listen")
    if value is _MISSING:
        return MetricsSettings()
    if not isinstance(value, str):
        raise table.error(
            "listen", f"expected 'host:port' like '127.0.0.1:9464', got {_show(value)}"
        )
    try:
        parse_listen(value)
    except ValueError as exc:
        raise table.error("listen", str(exc)) from None
    return MetricsSettings(listen=value)


def _maintenance(table: _Table) -> MaintenanceSettings:
    default = MaintenanceSettings()
    return MaintenanceSettings(
        enabled=table.boolean("enabled", default.enabled),
        every=table.duration("every", default.every, minimum=_SECOND),
        expire_snapshots_after=table.duration(
            "expire_snapshots_after", default.expire_snapshots_after, minimum=timedelta()
        ),
        remove_files_after=table.duration(
            "remove_files_after", default.remove_files_after, minimum=timedelta()
        ),
        budget=table.duration("budget", default.budget, minimum=timedelta()),
    )


LISTEN_HINT = "expected HOST:PORT like '127.0.0.1:9464' or '[::1]:9464'"


def parse_listen(text: str) -> tuple[str, int]:
    """Split `[metrics] listen` into (host, port); IPv6 literals must be bracketed, since
    `::1:9464` has no unambiguous reading. Port 0 asks the OS for a free port."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{LISTEN_HINT}, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address, got {text!r}") from None
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"{LISTEN_HINT} (IPv6 addresses in brackets), got {text!r}")
    # isascii: str.isdigit() also accepts digits like '²' that int() rejects.
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"port must be an integer from 0 to 65535, got {text!r}")
    return host, int(port_text)
