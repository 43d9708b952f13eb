"""A rotated refresh token is never lost, whatever the token endpoint answers: a fuzzer checks it.

A hypothesis state machine drives one credential through a :class:`TokenManager` against a real
loopback :class:`FakeOAuthServer` that rotates refresh tokens and revokes the whole family on
reuse, on each store: a MemoryStore, a FileStore and an SQLiteStore in a temporary directory,
and RedisStore on the session's redis-server. Its steps: queue server answers drawn from
``fuzz_answers`` (valid, odd-but-usable, unusable-but-rotating, broken JSON, every status class,
ERPeasy cookie combinations, disconnects before and after the decision, slow and lost bodies),
advance a :class:`FakeClock`, call ``get_token`` concurrently and one after another, force a
refresh, invalidate the current token, cancel the leader of a refresh, close and reopen the
manager on the same store (with a refresh in flight or not), switch rotation off and on.

After every step, once the manager's refresh tasks have settled and the server has delivered or
dropped every answer:

* **The store holds the refresh token the server considers live**, unless an answer of the step
  was lost in flight after the server decided it: the server's records say so (decided, never
  delivered in full). Even then the store must hold the last refresh token that did reach the
  client. Those steps are counted and the credential is re-authorized, as an operator would.
* **The server saw no reuse** except one explained by such a loss in the same step.
* **No storm:** the step made at most one token request for the refresh it may need (time does
  not move within a step), plus one more after each answer a client may rightly try again
  after (a 5xx, 408, 429 or ``temporarily_unavailable``, a dropped or lost answer).
  ``expires_in: 0`` or a malformed answer must not cause a request per call.

CI runs a fixed, bounded set of examples per store. ``nox -s fuzz`` runs many more, randomly
(``ASYNCTOKEN_FUZZ_EXAMPLES``, default 300 per store there), and prints the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

import pytest
import redis.asyncio
from fuzz_answers import CLIENT_TIMEOUT, Plan, plans
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from asynctoken import (
    ERPeasyProvider,
    FileStore,
    KeliwebProvider,
    MemoryStore,
    OAuth2Provider,
    Provider,
    RedisStore,
    RetryPolicy,
    SQLiteStore,
    Token,
    TokenError,
    TokenManager,
    TokenStore,
)
from asynctoken.testing import FakeClock, FakeOAuthServer, Flavor, TokenRequest

KEY = "fuzzed"
#: Fast retries; a server's Retry-After is capped so that it costs no real time.
RETRY = RetryPolicy(
    attempts=3, deadline=10.0, initial_delay=0.005, max_delay=0.01, max_retry_after=0.01
)
ON_DEMAND = int(os.environ.get("ASYNCTOKEN_FUZZ_EXAMPLES", "0"))
#: ``ASYNCTOKEN_FUZZ_SHRINK=0`` reports the first failure as found, without minimising it.
SHRINK = os.environ.get("ASYNCTOKEN_FUZZ_SHRINK", "1") != "0"
CI_EXAMPLES = 30
STEPS = 25
SETTINGS = settings(
    max_examples=ON_DEMAND or CI_EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    # CI explores the same examples every run; `nox -s fuzz` explores new ones and keeps
    # failures in the example database to replay them.
    derandomize=not ON_DEMAND,
    database=settings.default.database if ON_DEMAND else None,
    suppress_health_check=list(HealthCheck),
    report_multiple_bugs=False,
    phases=[p for p in Phase if SHRINK or p not in (Phase.shrink, Phase.explain)],
)

_T = TypeVar("_T")


@dataclass
class Figures:
    """What one store's fuzz run did, for the closing note."""

    store: str
    examples: int = 0
    steps: int = 0
    token_requests: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    lost_steps: int = 0
    lost_answers: int = 0
    unplanned_losses: int = 0
    reuse_seen: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        drawn = ", ".join(f"{cls} {n}" for cls, n in sorted(self.answers.items()))
        return (
            f"fuzz[{self.store}]: {self.examples} examples, {self.steps} steps checked, "
            f"{self.token_requests} token requests, answers drawn: {drawn}; "
            f"{self.lost_steps} steps with {self.lost_answers} answers lost in flight "
            f"({self.unplanned_losses} not planned), {self.reuse_seen} reuses, all explained; "
            f"{self.seconds:.1f} s"
        )


