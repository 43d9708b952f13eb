"""OpenTelemetry instruments and spans (``asynctoken[otel]``): the only module importing it.

Everything goes through ``opentelemetry.metrics.get_meter("asynctoken", version)`` and
``opentelemetry.trace.get_tracer(...)`` of the API package, so the application's SDK setup
decides where data goes; an application without an SDK pays the API's no-op calls, on refreshes
only. The instruments are created once per process and shared by every manager.

Cache lookups are not recorded per call: the clock the manager's hot path reads counts its
calls in C, the slow path counts the rest in plain integers, and the observable counter
``asynctoken.cache.lookups`` derives fresh, stale and miss counts when a metric reader collects.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Mapping
from contextvars import Token
from typing import Final, Protocol
from urllib.parse import urlsplit

from opentelemetry import context, metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

__all__ = ["Telemetry", "telemetry"]

Attributes = Mapping[str, AttributeValue]

#: Seconds; the HTTP semantic conventions' advice for request durations, plus 30 s.
_REQUEST_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0,
)  # fmt: skip
#: Seconds; a lock is held for a token request, or up to ``lock_timeout`` (90 s).
_LOCK_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 90.0,
)  # fmt: skip
_RESULTS: Final = ("fresh", "stale", "miss")


class LookupCounts(Protocol):
    """Something that counts a manager's cache lookups."""

    def lookups(self) -> tuple[int, int, int]:
        """Cumulative ``(fresh, stale, miss)`` counts."""
        ...


class Telemetry:
    """The process's asynctoken instruments and tracer."""

    def __init__(self, version: str) -> None:
        meter = metrics.get_meter("asynctoken", version)
        self.tracer = trace.get_tracer("asynctoken", version)
        self.requests = meter.create_counter(
            "asynctoken.token.requests",
            unit="{request}",
            description="Requests sent to token endpoints, retries and fallback grants included.",
        )
        self.request_duration = meter.create_histogram(
            "asynctoken.token.request.duration",
            unit="s",
            description="Duration of token endpoint requests.",
            explicit_bucket_boundaries_advisory=_REQUEST_BUCKETS,
        )
        self.lock_wait = meter.create_histogram(
            "asynctoken.lock.wait.duration",
            unit="s",
            description="Time spent waiting for a credential's store lock.",
            explicit_bucket_boundaries_advisory=_LOCK_BUCKETS,
        )
        self.refreshes = meter.create_counter(
            "asynctoken.refreshes",
            unit="{refresh}",
            description="Refreshes by trigger and outcome (refreshed, picked_up, failed).",
        )
        self.invalidations = meter.create_counter(
            "asynctoken.invalidations",
            unit="{invalidation}",
            description="Tokens reported rejected by an API (dropped, refused, superseded).",
        )
        self.store_errors = meter.create_counter(
            "asynctoken.store.errors",
            unit="{error}",
            description="Failed store operations.",
        )
        self._sources: weakref.WeakKeyDictionary[LookupCounts, list[int]] = (
            weakref.WeakKeyDictionary()
        )
        self._totals = [0, 0, 0]
        self._lock = threading.Lock()  # collections may run in an exporter's thread
        meter.create_observable_counter(
            "asynctoken.cache.lookups",
            callbacks=[self._observe_lookups],
            unit="{lookup}",
            description="get_token calls by what the cache held: fresh, stale or miss.",
        )

    def watch_lookups(self, source: LookupCounts) -> None:
        """Count ``source``'s lookups in ``asynctoken.cache.lookups`` while it lives."""
        with self._lock:
            self._sources[source] = [0, 0, 0]

    def retire_lookups(self, source: LookupCounts) -> None:
        """Add ``source``'s last counts to the totals and stop reading them (it closed)."""
        with self._lock:
            reported = self._sources.pop(source, None)
            if reported is not None:
                self._absorb(source, reported)

    def _absorb(self, source: LookupCounts, reported: list[int]) -> None:
        for i, count in enumerate(source.lookups()):
            self._totals[i] += count - reported[i]
            reported[i] = count

    def _observe_lookups(self, _options: CallbackOptions) -> Iterable[Observation]:
        # Totals only grow: a manager collected without closing loses at most the lookups
        # since the previous collection, never lowers the sum.
        with self._lock:
            for source, reported in list(self._sources.items()):
                self._absorb(source, reported)
            totals = list(self._totals)
        return [
            Observation(count, {"asynctoken.cache.result": result})
            for result, count in zip(_RESULTS, totals, strict=True)
        ]

    # ---------------------------------------------------------------- spans

    def start_span(
        self, name: str, attributes: Attributes, *, client: bool = False
    ) -> tuple[Span, Token[context.Context]]:
        """Start a span and make it current; returns it with the token :meth:`end` needs."""
        span = self.tracer.start_span(
            name, kind=SpanKind.CLIENT if client else SpanKind.INTERNAL, attributes=attributes
        )
        return span, context.attach(trace.set_span_in_context(span))

    @staticmethod
    def end(
        span: Span, token: Token[context.Context], error: str | None, attributes: Attributes
    ) -> None:
        """End a span from :meth:`start_span`; ``error`` is an ``error.type`` or ``None``."""
        span.set_attributes(attributes)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()
        context.detach(token)

    def lock_span(self, attributes: Attributes) -> Span:
        """A span for a lock wait (never current: nothing else happens inside it)."""
        return self.tracer.start_span("asynctoken lock wait", attributes=attributes)

    def lock_waited(self, span: Span | None, seconds: float, attributes: Attributes) -> None:
        """End a lock wait: its duration, and its span (an error unless it was acquired)."""
        self.lock_wait.record(seconds, attributes)
        if span is None:
            return
        span.set_attributes(attributes)
        outcome = attributes.get("asynctoken.outcome")
        if outcome != "acquired":
            span.set_attribute("error.type", str(outcome))
            span.set_status(Status(StatusCode.ERROR, str(outcome)))
        span.end()


def http_attributes(token_url: str) -> dict[str, AttributeValue]:
    """HTTP semantic-convention attributes of a token request to ``token_url``.

    ``url.full`` keeps scheme, host, port and path: never user info or a query.
    """
    parts = urlsplit(token_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return {
        "http.request.method": "POST",
        "server.address": host,
        "server.port": port,
        "url.full": f"{parts.scheme}://{netloc}{parts.path}",
    }


_instance: Telemetry | None = None
_instance_lock = threading.Lock()


def telemetry(version: str) -> Telemetry:
    """The process's :class:`Telemetry`, created on first use."""
    global _instance
    with _instance_lock:
        if _instance is None:
            _instance = Telemetry(version)
        return _instance
