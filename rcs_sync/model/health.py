"""Is the sync healthy? A pure verdict from the runs table, shared by `status` and the daemon.

Three states, as systemd has them for a system: `healthy`; `degraded`, when the latest
finished pass of some scope failed (one failure is routine, but it is said, not hidden);
`unhealthy`, when an operator must act: no pass has succeeded for three intervals (or
ever), or the latest pass of a scope was refused for its token, or the warehouse is
damaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from rcs_sync.model.durations import format_duration

STALE_AFTER_INTERVALS = 3
AUTH_KINDS = frozenset({"auth", "config"})


@dataclass(frozen=True)
class ScopeRuns:
    """What the runs table says about one (stream, scope)."""

    scope: str
    last_success: datetime | None
    last_finished_kind: str | None
    """`error_kind` of the latest finished run: None when it succeeded."""
    last_failure: str | None = None
    """How the latest finished run failed ("at …: error"), None unless it failed."""


@dataclass(frozen=True)
class Health:
    healthy: bool
    reasons: list[str] = field(default_factory=list)
    degraded: bool = False
    """Healthy, but the latest pass of some scope failed (`reasons` says which)."""

    @property
    def state(self) -> str:
        if not self.healthy:
            return "unhealthy"
        return "degraded" if self.degraded else "healthy"


def evaluate(scopes: list[ScopeRuns], interval: timedelta, now: datetime) -> Health:
    limit = interval * STALE_AFTER_INTERVALS
    reasons: list[str] = []
    warnings: list[str] = []
    if not scopes:
        reasons.append("no pass has run yet")
    for runs in scopes:
        if runs.last_finished_kind in AUTH_KINDS:
            reasons.append(f"{runs.scope}: the API token was rejected or could not be read")
        elif runs.last_failure is not None:
            warnings.append(f"{runs.scope}: the last pass failed {runs.last_failure}")
        if runs.last_success is None:
            reasons.append(f"{runs.scope}: no successful pass yet")
        elif now - runs.last_success > limit:
            age = format_duration(timedelta(seconds=int((now - runs.last_success).total_seconds())))
            reasons.append(
                f"{runs.scope}: last successful pass {age} ago "
                f"(more than {STALE_AFTER_INTERVALS} intervals of {format_duration(interval)})"
            )
    return Health(not reasons, reasons + warnings, degraded=bool(warnings))
