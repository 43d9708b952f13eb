"""Rewritten answers: the token endpoint decides as usual, then sends something else.

A :class:`TokenAnswer` is what the endpoint decided (status, headers, body, and which tokens it
issued). :meth:`FakeOAuthServer.rewrite_next` hands it to a function of the test, which returns
the answer to send: odd fields around a rotated refresh token, broken JSON, extra
``Set-Cookie`` headers, a body that arrives slowly or never. The decision stands whatever is
sent: a refresh token rotated by the decision stays rotated, exactly as when a real server's
answer is mangled by a proxy or lost on the way back.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .._secrets import mask
from ._records import TokenRequest
from ._sync import ServerClosedError

__all__ = ["AnswerRewrite", "TokenAnswer", "send_answer"]

# Computed from the body when sending; a rewrite cannot make them lie.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})


@dataclass(frozen=True, slots=True, repr=False)
class TokenAnswer:
    """One token-endpoint answer, as a rewrite receives and returns it.

    Build variations with :meth:`replace`, :meth:`with_body`, :meth:`with_json` and
    :meth:`with_headers`; the instance itself never changes.

    Attributes:
        status: the HTTP status (200–599; aiohttp cannot send a 1xx as a final answer).
        headers: the response headers in order; a name may repeat (several ``Set-Cookie``).
            ``Content-Length`` and ``Transfer-Encoding`` are set from the body when sending.
        body: the body (not sent with a 204 or 304 status, which have none in HTTP).
        refresh_token: the refresh token the endpoint issued with this answer (in the JSON
            body, or in ``Set-Cookie`` for ERPeasy), ``None`` when it issued none (an error
            answer). Informational: the server's decision does not change with it.
        access_token: the access token the endpoint issued, or ``None``.
        presented_refresh_token: the refresh token the request carried, or ``None``.
        disconnect: close the connection without sending anything.
        body_delay: seconds between sending the status line, the headers and the first half of
            the body, and sending the rest.
        complete: ``False`` closes the connection after ``body_delay`` instead of sending the
            rest of the body: the client gets a cut answer (or times out first).
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    refresh_token: str | None = None
    access_token: str | None = None
    presented_refresh_token: str | None = None
    disconnect: bool = False
    body_delay: float = 0.0
    complete: bool = True

    def __post_init__(self) -> None:
        status = self.status
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError("status must be an HTTP status between 200 and 599")
        if not isinstance(self.body, bytes):
            raise ValueError("body must be bytes")
        for pair in self.headers:
            if (
                not isinstance(pair, tuple)
                or len(pair) != 2
                or not all(isinstance(part, str) for part in pair)
            ):
                raise ValueError("headers must be (name, value) pairs of strings")
        delay = self.body_delay
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise ValueError("body_delay must be a number of seconds")
        if not math.isfinite(delay) or delay < 0:
            raise ValueError("body_delay must be a finite number of seconds >= 0")

    @property
    def is_rotation(self) -> bool:
        """Whether the endpoint issued a new refresh token with this answer."""
        return self.refresh_token is not None and self.refresh_token != (
            self.presented_refresh_token
        )

    def json(self) -> Any:
        """The body decoded as JSON (the endpoint's own answers always are).

        Raises:
            ValueError: the body is not JSON.
        """
        return json.loads(self.body)

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    def replace(self, **changes: Any) -> TokenAnswer:
        """A copy with ``changes`` applied (the dataclass fields as keywords)."""
        return dataclasses.replace(self, **changes)

    def with_body(self, body: bytes | str, content_type: str | None = None) -> TokenAnswer:
        """A copy with another body (a ``str`` is sent as UTF-8), and ``Content-Type`` if given.

        The body is sent as given: it may be broken JSON, HTML or anything else.
        """
        raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        answer = self.replace(body=raw)
        if content_type is not None:
            answer = answer.with_headers([("Content-Type", content_type)], drop=["Content-Type"])
        return answer

    def with_json(self, data: Mapping[str, Any], **dumps_options: Any) -> TokenAnswer:
        """A copy whose body is ``json.dumps(data, **dumps_options)``, as
        ``application/json``.

        Python's ``json.dumps`` writes ``NaN`` and ``Infinity`` by default, as many servers do.
        """
        text = json.dumps(dict(data), **dumps_options)
        return self.with_body(text, "application/json")

    def with_headers(
        self, headers: Iterable[tuple[str, str]], *, drop: Iterable[str] = ()
    ) -> TokenAnswer:
        """A copy without the headers named in ``drop`` (case-insensitive), then ``headers``
        appended in order."""
        dropped = {name.lower() for name in drop}
        kept = tuple((k, v) for k, v in self.headers if k.lower() not in dropped)
        return self.replace(headers=kept + tuple((k, v) for k, v in headers))

    def __repr__(self) -> str:
        return (
            f"TokenAnswer(status={self.status}, headers={[k for k, _ in self.headers]!r}, "
            f"body_bytes={len(self.body)}, refresh_token={mask(self.refresh_token)!r}, "
            f"access_token={mask(self.access_token)!r}, disconnect={self.disconnect}, "
            f"body_delay={self.body_delay!r}, complete={self.complete})"
        )

    @classmethod
    def of(cls, response: web.Response, record: TokenRequest) -> TokenAnswer:
        """The answer ``response`` as the endpoint decided it for ``record``."""
        body = response.body
        return cls(
            status=response.status,
            headers=tuple(response.headers.items()),
            body=bytes(body) if isinstance(body, (bytes, bytearray, memoryview)) else b"",
            refresh_token=record.issued_refresh_token,
            access_token=record.issued_access_token,
            presented_refresh_token=record.refresh_token,
        )


