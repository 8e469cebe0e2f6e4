"""Response bodies on disk, cut into parts DuckDB can parse in parallel.

DuckDB parses one JSON array on one thread, but several files on all of them. Servers
that stream a large array usually put one record per line (`[{…}\\n,{…}\\n,…]`, as the
simulator does), and a comma next to a raw newline is always outside any string. So
while the body is written, every `PART_BYTES` or so it is cut at such a comma: the part
so far is closed with `]` and the next one opened with `[`. Where that comma was a
top-level separator, the parts are arrays holding exactly the records of the body;
where it was not (pretty-printed nesting), a part is not valid JSON, DuckDB says so,
and the loader falls back to `whole()`, the body exactly as the server sent it.
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
SEPARATOR = re.compile(rb"[\r\n],|,[\r\n]")
"""A comma next to a raw line break: JSON strings cannot hold one, so it is structural."""


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
            return
        self._out.write(chunk[:comma])
        self._out.write(b"]")
        self._out.close()
        self._out = self._open_part()
        self._out.write(b"[")
        rest = chunk[comma + 1 :]
        self._out.write(rest)
        self._written = len(rest)

    @staticmethod
    def _cut_at(chunk: bytes) -> int:
        """Index of the first comma next to a line break in the chunk, or -1."""
        found = SEPARATOR.search(chunk)
        if found is None:
            return -1
        return found.start() if chunk[found.start()] == ord(",") else found.start() + 1

    def spool(self) -> Spool:
        self._out.close()
        self._base.unlink(missing_ok=True)
        return Spool(tuple(self._parts), self.size)


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
