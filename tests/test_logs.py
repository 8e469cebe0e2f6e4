"""Logging pipeline: processors as plain functions, then the configured end-to-end output."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pty
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from rcs_sync.logs import (
    configure_logging,
    exception_to_error,
    exception_with_traceback,
    redact,
    redact_event,
    register_secret,
    render_json_line,
)
from tests.conftest import RCS_SYNC


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back for other test modules."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def secret() -> str:
    """A fresh secret per test: registrations are process-wide and never removed."""
    value = f"tok-{uuid.uuid4().hex}"
    register_secret(value)
    return value


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def parse_line(line: str) -> tuple[int, dict[str, Any]]:
    assert line.startswith("<")
    prefix, _, body = line.partition(">")
    parsed: dict[str, Any] = json.loads(body)
    return int(prefix[1:]), parsed


def failure(message: str) -> ValueError:
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


# --- redact ----------------------------------------------------------------------------


def test_redact_registered_secret(secret: str) -> None:
    assert redact(f"token={secret}; again {secret}!") == "token=***; again ***!"


def test_register_secret_ignores_empty() -> None:
    register_secret("")
    assert redact("nothing to hide") == "nothing to hide"


def test_longer_secret_containing_a_shorter_one_is_masked_whole(secret: str) -> None:
    longer = secret + "-extended"
    register_secret(longer)
    assert redact(f"a {longer} b") == "a *** b"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.DEF-123", "Authorization: Bearer ***"),
        ("authorization: bearer abc", "authorization: bearer ***"),
        ("{'Authorization': 'Bearer abc'}", "{'Authorization': 'Bearer ***'}"),
        ('{"Authorization": "Token abc"}', '{"Authorization": "Token ***"}'),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic ***"),
        ("Authorization: rawtoken next", "Authorization: *** next"),
        ("authorization=abc&x=1", "authorization=***&x=1"),
        ("sent Bearer abc/def+g== upstream", "sent Bearer *** upstream"),
        ("authorization failed: HTTP 403", "authorization failed: HTTP 403"),
        ("nothing secret here", "nothing secret here"),
    ],
)
def test_redact_authorization_patterns(text: str, expected: str) -> None:
    assert redact(text) == expected


# --- processors as functions -----------------------------------------------------------


def test_redact_event_walks_nested_values(secret: str) -> None:
    event = {
        "event": f"calling with {secret}",
        "headers": {"Authorization": f"Bearer {secret}", "Accept": "application/json"},
        "attempts": [1, f"x{secret}x", {"deep": (secret, 2.5, None, True)}],
        "path": Path(f"/tmp/{secret}"),
        "count": 3,
    }

    result = redact_event(None, "info", event)

    assert result == {
        "event": "calling with ***",
        "headers": {"Authorization": "Bearer ***", "Accept": "application/json"},
        "attempts": [1, "x***x", {"deep": ["***", 2.5, None, True]}],
        "path": "/tmp/***",
        "count": 3,
    }
    assert secret not in repr(result)


def test_exception_to_error_is_one_line() -> None:
    exc = failure("bad\nthings   happened")
    event = exception_to_error(None, "error", {"event": "x", "exc_info": exc})
    assert event == {"event": "x", "error": "ValueError: bad things happened"}


def test_exception_to_error_accepts_every_exc_info_form() -> None:
    exc = failure("boom")
    as_tuple = (type(exc), exc, exc.__traceback__)
    assert exception_to_error(None, "error", {"exc_info": as_tuple}) == {
        "error": "ValueError: boom"
    }
    try:
        raise KeyError("k")
    except KeyError:
        assert exception_to_error(None, "error", {"exc_info": True}) == {"error": "KeyError: 'k'"}
    assert exception_to_error(None, "error", {"exc_info": True}) == {}
    assert exception_to_error(None, "info", {"event": "plain"}) == {"event": "plain"}


def test_exception_without_message_is_just_the_type() -> None:
    event = exception_to_error(None, "error", {"exc_info": TimeoutError()})
    assert event == {"error": "TimeoutError"}


def test_exception_with_traceback_keeps_the_text() -> None:
    event = exception_with_traceback(None, "error", {"exc_info": failure("boom")})
    assert event["error"] == "ValueError: boom"
    assert event["exception"].startswith("Traceback (most recent call last):")
    assert "exc_info" not in event


def test_exception_text_is_redacted_downstream(secret: str) -> None:
    event = exception_to_error(None, "error", {"exc_info": failure(f"401 for {secret}")})
    assert redact_event(None, "error", event) == {"error": "ValueError: 401 for ***"}


@pytest.mark.parametrize(
    ("level", "priority"),
    [("critical", 2), ("error", 3), ("warning", 4), ("info", 6), ("debug", 7)],
)
def test_render_json_line_syslog_prefix(level: str, priority: int) -> None:
    line = render_json_line(
        None, level, {"event": "hello", "n": 1, "level": level, "timestamp": "T"}
    )
    assert line.startswith(f"<{priority}>{{")
    assert parse_line(line) == (
        priority,
        {"timestamp": "T", "level": level, "event": "hello", "n": 1},
    )
    assert line.index('"timestamp"') < line.index('"level"') < line.index('"event"')


def test_render_json_line_stringifies_unknown_values() -> None:
    _, body = parse_line(render_json_line(None, "info", {"event": "e", "at": datetime(2026, 1, 1)}))
    assert body["at"] == "2026-01-01 00:00:00"


# --- configured output -----------------------------------------------------------------


def test_json_lines_when_not_a_tty(secret: str) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)

    structlog.get_logger().info("pass_done", records=3, token=secret)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    priority, body = parse_line(lines[0])
    assert priority == 6
    assert body["event"] == "pass_done"
    assert body["level"] == "info"
    assert body["records"] == 3
    assert body["token"] == "***"
    assert body["timestamp"].endswith("Z")
    assert datetime.fromisoformat(body["timestamp"]).utcoffset() is not None


@pytest.mark.parametrize(
    ("method", "priority"), [("debug", 7), ("info", 6), ("warning", 4), ("error", 3)]
)
def test_priority_per_level(method: str, priority: int) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, level="debug")
    getattr(structlog.get_logger(), method)("event")
    assert parse_line(stream.getvalue())[0] == priority


def test_level_filters_events() -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, level="warning")
    log = structlog.get_logger()
    log.info("hidden")
    log.warning("shown")
    assert [parse_line(line)[1]["event"] for line in stream.getvalue().splitlines()] == ["shown"]


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging(stream=io.StringIO(), level="loud")


def test_exception_is_one_redacted_line(secret: str) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream)
    try:
        raise RuntimeError(f"request failed\nAuthorization: Bearer {secret}")
    except RuntimeError:
        structlog.get_logger().exception("fetch_failed", window="2026-01-01")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    priority, body = parse_line(lines[0])
    assert priority == 3
    assert body["error"] == "RuntimeError: request failed Authorization: Bearer ***"
    assert "exception" not in body
    assert secret not in stream.getvalue()


def test_debug_keeps_the_traceback_but_still_one_line(secret: str) -> None:
    stream = io.StringIO()
    configure_logging(stream=stream, level="debug")
    try:
        raise RuntimeError(secret)
    except RuntimeError:
        structlog.get_logger().exception("fetch_failed")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    body = parse_line(lines[0])[1]
    assert "Traceback (most recent call last)" in body["exception"]
    assert secret not in stream.getvalue()


def test_console_renderer_on_a_tty(secret: str) -> None:
    stream = Tty()
    configure_logging(stream=stream)
    try:
        raise RuntimeError(secret)
    except RuntimeError:
        structlog.get_logger().exception("fetch_failed")

    output = stream.getvalue()
    assert "fetch_failed" in output
    assert not output.startswith("<")
    assert "RuntimeError: ***" in output
    assert secret not in output


def test_json_can_be_forced_on_a_tty_and_console_off_one() -> None:
    tty = Tty()
    configure_logging(stream=tty, json=True)
    structlog.get_logger().info("forced")
    assert tty.getvalue().startswith("<6>{")

    plain = io.StringIO()
    configure_logging(stream=plain, json=False)
    structlog.get_logger().info("forced")
    assert "forced" in plain.getvalue()
    assert not plain.getvalue().startswith("<")
    assert "\x1b[" not in plain.getvalue()  # no colours when not a terminal


def test_reconfiguring_retargets_existing_loggers() -> None:
    log = structlog.get_logger("rcs_sync.test")
    first, second = io.StringIO(), io.StringIO()
    configure_logging(stream=first)
    log.info("one")
    configure_logging(stream=second)
    log.info("two")

    assert [parse_line(x)[1]["event"] for x in first.getvalue().splitlines()] == ["one"]
    assert [parse_line(x)[1]["event"] for x in second.getvalue().splitlines()] == ["two"]


def test_stdlib_records_share_the_pipeline(secret: str) -> None:
    first, stream = io.StringIO(), io.StringIO()
    configure_logging(stream=first)
    configure_logging(stream=stream)
    library = logging.getLogger("apscheduler.executors.default")

    library.info("Running job every 5m")
    try:
        raise ConnectionError(secret)
    except ConnectionError:
        library.exception("Job %s raised an exception", "sync")

    assert first.getvalue() == ""
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    priority, body = parse_line(lines[0])
    assert priority == 3
    assert body["event"] == "Job sync raised an exception"
    assert body["logger"] == "apscheduler.executors.default"
    assert body["error"] == "ConnectionError: ***"
    assert secret not in stream.getvalue()


def _failing_command(tmp_path: Path, stderr: int) -> subprocess.Popen[bytes]:
    config = tmp_path / "rcs-sync.toml"
    config.write_text('[sync]\nwindow = "soon"\n', encoding="utf-8")
    return subprocess.Popen(
        [RCS_SYNC, "--config", str(config), "sync"],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        env={k: v for k, v in os.environ.items() if not k.startswith("RCS_SYNC")},
    )


def test_a_failed_command_ends_with_one_json_line_off_a_terminal(tmp_path: Path) -> None:
    proc = _failing_command(tmp_path, subprocess.PIPE)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    [line] = err.decode().splitlines()
    assert line.startswith("<3>{")
    event = json.loads(line[3:])
    assert event["event"] == "command_failed" and event["kind"] == "config"
    assert event["error"].startswith("config: [api] base_url: required")
    assert event["exit_code"] == 2


def test_on_a_terminal_a_failed_command_still_prints_its_plain_line(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    try:
        proc = _failing_command(tmp_path, terminal)
        os.close(terminal)
        output = b""
        with contextlib.suppress(OSError):  # EIO once the process has closed the pty
            while chunk := os.read(controller, 4096):
                output += chunk
        assert proc.wait(timeout=60) == 2
    finally:
        os.close(controller)
    [line] = output.decode().splitlines()
    assert line.startswith("rcs-sync: config: [api] base_url: required")