AnswerRewrite = Callable[[TokenAnswer], TokenAnswer]
"""What :meth:`FakeOAuthServer.rewrite_next` takes: the decided answer in, the answer to send
out."""


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _drop(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


async def send_answer(
    request: web.Request,
    answer: TokenAnswer,
    record: TokenRequest,
    pause: Callable[[float], Awaitable[None]],
) -> web.StreamResponse:
    """Write ``answer`` to ``request``'s connection and record whether all of it was sent.

    ``record.delivered`` becomes ``True`` once the whole answer was handed to an open
    connection, ``False`` when the connection was dropped (on purpose, or because the client
    had gone away, or because the server closed during ``body_delay``).

    Args:
        request: the request being answered.
        answer: what to send.
        record: the request's record.
        pause: waits a number of seconds; raises when the server closes meanwhile.
    """
    response = web.StreamResponse(status=answer.status)
    if answer.disconnect or _gone(request):
        record.delivered = False
        _drop(request)
        return response  # never written: the connection is closed
    record.status = answer.status
    for name, value in answer.headers:
        if name.lower() not in _FRAMING_HEADERS:
            response.headers.add(name, value)
    # HTTP has no body for these (aiohttp's own responses drop it too): a 204 with a body would
    # be a framing error for the client, not the answer the test meant.
    empty = answer.status in (204, 304) or request.method == "HEAD"
    body = b"" if empty else answer.body
    if not empty:
        response.content_length = len(body)
    split = len(body) // 2 if answer.body_delay > 0 or not answer.complete else len(body)
    try:
        await response.prepare(request)
        if split:
            await response.write(body[:split])
        if answer.body_delay > 0:
            await pause(answer.body_delay)
        if not answer.complete or _gone(request):
            record.delivered = False
            _drop(request)
            return response
        if split < len(body):
            await response.write(body[split:])
        await response.write_eof()
    except (ConnectionError, ServerClosedError):
        # ConnectionResetError (aiohttp's own is a subclass): the client went away. Or the
        # server closed during the delay. Either way the answer was cut.
        record.delivered = False
        _drop(request)
        return response
    record.delivered = not _gone(request)
    return response
