"""The one fake clock of the tests."""

from __future__ import annotations


class FakeTime:
    """A clock that moves only when told: ``clock()`` (monotonic) and calling it give ``now``,
    ``wall()`` is Unix time, ``advance`` moves it, and ``sleep`` is an asyncio-compatible sleep
    that only moves it (each sleep kept in ``sleeps``)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + 1_700_000_000

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
