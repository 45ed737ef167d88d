"""The shared budget under hostile conditions (issue 23, items 7 and 8), against a real Debian
``redis-server`` on 127.0.0.1: a 429 while Redis is down, callers that fail at once, and shards
that share one Redis. The process tests start real exporters and the simulator; every wait is
bounded."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from exporter.coordination import CoordinationSettings, connect, link_for
from exporter.errors import ApiError
from exporter.limiter.shared import SharedLimiter
from exporter.simulator import Simulator
from tests.support.api import TOKEN, sim_config
from tests.support.metrics import max_in_window, value
from tests.support.process import ExporterProcess, Exporters, wait_for
from tests.support.redis import RedisServer


@pytest.fixture
def server(make_redis: Callable[..., RedisServer]) -> RedisServer:
    return make_redis()


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers (a hung Redis)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


@pytest.fixture
def start(start_exporter: Exporters) -> Exporters:
    """``start_exporter``, whose exporters may log no traceback either."""
    start_exporter.forbidden.update({"Traceback": "a traceback"})
    return start_exporter


def limiter_on(url: str, requests: int, period: float, **kw: Any) -> SharedLimiter:
    settings = CoordinationSettings(redis_url=url, key_prefix="t")
    return SharedLimiter(
        link_for(settings, connect(settings, timeout=0.5)), TOKEN, requests, period, **kw
    )


def run(main: Callable[[], Any], timeout: float = 20) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout=timeout))


# --- item 7: the 429 pause while Redis is down -----------------------------------------------


def test_callers_failing_at_once_start_one_fallback(
    blackhole: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Three acquires wait on a Redis that never answers and fail together: one fallback
    limiter, one warning, and its spacing between the requests (not three at once)."""
    caplog.set_level(logging.WARNING, logger="exporter.coordination")
    limiter = limiter_on(blackhole, 10, 2.0)
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(time.monotonic())

    async def main() -> None:
        await asyncio.gather(one(), one(), one())

    run(main)
    unreachable = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(unreachable) == 1, [r.getMessage() for r in unreachable]
    assert limiter.fallback
    gaps = [b - a for a, b in zip(sorted(times), sorted(times)[1:], strict=False)]
    assert len(times) == 3 and min(gaps) >= 0.9 * limiter.spacing, gaps


def test_a_429_while_redis_is_down_stops_every_queued_request(server: RedisServer) -> None:
    limiter = limiter_on(server.url, 20, 2.0)
    sent: list[float] = []
    refused: list[float] = []

    async def worker(until: float) -> None:
        while time.monotonic() < until:
            try:
                await limiter.acquire()
                sent.append(time.monotonic())
            except ApiError as err:
                assert err.reason == "rate_limited"
                refused.append(time.monotonic())
                await asyncio.sleep(0.05)

    async def main() -> None:
        await limiter.acquire()
        server.stop()
        until = time.monotonic() + 6.0
        workers = [asyncio.create_task(worker(until)) for _ in range(5)]
        deadline = time.monotonic() + 4.0
        while (not limiter.fallback or len(sent) < 3) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert limiter.fallback and len(sent) >= 3, sent
        limiter.observe(429, {"retry-after": "3"})
        paused.append(time.monotonic())
        await asyncio.gather(*workers)

    paused: list[float] = []
    run(main)
    after = [t for t in sent if paused[0] < t < paused[0] + 2.9]
    assert after == [], f"{len(after)} requests sent during the pause"
    assert refused, "queued callers were refused"
    assert any(t >= paused[0] + 3.0 for t in sent), "sending resumed after the pause"


