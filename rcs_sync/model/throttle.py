"""How many requests a pass keeps in flight, lowered when the server pushes back.

Shared by the source (which sees the 429s and `Retry-After` headers) and the engine
(which decides how many windows to fetch at once), so it lives with the shared types.
Multiplicative decrease, additive increase: each push-back halves the limit, and every
`RECOVER_AFTER` responses received in full without one raise it by one, up to the
configured ceiling.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

RECOVER_AFTER = 4
"""Full responses, with no push-back in between, that raise the limit by one."""


@dataclass(frozen=True)
class Change:
    """The limit moved: from, to, and why (for the log)."""

    before: int
    after: int
    reason: str


class Throttle:
    def __init__(self, ceiling: int = 1) -> None:
        if ceiling < 1:
            raise ValueError(f"concurrency must be at least 1, got {ceiling}")
        self.ceiling = ceiling
        self._limit = ceiling
        self._good = 0
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        """Requests that may be in flight now."""
        return self._limit

    def pushed_back(self, reason: str) -> Change | None:
        """A 429, or a response asking us to come back later: halve the limit."""
        with self._lock:
            self._good = 0
            before, self._limit = self._limit, max(1, self._limit // 2)
            return Change(before, self._limit, reason) if self._limit != before else None

    def succeeded(self) -> Change | None:
        """A response received in full: after `RECOVER_AFTER` of them, one more request."""
        with self._lock:
            if self._limit >= self.ceiling:
                return None
            self._good += 1
            if self._good < RECOVER_AFTER:
                return None
            self._good = 0
            before, self._limit = self._limit, self._limit + 1
            return Change(before, self._limit, f"{RECOVER_AFTER} responses without push-back")