def _decided(record: TokenRequest) -> bool:
    """Whether the endpoint itself decided ``record`` (not a canned answer, not cut short)."""
    return (
        record.done
        and not record.outcome.startswith("injected:")
        and (record.outcome != "cancelled")
    )


def _short(token: str | None) -> str:
    return "None" if token is None else f"…{token[-6:]}"


class RotationMachine(RuleBasedStateMachine):
    """One credential, one server, one store; the manager may be closed and reopened."""

    store_kind: ClassVar[str] = "memory"
    redis_url: ClassVar[str] = ""
    figures: ClassVar[Figures] = Figures("memory")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.directory = tempfile.mkdtemp(prefix="asynctoken-fuzz-")
        self.prefix = f"fuzz:{uuid.uuid4().hex[:12]}:"
        self.memory = MemoryStore()
        self.flavor: Flavor = "keliweb"
        self._server: FakeOAuthServer | None = None
        self._tm: TokenManager | None = None
        self._provider: Provider | None = None
        self.queued: deque[Plan] = deque()
        self.seen = 0
        self.last_token: Token | None = None
        self.known: str | None = None  # the refresh token the store held after the last step
        self.figures.examples += 1

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def server(self) -> FakeOAuthServer:
        assert self._server is not None
        return self._server

    @property
    def tm(self) -> TokenManager:
        assert self._tm is not None
        return self._tm

    @property
    def provider(self) -> Provider:
        assert self._provider is not None
        return self._provider

    def run(self, coro: Awaitable[_T]) -> _T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 90))

    def _store(self) -> TokenStore:
        if self.store_kind == "memory":
            return self.memory  # aclose() keeps its content: the same store, reopened
        if self.store_kind == "file":
            return FileStore(os.path.join(self.directory, "tokens.json"), lock_timeout=10)
        if self.store_kind == "sqlite":
            return SQLiteStore(os.path.join(self.directory, "tokens.db"))
        return RedisStore(self.redis_url, prefix=self.prefix, lock_ttl=10)

    def _manager(self) -> TokenManager:
        return TokenManager(
            store=self._store(),
            clock=self.clock,
            retry=RETRY,
            lock_timeout=10.0,
            close_timeout=10.0,
            save_patience=0.2,
        )

    def _make_provider(self) -> Provider:
        s = self.server
        if self.flavor == "keliweb":
            return KeliwebProvider(
                s.client_id, s.client_secret, token_url=s.token_url, timeout=CLIENT_TIMEOUT
            )
        if self.flavor == "erpeasy":
            return ERPeasyProvider(
                s.client_id, s.client_secret, token_url=s.token_url, timeout=CLIENT_TIMEOUT
            )
        return OAuth2Provider(
            s.token_url,
            s.client_id,
            s.client_secret,
            default_expires_in=600.0,
            timeout=CLIENT_TIMEOUT,
        )

    async def _get(self) -> Token | TokenError:
        try:
            token = await self.tm.get_token(KEY)
        except TokenError as exc:
            return exc
        self.last_token = token
        return token

    async def _calls(self, concurrent: int, sequential: int) -> None:
        """Callers at once, then one after another."""
        await asyncio.gather(*(self._get() for _ in range(concurrent)))
        for _ in range(sequential):
            await self._get()

    async def _start_held_refresh(self) -> asyncio.Future[Token]:
        """Start a forced refresh whose token request waits at the server's gate."""
        self.server.hold()
        leader = asyncio.ensure_future(self.tm.refresh(KEY))
        arrived = asyncio.ensure_future(self.server.wait_for_token_requests(self.seen + 1))
        await asyncio.wait({leader, arrived}, return_when=asyncio.FIRST_COMPLETED)
        arrived.cancel()
        await asyncio.gather(arrived, return_exceptions=True)
        return leader

    async def _settle(self) -> None:
        """Wait for the manager's refresh tasks, then for every answer's delivery verdict."""
        me = asyncio.current_task()
        for _ in range(100):
            busy = [
                t
                for t in asyncio.all_tasks()
                if t is not me and t.get_name().startswith("asynctoken") and not t.done()
            ]
            if not busy:
                break
            _, pending = await asyncio.wait(busy, timeout=30)
            assert not pending, f"refresh tasks still running after 30 s: {pending}"
        await self.server.wait_for_token_deliveries(self.server.token_requests, timeout=30)

    # -- the property ------------------------------------------------------------------------

    async def _check(self, step: str, needs: int) -> None:
        """The property, after ``step``, which may need ``needs`` (0 or 1) refreshes."""
        await self._settle()
        server = self.server
        records = server.requests[self.seen :]
        self.seen += len(records)
        planned = [self.queued.popleft() if self.queued else None for _ in records]
        self.figures.steps += 1
        self.figures.token_requests += len(records)
        stored = await self.tm.store.get(KEY)
        live = server.valid_refresh_tokens

        def story() -> str:
            lines = [f"step {step!r}, store {self.store_kind}, flavor {self.flavor}:"]
            for record, plan in zip(records, planned, strict=True):
                lines.append(
                    f"  request #{record.index} answered {plan!r}: outcome={record.outcome} "
                    f"status={record.status} delivered={record.delivered} "
                    f"presented={_short(record.refresh_token)} "
                    f"issued={_short(record.issued_refresh_token)}"
                )
            held = _short(stored.refresh_token) if stored is not None else "nothing"
            lines.append(f"  the store holds {held}; live at the server: {list(map(_short, live))}")
            return "\n".join(lines)

        # Answers the endpoint decided that never reached the client in full: their effect on
        # the server (a rotation, or a reuse decided after the client gave up) is unknowable.
        lost = [r for r in records if r.delivered is False and _decided(r)]
        explained = {r.refresh_token for r in lost if r.lost_in_flight}
        for record in records:
            if record.outcome == "reused":
                self.figures.reuse_seen += 1
                assert record in lost or record.refresh_token in explained, (
                    f"the server saw a reuse no lost answer explains\n{story()}"
                )
        # No storm: one request for the refresh the step may need, and one more after each
        # answer a client may rightly try again after.
        retryable = sum(
            1
            for r, p in zip(records, planned, strict=True)
            if r.delivered is False or (p is not None and p.transient)
        )
        assert len(records) <= needs + retryable, (
            f"{len(records)} token requests where at most {needs} + {retryable} (retries) were "
            f"needed\n{story()}"
        )
        assert stored is not None, f"the store lost the credential\n{story()}"
        if lost:
            self.figures.lost_steps += 1
            self.figures.lost_answers += len(lost)
            self.figures.unplanned_losses += sum(
                1
                for r, p in zip(records, planned, strict=True)
                if r in lost and (p is None or p.cls != "lost")
            )
            # A loss excuses only what the client could not know: it must still hold the last
            # refresh token delivered to it (or, at best, the one lost).
            known, missed = self._walk(records)
            assert stored.refresh_token in (known, missed), (
                f"the store holds neither the last delivered refresh token {_short(known)} nor "
                f"the lost one {_short(missed)}\n{story()}"
            )
            await self._reauthorize()
            return
        assert live == [stored.refresh_token], (
            f"the store does not hold the live refresh token\n{story()}"
        )
        self.known = stored.refresh_token

    def _walk(self, records: list[TokenRequest]) -> tuple[str | None, str | None]:
        """Follow this step's rotations from the refresh token the store held before it.

        Returns:
            The last refresh token delivered to the client, and the one issued next whose answer
            was lost (``None`` if none was).
        """
        rotations = {
            r.refresh_token: r
            for r in records
            if r.outcome == "ok" and r.issued_refresh_token not in (None, r.refresh_token)
        }
        current = self.known
        while current in rotations:
            record = rotations[current]
            if record.delivered is not True:
                return current, record.issued_refresh_token
            current = record.issued_refresh_token
        return current, None

    async def _reauthorize(self) -> None:
        """What an operator does after a lost answer: revoke what is left, seed a new grant."""
        for refresh_token in self.server.valid_refresh_tokens:
            self.server.revoke(refresh_token, family=True)
        seed = self.server.issue_refresh_token()
        await self.tm.add(KEY, self.provider, refresh_token=seed, overwrite=True)
        self.known = seed

    # -- steps -------------------------------------------------------------------------------

    @initialize(
        flavor=st.sampled_from(["keliweb", "erpeasy", "oauth2"]),
        lifetime=st.sampled_from([60.0, 3600.0]),
    )
    def start(self, flavor: Flavor, lifetime: float) -> None:
        self.flavor = flavor

        async def start() -> None:
            self._server = FakeOAuthServer(flavor, clock=self.clock, expires_in=lifetime)
            await self._server.start()
            self._provider = self._make_provider()
            self._tm = self._manager()
            await self.tm.add(KEY, self.provider, refresh_token=self.server.issue_refresh_token())
            await self._check("start", 0)

        self.run(start())

    @rule(data=st.data())
    def queue_answers(self, data: st.DataObject) -> None:
        for plan in data.draw(st.lists(plans(self.flavor), min_size=1, max_size=3), "answers"):
            plan.inject(self.server)
            self.queued.append(plan)
            self.figures.answers[plan.cls] += 1

    @rule(
        seconds=st.sampled_from([1.0, 30.0, 59.0, 61.0, 600.0, 2700.0, 3599.0, 3601.0, 86400.0])
        | st.floats(0, 10_000)
    )
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.run(self._check(f"advance {seconds} s", 0))

    @rule(concurrent=st.integers(1, 8), sequential=st.integers(0, 4))
    def callers(self, concurrent: int, sequential: int) -> None:
        async def step() -> None:
            await self._calls(concurrent, sequential)
            await self._check(f"{concurrent} callers, then {sequential} in turn", 1)

        self.run(step())

    @rule()
    def force_refresh(self) -> None:
        async def step() -> None:
            with contextlib.suppress(TokenError):
                await self.tm.refresh(KEY)
            await self._check("refresh()", 1)

        self.run(step())

    @precondition(lambda self: self.last_token is not None)
    @rule(sequential=st.integers(0, 2))
    def invalidate(self, sequential: int) -> None:
        async def step() -> None:
            assert self.last_token is not None
            await self.tm.invalidate(KEY, self.last_token)
            await self._calls(1, sequential)
            await self._check(f"invalidate, then 1 + {sequential} callers", 1)

        self.run(step())

    @rule(followers=st.integers(0, 4))
    def cancel_leader(self, followers: int) -> None:
        async def step() -> None:
            leader = await self._start_held_refresh()
            joined = [asyncio.ensure_future(self._get()) for _ in range(followers)]
            leader.cancel()
            self.server.release()
            await asyncio.gather(*joined)
            await asyncio.gather(leader, return_exceptions=True)
            await self._check(f"cancelled leader, {followers} followers", 1)

        self.run(step())

    @rule(inflight=st.booleans())
    def reopen(self, inflight: bool) -> None:
        async def step() -> None:
            refresh = await self._start_held_refresh() if inflight else None
            self.server.release()
            await self.tm.aclose()  # starts while the refresh is in flight
            if refresh is not None:
                await asyncio.gather(refresh, return_exceptions=True)
            self._tm = self._manager()
            await self.tm.add(KEY, self.provider)
            what = "with a refresh in flight" if inflight else "idle"
            await self._check(f"close and reopen the manager, {what}", int(inflight))

        self.run(step())

    @rule(rotate=st.booleans())
    def set_rotation(self, rotate: bool) -> None:
        self.server.rotate = rotate

    def teardown(self) -> None:
        async def close() -> None:
            try:
                if self._tm is not None:
                    await self._tm.aclose()
            finally:
                if self._server is not None:
                    await self._server.close()
                if self.store_kind == "redis":
                    client = redis.asyncio.Redis.from_url(self.redis_url)
                    try:
                        names = [n async for n in client.scan_iter(match=self.prefix + "*")]
                        if names:
                            await client.delete(*names)
                    finally:
                        await client.aclose()

        try:
            self.run(close())
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)


