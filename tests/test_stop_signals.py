"""A stop signal landing while the main thread holds the stop event's lock (as it does
inside `Event.wait`, between its checks) sets the event; a handler setting it directly
waits for that lock forever. Each case runs in a process of its own, so a deadlock
shows as a timeout rather than hanging the suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rcs_sync.warehouse.duckdb_file import Warehouse

# The main thread takes the lock `Event.wait` holds between its checks, and the signal
# is delivered there: its handler runs before `raise_signal` returns.
INSIDE_WAIT = """
import signal, threading, time
stop = threading.Event()
{install}
with stop._cond:
    signal.raise_signal(signal.SIGTERM)
print(stop.wait(30), flush=True)
{after}
"""

OURS = """
from rcs_sync.stop_signals import StopSignals
signals = StopSignals(stop)
seen = []
signals.on_stop = lambda: seen.append((stop.is_set(), threading.current_thread().name))
signals.install()
"""

OURS_AFTER = """
def seen_at_least(n):
    deadline = time.monotonic() + 30
    while len(seen) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return seen
print(signals.received, seen_at_least(1))
signal.raise_signal(signal.SIGINT)
print(signals.received, len(seen_at_least(2)))
signals.restore()
print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""

DIRECT = """
signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
"""


def run(install: str, after: str = "", timeout: float = 60) -> list[str]:
    script = textwrap.dedent(INSIDE_WAIT).format(install=install, after=after)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_a_stop_signal_inside_the_events_wait_sets_it_from_the_watching_thread() -> None:
    assert run(OURS, OURS_AFTER) == [
        "True",
        "SIGTERM [(True, 'stop-signals')]",
        "SIGINT 2",
        "True",
    ]


def test_a_handler_setting_the_event_itself_deadlocks_there() -> None:
    """What the watching thread is for: without it, the same moment never ends."""
    with pytest.raises(subprocess.TimeoutExpired):
        run(DIRECT, timeout=3)


def test_a_pass_interrupted_from_that_thread_may_find_its_connection_closed(
    tmp_path: Path,
) -> None:
    """The thread interrupts the pass's running statement; the pass may have closed that
    connection a moment before (a failure discards it before letting go of it)."""
    wh = Warehouse(tmp_path / "rcs.duckdb")
    wh.migrate()
    with wh.connect() as con:
        con.close()
        wh.interrupt()
