"""Prompt polls asked for by webhook events under a storm (issue 23 item 12): the queue and its
memory are bounded, asking never holds the event loop, and refreshes take at most a share of each
token's budget however long the storm lasts."""

from __future__ import annotations

import asyncio
import itertools
import time

from exporter.model import MeetingKey
from exporter.poller import MAX_REFRESH_QUEUE, REFRESH_SECONDS, REFRESH_SHARE, Refresher
from tests.support.clock import FakeTime
from tests.support.metrics import max_in_window


class Limiter:
    """A token budget with one slot every ``spacing`` seconds, always spare (no routine polls)."""

    def __init__(self, spacing: float) -> None:
        self.spacing = spacing

    def has_spare(self) -> bool:
        return True


class Client:
    def __init__(self, spacing: float) -> None:
        self.limiter = Limiter(spacing)


def test_tens_of_thousands_of_distinct_meetings_asking_at_once_never_hold_the_loop() -> None:
    sent: list[MeetingKey] = []

    async def send(key: MeetingKey, client: object) -> None:
        sent.append(key)

    async def go() -> tuple[float, int, float, int]:
        refresher = Refresher(send, lambda: 1000.0)
        client = Client(0.0)
        keys = [MeetingKey("acc", "app", f"m{i}") for i in range(3 * MAX_REFRESH_QUEUE)]
        lag = 0.0
        started = time.perf_counter()
        accepted = 0
        for i, key in enumerate(keys):  # one event loop turn per batch of 1,000 events
            accepted += refresher.ask(key, client)  # type: ignore[arg-type]
            if i % 1000 == 999:
                before = time.perf_counter()
                await asyncio.sleep(0)
                lag = max(lag, time.perf_counter() - before)
        took = time.perf_counter() - started
        queued = len(refresher._queue)
        if refresher._draining is not None:
            refresher._draining.cancel()
        return took, accepted, lag, queued

    took, accepted, lag, queued = asyncio.run(go())
    assert MAX_REFRESH_QUEUE - 10 <= queued <= MAX_REFRESH_QUEUE  # bounded; the rest dropped
    assert accepted < MAX_REFRESH_QUEUE + 1000
    assert took < 2.0, f"30,000 asks took {took:.2f}s"  # quadratic work took minutes before
    assert lag < 0.5


def test_a_storm_takes_at_most_its_share_of_the_token_budget() -> None:
    t = FakeTime()
    sent: list[float] = []

    async def send(key: MeetingKey, client: object) -> None:
        sent.append(t.now)

    spacing = 1.0  # the token allows one request per second

    async def go() -> None:
        refresher = Refresher(send, lambda: 50.0, clock=t.clock, sleep=t.sleep)
        client = Client(spacing)
        for second in range(60):  # a minute of events: 20 distinct meetings every second
            for i in range(20):
                key = MeetingKey("acc", "app", f"m{second}-{i}")
                refresher.ask(key, client)  # type: ignore[arg-type]
            task = refresher._draining
            assert task is not None
            await asyncio.wait_for(_run_until(t, task, t.now + 1), timeout=5)

    asyncio.run(go())
    assert sent, "no refresh went out at all"
    window = 60.0  # in any minute: at most 15 of the token's 60 requests
    assert max_in_window(sent, window) <= window * REFRESH_SHARE / spacing + 1
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= spacing / REFRESH_SHARE - 1e-9


async def _run_until(t: FakeTime, task: asyncio.Task[None], until: float) -> None:
    """Let the drain run (its sleeps move the fake clock) until the clock reaches ``until``."""
    while t.now < until and not task.done():
        await asyncio.sleep(0)


def test_a_meeting_is_asked_at_most_once_per_window_and_again_after_it() -> None:
    t = FakeTime()

    async def send(key: MeetingKey, client: object) -> None:
        return None

    async def go() -> list[bool]:
        refresher = Refresher(send, lambda: 1.0, clock=t.clock, sleep=t.sleep)
        client = Client(0.0)
        key = MeetingKey("acc", "app", "m1")
        answers = [refresher.ask(key, client)]  # type: ignore[arg-type]
        await asyncio.sleep(0)
        t.now += REFRESH_SECONDS / 2
        answers.append(refresher.ask(key, client))  # type: ignore[arg-type]
        t.now += REFRESH_SECONDS
        answers.append(refresher.ask(key, client))  # type: ignore[arg-type]
        if refresher._draining is not None:
            refresher._draining.cancel()
        return answers

    assert asyncio.run(go()) == [True, False, True]
