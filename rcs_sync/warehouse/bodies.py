"""The slow path for response bodies DuckDB's JSON parser refuses.

A body can be valid JSON and still break `read_json`: a lone UTF-16 surrogate escape,
raw bytes that are not UTF-8, an element that is not an object. Rather than lose the
whole window, the body is split into elements here; elements DuckDB can load are
written out as newline-delimited JSON, the rest are returned for quarantine. A body that
is not JSON at all is a `BadBody`, fetched again.

Elements are written as the server wrote them, not re-serialised by Python, so DuckDB
reads the same text on both paths: Python would turn a number like 1e400 into
`Infinity`, which is not JSON and not what the server sent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from rcs_sync.model.errors import BadBody

WHITESPACE = " \t\r\n"
RAW_LIMIT = 100_000
"""Characters of a rejected element kept in quarantine (a 10 MB string is not kept whole)."""
DECODER = json.JSONDecoder(parse_int=str, parse_float=str)
"""Numbers stay text: turned into Python numbers, 1e400 would become inf, and an integer
of more than 4,300 digits would raise ValueError (Python's int conversion limit)."""
LINE_BREAKS = str.maketrans("\r\n", "  ")
"""Raw line breaks in valid JSON lie between tokens (strings escape theirs), so an
element of a pretty-printed body becomes one line by turning them into spaces."""


@dataclass(frozen=True)
class Rejected:
    record_id: str | None
    reason: str
    raw: str


def _elements(text: str) -> list[tuple[object, int, int]]:
    """Each element of the array in `text`: its value, and where its text starts and ends."""
    pos = len(text) - len(text.lstrip(WHITESPACE))
    if not text.startswith("[", pos):
        raise BadBody("body is not a JSON array")
    pos += 1
    items: list[tuple[object, int, int]] = []
    expect_value = True
    while True:
        while pos < len(text) and text[pos] in WHITESPACE:
            pos += 1
        if pos >= len(text):
            raise BadBody("body ends inside the JSON array")
        if text[pos] == "]" and (not items or not expect_value):
            return items
        if not expect_value:
            if text[pos] != ",":
                raise BadBody(f"body is not valid JSON near character {pos}")
            pos += 1
            expect_value = True
            continue
        try:
            item, end = DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            raise BadBody(f"body is not valid JSON near character {pos}") from None
        except RecursionError:
            end = _container_end(text, pos)
            item = TooDeep(text[pos:end])
        items.append((item, pos, end))
        pos = end
        expect_value = False


@dataclass(frozen=True)
class TooDeep:
    """An element nested deeper than Python's parser goes: quarantined, not parsed."""

    text: str


def _container_end(text: str, pos: int) -> int:
    """Where the array or object starting at `pos` ends, found without recursion."""
    depth = 0
    in_string = False
    escaped = False
    for index in range(pos, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return index + 1
    raise BadBody(f"body ends inside a value starting at character {pos}")


def _check(item: object, key: str) -> tuple[str | None, str | None]:
    """(record id as text, reason to reject) for one element."""
    if isinstance(item, TooDeep):
        found = re.search(r'"' + re.escape(key) + r'"\s*:\s*"?(-?\w+)', item.text)
        return (found.group(1)[:100] if found else None), "record: nested too deeply to parse"
    if not isinstance(item, dict):
        return None, "record: not a JSON object"
    record_id = item.get(key)
    shown = None if record_id is None else str(record_id)[:100]
    try:
        json.dumps(item, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return shown, "record: text is not valid Unicode (non-UTF-8 bytes or lone surrogate)"
    return shown, None


def sanitize_body(body: Path, key: str) -> tuple[Path, list[Rejected]]:
    """Rewrite `body` as NDJSON of loadable objects; return the path and the rejects."""
    text = body.read_bytes().decode("utf-8", "surrogateescape")
    rejected: list[Rejected] = []
    out_path = body.with_suffix(".ndjson")
    with out_path.open("w", encoding="utf-8") as out:
        for item, start, end in _elements(text):
            record_id, reason = _check(item, key)
            if reason is None:
                out.write(text[start:end].translate(LINE_BREAKS))
                out.write("\n")
                continue
            source = text[start : min(end, start + RAW_LIMIT)]
            raw = source.encode("utf-8", "backslashreplace").decode("utf-8")
            rejected.append(Rejected(record_id, reason, raw[:RAW_LIMIT]))
    return out_path, rejected
