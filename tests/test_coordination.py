"""exporter.coordination against a real Debian ``redis-server`` on 127.0.0.1 (a temp dir, no
persistence), started and stopped by the tests."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis

from exporter.coordination import (
    CoordinationSettings,
    Lease,
    ReplicaRegistry,
    connect,
    link_for,
)
from exporter.errors import ApiError
from exporter.limiter.shared import SharedLimiter, spread_window
from exporter.mirror import StateMirror, decode_state, encode_state
from exporter.model import NO_ACTIVE_SESSION, MeetingKey, Session
from exporter.redislink import CoordinationError, CoordinationStats, RedisLink, token_hash
from exporter.store import MeetingState
from tests.support.metrics import max_in_window
from tests.support.redis import RedisServer

TOKEN = "tok-SECRET-abcdef0123456789"
PASSWORD = "redis-PASS-9f8e7d6c"


@pytest.fixture
def server(make_redis: Callable[..., RedisServer]) -> RedisServer:
    return make_redis()


def settings_for(server: RedisServer, **kw: object) -> CoordinationSettings:
    return CoordinationSettings(redis_url=server.url, key_prefix="t", **kw)  # type: ignore[arg-type]


class Replica:
    """One replica's coordination objects on its own Redis client."""

    def __init__(self, settings: CoordinationSettings, name: str, requests: int, period: float):
        self.redis = connect(settings, timeout=1.0)
        self.stats = CoordinationStats()
        self.link = link_for(settings, self.redis, self.stats)
        self.registry = ReplicaRegistry(self.link, name, lease_seconds=settings.lease_seconds)
        self.limiter = SharedLimiter(
            self.link, TOKEN, requests, period, replicas=lambda: self.registry.count
        )
        self.times: list[float] = []

    async def work(self, until: float, workers: int = 3) -> None:
        async def worker() -> None:
            while time.monotonic() < until:
                await self.limiter.acquire()
                self.times.append(time.monotonic())

        await asyncio.gather(*(worker() for _ in range(workers)))


def link(
    settings: CoordinationSettings, redis: Redis, stats: CoordinationStats | None = None
) -> RedisLink:
    return link_for(settings, redis, stats or CoordinationStats())


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout=15))


# --- pure ---------------------------------------------------------------------------------


def test_settings_hide_the_password() -> None:
    # The rules of the coordination block are config.py's: tests/test_config_boundary.py.
    ok = CoordinationSettings(redis_url="rediss://r:6380/0", password=PASSWORD)
    assert PASSWORD not in repr(ok)
    assert TOKEN not in token_hash(TOKEN) and len(token_hash(TOKEN)) == 32


def test_spread_window_keeps_the_rate_within_the_spacing() -> None:
    assert spread_window(0.125, 2.0) == (8, 1)
    assert spread_window(0.2525, 300) == (11, 3)  # the default 1200 / 300 s budget
    for spacing, period in [(0.125, 2.0), (0.2525, 300), (5.05, 300), (3.0, 1.0)]:
        count, width = spread_window(spacing, period)
        assert count >= 1 and count / width <= 1 / spacing + 1e-9


def test_state_round_trip() -> None:
    session = Session("s1", "LIVE", 3.0, max_concurrent_participants=5.0, started_at=1.5)
    states = [
        MeetingState(),
        MeetingState(
            labels=(("team", "a"),), up=False, errors=(0, 2, 0, 0, 0, 0, 1, 3)
        ),  # one count per REASONS entry
        MeetingState(up=True, answer=session, last_success=1700000000.25, poll_duration=0.1),
        MeetingState(up=True, answer=NO_ACTIVE_SESSION, last_success=1.0),
    ]
    for state in states:
        data = encode_state(state)
        assert b" " not in data
        assert decode_state(data) == state
    with pytest.raises(ValueError, match=r"invalid meeting state: answer"):
        decode_state(b'{"answer":{"id":"s1"}}')
    with pytest.raises(ValueError, match=r"invalid meeting state: errors: 2 counts"):
        decode_state(b'{"errors":[0,1]}')


# --- shared limiter -----------------------------------------------------------------------


