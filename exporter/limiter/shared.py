"""A token's request budget shared through Redis by every replica that uses it, with a local
fallback (as gitlab-ci-pipelines-exporter keeps ``ratelimit/{local,redis}``).

Keys (``P`` is ``key_prefix``; a token appears only as a hash, never itself)::

    P:limits:LIMITER/<token-hash>/<share>/…   the budget of one share (``limits`` moving windows)
    P:pause:<token-hash>                      Unix time until which the token is paused (a 429)

A *share* is the part of the token's budget one shard was given (:mod:`exporter.shard` splits
it from the config): each share has its own windows, so shards never take from each other's
part and together use the whole budget; the replicas of one shard share its windows. A 429
pauses the whole token, so the pause is one key for every share.

The shared budget is two ``limits`` moving windows in Redis plus the local even spacing of
:class:`~exporter.limiter.RateLimiter`: a hard cap of ``requests`` per ``ceil(period + margin)``
seconds (no window of ``period`` ever sees more than ``requests``, whatever the replicas do) and a
spread cap of ``n`` per ``W`` seconds with ``n / W <= 1 / spacing`` (so replicas together do not
fill the cap in a burst and then wait). ``limits`` alone gives only the cap: a moving window
admits ``requests`` at once. Redis failures fall back to a local limiter with ``requests /
replicas`` (see :class:`SharedLimiter`).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, TypeVar

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter

from exporter.errors import ApiError
from exporter.limiter.local import RateLimiter
from exporter.redislink import CoordinationError, RedisLink, log, token_hash

PAUSE_READ_SECONDS: Final = 1.0  # how often acquire reads the shared pause
RECONNECT_SECONDS: Final = 1.0  # how often a replica in fallback tries Redis again
MAX_WAITS: Final = 10_000  # bound on the waits of one acquire for a full shared window
_T = TypeVar("_T")


def spread_window(spacing: float, period: float) -> tuple[int, int]:
    """``(n, W)``: at most ``n`` requests per ``W`` whole seconds, ``n / W <= 1 / spacing``,
    the smallest ``W`` that keeps at least 90 % of the rate (``W`` at most ``period``).

    >>> spread_window(0.125, 2.0), spread_window(0.2525, 300)
    ((8, 1), (11, 3))
    """
    best = (1, max(1, math.ceil(spacing)))
    for width in range(1, max(1, int(period)) + 1):
        count = math.floor(width / spacing + 1e-9)
        if count >= 1 and count / width >= 0.9 / spacing:
            return count, width
    return best


class SharedLimiter(RateLimiter):
    """A :class:`~exporter.limiter.RateLimiter` whose budget every replica on the same token
    shares through Redis, and whose 429 pause reaches every replica.

    ``acquire`` waits for the local spacing, then for an entry in both shared windows (see the
    module docstring). When Redis fails, the replica falls back to a local limiter with
    ``requests / replicas()`` (the replicas last seen), logs it once, and tries Redis again every
    second. Switching either way never exceeds the budget: the fallback starts only after one
    spread window plus one of its own spacings, and after Redis is back the fallback keeps
    limiting (while the shared windows record again) for one more hard-cap window.

    Limits: an asymmetric partition (this replica cut off, the others not) can add up to
    ``requests / replicas`` in a period; replica clocks must agree (NTP) within the margin, as
    ``limits`` stamps entries with the client's time.
    """

    def __init__(
        self,
        link: RedisLink,
        token: str,
        requests: int,
        period_seconds: float,
        *,
        share: str = "0",
        replicas: Callable[[], int] = lambda: 1,
        reserve_fraction: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        super().__init__(
            requests,
            period_seconds,
            reserve_fraction=reserve_fraction,
            clock=clock,
            wall=wall,
            sleep=sleep,
        )
        self._link, self._replicas = link, replicas
        self._requests, self._reserve = requests, reserve_fraction
        self._id = f"{token_hash(token)}/{share}"
        self._pause_key = link.key("pause", token_hash(token))
        storage = RedisStorage(
            f"async+{'rediss' if link.tls else 'redis'}://localhost:6379",  # unused: pool given
            implementation="redispy",
            key_prefix=link.key("limits"),
            connection_pool=link.redis.connection_pool,  # type: ignore[arg-type]
        )
        self._windows = MovingWindowRateLimiter(storage)
        usable = max(1, math.floor(requests * (1.0 - reserve_fraction)))
        self._hard_seconds = math.ceil(period_seconds + max(0.5, 0.01 * period_seconds))
        self._cap = RateLimitItemPerSecond(usable, self._hard_seconds)
        self._spread_n, self._spread_w = spread_window(self.spacing, period_seconds)
        self._spread = RateLimitItemPerSecond(self._spread_n, self._spread_w)
        self._fallback: RateLimiter | None = None
        self._hold_until = 0.0  # no fallback request before this (monotonic)
        self._retry_at = 0.0  # no Redis attempt in fallback before this
        self._both_until = 0.0  # after a reconnect: fallback limits too until this
        self._pause_read = -math.inf
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def fallback(self) -> bool:
        """True while Redis is unreachable and the local fallback budget applies."""
        return self._fallback is not None

    def has_spare(self) -> bool:
        spare = super().has_spare()
        return spare and (self._fallback is None or self._fallback.has_spare())

    async def acquire(self) -> None:
        """Wait for a slot of the shared budget. Raises ``ApiError("rate_limited")`` while any
        replica's 429 pauses the token."""
        await self._read_pause()
        await super().acquire()
        fallback = self._fallback
        if fallback is not None:
            await self._fallback_slot(fallback)
            if self._clock() < self._retry_at:
                return
        try:
            await self._shared_slot()
        except CoordinationError as err:
            self._redis_failed(err)
            if fallback is None:  # one fallback, even when callers fail at once
                await self._fallback_slot(self._fallback or self._start_fallback(err))
            return
        if fallback is not None:
            self._recovering()

    async def _fallback_slot(self, fallback: RateLimiter) -> None:
        """A slot of the fallback budget, honouring the token's pause before and after every
        wait (a 429 that arrives meanwhile stops the request)."""
        wait = self._hold_until - self._clock()
        if wait > 0:
            await self._sleep(wait)
        self._check_pause(self._clock())
        await fallback.acquire()
        self._check_pause(self._clock())

    async def _shared_slot(self) -> None:
        for _ in range(MAX_WAITS):
            full = await self._full_window()
            if full is None:
                return
            stats = await self._redis_op("limiter", self._windows.get_window_stats(full, self._id))
            await self._sleep(min(max(stats.reset_time - self._wall(), 0.005), self.period))
            self._check_pause(self._clock())
        raise ApiError("rate_limited", "not sent: the shared budget stayed full")

    async def _full_window(self) -> RateLimitItem | None:
        """Take an entry in both windows; the window that was full, or None when both gave."""
        for item in (self._spread, self._cap):
            if not await self._redis_op("limiter", self._windows.hit(item, self._id)):
                return item
        return None

    def _redis_op(self, op: str, action: Awaitable[_T]) -> Coroutine[Any, Any, _T]:
        return self._link.call(op, action)

    def _redis_failed(self, err: CoordinationError) -> None:
        self._retry_at = self._clock() + RECONNECT_SECONDS
        self._both_until = 0.0
        log.debug("coordination: %s", err)

    def _start_fallback(self, err: CoordinationError) -> RateLimiter:
        replicas = max(1, self._replicas())
        fallback = RateLimiter(
            max(1, self._requests // replicas),
            self.period,
            reserve_fraction=self._reserve,
            clock=self._clock,
            wall=self._wall,
            sleep=self._sleep,
        )
        left = self._paused_until - self._clock()
        if left > 0:
            fallback.pause(left)  # a 429 seen before the switch still holds
        self._hold_until = self._clock() + self._spread_w + fallback.spacing
        self._fallback = fallback
        log.warning(
            "coordination: Redis unreachable (%s); this replica now limits itself to %d "
            "requests per %gs (the budget / %d replicas) until Redis is back",
            err,
            max(1, self._requests // replicas),
            self.period,
            replicas,
        )
        return fallback

    def _recovering(self) -> None:
        if self._fallback is None:  # another caller finished the recovery
            return
        now = self._clock()
        self._retry_at = 0.0
        if self._both_until == 0.0:
            self._both_until = now + self._hard_seconds + RECONNECT_SECONDS
        elif now >= self._both_until:
            self._fallback, self._both_until = None, 0.0
            log.warning("coordination: Redis is back; the shared budget applies again")

    async def _read_pause(self) -> None:
        """Take over a pause another replica published (read at most once a second)."""
        now = self._clock()
        if now < self._pause_read + PAUSE_READ_SECONDS or now < self._retry_at:
            return
        self._pause_read = now
        try:
            raw = await self._redis_op("pause", self._link.redis.get(self._pause_key))
        except CoordinationError:
            return  # the shared slot will notice and fall back
        left = _unix_time(raw) - self._wall()
        if left > 0:
            self._pause_here(left)

    def _pause_here(self, seconds: float) -> None:
        super().pause(seconds)
        if self._fallback is not None:
            self._fallback.pause(seconds)

    def pause(self, seconds: float) -> None:
        """Pause here at once (the fallback too), and on every replica (written to Redis in
        the background)."""
        self._pause_here(seconds)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._publish_pause(self._wall() + max(0.0, seconds)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_pause(self, until: float) -> None:
        ttl = max(1, math.ceil((until - self._wall()) * 1000))
        try:
            await self._redis_op("pause", self._write_pause(until, ttl))
        except CoordinationError as err:
            log.debug("coordination: %s", err)

    async def _write_pause(self, until: float, ttl_ms: int) -> None:
        redis = self._link.redis
        if await redis.set(self._pause_key, repr(until), px=ttl_ms, nx=True):
            return
        current = await redis.get(self._pause_key)
        if current is None or _unix_time(current) < until:
            await redis.set(self._pause_key, repr(until), px=ttl_ms)


def _unix_time(raw: bytes | str | None) -> float:
    """A pause as stored in Redis; 0 (no pause) for anything that is not a finite number."""
    try:
        value = float(raw) if raw is not None and len(raw) <= 32 else 0.0
    except ValueError:
        return 0.0
    return value if math.isfinite(value) else 0.0