def _fuzz(store: str, redis_url: str = "") -> None:
    figures = Figures(store)
    machine = type(
        f"RotationMachine_{store}",
        (RotationMachine,),
        {"store_kind": store, "redis_url": redis_url, "figures": figures},
    )
    started = time.monotonic()
    try:
        run_state_machine_as_test(machine, settings=SETTINGS)
    finally:
        figures.seconds = time.monotonic() - started
        print(figures.line())
        report = os.environ.get("ASYNCTOKEN_FUZZ_REPORT")
        if report:
            with open(report, "a", encoding="utf-8") as out:
                out.write(json.dumps({**figures.__dict__, "answers": dict(figures.answers)}) + "\n")


_TIMEOUT = pytest.mark.timeout(0 if ON_DEMAND else 120)


@_TIMEOUT
def test_memory_store_always_holds_the_live_refresh_token() -> None:
    _fuzz("memory")


@_TIMEOUT
def test_file_store_always_holds_the_live_refresh_token() -> None:
    _fuzz("file")


@_TIMEOUT
def test_sqlite_store_always_holds_the_live_refresh_token() -> None:
    _fuzz("sqlite")


@_TIMEOUT
def test_redis_store_always_holds_the_live_refresh_token(redis_url: str) -> None:
    _fuzz("redis", redis_url)