def test_two_replicas_share_one_budget_spread_not_burst(server: RedisServer) -> None:
    settings = settings_for(server)

    async def main() -> None:
        a, b = Replica(settings, "a", 20, 2.0), Replica(settings, "b", 20, 2.0)
        until = time.monotonic() + 3.0
        await asyncio.gather(a.work(until), b.work(until))
        both = a.times + b.times
        assert max_in_window(both, 2.0) <= 20  # the budget, across replicas
        assert max_in_window(both, 0.5) <= 8  # spread: not 20 at once
        assert len(both) >= 20 and len(a.times) >= 3 and len(b.times) >= 3
        keys = [k.decode() for k in await a.redis.keys("*")]
        assert keys and not any(TOKEN in k for k in keys)
        assert any(token_hash(TOKEN) in k for k in keys)
        await a.redis.aclose()
        await b.redis.aclose()

    run(main)


def test_a_429_on_one_replica_pauses_the_other(server: RedisServer) -> None:
    settings = settings_for(server)

    async def main() -> None:
        a, b = Replica(settings, "a", 20, 2.0), Replica(settings, "b", 20, 2.0)
        await b.limiter.acquire()  # b has read the (absent) pause once already
        a.limiter.observe(429, {"retry-after": "30"})
        for _ in range(200):  # the pause is written in the background
            if await a.redis.exists(f"t:pause:{token_hash(TOKEN)}"):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)  # b reads the shared pause at most once a second
        with pytest.raises(ApiError) as err:
            await b.limiter.acquire()
        assert err.value.reason == "rate_limited"
        assert b.limiter.paused_until_wall() > time.time() + 25
        await a.redis.aclose()
        await b.redis.aclose()

    run(main)