def test_the_exporter_honours_a_429_while_redis_is_down(
    make_redis: Callable[..., RedisServer], start: Callable[..., ExporterProcess]
) -> None:
    """A leader in fallback sees a 429 (``Retry-After: 5``): nothing more is sent for 5 s."""
    redis = make_redis()
    sim = Simulator(token=TOKEN, meetings=8, auto=False, seed=3)
    sim.start("127.0.0.1", 0)
    try:
        config = sim_config(sim)
        config["api"]["rate_limit"] = {"requests": 60, "period_seconds": 10}
        config["poll"]["concurrency"] = 8
        config["coordination"] = {"redis_url": redis.url, "lease_seconds": 3}
        proc = start(config)
        proc.wait_ready(timeout=30)
        wait_for(lambda: value(proc.scrape(), "realtimekit_exporter_leader") == 1, timeout=20)
        redis.stop()
        wait_for(lambda: "Redis unreachable" in proc.log(), timeout=15)
        wait_for(lambda: value(proc.scrape(), "realtimekit_coordination_up") == 0, timeout=10)
        for meeting in sim.meeting_ids:
            sim.set_fault(meeting, "429")
        first = wait_for(
            lambda: next((t for t, _, s in sim.request_log() if s == 429), None), timeout=10
        )
        for meeting in sim.meeting_ids:
            sim.set_fault(meeting, None)
        time.sleep(5.5)  # the length of the pause under test: Retry-After 5
        late = [t for t, _, _ in sim.request_log() if first + 0.5 < t < first + 4.8]
        assert late == [], f"{len(late)} requests during the 5 s pause: {sim.status_counts()}"
        assert sim.status_counts().get(429, 0) <= 8  # only the requests already in flight
    finally:
        sim.stop()


# --- item 8: shards on one Redis each use their own part of the budget --------------------------


def test_two_shares_of_one_token_each_get_their_part(server: RedisServer) -> None:
    """Shards 0 and 1 each hold 10 of a 20 per 2 s budget: together ~20 per 2 s, not 10."""
    shards = [limiter_on(server.url, 10, 2.0, share=str(n)) for n in range(2)]
    times: list[list[float]] = [[], []]

    async def work(n: int, until: float) -> None:
        while time.monotonic() < until:
            await shards[n].acquire()
            times[n].append(time.monotonic())

    async def main() -> None:
        until = time.monotonic() + 4.0
        await asyncio.gather(*(work(n, until) for n in (0, 1) for _ in range(3)))

    run(main)
    both = times[0] + times[1]
    assert max_in_window(both, 2.0) <= 20
    for own in times:
        assert max_in_window(own, 2.0) <= 10
        assert len(own) >= 15, [len(t) for t in times]  # ~4 s at 10 per 2.02 s each
    assert not any(s.fallback for s in shards)


def test_two_sharded_exporters_on_one_redis_use_the_whole_budget(
    make_redis: Callable[..., RedisServer], start: Callable[..., ExporterProcess]
) -> None:
    budget = (40, 10.0)
    redis = make_redis()
    sim = Simulator(token=TOKEN, meetings=24, auto=False, seed=5, rate_limit=budget)
    sim.start("127.0.0.1", 0)
    try:
        config = sim_config(sim, stale_after_seconds=120)
        config["api"]["rate_limit"] = {"requests": budget[0], "period_seconds": budget[1]}
        config["coordination"] = {"redis_url": redis.url, "lease_seconds": 3}
        shards = [start(config, "--total-shards", "2", "--shard", str(n)) for n in (0, 1)]
        for proc in shards:
            wait_for(lambda p=proc: value(p.scrape(), "realtimekit_exporter_leader") == 1, 20)
        begin = time.time() + 2.0  # past the first, spread polls
        time.sleep(2.0 + 15.0)
        times = [t for t, _, _ in sim.request_log() if begin <= t < begin + 15.0]
        # 24 meetings every 1 s want 24/s; the budget allows 4/s (3.96 with the 1 % margin).
        assert len(times) >= 0.8 * 15 * budget[0] / budget[1], len(times)
        assert 429 not in sim.status_counts()
        assert max_in_window([t for t, _, _ in sim.request_log()], budget[1]) <= budget[0]
        for proc in shards:  # each shard used its own part
            requests = sum(
                v for (n, _), v in proc.scrape().items() if n == "realtimekit_api_requests_total"
            )
            assert requests >= 10, requests
    finally:
        sim.stop()
