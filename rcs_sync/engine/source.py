"""What a pass needs of the API, as a Protocol: the engine never sees the HTTP client.

`rcs_sync.source.client.ApiClient` is the implementation `session.py` passes in; tests
pass the same client over a fake transport. Either way the engine plans its deadlines
from `retry_budget` and hands `fetch` the callback that commits the body.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Protocol, TypeVar

from rcs_sync.model.responses import Deadline, Response
from rcs_sync.model.throttle import Throttle

T = TypeVar("T")


class Source(Protocol):
    @property
    def retry_budget(self) -> timedelta:
        """How long one request may keep failing before the source gives up on it."""
        ...

    @property
    def throttle(self) -> Throttle:
        """How many requests may be in flight now (lowered by the server's push-back)."""
        ...

    def fetch(
        self,
        path: str,
        params: Mapping[str, str],
        consume: Callable[[Response], T],
        deadline: Deadline,
    ) -> T:
        """GET `path` and return `consume(response)`, retrying failures of either step
        until `deadline`; raise `ApiUnavailable` (or a permanent error) otherwise.
        Called from several threads at once when a pass keeps requests in flight;
        `consume` then hands the body to the pass's single writer."""
        ...
