"""Typed failures, each carrying the CLI exit code that tells an operator what broke."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_API = 4
EXIT_WAREHOUSE = 5
EXIT_UNHEALTHY = 6
EXIT_INSTALL = 7
EXIT_STOPPED = 130


class RcsSyncError(Exception):
    """Base of every expected failure; its message is one line fit for an operator."""

    exit_code = EXIT_FAILURE
    kind = "internal"
    """Recorded in `sync_runs.error_kind`; `health.py` reads it."""
    logged = False
    """Set once the failure has been logged as an event (`pass_failed`, `token_rejected`),
    so the command's final error line does not repeat it."""


class AuthRejected(RcsSyncError):
    """HTTP 403: the provider refused the token. Retrying cannot help."""

    exit_code = EXIT_AUTH
    kind = "auth"


class BadRequest(RcsSyncError):
    """HTTP 400: our parameters were refused. Retrying the same request cannot help."""

    exit_code = EXIT_API
    kind = "api"


class ApiUnavailable(RcsSyncError):
    """The API kept failing until the retry budget ran out."""

    exit_code = EXIT_API
    kind = "api"

    def __init__(self, message: str, *, splittable: bool = False) -> None:
        super().__init__(message)
        self.splittable = splittable
        """True when the failures are of a kind a smaller window may avoid (timeouts, 502/504)."""


class ApiUnreachable(ApiUnavailable):
    """The first request of a one-shot command could not connect at all (refused, unknown
    host, TLS failure): most likely a wrong `[api] base_url`, so it is not retried."""


class TransientApiError(RcsSyncError):
    """One failed attempt worth retrying: connection trouble, 429, 5xx, a bad body."""

    exit_code = EXIT_API
    kind = "api"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        splittable: bool = False,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.splittable = splittable
        self.unreachable = unreachable
        """No connection at all (refused, unknown host, TLS): no response came."""


class BadBody(TransientApiError):
    """A 200 whose body is not a complete JSON array (HTML page, truncation, `{}`)."""


class SuspectedTruncation(RcsSyncError):
    """A response reached the size at which the server may have cut it silently."""

    exit_code = EXIT_API
    kind = "api"


class WarehouseLocked(RcsSyncError):
    """Another process held the DuckDB file past our lock retry budget."""

    exit_code = EXIT_WAREHOUSE
    kind = "warehouse"


class WarehouseUnavailable(RcsSyncError):
    """The DuckDB file could not be opened or written (disk full, permissions, corruption)."""

    exit_code = EXIT_WAREHOUSE
    kind = "warehouse"


class WarehouseDamaged(WarehouseUnavailable):
    """The DuckDB file (warehouse or snapshot) is corrupt or truncated: never written into."""


class WarehouseBusy(WarehouseLocked):
    """Another rcs-sync is writing this warehouse and `--no-wait` was given."""


class Stopped(RcsSyncError):
    """A stop was requested (SIGTERM/SIGINT); nothing half-written remains."""

    exit_code = EXIT_STOPPED
    kind = "stopped"


def error_kind(exc: BaseException) -> str:
    """The `sync_runs.error_kind` for a failure."""
    return exc.kind if isinstance(exc, RcsSyncError) else "internal"
