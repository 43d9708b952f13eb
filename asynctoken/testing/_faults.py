"""Failure injection: canned bad answers the token endpoint gives instead of a real one, and
rewrites of the answers it decided.

A canned fault never looks at, rotates or consumes the refresh token in the request, exactly as
a proxy answering 503 in front of the real server would not. A rewrite (:meth:`rewrite_next`)
lets the endpoint decide first, so a rotation happens, and then changes what is sent.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from aiohttp import web

from ._answers import AnswerRewrite

__all__ = ["MALFORMED_KINDS", "FailureInjection", "Fault", "MalformedKind"]

MalformedKind = Literal[
    "html",
    "invalid_json",
    "missing_access_token",
    "bad_expires_in",
    "not_object",
    "empty",
    "oversized",
]
MALFORMED_KINDS: tuple[str, ...] = get_args(MalformedKind)

#: Size of the ``"oversized"`` body: bigger than any sane token response.
OVERSIZED_BYTES = 4 * 1024 * 1024

_DEFAULT_ERRORS = {400: "invalid_request", 401: "invalid_client", 403: "access_denied"}

_HTML = (
    "<!DOCTYPE html>\n<html><head><title>{status} Error</title></head>\n"
    "<body><center><h1>{status} Error</h1></center><hr><center>nginx</center></body></html>\n"
)


@dataclass(frozen=True, slots=True)
class Fault:
    """One queued injection.

    ``status is None`` means "answer normally" (a pure delay, or the answer passed through
    ``rewrite``); ``disconnect`` drops the connection without answering.
    """

    outcome: str
    status: int | None = None
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    disconnect: bool = False
    rewrite: AnswerRewrite | None = None

    def response(self) -> web.Response:
        assert self.status is not None
        resp = web.Response(status=self.status, body=self.body)
        resp.headers["Content-Type"] = self.content_type
        resp.headers["Cache-Control"] = "no-store"
        for name, value in self.headers:
            resp.headers.add(name, value)
        return resp


def check_delay(delay: float | None) -> float:
    """Validate an optional delay in seconds; ``None`` is 0."""
    if delay is None:
        return 0.0
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay):
        raise ValueError("delay must be a finite number of seconds")
    if delay < 0:
        raise ValueError("delay must be >= 0")
    return float(delay)


def error_fault(
    *,
    status: int | None,
    retry_after: float | str | None,
    body: str | bytes | Mapping[str, Any] | None,
    content_type: str | None,
    delay: float | None,
    error: str | None,
    headers: Mapping[str, str] | None,
) -> Fault:
    """Build the fault behind :meth:`FakeOAuthServer.fail_next`."""
    if status is None:  # no failure: only the delay
        if body is not None or error is not None or retry_after is not None or headers:
            raise ValueError("status=None injects a delay only; drop body/error/headers")
        return Fault(outcome="delayed", delay=check_delay(delay))
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError("status must be an HTTP status between 200 and 599")
    if body is None:
        code = error or (
            "temporarily_unavailable" if status >= 500 or status in (408, 429) else None
        )
        code = code or _DEFAULT_ERRORS.get(status, "server_error")
        body = {"error": code, "error_description": f"Injected failure (HTTP {status})."}
    elif error is not None:
        raise ValueError("pass either error or body, not both")
    if isinstance(body, Mapping):
        raw = json.dumps(body).encode()
        content_type = content_type or "application/json"
    else:
        raw = body.encode() if isinstance(body, str) else bytes(body)
        content_type = content_type or "application/json"
    extra = list((headers or {}).items())
    if retry_after is not None:
        if isinstance(retry_after, str):
            extra.append(("Retry-After", retry_after))
        else:
            seconds = check_delay(retry_after)
            text = str(int(seconds)) if seconds.is_integer() else str(seconds)
            extra.append(("Retry-After", text))
    return Fault(
        outcome=f"injected:{status}",
        status=status,
        body=raw,
        content_type=content_type,
        headers=tuple(extra),
        delay=check_delay(delay),
    )


def malformed_fault(kind: str, *, status: int, delay: float | None) -> Fault:
    """Build the fault behind :meth:`FakeOAuthServer.malform_next`."""
    content_type = "application/json"
    if kind == "html":
        body = _HTML.format(status=status).encode()
        content_type = "text/html"
    elif kind == "invalid_json":
        body = b'{"token_type": "Bearer", "expires_in": 3600, "access_token": "eyJ0'
    elif kind == "missing_access_token":
        body = json.dumps({"token_type": "Bearer", "expires_in": 3600}).encode()
    elif kind == "bad_expires_in":
        body = json.dumps(
            {"token_type": "Bearer", "expires_in": "soon", "access_token": "eyJ0eXAiOiJKV1Qi.e30.x"}
        ).encode()
    elif kind == "not_object":
        body = b'["access_token"]'
    elif kind == "empty":
        body = b""
    elif kind == "oversized":
        pad = OVERSIZED_BYTES
        body = b'{"token_type": "Bearer", "padding": "' + b"x" * pad + b'"}'
    else:
        raise ValueError(f"unknown malformed kind {kind!r}; expected one of {MALFORMED_KINDS}")
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError("status must be an HTTP status between 200 and 599")
    return Fault(
        outcome=f"injected:{kind}",
        status=status,
        body=body,
        content_type=content_type,
        delay=check_delay(delay),
    )


class FailureInjection:
    """The failure-injection part of :class:`~asynctoken.testing.FakeOAuthServer`: a FIFO of
    faults, one taken by each token request on arrival."""

    _faults: deque[Fault]

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int | None = 503,
        retry_after: float | str | None = None,
        body: str | bytes | Mapping[str, Any] | None = None,
        content_type: str | None = None,
        delay: float | None = None,
        error: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Queue ``n`` error answers for the next token requests, whatever they carry.

        The default body is OAuth JSON, ``{"error": ..., "error_description": ...}`` with
        ``error`` = ``temporarily_unavailable`` for 5xx/408/429, ``invalid_request`` for 400,
        ``invalid_client`` for 401, or the ``error`` given. An injected answer never rotates or
        consumes the refresh token. Each token request takes one queued entry, in arrival order.

        Args:
            n: how many requests get this answer.
            status: the HTTP status; ``None`` answers normally after ``delay`` (like
                :meth:`delay_next`).
            retry_after: a ``Retry-After`` header: seconds, or a string (an HTTP date).
            body: the body instead of the default: a mapping is sent as JSON.
            content_type: its ``Content-Type`` (``application/json`` by default).
            delay: seconds to wait before answering.
            error: the OAuth ``error`` code of the default body.
            headers: extra response headers.
        """
        fault = error_fault(
            status=status,
            retry_after=retry_after,
            body=body,
            content_type=content_type,
            delay=delay,
            error=error,
            headers=headers,
        )
        self._queue(fault, n)

    def malform_next(
        self, kind: MalformedKind, n: int = 1, *, status: int = 200, delay: float | None = None
    ) -> None:
        """Queue ``n`` unusable answers of one kind.

        Args:
            kind: ``"html"`` (an nginx error page, ``text/html``), ``"invalid_json"``,
                ``"missing_access_token"``, ``"bad_expires_in"`` (``"soon"``), ``"not_object"``
                (a JSON list), ``"empty"`` or ``"oversized"`` (4 MiB of JSON).
            n: how many requests get it.
            status: the HTTP status (200: the server "succeeded").
            delay: seconds to wait before answering.
        """
        self._queue(malformed_fault(kind, status=status, delay=delay), n)

    def delay_next(self, seconds: float, n: int = 1) -> None:
        """Delay the next ``n`` token answers by ``seconds`` (on top of :attr:`delay`); the
        answers themselves are normal."""
        self._queue(Fault(outcome="delayed", delay=check_delay(seconds)), n)

    def disconnect_next(
        self, n: int = 1, *, delay: float | None = None, after_decision: bool = False
    ) -> None:
        """Drop the connection of the next ``n`` token requests without answering.

        Args:
            n: how many requests.
            delay: seconds to wait before dropping (before deciding, with ``after_decision``).
            after_decision: decide the request first, so that a refresh rotates the refresh
                token, then drop the connection: the answer is lost in flight, and the record's
                :attr:`~asynctoken.testing.TokenRequest.lost_in_flight` says so.
        """
        if after_decision:
            self.rewrite_next(lambda answer: answer.replace(disconnect=True), n, delay=delay)
            return
        fault = Fault(outcome="injected:disconnect", disconnect=True, delay=check_delay(delay))
        self._queue(fault, n)

    def rewrite_next(
        self, rewrite: AnswerRewrite, n: int = 1, *, delay: float | None = None
    ) -> None:
        """Decide the next ``n`` token requests as usual, then send ``rewrite(answer)``.

        The decision stands whatever is sent: a refresh rotates the refresh token, a reused one
        revokes its family. The rewrite sees every decided answer, error answers included
        (check :attr:`TokenAnswer.is_rotation` or ``status``). It runs on the event loop and
        must not block. Each token request takes one queued entry, in arrival order.

        Example::

            # The rotated answer, plus a field that json.dumps writes as NaN:
            server.rewrite_next(lambda a: a.with_json({**a.json(), "ratio": float("nan")}))
            # ... and the same answer lost on its way back:
            server.rewrite_next(lambda a: a.replace(disconnect=True))

        Args:
            rewrite: the decided :class:`~asynctoken.testing.TokenAnswer` in, the answer to
                send out (its ``disconnect``, ``body_delay`` and ``complete`` fields say how).
            n: how many requests.
            delay: seconds to wait before deciding.
        """
        if not callable(rewrite):
            raise ValueError("rewrite must be a function of a TokenAnswer")
        self._queue(Fault(outcome="rewritten", delay=check_delay(delay), rewrite=rewrite), n)

    def _queue(self, fault: Fault, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError("n must be a positive int")
        self._faults.extend([fault] * n)

    @property
    def pending_failures(self) -> int:
        """Injections still queued."""
        return len(self._faults)

    def clear_failures(self) -> None:
        """Drop every queued injection."""
        self._faults.clear()
