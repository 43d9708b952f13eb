"""OpenTelemetry metrics and spans, read back with the SDK's in-memory reader and exporter and
compared with what the fake server really received."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections import Counter
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from support import FAST_RETRY, keliweb

from asynctoken import (
    InvalidGrantError,
    MemoryStore,
    StoreError,
    StoreLockTimeoutError,
    Token,
    TokenManager,
)
from asynctoken.testing import FakeClock, FakeOAuthServer

Key = tuple[str, frozenset[tuple[str, Any]]]


class Telemetry:
    """The process's SDK providers (set once: OpenTelemetry refuses to replace them)."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.spans = InMemorySpanExporter()
        metrics.set_meter_provider(MeterProvider(metric_readers=[self.reader]))
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        trace.set_tracer_provider(tracer_provider)

    def snapshot(self) -> dict[Key, float]:
        """Cumulative asynctoken measurements: sums, and histogram counts (name + ".count")."""
        values: dict[Key, float] = {}
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                if scope.scope.name != "asynctoken":
                    continue
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        attributes = frozenset((point.attributes or {}).items())
                        if isinstance(point, HistogramDataPoint):
                            values[(metric.name + ".count", attributes)] = point.count
                        else:
                            values[(metric.name, attributes)] = point.value
        return values


_telemetry: Telemetry | None = None


@pytest.fixture
def otel() -> Telemetry:
    global _telemetry
    if _telemetry is None:
        _telemetry = Telemetry()
    _telemetry.spans.clear()
    return _telemetry


def delta(before: dict[Key, float], after: dict[Key, float]) -> dict[Key, float]:
    changed = {k: v - before.get(k, 0) for k, v in after.items()}
    assert all(v >= 0 for v in changed.values()), "a cumulative value went down"
    return {k: v for k, v in changed.items() if v}


def total(values: dict[Key, float], name: str, **attributes: Any) -> float:
    wanted = set(attributes.items())
    return sum(v for (n, attrs), v in values.items() if n == name and wanted <= set(attrs))


def spans(otel: Telemetry, name: str) -> list[ReadableSpan]:
    return [s for s in otel.spans.get_finished_spans() if s.name == name]


def server_outcome(status: int | None) -> str:
    return {200: "success", 503: "transient", 400: "invalid_grant"}[status or 0]


