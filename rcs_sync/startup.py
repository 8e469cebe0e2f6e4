"""Imports with the garbage collector held off, and what they made frozen out of its sight.

The CLI and the libraries a command loads (structlog, click, requests, DuckDB) make
~66k objects that live as long as the process: modules, classes, functions. With the
collector on, making them triggers collections that walk them again and again, and the
last collection at exit walks them once more. Held off while they load, then frozen
(`gc.freeze()`: moved where no collection looks), they cost neither: ~60 ms of a
one-second backfill of 200k records (README, `make bench-peer`). What a command makes
afterwards is collected as always.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def loading() -> Iterator[None]:
    """Run imports inside; the collector is back as it was when they are done. Everything
    tracked until then is frozen, garbage included: meant for start-up, once a process
    (a process running many commands in itself, as the tests' CliRunner does, keeps what
    each froze)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
