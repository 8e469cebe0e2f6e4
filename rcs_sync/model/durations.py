"""Parse and format the durations and instants used in config, CLI flags and logs.

Kept free of I/O and config knowledge so every caller (config, CLI, sync planning)
agrees on one spelling of "1h30m" and one wire format for timestamps.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_UNITS: dict[str, timedelta] = {
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "ms": timedelta(milliseconds=1),
}
# "ms" precedes "m" so "250ms" is not read as 250 minutes followed by junk.
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
# fromisoformat alone also accepts week dates and compact forms ("2026-W01", "20260101"),
# which would silently turn typos into valid instants; only the shapes people write pass.
_INSTANT = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?",
    re.IGNORECASE,
)


def parse_duration(text: str) -> timedelta:
    """Parse "30s", "1h30m", "250ms" or "1.5s"; units must run largest to smallest."""
    expected = f"expected a duration like '30s', '1h30m' or '250ms', got {text!r}"
    source = text.strip()
    total = timedelta()
    position = 0
    previous_unit: timedelta | None = None
    for match in _PART.finditer(source):
        unit = _UNITS[match.group(2)]
        # Out-of-order or repeated units ("30m1h", "5m5m") are far more likely typos
        # than intent, so they are rejected rather than summed.
        if match.start() != position or (previous_unit is not None and unit >= previous_unit):
            raise ValueError(expected)
        try:
            total += float(match.group(1)) * unit
        except OverflowError:
            raise ValueError(f"duration {text!r} is too large") from None
        position = match.end()
        previous_unit = unit
    if previous_unit is None or position != len(source):
        raise ValueError(expected)
    return total


def format_duration(value: timedelta) -> str:
    """Render compactly ("3d4h", "5m", "250ms") in a form parse_duration reads back.

    Sub-millisecond remainders are dropped: nothing here is configured or reported
    more finely than the API's millisecond timestamps.
    """
    sign = "-" if value < timedelta() else ""
    remaining = abs(value)
    parts = []
    for name, unit in _UNITS.items():
        count, remaining = divmod(remaining, unit)
        if count:
            parts.append(f"{count}{name}")
    return sign + "".join(parts) if parts else "0s"


def parse_instant(text: str) -> datetime:
    """Parse an ISO-8601 instant into aware UTC; naive input and bare dates mean UTC."""
    source = text.strip()
    if not _INSTANT.fullmatch(source):
        raise ValueError(
            f"expected an ISO-8601 time like '2026-01-01T00:00:00Z' or '2026-01-01', got {text!r}"
        )
    try:
        parsed = datetime.fromisoformat(source)
    except ValueError as exc:
        raise ValueError(f"invalid time {text!r}: {exc}") from None
    return as_utc(parsed)


def format_instant(value: datetime) -> str:
    """Render as the API writes timestamps: UTC, "Z", milliseconds only when non-zero.

    Sub-millisecond digits are truncated, never rounded up, so a formatted window
    start can only move earlier and never skips a record.
    """
    utc = as_utc(value)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    millis = utc.microsecond // 1000
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def as_utc(value: datetime) -> datetime:
    """Normalise to aware UTC, reading naive values as UTC rather than local time."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
