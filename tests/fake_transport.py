"""A `requests` transport that answers from a script, for driving the real `ApiClient`
(retries, status mapping, spooling, body checks) in-process, with no network at all.

Everything above the socket is the real thing: the client's session builds and sends
each request, and reads the reply through `iter_content` as it would from a server.
"""

from __future__ import annotations

import io
import json
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.models import PreparedRequest
from requests.structures import CaseInsensitiveDict
from urllib3.response import HTTPResponse


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a response, or the exception the network would raise."""

    status: int = 200
    body: bytes = b"[]"
    headers: Mapping[str, str] = field(default_factory=dict)
    raises: type[requests.RequestException] | None = None
    """e.g. `requests.ConnectionError` or `requests.ReadTimeout`, instead of a response."""


def json_reply(records: list[dict[str, Any]], *, date: datetime | None = None) -> Reply:
    """A 200 with `records` as a JSON array, and a `Date` header if `date` is given."""
    headers = {"Content-Type": "application/json"}
    if date is not None:
        headers["Date"] = format_datetime(date, usegmt=True)
    return Reply(body=json.dumps(records).encode(), headers=headers)


@dataclass(frozen=True)
class Sent:
    """A request the transport received, as the server would have seen it."""

    url: str
    params: dict[str, str]
    headers: Mapping[str, str]
    timeout: object
    at: float
    """`time.monotonic()` when it arrived."""


Answer = Reply | Callable[[Sent], Reply]


class FakeTransport(BaseAdapter):
    """Answers requests with `script` in order, then with `then` (a failure if None),
    and records every request in `sent`."""

    def __init__(self, *script: Answer, then: Answer | None = None) -> None:
        super().__init__()
        self._script = deque(script)
        self._then = then
        self.sent: list[Sent] = []

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        url = request.url or ""
        sent = Sent(
            url=url,
            params=dict(parse_qsl(urlsplit(url).query)),
            headers=dict(request.headers),
            timeout=timeout,
            at=time.monotonic(),
        )
        self.sent.append(sent)
        answer = self._script.popleft() if self._script else self._then
        if answer is None:
            raise AssertionError(f"unscripted request #{len(self.sent)}: {url}")
        reply = answer(sent) if callable(answer) else answer
        if reply.raises is not None:
            raise reply.raises(f"fake transport: {reply.raises.__name__}", request=request)
        return _response(request, reply)

    def close(self) -> None:
        """Nothing to release: there are no connections."""


def _response(request: PreparedRequest, reply: Reply) -> requests.Response:
    response = requests.Response()
    response.status_code = reply.status
    response.headers = CaseInsensitiveDict(reply.headers)
    response.raw = HTTPResponse(
        body=io.BytesIO(reply.body),
        headers=dict(reply.headers),
        status=reply.status,
        preload_content=False,
    )
    response.url = request.url or ""
    response.request = request
    return response
