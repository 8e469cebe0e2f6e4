"""One writer per warehouse: an advisory lock file beside it, held for a whole pass.

DuckDB's own file lock is held only while a pass writes (it lets go during every
network wait, so analysts get in), which is why it cannot keep two `rcs-sync sync` from
running the same backfill side by side. This lock can: `App.session()` takes it around
the whole pass, so a second `sync`, `backfill` or daemon pass on the same warehouse waits
for the first, then runs its own pass and finds the work done. Readers never take it.

It is `flock(2)` on `.<warehouse name>.writer.lock`: the kernel releases it when the
holder exits, however it exits (kill -9 included), so it is never stale, and the file
left behind means nothing. The holder writes its PID into it for the others' messages.
The daemon holds a second one, `.<name>.daemon.lock`, for as long as it runs: a second
`rcs-sync run` on the same warehouse waits until the first one exits.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import structlog

from rcs_sync.model.errors import Stopped, WarehouseBusy, WarehouseUnavailable

log = structlog.get_logger(__name__)

POLL = 0.1
"""Seconds between two attempts while waiting: a stop is seen within this."""
REPORT_EVERY = 5.0
"""Seconds between two `on_wait` calls while waiting (the daemon's liveness)."""


def lock_path(warehouse: Path, role: str = "writer") -> Path:
    return warehouse.parent / f".{warehouse.name}.{role}.lock"


class WriterLock:
    """`with WriterLock(path):` holds the lock of `path` (a warehouse file) for the block."""

    def __init__(
        self,
        warehouse: Path,
        *,
        role: str = "writer",
        wait: bool = True,
        stop: threading.Event | None = None,
        on_wait: Callable[[int | None, float], None] | None = None,
        label: str | None = None,
    ) -> None:
        self.warehouse = warehouse
        self.label = label or f"warehouse {warehouse}"
        """The warehouse as messages name it (a lake's lock is named after its spool)."""
        self.path = lock_path(warehouse, role)
        self.role = role
        self.wait = wait
        self._stop = stop or threading.Event()
        self._on_wait = on_wait or (lambda _pid, _waited: None)
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def holder(self) -> int | None:
        """The PID the holder wrote, if it is readable."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise WarehouseUnavailable(
                f"cannot open the lock file {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            self._lock(fd)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def _lock(self, fd: int) -> None:
        if _try_lock(fd):
            return
        holder = self.holder()
        what = "daemon" if self.role == "daemon" else "rcs-sync"
        if not self.wait:
            raise WarehouseBusy(
                f"{self.label} is in use by another {what} "
                f"(PID {holder if holder is not None else 'unknown'}); not waiting (--no-wait)"
            )
        log.warning(
            f"{self.role}_lock_wait",
            path=str(self.warehouse),
            holder_pid=holder,
            message=f"waiting for the {what} already writing this warehouse to finish",
        )
        began = time.monotonic()
        reported = began
        self._on_wait(holder, 0.0)
        while not _try_lock(fd):
            if self._stop.wait(POLL):
                raise Stopped("stop requested while waiting for the warehouse")
            now = time.monotonic()
            if now - reported >= REPORT_EVERY:
                reported = now
                self._on_wait(self.holder(), round(now - began, 1))
        log.info(
            f"{self.role}_lock_acquired",
            path=str(self.warehouse),
            waited_s=round(time.monotonic() - began, 1),
        )

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
