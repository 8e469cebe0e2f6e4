"""`startup.loading`: imports run with the collector held off and end frozen, and the
collector is always back on afterwards (the daemon runs for months on it)."""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rcs_sync import startup


@pytest.fixture
def collector() -> Iterator[None]:
    """Leave the test process's collector as it found it, frozen objects included."""
    enabled = gc.isenabled()
    try:
        yield
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()
        else:
            gc.disable()


@pytest.mark.usefixtures("collector")
def test_loading_holds_the_collector_off_then_freezes_what_was_made() -> None:
    gc.enable()
    before = gc.get_freeze_count()
    with startup.loading():
        assert not gc.isenabled()
        made = [[index] for index in range(1_000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(made)


@pytest.mark.usefixtures("collector")
def test_loading_turns_the_collector_back_on_after_a_failed_import() -> None:
    gc.enable()
    with pytest.raises(ImportError), startup.loading():
        import rcs_sync.no_such_module  # type: ignore[import-not-found]  # noqa: F401, PLC0415
    assert gc.isenabled()


@pytest.mark.usefixtures("collector")
def test_loading_leaves_a_collector_that_was_off_off() -> None:
    gc.disable()
    with startup.loading():
        pass
    assert not gc.isenabled()


PROBE = """
import gc, sys
from rcs_sync.__main__ import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(code, gc.isenabled(), gc.get_freeze_count())
"""


def test_a_command_runs_with_its_modules_frozen_and_the_collector_on(tmp_path: Path) -> None:
    config = tmp_path / "rcs.toml"
    config.write_text(
        f'[api]\nbase_url = "http://127.0.0.1:9"\n[warehouse]\npath = "{tmp_path / "rcs.duckdb"}"\n'
    )
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "--config", str(config), "migrate"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    code, enabled, frozen = done.stdout.splitlines()[-1].split()
    assert (code, enabled) == ("0", "True"), done.stderr
    # The CLI, structlog, click, DuckDB and requests: well over 10k objects.
    assert int(frozen) > 10_000


RICH_PROBE = """
import sys
from rcs_sync import startup
with startup.loading():
    import rcs_sync.cli
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "rich")
import structlog
from rcs_sync.logs import configure_logging
configure_logging(json=False, level="debug", stream=sys.stdout)
try:
    raise ValueError("boom")
except ValueError:
    structlog.get_logger().exception("failed")
import rich.progress
print(loaded, rich.progress.Progress.__name__)
"""


def test_the_cli_imports_structlog_without_rich_and_exceptions_still_render() -> None:
    done = subprocess.run(
        [sys.executable, "-c", RICH_PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    *logged, last = done.stdout.splitlines()
    assert last == "[] Progress"  # none of rich at import; all of it afterwards on demand
    text = "\n".join(logged)
    assert "failed" in text and "ValueError: boom" in text and "Traceback" in text, text
