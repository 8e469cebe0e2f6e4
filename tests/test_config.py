"""Config loading, validation messages, token lookup, and the duration/instant parsers."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from rcs_sync.config import (
    ApiSettings,
    ConfigError,
    MaintenanceSettings,
    Settings,
    SyncSettings,
    WarehouseSettings,
    config_path,
    libpq_environment,
    load_settings,
    read_token,
)
from rcs_sync.logs import redact
from rcs_sync.model.durations import format_duration, format_instant, parse_duration, parse_instant
from rcs_sync.model.reread import Tier

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
MINIMAL = '[api]\nbase_url = "https://api.example.com"\n'


def write(tmp_path: Path, text: str, name: str = "rcs-sync.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Settings:
    return load_settings(write(tmp_path, text))


def config_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert "\n" not in str(caught.value)
    return caught.value


# --- durations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("1h", timedelta(hours=1)),
        ("1d", timedelta(days=1)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5s", timedelta(seconds=1.5)),
        ("2d12h", timedelta(days=2, hours=12)),
        ("1s500ms", timedelta(seconds=1, milliseconds=500)),
        ("0s", timedelta()),
        (" 7d ", timedelta(days=7)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "abc", "30", "s", "-5s", "1h 30m", "30m1h", "5m5m", "1H", ".5s", "1.s", "3w"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration like"):
        parse_duration(text)


def test_parse_duration_rejects_overflow() -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_duration("99999999999999999999d")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(days=3, hours=4), "3d4h"),
        (timedelta(minutes=5), "5m"),
        (timedelta(seconds=12), "12s"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(hours=1, seconds=1), "1h1s"),
        (timedelta(), "0s"),
        (timedelta(microseconds=10), "0s"),
        (-timedelta(minutes=90), "-1h30m"),
    ],
)
def test_format_duration(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected


@given(st.integers(min_value=0, max_value=10**12))
def test_format_duration_round_trips(millis: int) -> None:
    value = timedelta(milliseconds=millis)
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T02:00:00+02:00", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2015-01-06T10:21:14.243Z", datetime(2015, 1, 6, 10, 21, 14, 243000, tzinfo=UTC)),
        ("2026-01-01", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T12:30:00", datetime(2026, 1, 1, 12, 30, tzinfo=UTC)),
    ],
)
def test_parse_instant(text: str, expected: datetime) -> None:
    parsed = parse_instant(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text", ["", "yesterday", "2026-W01", "20260101", "2026-13-01", "1/2/2026"]
)
def test_parse_instant_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=repr(text)):
        parse_instant(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2026, 1, 1, tzinfo=UTC), "2026-01-01T00:00:00Z"),
        (datetime(2026, 1, 1, 0, 0, 0, 243000, tzinfo=UTC), "2026-01-01T00:00:00.243Z"),
        (datetime(2026, 1, 1, 0, 0, 0, 999, tzinfo=UTC), "2026-01-01T00:00:00Z"),
        (datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), "2026-01-01T00:00:00Z"),
        (datetime(2026, 1, 1), "2026-01-01T00:00:00Z"),
    ],
)
def test_format_instant(value: datetime, expected: str) -> None:
    assert format_instant(value) == expected


# --- loading and defaults --------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    settings = load_text(tmp_path, MINIMAL)

    assert settings.source == tmp_path / "rcs-sync.toml"
    assert settings.api == ApiSettings(
        base_url="https://api.example.com",
        token_file=None,
        teams=(),
        include_content=False,
        timeout=timedelta(seconds=30),
        connect_timeout=timedelta(seconds=10),
        retry_budget=timedelta(minutes=2),
        backoff_initial=timedelta(milliseconds=500),
        backoff_max=timedelta(seconds=30),
        ca_bundle=None,
    )
    assert settings.sync == SyncSettings(
        initial_start=datetime(2026, 1, 1, tzinfo=UTC),
        window=timedelta(days=1),
        update_horizon=timedelta(days=7),
        interval=timedelta(minutes=5),
        overlap=timedelta(minutes=2),
        clock_skew=timedelta(minutes=5),
        target_records_per_request=500_000,
        min_records_per_request=20_000,
        min_window=timedelta(seconds=1),
        streams=("rcs_records",),
    )
    assert settings.warehouse == WarehouseSettings(
        path=tmp_path / "rcs.duckdb",
        spool_dir=None,
        lock_timeout=timedelta(seconds=60),
        memory_limit="300MB",
        threads=2,
    )
    assert settings.warehouse.spool_path == tmp_path / "rcs.duckdb.spool"


def test_example_config_loads_and_documents_the_defaults() -> None:
    settings = load_settings(EXAMPLE)

    assert settings.api == ApiSettings(base_url="https://api.example.com")
    assert settings.sync == SyncSettings()
    assert settings.warehouse == WarehouseSettings(path=EXAMPLE.parent / "rcs.duckdb")
    assert settings.maintenance == MaintenanceSettings()


def test_example_config_mentions_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for schema in (ApiSettings, SyncSettings, WarehouseSettings, MaintenanceSettings):
        for name in schema.__dataclass_fields__:
            assert f"\n{name} = " in text or f"\n# {name} = " in text, name


def test_every_key_can_be_set(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    settings = load_text(
        tmp_path,
        """
        [api]
        base_url = "https://api.example.com/v1/"
        token_file = "secrets/token"
        teams = [12, 34]
        include_content = true
        timeout = "45s"
        connect_timeout = "3s"
        retry_budget = "0s"
        backoff_initial = "250ms"
        backoff_max = "1m"
        ca_bundle = "ca.pem"

        [sync]
        initial_start = 2025-06-01T00:00:00+02:00
        window = "6h"
        update_horizon = "3d"
        interval = "1m"
        overlap = "30s"
        clock_skew = "0s"
        target_records_per_request = 1000
        min_records_per_request = 0
        min_window = "1m"
        streams = ["rcs_records"]

        [warehouse]
        path = "/var/lib/rcs/rcs.duckdb"
        spool_dir = "spool"
        lock_timeout = "0s"
        memory_limit = "512MiB"
        threads = 4
        """,
    )
    assert settings.api == ApiSettings(
        base_url="https://api.example.com/v1",
        token_file=tmp_path / "secrets/token",
        teams=(12, 34),
        include_content=True,
        timeout=timedelta(seconds=45),
        connect_timeout=timedelta(seconds=3),
        retry_budget=timedelta(),
        backoff_initial=timedelta(milliseconds=250),
        backoff_max=timedelta(minutes=1),
        ca_bundle=tmp_path / "ca.pem",
    )
    assert settings.sync == SyncSettings(
        initial_start=datetime(2025, 5, 31, 22, tzinfo=UTC),
        window=timedelta(hours=6),
        update_horizon=timedelta(days=3),
        interval=timedelta(minutes=1),
        overlap=timedelta(seconds=30),
        clock_skew=timedelta(),
        target_records_per_request=1000,
        min_records_per_request=0,
        min_window=timedelta(minutes=1),
    )
    assert settings.warehouse == WarehouseSettings(
        path=Path("/var/lib/rcs/rcs.duckdb"),
        spool_dir=tmp_path / "spool",
        lock_timeout=timedelta(),
        memory_limit="512MiB",
        threads=4,
    )
    assert settings.warehouse.spool_path == tmp_path / "spool"


@pytest.mark.parametrize(
    "value",
    ['"2026-01-01T00:00:00Z"', "2026-01-01T00:00:00Z", "2026-01-01", "2026-01-01T00:00:00"],
)
def test_initial_start_accepts_strings_and_toml_dates(tmp_path: Path, value: str) -> None:
    settings = load_text(tmp_path, MINIMAL + f"[sync]\ninitial_start = {value}\n")
    assert settings.sync.initial_start == datetime(2026, 1, 1, tzinfo=UTC)


def test_relative_paths_follow_the_config_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    path = write(config_dir, MINIMAL + '[warehouse]\npath = "data/rcs.duckdb"\n')
    monkeypatch.chdir(tmp_path)

    settings = load_settings(Path("etc/rcs-sync.toml"))

    assert settings.source == config_dir / "rcs-sync.toml" == path
    assert settings.warehouse.path == config_dir / "data/rcs.duckdb"
    assert settings.warehouse.spool_path == config_dir / "data/rcs.duckdb.spool"


def test_config_path_precedence() -> None:
    env = {"RCS_SYNC_CONFIG": "/etc/rcs-sync/env.toml"}
    assert config_path("/cli.toml", env) == Path("/cli.toml")
    assert config_path(None, env) == Path("/etc/rcs-sync/env.toml")
    assert config_path(None, {}) == Path("rcs-sync.toml")
    assert config_path(None, {"RCS_SYNC_CONFIG": ""}) == Path("rcs-sync.toml")


# --- errors ----------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="file not found") as caught:
        load_settings(missing)
    assert str(missing) in str(caught.value)
    assert caught.value.key == str(missing)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path)


def test_toml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + "[sync]\nwindow = 1d\n")
    assert "invalid TOML" in str(error)
    assert "line 4" in str(error)
    assert "column" in str(error)


def test_missing_base_url(tmp_path: Path) -> None:
    error = config_error(tmp_path, "")
    assert error.key == "[api] base_url"
    assert str(error).startswith("config: [api] base_url: required")


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + '[sync]\nwindw = "2h"\nmin_window = "2d"\n')
    assert error.key == "[sync] windw"
    assert "unknown key" in str(error)
    assert "did you mean 'window'" in str(error)


def test_unknown_key_without_a_close_match_lists_known_keys(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + "[warehouse]\nzzz = 1\n")
    assert error.key == "[warehouse] zzz"
    assert "memory_limit" in str(error)


def test_a_token_in_the_config_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + 'token = "hunter2-secret"\n')
    assert error.key == "[api] token"
    assert "hunter2" not in str(error)


def test_unknown_section(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + "[synk]\nwindow = '1d'\n")
    assert error.key == "[synk]"
    assert "unknown section" in str(error)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    error = config_error(tmp_path, 'base_url = "https://x"\n' + MINIMAL)
    assert error.key == "base_url"
    assert "top-level" in str(error)


def test_maintenance_settings_and_their_defaults(tmp_path: Path) -> None:
    assert load_text(tmp_path, MINIMAL).maintenance == MaintenanceSettings(
        enabled=True,
        every=timedelta(hours=1),
        expire_snapshots_after=timedelta(days=7),
        remove_files_after=timedelta(hours=1),
        budget=timedelta(seconds=60),
    )
    text = (
        MINIMAL + '[maintenance]\nenabled = false\nevery = "30m"\nexpire_snapshots_after = "2d"\n'
        'remove_files_after = "0s"\nbudget = "0s"\n'
    )
    assert load_text(tmp_path, text).maintenance == MaintenanceSettings(
        enabled=False,
        every=timedelta(minutes=30),
        expire_snapshots_after=timedelta(days=2),
        remove_files_after=timedelta(),
        budget=timedelta(),
    )


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    error = config_error(tmp_path, 'sync = "daily"\n' + MINIMAL)
    assert error.key == "[sync]"
    assert "expected a table" in str(error)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("api", "base_url", "42", "expected a URL string"),
        ("api", "base_url", '"api.example.com"', "expected a URL like"),
        ("api", "base_url", '"ftp://api.example.com"', "expected a URL like"),
        ("api", "base_url", '"https://api.example.com:http"', "invalid port"),
        ("api", "base_url", '"https://api.example.com/?a=1"', "query or fragment"),
        ("api", "token_file", '""', "expected a path"),
        ("api", "teams", "12", "expected a list of team ids"),
        ("api", "teams", '["12"]', "expected a list of team ids"),
        ("api", "teams", "[true]", "expected a list of team ids"),
        ("api", "teams", "[-1]", "expected a list of team ids"),
        ("api", "teams", "[1, 1]", "more than once"),
        ("api", "include_content", '"yes"', "expected true or false"),
        ("api", "timeout", "30", "expected a duration like"),
        ("api", "timeout", '"0s"', "must be at least 1ms"),
        ("api", "connect_timeout", '"soon"', "expected a duration like"),
        ("api", "retry_budget", '"-1s"', "expected a duration like"),
        ("api", "backoff_initial", '"0s"', "must be at least 1ms"),
        ("api", "backoff_max", '"100ms"', "must not be shorter than backoff_initial"),
        ("api", "ca_bundle", '"missing.pem"', "is not a file"),
        ("sync", "initial_start", '"yesterday"', "expected an ISO-8601 time"),
        ("sync", "initial_start", "12:00:00", "expected a time like"),
        ("sync", "window", '"abc"', "expected a duration like '30s'"),
        ("sync", "window", '"500ms"', "must be at least 1s"),
        ("sync", "update_horizon", '"0s"', "must be at least 1s"),
        ("sync", "interval", "true", "got true"),
        ("sync", "overlap", '"47h56m"', "must stay under 48h"),
        ("sync", "clock_skew", '"x"', "expected a duration like"),
        ("sync", "target_records_per_request", "0", "must be at least 1"),
        ("sync", "target_records_per_request", "1.5", "expected an integer"),
        ("sync", "min_records_per_request", "-1", "must be at least 0"),
        ("sync", "max_records_per_request", "1000", "removed: a response is never re-read"),
        ("api", "concurrency", "0", "must be at least 1"),
        ("api", "server_limit", "0", "must be at least 1"),
        ("api", "server_limit", "true", "expected an integer"),
        ("sync", "min_window", '"2d"', "must not be longer than window"),
        ("sync", "streams", '"rcs_records"', "expected a list of stream names"),
        ("sync", "streams", "[]", "expected a list of stream names"),
        ("sync", "streams", "[1]", "expected a list of stream names"),
        ("sync", "streams", '["rcs_record"]', "unknown stream 'rcs_record'; did you mean"),
        ("sync", "streams", '["emails"]', "unknown stream 'emails'; known: rcs_records, text_"),
        ("sync", "streams", '["rcs_records", "rcs_records"]', "more than once"),
        ("warehouse", "path", "[]", "expected a path"),
        ("warehouse", "spool_dir", "1", "expected a path"),
        ("warehouse", "lock_timeout", '"forever"', "expected a duration like"),
        ("warehouse", "memory_limit", '"lots"', "expected a size like"),
        ("warehouse", "storage_version", '"1.5"', "expected a DuckDB version like"),
        ("warehouse", "memory_limit", "1", "expected a non-empty string"),
        ("warehouse", "threads", "0", "must be at least 1"),
        ("warehouse", "threads", "false", "expected an integer"),
        ("maintenance", "enabled", '"no"', "expected true or false"),
        ("maintenance", "every", '"0s"', "must be at least 1s"),
        ("maintenance", "expire_snapshots_after", "7", "expected a duration like"),
        ("maintenance", "remove_files_after", '"-1h"', "expected a duration like"),
        ("maintenance", "budget", '"soon"', "expected a duration like"),
        ("maintenance", "budgett", '"1s"', "unknown key; did you mean 'budget'?"),
    ],
)
def test_bad_values_name_their_key(
    tmp_path: Path, section: str, key: str, value: str, message: str
) -> None:
    base_url = "" if key == "base_url" else 'base_url = "https://api.example.com"\n'
    header = "" if section == "api" else f"[{section}]\n"
    text = f"[api]\n{base_url}{header}{key} = {value}\n"

    error = config_error(tmp_path, text)

    assert error.key == f"[{section}] {key}"
    assert str(error).startswith(f"config: [{section}] {key}: ")
    assert message in str(error)


def test_duration_error_matches_the_documented_shape(tmp_path: Path) -> None:
    error = config_error(tmp_path, MINIMAL + '[sync]\nwindow = "abc"\n')
    assert str(error) == (
        "config: [sync] window: expected a duration like '30s', '1h30m' or '250ms', got 'abc'"
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com",
        "http://127.0.0.1:8000",
        "http://127.3.2.1",
        "http://localhost",
        "http://localhost:8080/base",
        "http://[::1]:8000",
    ],
)
def test_base_url_allowed(tmp_path: Path, url: str) -> None:
    settings = load_text(tmp_path, f'[api]\nbase_url = "{url}/"\n')
    assert settings.api.base_url == url


@pytest.mark.parametrize(
    "url", ["http://example.com", "http://10.0.0.1:8000", "http://localhost.example.com"]
)
def test_plain_http_is_rejected_for_remote_hosts(tmp_path: Path, url: str) -> None:
    error = config_error(tmp_path, f'[api]\nbase_url = "{url}"\n')
    assert error.key == "[api] base_url"
    assert "must use https" in str(error)


def test_credentials_in_base_url_are_rejected_and_not_echoed(tmp_path: Path) -> None:
    error = config_error(tmp_path, '[api]\nbase_url = "https://user:pa55word@api.example.com"\n')
    assert "must not contain credentials" in str(error)
    assert "pa55word" not in str(error)


# --- token -----------------------------------------------------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("file-token-111\n", encoding="utf-8")
    path.chmod(0o600)
    return path


@pytest.fixture
def credentials_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir()
    (directory / "token").write_text("  credential-token-222  \n", encoding="utf-8")
    (directory / "token").chmod(0o400)
    return directory


def api_with(token_file: Path | None) -> ApiSettings:
    return ApiSettings(base_url="https://api.example.com", token_file=token_file)


def test_token_precedence(token_file: Path, credentials_dir: Path) -> None:
    api = api_with(token_file)
    credentials = {"CREDENTIALS_DIRECTORY": str(credentials_dir)}

    assert read_token(api, {"RCS_SYNC_TOKEN": " env-token-000 ", **credentials}) == "env-token-000"
    assert read_token(api, {"RCS_SYNC_TOKEN": "  ", **credentials}) == "credential-token-222"
    assert read_token(api, credentials) == "credential-token-222"
    assert read_token(api, {}) == "file-token-111"


def test_credentials_directory_without_a_token_falls_back_to_the_file(
    token_file: Path, tmp_path: Path
) -> None:
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "empty")}
    assert read_token(api_with(token_file), env) == "file-token-111"


def test_rotated_token_file_is_reread(token_file: Path) -> None:
    api = api_with(token_file)
    assert read_token(api, {}) == "file-token-111"
    token_file.write_text("file-token-rotated\n", encoding="utf-8")
    assert read_token(api, {}) == "file-token-rotated"


def test_token_is_registered_for_redaction(token_file: Path) -> None:
    token = read_token(api_with(token_file), {})
    assert redact(f"GET failed for {token}") == "GET failed for ***"


def test_no_token_anywhere() -> None:
    with pytest.raises(ConfigError) as caught:
        read_token(api_with(None), {"RCS_SYNC_TOKEN": ""})
    message = str(caught.value)
    assert "no API token" in message
    assert "RCS_SYNC_TOKEN" in message
    assert "token_file" in message
    assert "LoadCredential" in message


def test_missing_token_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    with pytest.raises(ConfigError, match="not found") as caught:
        read_token(api_with(missing), {})
    assert str(missing) in str(caught.value)
    assert caught.value.key == "[api] token_file"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("\n  \n", "is empty"),
        ("sekrit-part one\n", "whitespace"),
        ("sekrit-part\nsecond-line\n", "whitespace"),
        ("sekrit-part\u00e9", "non-ASCII"),
        ("sekrit-part" * 5000, "too large"),
    ],
)
def test_bad_token_file_errors_never_contain_the_contents(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "token"
    path.write_text(content, encoding="utf-8")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=message) as caught:
        read_token(api_with(path), {})
    assert "sekrit" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_token_in_env_is_not_echoed() -> None:
    with pytest.raises(ConfigError, match="RCS_SYNC_TOKEN") as caught:
        read_token(api_with(None), {"RCS_SYNC_TOKEN": "sekrit\nx"})
    assert "sekrit" not in str(caught.value)


def test_world_readable_token_file_warns_once(tmp_path: Path) -> None:
    path = tmp_path / "public-token"
    path.write_text("world-readable-333\n", encoding="utf-8")
    path.chmod(0o644)
    api = api_with(path)

    with structlog.testing.capture_logs() as logs:
        read_token(api, {})
        read_token(api, {})

    warnings = [entry for entry in logs if entry["event"] == "token_file_world_readable"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["path"] == str(path)
    assert "world-readable-333" not in repr(logs)


def test_private_token_file_does_not_warn(token_file: Path) -> None:
    assert os.stat(token_file).st_mode & 0o077 == 0
    with structlog.testing.capture_logs() as logs:
        read_token(api_with(token_file), {})
    assert logs == []


def test_reread_tiers_per_stream(tmp_path: Path) -> None:
    base = '[api]\nbase_url = "https://api.example.com"\n[sync]\nupdate_horizon = "3d"\n'
    tiers = (
        '[streams.text_records]\nreread = [{ age = "30m", every = "0s" }, '
        '{ age = "horizon", every = "6h" }]\n'
    )
    path = tmp_path / "rcs-sync.toml"
    path.write_text(base + tiers, encoding="utf-8")
    settings = load_settings(path)
    assert settings.reread == {
        "text_records": (
            Tier(timedelta(minutes=30), timedelta(0)),
            Tier(timedelta(days=3), timedelta(hours=6)),
        )
    }
    short = '[streams.text_records]\nreread = [{ age = "1d", every = "1h" }]\n'
    assert "reach the update horizon" in str(config_error(tmp_path, base + short))
    rcs = '[streams.rcs_records]\nreread = [{ age = "horizon", every = "1h" }]\n'
    assert "without modified_since" in str(config_error(tmp_path, base + rcs))
    typo = "[streams.text_records]\nrerad = []\n"
    assert "unknown key" in str(config_error(tmp_path, base + typo))


def test_reread_budget_per_stream(tmp_path: Path) -> None:
    base = '[api]\nbase_url = "https://api.example.com"\n'
    path = tmp_path / "rcs-sync.toml"
    path.write_text(base + "[streams.call_records]\nreread_budget = 0.25\n", encoding="utf-8")
    assert load_settings(path).reread_budget == {"call_records": 0.25}
    for bad in ("0", "1.5", "-0.1", "true", '"10%"'):
        error = config_error(tmp_path, base + f"[streams.text_records]\nreread_budget = {bad}\n")
        assert error.key == "[streams.text_records] reread_budget", error
        assert "a share of the horizon's cells in (0, 1]" in str(error)
    rcs = "[streams.rcs_records]\nreread_budget = 0.5\n"
    assert "without modified_since" in str(config_error(tmp_path, base + rcs))


# --- a lake (kind = "ducklake") --------------------------------------------------------

LAKE = MINIMAL + '[warehouse]\nkind = "ducklake"\n'
CATALOG = 'catalog = "postgres:dbname=rcs host=db.internal user=rcs_sync"\n'
LAKE_OK = LAKE + CATALOG + 'data_path = "lake"\nspool_dir = "spool"\n'


def test_a_lake_config_resolves_its_paths_and_names_the_lake(tmp_path: Path) -> None:
    warehouse = load_text(tmp_path, LAKE_OK).warehouse
    assert (warehouse.kind, warehouse.catalog) == (
        "ducklake",
        "postgres:dbname=rcs host=db.internal user=rcs_sync",
    )
    assert warehouse.data_path == str(tmp_path / "lake")
    assert warehouse.lock_anchor == warehouse.spool_path == tmp_path / "spool"
    assert warehouse.label == "lake ducklake:postgres:dbname=rcs host=db.internal user=rcs_sync"
    sqlite = load_text(
        tmp_path,
        LAKE + 'catalog = "sqlite:c.sqlite"\ndata_path = "s3://b/p"\nspool_dir = "spool"\n',
    ).warehouse
    assert (sqlite.catalog, sqlite.data_path) == (f"sqlite:{tmp_path / 'c.sqlite'}", "s3://b/p")


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (LAKE + 'data_path = "d"\nspool_dir = "s"\n', "[warehouse] catalog", "required"),
        (LAKE + CATALOG + 'spool_dir = "s"\n', "[warehouse] data_path", "required"),
        (LAKE + CATALOG + 'data_path = "d"\n', "[warehouse] spool_dir", "required"),
        (LAKE_OK + 'path = "rcs.duckdb"\n', "[warehouse] path", "means nothing"),
        (LAKE_OK + 'snapshot_path = "s.duckdb"\n', "[warehouse] snapshot_path", "means nothing"),
        (LAKE_OK + 'storage_version = "v1.1.0"\n', "[warehouse] storage_version", "nothing"),
        (MINIMAL + "[warehouse]\n" + CATALOG, "[warehouse] catalog", 'only for kind = "ducklake"'),
        (MINIMAL + '[warehouse]\nkind = "lake"\n', "[warehouse] kind", "expected one of duckdb"),
        (
            LAKE + 'catalog = "mysql:db=x"\ndata_path = "d"\nspool_dir = "s"\n',
            "[warehouse] catalog",
            "expected a DuckLake catalog",
        ),
    ],
)
def test_lake_config_errors_name_their_key(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    error = config_error(tmp_path, text)
    assert error.key == key and problem in str(error), str(error)


@pytest.mark.parametrize(
    "catalog",
    [
        "postgres:dbname=rcs host=db user=rcs password=hunter2-secret",
        "postgres:dbname=rcs PASSWORD = hunter2-secret",
        "postgres:postgresql://rcs:hunter2-secret@db/rcs",
    ],
)
def test_a_password_in_the_catalog_is_refused_without_echoing_it(
    tmp_path: Path, catalog: str
) -> None:
    error = config_error(
        tmp_path, LAKE + f'catalog = "{catalog}"\ndata_path = "d"\nspool_dir = "s"\n'
    )
    assert error.key == "[warehouse] catalog"
    assert "hunter2-secret" not in str(error)
    assert "PGPASSWORD" in str(error) and "pgpass" in str(error)


def test_libpq_finds_the_password_in_a_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "pgpass").write_text("db:5432:rcs:rcs:secret\n", encoding="utf-8")
    credentials = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert libpq_environment(credentials) == {"PGPASSFILE": str(tmp_path / "pgpass")}
    # What the operator set for libpq wins; nothing at all leaves libpq to its defaults.
    assert libpq_environment({**credentials, "PGPASSWORD": "x"}) == {}
    assert libpq_environment({**credentials, "PGPASSFILE": "/etc/pgpass"}) == {}
    assert libpq_environment({"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}) == {}