def test_redis_down_falls_back_to_half_each_then_reconnects(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(server)
    caplog.set_level(logging.WARNING, logger="exporter.coordination")

    async def main() -> None:
        a, b = Replica(settings, "a", 20, 2.0), Replica(settings, "b", 20, 2.0)
        assert await a.registry.refresh() == 1 and await b.registry.refresh() == 2
        await a.registry.refresh()
        start = time.monotonic()
        await asyncio.gather(a.work(start + 1.0), b.work(start + 1.0))
        server.stop()
        await asyncio.gather(a.work(start + 4.0), b.work(start + 4.0))
        assert a.limiter.fallback and b.limiter.fallback
        assert not a.stats.up and a.stats.errors["limiter"] >= 1
        outage = [t for t in a.times + b.times if start + 1.0 < t <= start + 4.0]
        assert max_in_window(outage, 2.0) <= 20 and len(outage) >= 5
        for replica in (a, b):  # budget / 2 replicas each
            assert max_in_window([t for t in replica.times if t > start + 1.0], 2.0) <= 10
        server.start()
        deadline = time.monotonic() + 8.0
        while (a.limiter.fallback or b.limiter.fallback) and time.monotonic() < deadline:
            await asyncio.gather(a.work(time.monotonic() + 0.5), b.work(time.monotonic() + 0.5))
        assert not a.limiter.fallback and not b.limiter.fallback and a.stats.up
        assert max_in_window(a.times + b.times, 2.0) <= 20  # the whole run
        await a.redis.aclose()
        await b.redis.aclose()

    run(main)
    unreachable = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    back = [r for r in caplog.records if "budget applies again" in r.getMessage()]
    assert len(unreachable) == 2 and len(back) == 2  # once per replica each way
    assert "10 requests per 2s (the budget / 2 replicas)" in unreachable[0].getMessage()


def test_cost_per_request(server: RedisServer) -> None:
    """Median µs of one acquire of the shared budget (two ``limits`` windows, one Redis each)."""
    settings = settings_for(server)

    async def main() -> None:
        replica = Replica(settings, "a", 10_000_000, 300.0)
        costs = []
        for _ in range(1000):
            started = time.perf_counter()
            await replica.limiter.acquire()
            costs.append(time.perf_counter() - started)
        median = statistics.median(costs) * 1e6
        print(f"\nshared limiter: median {median:.0f} µs per acquire over 1000")
        assert median < 5000
        await replica.redis.aclose()

    run(main)


# --- lease --------------------------------------------------------------------------------


def test_only_one_holds_the_lease_and_the_other_takes_over(server: RedisServer) -> None:
    settings = settings_for(server, lease_seconds=1.5)

    async def main() -> None:
        redis = connect(settings, timeout=1.0)
        a = Lease(link(settings, redis), "0", "a", lease_seconds=1.5)
        b = Lease(link(settings, redis), "0", "b", lease_seconds=1.5)
        assert await a.step() and not await b.step()
        assert await a.step() and not await b.step()  # renewed, still a's
        assert a.is_leader and not b.is_leader
        assert await redis.get("t:lease:0") == b"a"
        killed = time.monotonic()  # a stops renewing

        async def keep(lease: Lease) -> None:
            while True:
                await lease.step()
                await asyncio.sleep(lease.next_step_in())

        task = asyncio.create_task(keep(b))
        while not b.is_leader and time.monotonic() < killed + 5:
            await asyncio.sleep(0.02)
        took = time.monotonic() - killed
        assert b.is_leader and took <= 1.5 + 0.5 + 0.3
        assert not await a.step()  # a learns it lost the lease
        task.cancel()
        await b.release()
        assert await a.step()  # released: taken at once
        await redis.aclose()

    run(main)


def test_no_takeover_while_redis_is_down(server: RedisServer) -> None:
    settings = settings_for(server, lease_seconds=1.5)

    async def main() -> None:
        redis = connect(settings, timeout=0.5)
        a = Lease(link(settings, redis), "0", "a", lease_seconds=1.5)
        held = Lease(link(settings, redis), "1", "a", lease_seconds=1.5, hold_on_outage=True)
        stats_b = CoordinationStats()
        b = Lease(link(settings, redis, stats_b), "0", "b", lease_seconds=1.5)
        assert await a.step() and await held.step() and not await b.step()
        server.stop()
        deadline = time.monotonic() + 2.5  # longer than the lease
        while time.monotonic() < deadline:
            assert not await b.step()
            await a.step()
            await held.step()
            await asyncio.sleep(0.1)
        assert not a.is_leader  # could not renew: stepped down
        assert held.is_leader  # hold_on_outage: keeps leading
        assert stats_b.errors["lease"] >= 1 and not stats_b.up
        await redis.aclose()

    run(main)


# --- state mirror -------------------------------------------------------------------------


def test_state_mirror_round_trip(server: RedisServer) -> None:
    settings = settings_for(server)
    one, two = MeetingKey("acc", "app", "m1"), MeetingKey("acc", "app", "m2")
    live = MeetingState(up=True, answer=Session("s", "LIVE", 2.0), last_success=10.0)

    async def main() -> None:
        redis = connect(settings)
        leader = StateMirror(link(settings, redis), "0", ttl_ms=60_000)
        standby = StateMirror(link(settings, redis), "0", ttl_ms=60_000)
        assert await standby.fetch() == {}
        await leader.publish({one: live, two: MeetingState()})
        assert await standby.fetch() == {one: live, two: MeetingState()}
        idle = MeetingState(up=True, answer=NO_ACTIVE_SESSION, last_success=11.0)
        await leader.publish({one: idle})  # m1 changed, m2 gone
        assert await standby.fetch() == {one: idle}
        await redis.hset("t:state:0", "bad", b"{}")
        assert await standby.fetch() == {one: idle}  # unreadable entries are skipped
        await redis.aclose()

    run(main)


# --- password -----------------------------------------------------------------------------


def test_the_password_never_shows(
    make_redis: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = make_redis("--requirepass", PASSWORD)
    caplog.set_level(logging.DEBUG)
    good = settings_for(server, password=PASSWORD)
    wrong = settings_for(server, password=PASSWORD + "-wrong")
    messages: list[str] = []

    async def main() -> None:
        redis = connect(good)
        mirror = StateMirror(link(good, redis), "0", ttl_ms=60_000)
        await mirror.publish({MeetingKey("a", "b", "c"): MeetingState()})
        assert len(await mirror.fetch()) == 1
        await redis.aclose()
        for settings in (wrong, settings_for(server)):
            bad = Replica(settings, "x", 20, 2.0)
            with pytest.raises(CoordinationError) as err:
                await StateMirror(bad.link, "0", ttl_ms=60_000).fetch()
            messages.append(str(err.value))
            await bad.limiter.acquire()  # falls back, logs why
            assert bad.limiter.fallback and bad.stats.errors["fetch"] == 1
            messages.append(repr(bad.redis))
            await bad.redis.aclose()

    run(main)
    assert any("AuthenticationError" in m for m in messages), messages
    logged = [r.getMessage() for r in caplog.records]
    assert any("Redis unreachable" in m for m in logged)
    for text in messages + logged:
        assert PASSWORD not in text and TOKEN not in text
