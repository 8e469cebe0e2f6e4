"""What the source hands on: a response with its body spooled to disk, and the deadline
its retries run against.

Shared types: the source makes them, the engine schedules requests by them and passes
bodies on, the warehouse loads the bodies. Living here, they let the engine know the
source only through its Protocol (`rcs_sync/engine/source.py`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from rcs_sync.model.errors import TransientApiError


@dataclass(frozen=True)
class Spool:
    """A spooled body: its parts, each a JSON array when the body was cut cleanly
    (see `rcs_sync/source/spool.py`)."""

    parts: tuple[Path, ...]
    size: int
    """Bytes the server sent (the parts hold two more per cut)."""

    @classmethod
    def of(cls, path: Path) -> Spool:
        """A body already on disk, as one part."""
        return cls((path,), path.stat().st_size)

    @property
    def cut(self) -> bool:
        return len(self.parts) > 1

    def whole(self) -> Path:
        """The body exactly as the server sent it (the single part, or the parts joined
        back with the commas the cuts replaced)."""
        if not self.cut:
            return self.parts[0]
        whole = self.parts[0].with_name(self.parts[0].stem + "-whole.json")
        whole.unlink(missing_ok=True)
        last = len(self.parts) - 1
        with create_private(whole) as out:
            for index, part in enumerate(self.parts):
                with part.open("rb") as handle:
                    length = part.stat().st_size
                    if index > 0:
                        handle.seek(1)  # the "[" the cut added
                        length -= 1
                        out.write(b",")
                    if index < last:
                        length -= 1  # the "]" the cut added
                    _copy(handle, out, length)
        return whole

    def remove(self) -> None:
        for part in self.parts:
            part.unlink(missing_ok=True)
            part.with_name(part.stem + "-whole.json").unlink(missing_ok=True)


@dataclass(frozen=True)
class Response:
    """What the loader needs to know about one successful download."""

    body: Spool
    sent_at: datetime
    """Local clock when the request was sent."""
    server_sent_at: datetime | None
    """When the server received the request, by its own clock: `Date` minus the round
    trip. Always at or before the moment the server took its snapshot of the data."""


@dataclass(frozen=True)
class Deadline:
    """When retrying one request stops, as `time.monotonic()` instants."""

    end: float
    split: float | None = None
    """An earlier end for failures a smaller request may avoid (`splittable`): the caller
    then splits the request, and the halves still have until `end`."""

    def after(self, exc: BaseException | None) -> float:
        """The instant retrying stops, given the latest failure."""
        if self.split is not None and isinstance(exc, TransientApiError) and exc.splittable:
            return self.split
        return self.end


def create_private(path: Path) -> BinaryIO:
    """A new file only we can read: bodies hold phone numbers, whatever the umask."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _copy(source: BinaryIO, target: BinaryIO, length: int) -> None:
    while length > 0:
        block = source.read(min(length, 1 << 20))
        if not block:
            break
        target.write(block)
        length -= len(block)
