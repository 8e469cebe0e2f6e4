"""The daemon's pass processes, forked from a server that has already imported them.

A pass runs in a process of its own, so its memory goes back to the system when it
ends and a crash inside it cannot take down the schedule. Starting a fresh interpreter
for each one cost ~0.35 s of CPU in imports (DuckDB, requests, structlog with rich):
four times what an incremental pass finding nothing new costs itself. multiprocessing's
forkserver imports them once, in a single-threaded process started with the daemon,
and forks every pass from it; the daemon itself still never loads DuckDB.

The server is started with SIGTERM/SIGINT blocked and keeps them blocked (it dies with
the daemon, when its pipe to it closes), so a forked pass starts with them blocked too:
a SIGTERM (what the daemon forwards to stop a pass) sent in its first instant waits for
the early stop handler (`early_stop.py`), then exits 130. SIGINT is not held so: the
server ignores it (CPython's forkserver protects itself from Ctrl-C) and a child
ignores it too until the server's code in it restores the handlers, so a SIGINT in that
instant is dropped. Ctrl-C reaches a pass only with its daemon, which forwards SIGTERM.
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import forkserver, resource_tracker
from multiprocessing.connection import Connection
from typing import TextIO

import setproctitle


@dataclass(frozen=True)
class PassEntry:
    """How to run `rcs-sync ARGV` in a forked process, given by the CLI: the daemon never
    imports the commands it runs its passes with (they sit above it)."""

    main: Callable[[list[str]], None]
    """Runs the command line; module-level, so it pickles by name."""
    preload: tuple[str, ...]
    """Every module it imports, so that a forked pass imports nothing."""


_CONTEXT = multiprocessing.get_context("forkserver")


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Start a child with SIGTERM/SIGINT blocked: it inherits the mask, so a stop sent
    before its handler is in place stays pending until `early_stop` installs it (then it
    exits 130) instead of killing it by signal."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start_server(entry: PassEntry) -> None:
    """Start the fork server if it is not running (the daemon's first child, its
    migration, starts it; a later one again if it died). It imports this module too:
    its `_child` runs each pass."""
    _CONTEXT.set_forkserver_preload([*entry.preload, __name__])
    # The server starts multiprocessing's resource tracker first, if it is not running,
    # and then unblocks SIGTERM/SIGINT (CPython 3.11) instead of restoring the mask: so
    # start the tracker before blocking them.
    resource_tracker.ensure_running()
    with stop_signals_blocked():
        forkserver.ensure_running()


class PassProcess:
    """`rcs-sync <argv>` in a forked process, with `env` as its environment (the server
    was started with the daemon's at that time); its stdout comes back through `lines`."""

    def __init__(self, entry: PassEntry, argv: list[str], env: Mapping[str, str]) -> None:
        _start_server(entry)
        reader, writer = _CONTEXT.Pipe(duplex=False)
        self._process = _CONTEXT.Process(
            target=_child, args=(entry.main, argv, dict(env), writer), name="rcs-sync pass"
        )
        with stop_signals_blocked():
            self._process.start()
        writer.close()
        stdout = os.dup(reader.fileno())
        reader.close()
        self.lines: TextIO = open(stdout, encoding="utf-8")  # noqa: SIM115 - closed by wait()
        """Each line the pass writes on stdout, until it exits."""

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def running(self) -> bool:
        return self._process.is_alive()

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()

    def wait(self) -> int:
        """Its exit code, as `subprocess` reports it (-N if killed by signal N)."""
        self._process.join()
        self.lines.close()
        code = self._process.exitcode
        assert code is not None
        return code


def _child(
    main: Callable[[list[str]], None], argv: list[str], env: dict[str, str], out: Connection
) -> None:
    """The forked pass: named for `ps` and `systemctl status` (it would otherwise show
    the server's command line), its stdout the daemon's pipe; then `rcs-sync <argv>`."""
    setproctitle.setproctitle(shlex.join(["rcs-sync", *argv]))
    os.environ.clear()
    os.environ.update(env)
    sys.stdout.flush()
    os.dup2(out.fileno(), sys.stdout.fileno())
    out.close()
    main(argv)
