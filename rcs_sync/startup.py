"""Imports with the garbage collector held off, and what they made frozen out of its sight.

The CLI and the libraries a command loads (structlog, click, requests, DuckDB) make
~66k objects that live as long as the process: modules, classes, functions. With the
collector on, making them triggers collections that walk them again and again, and the
last collection at exit walks them once more. Held off while they load, then frozen
(`gc.freeze()`: moved where no collection looks), they cost neither: ~60 ms of a
one-second backfill of 200k records (README, `make bench-peer`). What a command makes
afterwards is collected as always.

structlog is imported with rich hidden: its `dev` and `tracebacks` modules import rich's
traceback and pretty-printing machinery when rich is there (~45 ms on a quiet machine,
~90 ms on a slow one: a quarter of the CLI's start-up), for exception formatters
rcs-sync never calls, since `logs` turns every exception into text before a renderer
sees it. rich itself stays importable for the progress bar and the report's tables.
"""

from __future__ import annotations

import gc
import sys
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
        _import_structlog_without_rich()
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _import_structlog_without_rich() -> None:
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` raises ImportError
    try:
        import structlog  # noqa: F401, PLC0415 - the import is the point
    finally:
        del sys.modules["rich"]
