"""Response bodies on disk, cut into parts DuckDB can parse in parallel.

DuckDB parses one JSON array on one thread, but several files on all of them. So
while the body is written, every `PART_BYTES` or so it is cut at a separator between
two records: the part so far is closed with `]` and the next one opened with `[`.

A separator is a comma between a `}` and a `{` (with any whitespace around it), which
finds the record boundary of every layout servers use: compact `},{`, one record per
line `}\n,{`, indented objects `},\n    {`. Such a comma can also sit inside a string
(`"a},{b"`), so the writer follows whether the body is inside a string as it goes,
which costs a `bytes.count` per chunk: outside strings a `"` toggles the state, and
JSON only allows a backslash inside strings, where it escapes the next character, so
dropping every backslash pair (`re.sub`, only on chunks that hold a backslash) leaves
exactly the quotes that count. A candidate inside a string is skipped. A separator
whose whitespace holds a line break needs no such check: JSON strings cannot hold a raw
line break. So once the body has been cut at one (one record per line, indented
objects), the writer stops following strings and cuts only at such separators, which
spares it a pass over every byte.

What the writer does not follow is nesting: a record holding an array of objects
(`{"x":[{…},{…}]}`) has separators one level down. A cut there, or anywhere else that
is not a top-level separator, leaves the part before it inside an object, an array or
a string, so that part is not valid JSON: DuckDB says so, and the loader falls back to
`whole()`, the body exactly as the server sent it. A wrong cut costs time, never data.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from rcs_sync.model.responses import Spool, create_private

PREFIX = "body-"
"""Spooled files are named body-<pid>-<random>…, so orphans of dead processes are found."""
PART_BYTES = 8 << 20
"""Cut roughly this often (~50k records): a window of 100k records already loads on two
threads, and a part this size costs DuckDB nothing measurable to open."""
SEPARATOR = re.compile(rb"\}[ \t\r\n]*(,)[ \t\r\n]*\{")
"""A comma between two objects: a record boundary unless it lies inside a string."""
ESCAPE = re.compile(rb"\\.", re.DOTALL)
"""A backslash and the character it escapes (only ever inside a string)."""
CANDIDATES = 16
"""Separators tried per chunk before waiting for the next one (strings full of `},{`)."""


class SpoolWriter:
    """Writes a body as it arrives, cutting it into parts (see the module docstring)."""

    def __init__(self, directory: Path, *, part_bytes: int = PART_BYTES) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        remove_orphans(directory)
        fd, name = tempfile.mkstemp(prefix=f"{PREFIX}{os.getpid()}-", dir=directory)
        os.close(fd)
        self._base = Path(name)
        self._part_bytes = part_bytes
        self._parts: list[Path] = []
        self._out: BinaryIO = self._open_part()
        self._written = 0
        """Bytes in the current part."""
        self.size = 0
        self._in_string = False
        """Whether the bytes written so far end inside a JSON string."""
        self._escaped = False
        """Whether they end on a backslash inside a string (the next byte is escaped)."""
        self._following = True
        """Whether strings are followed; off once a cut fell at a line break."""

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._out.close()
        if exc is not None:
            self.spool().remove()

    def _open_part(self) -> BinaryIO:
        part = self._base.with_name(f"{self._base.name}-{len(self._parts)}.json")
        self._parts.append(part)
        return create_private(part)

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        comma = self._cut_at(chunk) if self._written + len(chunk) >= self._part_bytes else -1
        if comma < 0:
            self._out.write(chunk)
            self._written += len(chunk)
            if self._following:
                self._advance(chunk)
            return
        self._out.write(chunk[:comma])
        self._out.write(b"]")
        self._out.close()
        self._out = self._open_part()
        self._out.write(b"[")
        rest = chunk[comma + 1 :]
        self._out.write(rest)
        self._written = len(rest)
        self._in_string, self._escaped = False, False  # a separator is outside strings
        if self._following:
            self._advance(rest)

    def _advance(self, data: bytes) -> None:
        """Follow the string state over `data`, written after the current state."""
        self._in_string, self._escaped = _string_state(data, self._in_string, self._escaped)

    def _cut_at(self, chunk: bytes) -> int:
        """Index of the first separator in the chunk that lies outside strings, or -1."""
        for tried, found in enumerate(SEPARATOR.finditer(chunk)):
            if tried >= CANDIDATES:
                break
            comma = found.start(1)
            if b"\n" in found.group(0):
                self._following = False
                return comma
            if not self._following:
                continue
            inside, _ = _string_state(chunk[:comma], self._in_string, self._escaped)
            if not inside:
                return comma
        return -1

    def spool(self) -> Spool:
        self._out.close()
        self._base.unlink(missing_ok=True)
        return Spool(tuple(self._parts), self.size)


def _string_state(data: bytes, in_string: bool, escaped: bool) -> tuple[bool, bool]:
    """Whether the body is inside a string (and on a pending backslash) after `data`."""
    if escaped and data:
        data = data[1:]  # the character the last chunk's backslash escapes
        escaped = False
    if b"\\" in data:
        data = ESCAPE.sub(b"", data)
        if data.endswith(b"\\"):
            data, escaped = data[:-1], True
    return in_string ^ bool(data.count(b'"') & 1), escaped


def remove_orphans(directory: Path) -> None:
    """Delete bodies spooled by processes that no longer run (killed mid-download or
    mid-load); another live rcs-sync may be spooling in the same directory."""
    for leftover in directory.glob(f"{PREFIX}*"):
        pid = leftover.name.removeprefix(PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
