"""rcs-sync: a DuckDB warehouse kept in step with a provider's record endpoints.

For analysts, one name: `rcs_sync.connect()`, a read-only DuckDB connection to the
freshest data, with the analytics views::

    import rcs_sync
    con = rcs_sync.connect("/etc/rcs-sync/rcs-sync.toml")
    con.sql("SELECT * FROM rcs_rates_campaign ORDER BY messages DESC").show()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rcs_sync.analysts import connect

__all__ = ["connect"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the daemon imports this package too, and must not load
    # DuckDB (tests/test_daemon_footprint.py).
    if name == "connect":
        from rcs_sync.analysts import connect  # noqa: PLC0415

        return connect
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
