"""The lease under a slow or stalled Redis, and what a lease step may touch (issue 23, item 9),
against a real Debian ``redis-server`` on 127.0.0.1. A slow Redis is a small TCP proxy on
loopback that delays every answer; every wait is bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from exporter.coordination import CoordinationSettings, Coordinator, connect
from exporter.limiter.shared import SharedLimiter
from exporter.model import MeetingKey
from exporter.store import MeetingState
from tests.support.api import TOKEN
from tests.support.redis import RedisServer


@pytest.fixture
def server(make_redis: Callable[..., RedisServer]) -> RedisServer:
    return make_redis()


class SlowProxy:
    """A TCP proxy to Redis on 127.0.0.1 that delivers every answer ``delay`` seconds after
    Redis sent it (requests pass at once). Runs on the test's event loop."""

    def __init__(self, port: int, delay: float = 0.0) -> None:
        self.target, self.delay = port, delay
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        for pump in (self._pump(reader, up_writer, False), self._pump(up_reader, writer, True)):
            task = asyncio.create_task(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slow: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                arrived, data = await queue.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, arrived + self.delay - time.monotonic()))
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.create_task(deliver()) if slow else None
        try:
            while data := await reader.read(65536):
                if sender is None:
                    writer.write(data)
                    await writer.drain()
                else:
                    queue.put_nowait((time.monotonic(), data))
        except OSError:
            pass
        if sender is not None:
            queue.put_nowait((time.monotonic(), b""))
            await asyncio.wait_for(sender, timeout=self.delay + 5)
        else:
            writer.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Replica:
    """A :class:`Coordinator` run on the loop, with the times its leadership changed."""

    def __init__(self, url: str, lease: float, name: str) -> None:
        settings = CoordinationSettings(redis_url=url, key_prefix="t", lease_seconds=lease)
        self.coordinator = Coordinator(settings, "0", replica=name)  # two in one process
        self.changes: list[tuple[float, bool]] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        one = MeetingKey("a", "b", "m")

        def states() -> dict[MeetingKey, MeetingState]:
            return {one: MeetingState(up=True)}

        def on_leader(leader: bool) -> None:
            self.changes.append((time.monotonic(), leader))

        self.task = asyncio.create_task(self.coordinator.run(states, on_leader))

    @property
    def leader(self) -> bool:
        return bool(self.changes) and self.changes[-1][1]

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.coordinator.redis.aclose()


async def until(check: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def run(main: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout=timeout))


def test_a_slow_redis_never_gives_two_leaders(server: RedisServer) -> None:
    """Both replicas reach Redis through a proxy that answers in 0.95 s, lease 3 s (the issue's
    1.9 s and 6 s, halved): never both leaders, and one leads steadily."""

    async def main() -> None:
        proxy = SlowProxy(server.port, delay=0.95)
        url = await proxy.start()
        a, b = Replica(url, 3.0, "a"), Replica(url, 3.0, "b")
        a.start()
        await until(lambda: a.leader, 15)
        b.start()
        began, both, led = time.monotonic(), 0, 0
        while time.monotonic() < began + 14:
            both += a.leader and b.leader
            led += a.leader or b.leader
            await asyncio.sleep(0.02)
        for replica in (a, b):
            await replica.stop()
        await proxy.close()
        assert both == 0, f"two leaders in {both} samples"
        assert led >= 0.9 * 14 / 0.02 * 0.8, led  # and somebody led almost all the time
        assert [c for c in a.changes if c[0] >= began] == [], a.changes  # no flapping

    run(main)


def test_a_stalled_leader_steps_down_before_another_takes_over(server: RedisServer) -> None:
    """a's Redis stops answering (its connection stalls; Redis itself is fine, and b reaches
    it): a stops leading before its lease can have expired, and only then does b lead."""
    lease = 3.0

    async def main() -> None:
        proxy = SlowProxy(server.port)
        a, b = Replica(await proxy.start(), lease, "a"), Replica(server.url, lease, "b")
        a.start()
        await until(lambda: a.leader, 10)
        b.start()
        await asyncio.sleep(lease)  # a renews a few times; b stands by
        assert a.leader and not b.leader
        proxy.delay = 60.0
        stalled = time.monotonic()
        await until(lambda: b.leader, 3 * lease)
        took = time.monotonic() - stalled
        for replica in (a, b):
            await replica.stop()
        await proxy.close()
        down = [t for t, leader in a.changes if not leader]
        up = [t for t, leader in b.changes if leader]
        assert down and up, (a.changes, b.changes)
        assert down[0] < up[0], f"a stepped down {down[0] - up[0]:.2f}s after b took over"
        assert down[0] - stalled <= lease, "a stopped within its lease"
        assert took <= lease + lease / 3 + 1.0, took

    run(main)


def test_no_lease_step_reads_keys_it_does_not_own(server: RedisServer) -> None:
    """100,000 unrelated keys in the same Redis: a leader and a standby, their budget and mirror
    run for a few seconds, and Redis never runs SCAN or KEYS (or any command over the whole
    keyspace) for them."""

    async def main() -> None:
        admin = connect(CoordinationSettings(redis_url=server.url))
        for start in range(0, 100_000, 10_000):
            await admin.mset({f"unrelated:{i}": b"x" for i in range(start, start + 10_000)})
        await admin.config_resetstat()
        a, b = Replica(server.url, 1.5, "a"), Replica(server.url, 1.5, "b")
        a.start()
        b.start()
        await until(lambda: a.leader or b.leader, 5)
        limiter = a.coordinator.limiter(TOKEN, 100, 10.0, 0.0)
        assert isinstance(limiter, SharedLimiter)
        for _ in range(5):
            await limiter.acquire()
        await asyncio.sleep(3.0)  # several lease steps, replica counts and mirror rounds
        stats: dict[str, Any] = await admin.info("commandstats")
        for replica in (a, b):
            await replica.stop()
        await admin.aclose()
        ran = {name.removeprefix("cmdstat_") for name in stats}
        assert ran, "Redis reported no commands"
        assert not ran & {"scan", "keys", "dbsize", "flushdb", "randomkey"}, sorted(ran)
        assert a.coordinator.registry.count == 2 and b.coordinator.registry.count == 2

    run(main)