# -- the property is not vacuous ---------------------------------------------------------------


class ForgetfulStore(MemoryStore):
    """A broken store: says it saved a rotated credential, keeps the old one."""

    async def replace(self, key: str, token: Token, *, expected_refresh_token: str | None) -> bool:
        return (await self.get(key)) is not None


def test_the_property_catches_a_store_that_loses_a_rotation() -> None:
    class Machine(RotationMachine):
        figures = Figures("forgetful")

        def _store(self) -> TokenStore:
            return ForgetfulStore()

    machine = Machine()
    try:
        machine.start(flavor="keliweb", lifetime=3600.0)
        with pytest.raises(AssertionError, match="does not hold the live refresh token"):
            machine.callers(concurrent=2, sequential=1)
    finally:
        machine.teardown()


def test_an_answer_lost_in_flight_is_counted_then_the_credential_reseeded() -> None:
    class Machine(RotationMachine):
        figures = Figures("memory")

    machine = Machine()
    try:
        machine.start(flavor="erpeasy", lifetime=3600.0)
        machine.server.disconnect_next(after_decision=True)
        machine.callers(concurrent=3, sequential=2)  # lost, retried: reuse, family revoked
        assert machine.server.reuse_detected == 1
        assert (machine.figures.lost_steps, machine.figures.lost_answers) == (1, 1)
        assert machine.figures.unplanned_losses == 1  # queued by hand, not through a Plan
        machine.advance(3601.0)
        machine.callers(concurrent=2, sequential=0)  # the new grant works
        assert len(machine.server.valid_refresh_tokens) == 1
    finally:
        machine.teardown()