async def test_token_requests_counted_as_the_server_saw_them(otel: Telemetry) -> None:
    before = otel.snapshot()
    async with (
        FakeOAuthServer("keliweb", users={"me": "pw-pw-pw-pw-pw"}) as server,
        TokenManager(retry=FAST_RETRY) as tm,
    ):
        await tm.add("a", keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.get_token("a")
        server.fail_next(status=503, n=2)
        await tm.refresh("a")
        dead = server.issue_refresh_token()
        server.revoke(dead)
        await tm.add("b", keliweb(server), refresh_token=dead)
        with pytest.raises(InvalidGrantError):
            await tm.get_token("b")
        dead = server.issue_refresh_token()
        server.revoke(dead)
        await tm.add(
            "c", keliweb(server, username="me", password="pw-pw-pw-pw-pw"), refresh_token=dead
        )
        await tm.get_token("c")
        received = Counter((r.grant_type, server_outcome(r.status)) for r in server.requests)
        token_url = server.token_url
    got = delta(before, otel.snapshot())
    assert received == {
        ("refresh_token", "success"): 2,
        ("refresh_token", "transient"): 2,
        ("refresh_token", "invalid_grant"): 2,
        ("password", "success"): 1,
    }
    for (grant, outcome), count in received.items():
        attributes = {
            "asynctoken.provider": "keliweb",
            "asynctoken.grant_type": grant,
            "asynctoken.outcome": outcome,
        }
        assert total(got, "asynctoken.token.requests", **attributes) == count
        assert total(got, "asynctoken.token.request.duration.count", **attributes) == count
    assert total(got, "asynctoken.token.requests") == server.token_requests == 7
    assert total(got, "asynctoken.refreshes", **{"asynctoken.outcome": "refreshed"}) == 3
    assert total(got, "asynctoken.refreshes", **{"asynctoken.outcome": "failed"}) == 1
    # One span per request, with the HTTP attributes that apply and nothing secret.
    requests = spans(otel, "asynctoken token request")
    assert len(requests) == 7
    for span in requests:
        attributes = dict(span.attributes or {})
        assert attributes["http.request.method"] == "POST"
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["url.full"] == token_url
        assert span.kind == trace.SpanKind.CLIENT
    failed = [s for s in requests if s.status.status_code == trace.StatusCode.ERROR]
    assert sorted(dict(s.attributes or {})["http.response.status_code"] for s in failed) == [
        400,
        400,
        503,
        503,
    ]
    assert {dict(s.attributes or {})["error.type"] for s in failed} == {
        "TransientError",
        "InvalidGrantError",
    }
    every_text = [repr(dict(s.attributes or {})) + s.name for s in otel.spans.get_finished_spans()]
    every_text += [repr(k) for k in got]
    secrets = {server.client_secret, "pw-pw-pw-pw-pw"}
    for record in server.requests:
        secrets |= {record.refresh_token or "", record.issued_access_token or ""}
        secrets |= {record.issued_refresh_token or ""}
    secrets.discard("")
    assert not [s for s in secrets for text in every_text if s in text]
    assert not any("asynctoken.credential" in text for text in every_text)


async def test_spans_nest_under_the_refresh(otel: Telemetry, server: FakeOAuthServer) -> None:
    async with TokenManager() as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.get_token("k")
    (refresh,) = spans(otel, "asynctoken refresh")
    (request,) = spans(otel, "asynctoken token request")
    (lock,) = spans(otel, "asynctoken lock wait")
    assert request.parent is not None
    assert lock.parent is not None
    assert request.parent.span_id == lock.parent.span_id == refresh.context.span_id
    assert dict(refresh.attributes or {})["asynctoken.outcome"] == "refreshed"
    assert dict(refresh.attributes or {})["asynctoken.trigger"] == "miss"
    assert dict(lock.attributes or {})["asynctoken.outcome"] == "acquired"
    assert lock.status.status_code != trace.StatusCode.ERROR


async def test_cache_lookups_fresh_stale_miss(otel: Telemetry, server: FakeOAuthServer) -> None:
    """Fresh hits are counted by the hot path's clock (in C); the observable counter reads the
    counts when the reader collects."""
    clock = FakeClock()
    server.expires_in = 3600
    before = otel.snapshot()
    async with TokenManager(clock=clock) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.get_token("k")  # miss
        for _ in range(1000):
            await tm.get_token("k")  # fresh
        for _ in range(10):
            assert tm._peek_fresh("k") is not None  # fresh, as the sync facade reads it
        clock.advance(3400)  # stale (the refresh margin is 300 s)
        for _ in range(3):
            assert tm._peek_fresh("k") is None  # not a lookup: the sync facade goes on
        for _ in range(5):
            await tm.get_token("k")  # stale, without giving the refresh a chance to finish
        middle = delta(before, otel.snapshot())
    after = delta(before, otel.snapshot())  # closed: the counts stay
    name = "asynctoken.cache.lookups"
    for got in (middle, after):
        assert total(got, name, **{"asynctoken.cache.result": "fresh"}) == 1010
        assert total(got, name, **{"asynctoken.cache.result": "stale"}) == 5
        assert total(got, name, **{"asynctoken.cache.result": "miss"}) == 1


async def test_invalidations_and_store_errors(otel: Telemetry, server: FakeOAuthServer) -> None:
    class Unreadable(MemoryStore):
        down = False

        async def get(self, key: str) -> Token | None:
            if self.down:
                raise StoreError("down", location="test")
            return await super().get(key)

    store = Unreadable()
    before = otel.snapshot()
    async with TokenManager(store=store, lock_timeout=0.05) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        first = await tm.get_token("k")
        assert await tm.invalidate("k", first)
        second = await tm.get_token("k")
        assert not await tm.invalidate("k", first)  # superseded: a newer token is there
        assert not await tm.invalidate("k", second)  # refused: within invalidate_interval
        await tm.add("x", keliweb(server), refresh_token=server.issue_refresh_token())
        store.down = True
        with pytest.raises(StoreError):
            await tm.get_token("x")
        store.down = False
        async with store.lock("x", timeout=1.0):
            with pytest.raises(StoreLockTimeoutError):
                await tm.get_token("x")
    got = delta(before, otel.snapshot())
    for outcome in ("dropped", "superseded", "refused"):
        assert total(got, "asynctoken.invalidations", **{"asynctoken.outcome": outcome}) == 1
    errors = "asynctoken.store.errors"
    assert total(got, errors, **{"asynctoken.operation": "get", "error.type": "StoreError"}) == 1
    lock_errors = {"asynctoken.operation": "lock", "error.type": "StoreLockTimeoutError"}
    assert total(got, errors, **lock_errors) == 1
    assert total(got, errors, **{"asynctoken.store": "Unreadable"}) == 2
    waits = "asynctoken.lock.wait.duration.count"
    assert total(got, waits, **{"asynctoken.outcome": "timeout"}) == 1
    assert total(got, waits, **{"asynctoken.outcome": "acquired"}) == 2
    (timed_out,) = [
        s
        for s in spans(otel, "asynctoken lock wait")
        if dict(s.attributes or {})["asynctoken.outcome"] == "timeout"
    ]
    assert timed_out.status.status_code == trace.StatusCode.ERROR


async def test_credential_keys_only_when_asked(otel: Telemetry, server: FakeOAuthServer) -> None:
    before = otel.snapshot()
    async with TokenManager(telemetry_keys=True) as tm:
        await tm.add("tenant-42", keliweb(server), refresh_token=server.issue_refresh_token())
        await tm.get_token("tenant-42")
    got = delta(before, otel.snapshot())
    assert total(got, "asynctoken.token.requests", **{"asynctoken.credential": "tenant-42"}) == 1
    (request,) = spans(otel, "asynctoken token request")
    assert dict(request.attributes or {})["asynctoken.credential"] == "tenant-42"


async def test_telemetry_off_records_nothing(otel: Telemetry, server: FakeOAuthServer) -> None:
    before = otel.snapshot()
    async with TokenManager(telemetry=False) as tm:
        await tm.add("k", keliweb(server), refresh_token=server.issue_refresh_token())
        await asyncio.gather(*(tm.get_token("k") for _ in range(10)))
    assert delta(before, otel.snapshot()) == {}
    assert otel.spans.get_finished_spans() == ()


WITHOUT_OTEL = textwrap.dedent(
    """
    import asyncio, sys
    if sys.argv[1] == "hidden":
        sys.modules["opentelemetry"] = None  # as if not installed
    from asynctoken import KeliwebProvider, TokenManager
    from asynctoken.testing import FakeOAuthServer

    async def main():
        async with FakeOAuthServer("keliweb") as server:
            provider = KeliwebProvider(
                server.client_id, server.client_secret, token_url=server.token_url
            )
            async with TokenManager(telemetry=sys.argv[1] == "hidden") as tm:
                await tm.add("k", provider, refresh_token=server.issue_refresh_token())
                await tm.get_token("k")
            assert server.token_requests == 1
        loaded = [m for m in sys.modules if m.startswith("opentelemetry") and sys.modules[m]]
        print("loaded:", loaded)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("mode", ["hidden", "off"])
def test_without_opentelemetry_nothing_is_imported(mode: str) -> None:
    """Without the package (hidden), or with telemetry=False, asynctoken imports none of it
    and works as usual."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded: []" in done.stdout


async def test_only_a_manager_with_telemetry_counts_on_the_hot_path(otel: Telemetry) -> None:
    """Without telemetry the hot path reads the clock itself: nothing is counted per call.
    With it, the clock it reads counts its calls in C (no Python work per call)."""
    clock = FakeClock()
    async with TokenManager(telemetry=False, clock=clock) as quiet, TokenManager() as counting:
        assert quiet._monotonic == clock.monotonic
        assert counting._monotonic.cache_info().misses == 0  # type: ignore[attr-defined]
        assert await counting.refresh_due() == {}
