"""The stop handler every `rcs-sync` process installs first, before the CLI is imported.

While the CLI is being imported (a few hundred milliseconds, unless a fork server has
imported it already) SIGTERM's default action would kill the process by signal, and
SIGINT raise KeyboardInterrupt wherever it lands, instead of the "stopped" exit 130
the daemon expects. So the first thing done is to install a handler that ends the
process at once with exit 130. `sync` and `backfill` replace it with theirs before they
open the warehouse (`App.session`); CPython runs a pending signal's handler before
`signal.signal` swaps it, so no signal is lost in the hand-over. `run` and `simulate`
install their own too; the short commands keep this one, which ends them as abruptly as
SIGTERM's default did.
"""

import os
import signal
from types import FrameType

from rcs_sync.model.errors import EXIT_STOPPED

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_INTERRUPTED_TTY = b"rcs-sync: interrupted\n"
_INTERRUPTED_JSON = b'<4>{"level": "warning", "event": "interrupted", "exit_code": 130}\n'
"""Preformatted: the handler may not take the logger's lock. Off a terminal, stderr
carries JSON lines only (`logs.py`)."""


def _stop_before_start(_signum: int, _frame: FrameType | None) -> None:
    """End now, without taking a lock or raising: an exception raised here could be
    caught, or only printed (in a `__del__` or an atexit hook), by the code the signal
    interrupts. Before `sync` has its own handler there is nothing to flush or undo."""
    try:
        os.write(2, _INTERRUPTED_TTY if os.isatty(2) else _INTERRUPTED_JSON)
    finally:
        os._exit(EXIT_STOPPED)


def install() -> None:
    """Install the handler, then let the signals in."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_before_start)
    # A parent may start us with these signals blocked (they stay pending across exec,
    # and a forked pass inherits them blocked), so that one sent during start-up waits
    # for the handler.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
