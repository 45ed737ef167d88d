"""The request budget, 429 handling, retries and backoff, with clocks and the network faked."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

import httpx
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.client import ApiClient, make_http_client
from exporter.errors import ApiError
from exporter.health import Health
from exporter.limiter import RateLimiter
from exporter.logs import FailureLog
from exporter.model import MeetingKey
from exporter.poller import Poller, PollPlan
from exporter.store import Store
from tests.support.api import TOKEN, replies
from tests.support.clock import FakeTime
from tests.support.metrics import max_in_window


def limiter(t: FakeTime, requests: int = 30, period: float = 10, **kw: float) -> RateLimiter:
    return RateLimiter(requests, period, clock=t.clock, wall=t.wall, sleep=t.sleep, **kw)


def test_requests_are_spaced_evenly_and_never_exceed_the_budget_in_any_window():
    t = FakeTime()
    lim = limiter(t, requests=30, period=10)

    async def burst() -> list[float]:
        sent = []
        for _ in range(200):  # far more demand than budget, all at once
            await lim.acquire()
            sent.append(t.now)
        return sent

    sent = asyncio.run(burst())
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(sent)}
    assert gaps == {round(lim.spacing, 9)}  # no bursts: one slot per spacing
    assert max_in_window(sent, 10) <= 30
    assert lim.per_second < 3.0  # 30 per 10 s, less the safety margin


def test_concurrent_callers_share_one_budget():
    t = FakeTime()
    lim = limiter(t, requests=12, period=6)
    sent: list[float] = []

    async def caller() -> None:
        for _ in range(10):
            await lim.acquire()
            sent.append(t.now)

    async def main() -> None:
        await asyncio.gather(*(caller() for _ in range(5)))

    asyncio.run(main())
    assert len(sent) == 50
    assert max_in_window(sent, 6) <= 12


def test_reserve_fraction_leaves_part_of_the_budget():
    t = FakeTime()
    full, reserved = limiter(t), limiter(t, reserve_fraction=0.5)
    assert reserved.per_second == pytest.approx(full.per_second / 2)


def test_429_pauses_every_request_until_retry_after():
    t = FakeTime()
    lim = limiter(t)
    lim.observe(429, httpx.Headers({"Retry-After": "7"}))
    assert not lim.has_spare()
    with pytest.raises(ApiError) as info:
        asyncio.run(lim.acquire())
    assert info.value.reason == "rate_limited"
    assert lim.paused_until_wall() == pytest.approx(t.wall() + 7)
    t.now += 6.9
    with pytest.raises(ApiError):
        asyncio.run(lim.acquire())
    t.now += 0.2
    asyncio.run(lim.acquire())  # allowed again
    assert lim.paused_until_wall() == 0


@pytest.mark.parametrize(
    ("status", "headers", "pause"),
    [
        (429, {}, 10.0),  # no hint: assume the whole window is blocked
        (429, {"Retry-After": "3"}, 3.0),
        (429, {"Ratelimit": '"default";r=0;t=42'}, 42.0),
        (200, {"Ratelimit": '"default";r=0;t=12'}, 12.0),
        (200, {"Ratelimit": '"default";r=5;t=12'}, 0.0),
        (200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "20"}, 20.0),
        (200, {"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": "20"}, 0.0),
        (200, {"Retry-After": "30"}, 0.0),  # only a 429 makes Retry-After binding
        (429, {"Retry-After": "soon"}, 10.0),
    ],
)
def test_rate_limit_headers(status: int, headers: dict[str, str], pause: float):
    t = FakeTime()
    lim = limiter(t)
    lim.observe(status, httpx.Headers(headers))
    until = lim.paused_until_wall()
    assert (until - t.wall() if until else 0.0) == pytest.approx(pause)


# --- the poller: retries, backoff, stretched interval ------------------------------------------

KEY = MeetingKey("acc", "app", "m1")
LIVE = {"success": True, "data": {"id": "s", "status": "LIVE", "live_participants": 2}}


def make_poller(
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    t: FakeTime,
    store: Store,
    budget: tuple[int, float] = (1200, 300),
    interval: float = 10,
    keys: list[MeetingKey] | None = None,
) -> tuple[Poller, ApiClient, Health]:
    """A poller over one client with a fake clock; ``keys`` (default KEY) are planned but the
    scheduler is not started, so tests drive polls themselves."""
    http = make_http_client(
        timeout_seconds=1, max_connections=4, transport=httpx.MockTransport(handler)
    )
    client = ApiClient(
        http, base_url="https://api.test/v4", token=TOKEN, limiter=limiter(t, *budget)
    )
    health = Health()
    poller = Poller(
        scheduler=AsyncIOScheduler(),
        store=store,
        health=health,
        failures=FailureLog(clock=t.clock),
        clock=t.clock,
    )
    planned = dict.fromkeys(keys or [KEY], client)
    poller.schedule(PollPlan(planned, interval, 80, asyncio.Semaphore(4)))
    return poller, client, health


answers = replies


def test_one_quick_retry_for_a_transient_failure():
    t, store = FakeTime(), Store()
    store.set_targets({KEY: ()})
    poller, client, health = make_poller(answers((503, {}), (200, LIVE)), t=t, store=store)
    asyncio.run(poller.poll_meeting(KEY))
    _, states = store.snapshot()
    assert states[KEY].up is True
    assert health.snapshot().retries == 1
    assert client.stats.snapshot()[0] == {"503": 1, "200": 1}


def test_no_retry_for_a_permanent_failure_or_without_spare_budget():
    t, store = FakeTime(), Store()
    store.set_targets({KEY: ()})
    poller, client, _health = make_poller(answers((401, {}), (200, LIVE)), t=t, store=store)
    asyncio.run(poller.poll_meeting(KEY))
    assert client.stats.snapshot()[0] == {"401": 1}
    # Budget exhausted (the next slot is in the future): the transient failure is not retried.
    t2, store2 = FakeTime(), Store()
    store2.set_targets({KEY: ()})
    poller2, client2, _ = make_poller(
        answers((500, {}), (200, LIVE)), t=t2, store=store2, budget=(1, 100)
    )
    asyncio.run(poller2.poll_meeting(KEY))
    assert client2.stats.snapshot()[0] == {"500": 1}
    assert store2.snapshot()[1][KEY].up is False


def test_a_meeting_that_keeps_failing_backs_off_exponentially_and_recovers():
    t, store = FakeTime(), Store()
    store.set_targets({KEY: ()})
    replies = [(404, {"success": False, "errors": [{"code": 7003, "message": "no route"}]})]
    poller, client, health = make_poller(answers(*replies), t=t, store=store, interval=10)
    polled_at = []
    for _ in range(40):  # the job fires every 10 s for 400 s
        before = sum(client.stats.snapshot()[0].values())
        asyncio.run(poller.poll_meeting(KEY))
        if sum(client.stats.snapshot()[0].values()) > before:
            polled_at.append(t.now)
        t.now += 10
    gaps = [round(b - a) for a, b in itertools.pairwise(polled_at)]
    assert gaps[:4] == [10, 20, 40, 80]  # doubling...
    assert set(gaps[4:]) == {80}  # ...up to max_backoff_seconds
    assert health.snapshot().skipped["backoff"] == 40 - len(polled_at)


def test_rate_limiting_fails_fast_without_sending_and_does_not_back_off_the_meeting():
    t, store = FakeTime(), Store()
    store.set_targets({KEY: ()})
    poller, client, _health = make_poller(answers((200, LIVE)), t=t, store=store)
    client.limiter.pause(60)
    for _ in range(3):
        asyncio.run(poller.poll_meeting(KEY))
        t.now += 10
    assert client.stats.snapshot()[0] == {}  # nothing sent while paused
    state = store.snapshot()[1][KEY]
    assert state.up is False and state.errors[2] == 3  # REASONS[2] == "rate_limited"
    t.now += 40
    asyncio.run(poller.poll_meeting(KEY))  # right after the pause: polled, not backed off
    assert store.snapshot()[1][KEY].up is True


def test_demand_above_budget_stretches_the_interval_and_says_so(caplog: pytest.LogCaptureFixture):
    t, store = FakeTime(), Store()
    keys = [MeetingKey("acc", "app", f"m{i}") for i in range(100)]
    store.set_targets({k: () for k in keys})

    async def go() -> Poller:
        with caplog.at_level(logging.WARNING, logger="exporter.poller"):
            poller, client, health = make_poller(
                answers((200, LIVE)), t=t, store=store, budget=(30, 10), interval=5, keys=keys
            )
        scheduler = poller._scheduler
        scheduler.start(paused=True)
        jobs = scheduler.get_jobs()
        assert len(jobs) == 100
        intervals = {job.trigger.interval_length for job in jobs}
        scheduler.shutdown(wait=False)
        assert len(intervals) == 1
        (interval,) = intervals
        # 100 meetings at < 3 requests/s cannot be polled every 5 s: at least 100 / 3 s apart.
        assert interval >= 100 * client.limiter.spacing
        assert health.snapshot().effective_intervals == {("acc", "app"): interval}
        return poller

    asyncio.run(go())
    (record,) = caplog.records
    assert "100 meetings every 5s need 20.00 requests/s" in record.getMessage()
    assert "raise poll.interval_seconds to at least" in record.getMessage()


def test_refreshes_are_deduplicated_and_paced_at_the_refresh_rate():
    from exporter.poller import Refresher

    t = FakeTime()
    sent: list[tuple[str, float]] = []

    class Budget:  # a token budget that always has a spare slot
        spacing = 0.0

        def has_spare(self) -> bool:
            return True

    class Spare:
        limiter = Budget()

    async def send(key: MeetingKey, client: object) -> None:
        sent.append((key.meeting_id, t.now))

    async def go() -> None:
        refresher = Refresher(send, lambda: 2.0, clock=t.clock, sleep=t.sleep)
        keys = [MeetingKey("acc", "app", f"m{i}") for i in range(5)]
        for _ in range(3):  # a storm: every meeting asked three times at once
            for key in keys:
                refresher.ask(key, Spare())  # type: ignore[arg-type]
        await refresher._draining  # type: ignore[misc]

    asyncio.run(go())
    assert [m for m, _ in sent] == ["m0", "m1", "m2", "m3", "m4"]  # once each, in order
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(sent)]
    assert sent[0][1] == 1000.0 and gaps == [0.5] * 4  # the first at once, then 2 per second


def test_an_interval_the_budget_sustains_is_published_exactly_as_configured():
    """Six meetings every 30 s are published as 30, not 30.000000000000004 (a harmonic mean
    computed in floats), on /metrics and the status page."""
    t, store = FakeTime(), Store()
    keys = [MeetingKey("acc", "app", f"m{i}") for i in range(6)]
    store.set_targets({k: () for k in keys})

    async def go() -> None:
        poller, _client, health = make_poller(
            answers((200, LIVE)), t=t, store=store, budget=(1200, 300), interval=30, keys=keys
        )
        scheduler = poller._scheduler
        scheduler.start(paused=True)
        intervals = {job.trigger.interval_length for job in scheduler.get_jobs()}
        scheduler.shutdown(wait=False)
        assert intervals == {30}
        assert health.snapshot().effective_intervals == {("acc", "app"): 30}
        assert repr(health.snapshot().effective_intervals[("acc", "app")]) == "30"

    asyncio.run(go())
