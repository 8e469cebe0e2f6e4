"""structlog setup: journald-friendly JSON lines or a console view, always redacted.

Every event passes through :func:`redact_event` just before rendering, after exceptions
have been turned into text, so neither a registered secret (the API token) nor an
``Authorization``/``Bearer`` credential reaches a log line, whichever field carries it.
"""

from __future__ import annotations

import json as jsonlib
import logging
import re
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "***"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# journald reads a leading "<N>" on stderr as the syslog priority (SyslogLevelPrefix=),
# which is what `journalctl -p warning` filters on.
_SYSLOG_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_LEADING_KEYS = ("timestamp", "level", "event")
_HANDLER_NAME = "rcs_sync"
_JSON_LINES: list[bool] = []
"""Whether the last `configure_logging` chose JSON lines (empty until it ran)."""

# "Authorization: Bearer abc", "'Authorization': 'Token abc'", "authorization=abc&x=1".
_AUTHORIZATION = re.compile(
    r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?)"
    r"(?:(bearer|basic|token|digest)[ \t]+)?"
    r"[^\s\"',;}&]+"
)
# RFC 6750 token68 characters.
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+")


class _Secrets:
    """Registered secrets compiled into one alternation, so redaction is one regex pass."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()
        self.pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        with self._lock:
            if not value or value in self._values:
                return
            self._values.add(value)
            # Longest first, so a secret containing another is masked whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self.pattern = re.compile("|".join(map(re.escape, ordered)))


_SECRETS = _Secrets()


def register_secret(value: str) -> None:
    """Mask every later occurrence of ``value`` in logs and in :func:`redact` output."""
    _SECRETS.add(value)


def redact(text: str) -> str:
    """Mask registered secrets and Authorization/Bearer credentials in free text."""
    pattern = _SECRETS.pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = _AUTHORIZATION.sub(_mask_authorization, text)
    return _BEARER.sub(rf"\1 {REDACTED}", text)


def _mask_authorization(match: re.Match[str]) -> str:
    scheme = match.group(2)
    return match.group(1) + (f"{scheme} " if scheme else "") + REDACTED


def redact_event(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Redact every string, however deeply nested.

    Values of other types are stringified first: renderers would call str()/repr() on
    them later anyway, after redaction had already run.
    """
    return {key: _redact_value(value) for key, value in event_dict.items()}


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(item) for item in value]
    return redact(str(value))


def exception_to_error(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Replace ``exc_info`` with a one-line ``error``: "ExcType: message".

    Keeps JSON events on one line for journald, and turns the exception into text
    before redaction: pretty renderers would otherwise print it (with locals) after.
    """
    exc = _exception(event_dict.pop("exc_info", None))
    if exc is not None:
        name, message = type(exc).__name__, " ".join(str(exc).split())
        event_dict.setdefault("error", f"{name}: {message}" if message else name)
    return event_dict


def exception_with_traceback(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Debug-level variant of :func:`exception_to_error` that also keeps the traceback text."""
    exc = _exception(event_dict.get("exc_info"))
    event_dict = exception_to_error(logger, method_name, event_dict)
    if exc is not None:
        event_dict["exception"] = "".join(traceback.format_exception(exc))
    return event_dict


def _exception(exc_info: object) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple):
        exc: object = exc_info[1]
        return exc if isinstance(exc, BaseException) else None
    return sys.exc_info()[1] if exc_info else None


def render_json_line(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
    """One JSON object per line behind a syslog priority prefix; timestamp/level/event lead."""
    priority = _SYSLOG_PRIORITY.get(str(event_dict.get("level")), _SYSLOG_PRIORITY["info"])
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return f"<{priority}>" + jsonlib.dumps(ordered, default=str)


def configure_logging(
    *, json: bool | None = None, level: str = "info", stream: TextIO | None = None
) -> None:
    """Configure structlog (and stdlib logging) for the whole process; safe to repeat.

    ``json=None`` picks JSON lines unless ``stream`` is a terminal. ``stream=None`` means
    the ``sys.stderr`` of the moment, not of import time, so captured/redirected stderr
    is honoured. Loggers are not cached, so a later call re-targets existing loggers.
    """
    out = sys.stderr if stream is None else stream
    threshold = _LEVELS.get(level.lower())
    if threshold is None:
        raise ValueError(f"unknown log level {level!r}; expected one of: {', '.join(_LEVELS)}")
    tty = out.isatty()
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        exception_with_traceback if threshold <= logging.DEBUG else exception_to_error,
    ]
    as_json = not tty if json is None else json
    _JSON_LINES[:] = [as_json]
    renderer: Processor = render_json_line if as_json else structlog.dev.ConsoleRenderer(colors=tty)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, redact_event, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(out, threshold, shared, renderer)


def json_lines() -> bool:
    """Whether log lines are JSON (configured so, or, before any configuration, because
    stderr is not a terminal): then every line `rcs-sync` writes on stderr must be one."""
    return _JSON_LINES[0] if _JSON_LINES else not sys.stderr.isatty()


def _route_stdlib_logging(
    stream: TextIO, threshold: int, shared: list[Processor], renderer: Processor
) -> None:
    """Send library records (apscheduler job failures, urllib3) through the same pipeline.

    Unless at debug level, libraries only get through from WARNING: their INFO chatter
    (one line per scheduler run) would drown the daemon's own events.
    """
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact_event,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    logging.captureWarnings(True)  # Python warnings become log lines too
    root.setLevel(threshold if threshold <= logging.DEBUG else max(threshold, logging.WARNING))
