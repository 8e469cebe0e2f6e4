"""SIGTERM and SIGINT turned into a stop `threading.Event`, without a deadlock.

A Python signal handler runs in the main thread between two of its bytecodes, wherever
that thread is: possibly inside `Event.wait`, holding the event's lock, which is not
reentrant. A handler calling `Event.set` there waits for that lock forever: the daemon,
stopped with SIGTERM while its main loop waited for its next tick, hung until killed
(tests/test_stop_signals.py makes that moment happen). So the handler only notes the
signal and writes a byte into a pipe; a thread of ours reads it and sets the event,
then runs the owner's follow-up (`on_stop`), as any thread may.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.on_stop: Callable[[], None] | None = None
        """Run on the watching thread after each stop signal has set `stop`."""
        self.received: str | None = None
        """The name of the last stop signal received."""
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._watcher = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
        self._watcher.start()

    def install(self) -> None:
        """Handle SIGTERM and SIGINT from now on (a signal pending is handled by the
        handler it was sent to, before the swap: none is lost)."""
        for sig in SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        """Put back the handlers found by the first `install`, then stop watching."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        os.close(self._write)
        self._watcher.join()
        os.close(self._read)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received = signal.Signals(signum).name
        # A full pipe holds stops not yet read: one more would change nothing.
        with contextlib.suppress(BlockingIOError):
            os.write(self._write, b"\0")

    def _watch(self) -> None:
        while os.read(self._read, 1):
            self.stop.set()
            if self.on_stop is not None:
                self.on_stop()
