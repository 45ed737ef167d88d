"""High availability through Redis: one request budget per token shared by every replica, one
leader per shard, and the leader's meeting states mirrored so a standby takes over warm.

Keys (``P`` is ``key_prefix``; a token appears only as a hash, never itself)::

    P:limits:LIMITER/<token-hash>/…   the shared budget (``limits`` moving windows)
    P:pause:<token-hash>              Unix time until which the token is paused (after a 429)
    P:replicas:<replica-id>           one per live replica, with a TTL
    P:lease:<shard>                   the shard's leader (redis-py ``Lock``, value = replica id)
    P:state:<shard>                   hash "account/app/meeting" → JSON of a MeetingState

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
import hashlib
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import redis.asyncio as aredis
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from pydantic import TypeAdapter, ValidationError
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import LockError, RedisError

from exporter.errors import ApiError, ExporterError
from exporter.limiter import RateLimiter
from exporter.model import MeetingKey, meeting_path, parse_meeting_path
from exporter.store import MeetingState

log = logging.getLogger(__name__)

#: Values of the ``op`` label of ``realtimekit_coordination_errors_total``.
OPS: Final = ("limiter", "pause", "replicas", "lease", "publish", "fetch")
PAUSE_READ_SECONDS: Final = 1.0  # how often acquire reads the shared pause
RECONNECT_SECONDS: Final = 1.0  # how often a replica in fallback tries Redis again
MAX_WAITS: Final = 10_000  # bound on the waits of one acquire for a full shared window
_STATE: Final = TypeAdapter(MeetingState)
_T = TypeVar("_T")
_REDIS_ERRORS: Final = (RedisError, OSError)


class CoordinationError(ExporterError):
    """A Redis operation failed. The message names the operation, never the password."""


@dataclass(frozen=True, slots=True)
class CoordinationSettings:
    """The ``coordination:`` config block. ``password`` comes from a file or the environment,
    never from the config text, and is never shown (``repr`` hides it)."""

    redis_url: str
    key_prefix: str = "realtimekit-exporter"
    lease_seconds: float = 15.0
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # CA bundle for rediss://, when not the system's


def connect(settings: CoordinationSettings, *, timeout: float = 2.0) -> aredis.Redis:
    """A Redis client for ``settings`` (``rediss://`` is TLS). Every command times out after
    ``timeout`` seconds and is retried once on a fresh connection (a restarted server)."""
    options: dict[str, Any] = {}
    if settings.ca_file is not None:
        options["ssl_ca_certs"] = settings.ca_file
    return aredis.Redis.from_url(
        settings.redis_url,
        password=settings.password,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        **options,
    )


def replica_id() -> str:
    """This process's id among the replicas: the host name (the pod's) and the process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def token_hash(token: str) -> str:
    """The name of a token in Redis keys: a hash, so the token itself is never stored."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


@dataclass(slots=True)
class CoordinationStats:
    """What the collector exports: ``realtimekit_coordination_up``,
    ``realtimekit_exporter_leader`` and ``realtimekit_coordination_errors_total{op}``."""

    up: bool = False
    leader: bool = False
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))
    last_error: str = ""  # what the last failure said (the password cut out)

    def failed(self, op: str, why: str = "") -> None:
        self.errors[op] = self.errors.get(op, 0) + 1
        self.up = False
        self.last_error = why

    def succeeded(self) -> None:
        self.up = True


def _describe(err: BaseException, settings: CoordinationSettings) -> str:
    """An error's type and text, with the password cut out should a library ever show it."""
    text = f"{type(err).__name__}: {err}"
    return text.replace(settings.password, "***") if settings.password else text


async def _call(
    stats: CoordinationStats,
    settings: CoordinationSettings,
    op: str,
    action: Awaitable[_T],
) -> _T:
    """Run one Redis operation: count it, and translate a failure into CoordinationError."""
    try:
        result = await action
    except _REDIS_ERRORS as err:
        why = _describe(err, settings)
        stats.failed(op, why)
        raise CoordinationError(f"redis {op} failed: {why}") from None
    stats.succeeded()
    return result


class ReplicaRegistry:
    """Which replicas are alive: each refreshes ``P:replicas:<id>`` with a TTL; ``count`` is
    the number seen at the last successful refresh (at least 1, this replica)."""

    def __init__(
        self,
        redis: aredis.Redis,
        settings: CoordinationSettings,
        replica: str,
        *,
        stats: CoordinationStats,
    ) -> None:
        self._redis, self._settings, self._stats = redis, settings, stats
        self._key = f"{settings.key_prefix}:replicas:{replica}"
        self._pattern = f"{settings.key_prefix}:replicas:*"
        self._ttl_ms = int(settings.lease_seconds * 2000)
        self.count = 1

    async def refresh(self) -> int:
        """Announce this replica and count the others. Raises CoordinationError."""
        await _call(self._stats, self._settings, "replicas", self._announce())
        return self.count

    async def _announce(self) -> None:
        await self._redis.set(self._key, b"1", px=self._ttl_ms)
        seen = 0
        async for _ in self._redis.scan_iter(match=self._pattern, count=100):
            seen += 1
            if seen >= 1000:
                break
        self.count = max(1, seen)


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
    ``requests / replicas`` (the replicas last seen), logs it once, and tries Redis again every
    second. Switching either way never exceeds the budget: the fallback starts only after one
    spread window plus one of its own spacings, and after Redis is back the fallback keeps
    limiting (while the shared windows record again) for one more hard-cap window.

    Limits: an asymmetric partition (this replica cut off, the others not) can add up to
    ``requests / replicas`` in a period; replica clocks must agree (NTP) within the margin, as
    ``limits`` stamps entries with the client's time.
    """

    def __init__(
        self,
        redis: aredis.Redis,
        settings: CoordinationSettings,
        token: str,
        requests: int,
        period_seconds: float,
        *,
        registry: ReplicaRegistry,
        stats: CoordinationStats,
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
        self._redis, self._settings, self._stats, self._registry = redis, settings, stats, registry
        self._requests, self._reserve = requests, reserve_fraction
        self._id = token_hash(token)
        self._pause_key = f"{settings.key_prefix}:pause:{self._id}"
        storage = RedisStorage(
            "async+"
            + settings.redis_url.split("://", 1)[0]
            + "://localhost:6379",  # unused: the pool is given
            implementation="redispy",
            key_prefix=f"{settings.key_prefix}:limits",
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]
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
            if fallback is None:
                await self._fallback_slot(self._start_fallback(err))
            return
        if fallback is not None:
            self._recovering()

    async def _fallback_slot(self, fallback: RateLimiter) -> None:
        wait = self._hold_until - self._clock()
        if wait > 0:
            await self._sleep(wait)
        await fallback.acquire()

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
        return _call(self._stats, self._settings, op, action)

    def _redis_failed(self, err: CoordinationError) -> None:
        self._retry_at = self._clock() + RECONNECT_SECONDS
        self._both_until = 0.0
        log.debug("coordination: %s", err)

    def _start_fallback(self, err: CoordinationError) -> RateLimiter:
        replicas = self._registry.count
        fallback = RateLimiter(
            max(1, self._requests // replicas),
            self.period,
            reserve_fraction=self._reserve,
            clock=self._clock,
            wall=self._wall,
            sleep=self._sleep,
        )
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
            raw = await self._redis_op("pause", self._redis.get(self._pause_key))
        except CoordinationError:
            return  # the shared slot will notice and fall back
        left = float(raw) - self._wall() if raw else 0.0
        if left > 0:
            super().pause(left)

    def pause(self, seconds: float) -> None:
        """Pause here at once, and on every replica (written to Redis in the background)."""
        super().pause(seconds)
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
        if await self._redis.set(self._pause_key, repr(until), px=ttl_ms, nx=True):
            return
        current = await self._redis.get(self._pause_key)
        if current is None or float(current) < until:
            await self._redis.set(self._pause_key, repr(until), px=ttl_ms)


class Lease:
    """Leadership of one shard: a redis-py :class:`~redis.asyncio.lock.Lock` of
    ``lease_seconds``, renewed every third of it.

    A standby tries to take the lease at every step, so it takes over at most ``lease +
    lease/3`` after the holder's last renewal. The holder loses leadership when the lock turned
    out to be someone else's, or when it could not renew for two thirds of the lease (so it
    stops before another replica can take over). With ``hold_on_outage`` a holder that cannot
    reach Redis at all keeps leading until Redis answers again (the issue's "keep polling inside
    the fallback budget"); a standby never takes over while Redis is unreachable either way.
    """

    def __init__(
        self,
        redis: aredis.Redis,
        settings: CoordinationSettings,
        shard: str,
        replica: str,
        *,
        stats: CoordinationStats,
        registry: ReplicaRegistry | None = None,
        hold_on_outage: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._settings, self._stats, self._registry = settings, stats, registry
        self._replica, self._hold = replica, hold_on_outage
        self._clock, self._sleep = clock, sleep
        self.interval = settings.lease_seconds / 3
        self._lock = Lock(
            redis,
            f"{settings.key_prefix}:lease:{shard}",
            timeout=settings.lease_seconds,
            blocking=False,
            thread_local=False,
        )
        self._leader = False
        self._renewed = -math.inf

    @property
    def is_leader(self) -> bool:
        return self._leader

    async def run(self) -> None:
        """Take or renew the lease every ``lease_seconds / 3``, until cancelled."""
        while True:
            await self.step()
            await self._sleep(self.interval)

    async def step(self) -> bool:
        """One try to take or renew the lease; returns :attr:`is_leader`."""
        started = self._clock()
        try:
            await _call(self._stats, self._settings, "lease", self._take_or_renew(started))
            if self._registry is not None:
                await self._registry.refresh()
        except CoordinationError as err:
            self._unreachable(started, err)
        self._stats.leader = self._leader
        return self._leader

    async def _take_or_renew(self, started: float) -> None:
        if self._leader:
            try:
                await self._lock.reacquire()
                self._renewed = started
                return
            except LockError:
                self._set_leader(False, "the lease is no longer ours")
        if await self._lock.acquire(blocking=False, token=self._replica):
            self._renewed = started
            self._set_leader(True, "took the lease")

    def _unreachable(self, started: float, err: CoordinationError) -> None:
        log.debug("coordination: %s", err)
        expired = started - self._renewed >= self._settings.lease_seconds - self.interval
        if self._leader and expired and not self._hold:
            self._set_leader(False, "could not renew the lease in time")

    def _set_leader(self, leader: bool, why: str) -> None:
        if leader != self._leader:
            log.warning(
                "coordination: %s %s: %s", self._lock.name, "leader" if leader else "standby", why
            )
        self._leader = leader
        self._stats.leader = leader

    async def release(self) -> None:
        """Give the lease up (on shutdown) so a standby takes over at once."""
        if not self._leader:
            return
        self._set_leader(False, "released")
        try:
            await self._lock.release()
        except (*_REDIS_ERRORS, LockError) as err:
            log.debug("coordination: release: %s", _describe(err, self._settings))


def encode_state(state: MeetingState) -> bytes:
    """A meeting state as compact JSON; fields at their defaults are left out.

    >>> encode_state(MeetingState(up=True))
    b'{"up":true}'
    """
    return _STATE.dump_json(state, exclude_defaults=True)


def decode_state(data: bytes | str) -> MeetingState:
    """The inverse of :func:`encode_state`. Raises ValueError naming what is wrong."""
    try:
        state = _STATE.validate_json(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ValueError(f"invalid meeting state: {problems}") from None
    if len(state.errors) != len(MeetingState().errors):
        raise ValueError(f"invalid meeting state: errors: {len(state.errors)} counts")
    return state


def _key(field_name: bytes | str) -> MeetingKey:
    text = field_name.decode() if isinstance(field_name, bytes) else field_name
    return parse_meeting_path(text)


class StateMirror:
    """The leader's meeting states in ``P:state:<shard>``: the leader publishes after each
    change batch, every replica fetches them every few seconds."""

    def __init__(
        self,
        redis: aredis.Redis,
        settings: CoordinationSettings,
        shard: str,
        *,
        stats: CoordinationStats,
    ) -> None:
        self._redis, self._settings, self._stats = redis, settings, stats
        self._key = f"{settings.key_prefix}:state:{shard}"
        self._ttl_ms = int(settings.lease_seconds * 10_000)
        self._published: dict[MeetingKey, MeetingState] | None = None

    async def publish(self, states: Mapping[MeetingKey, MeetingState]) -> None:
        """Make the mirror equal ``states`` (only what changed since the last publish is sent;
        everything after a failure). Raises CoordinationError."""
        previous, self._published = self._published, None
        pipe = self._redis.pipeline(transaction=True)
        if previous is None:
            pipe.delete(self._key)
            previous = {}
        changed = {
            meeting_path(k): encode_state(v) for k, v in states.items() if previous.get(k) is not v
        }
        gone = [meeting_path(k) for k in previous if k not in states]
        if changed:
            pipe.hset(self._key, mapping=changed)  # type: ignore[arg-type]
        if gone:
            pipe.hdel(self._key, *gone)
        pipe.pexpire(self._key, self._ttl_ms)
        await _call(self._stats, self._settings, "publish", pipe.execute())
        self._published = dict(states)

    async def fetch(self) -> dict[MeetingKey, MeetingState]:
        """The mirrored states; entries that cannot be read are left out (and logged).
        Raises CoordinationError."""
        raw: dict[bytes | str, bytes | str] = await _call(
            self._stats, self._settings, "fetch", self._redis.hgetall(self._key)
        )
        states = {}
        for name, value in raw.items():
            try:
                states[_key(name)] = decode_state(value)
            except ValueError as err:
                log.warning("coordination: %s: skipped: %s", self._key, err)
        return states


class Coordinator:
    """This process' part in a replicated deployment: one Redis client, the shared budgets of
    its tokens, the lease of its shard, and the mirror of the leader's meeting states.

    :meth:`run` steps the lease every ``lease_seconds / 3`` and, every :data:`MIRROR_SECONDS`,
    either publishes this process' states (leader) or fetches the leader's (standby), so that a
    standby that wins the lease serves complete values at once. ``on_leader(bool)`` is called
    on the loop whenever leadership changes.
    """

    MIRROR_SECONDS: Final = 1.0

    def __init__(self, settings: CoordinationSettings, shard: str) -> None:
        self.settings = settings
        self.stats = CoordinationStats()
        self.redis = connect(settings)
        self.replica = replica_id()
        self.registry = ReplicaRegistry(self.redis, settings, self.replica, stats=self.stats)
        self.lease = Lease(
            self.redis,
            settings,
            shard,
            self.replica,
            stats=self.stats,
            registry=self.registry,
            hold_on_outage=True,
        )
        self.mirror = StateMirror(self.redis, settings, shard, stats=self.stats)
        self.mirrored: dict[MeetingKey, MeetingState] = {}  # the leader's, as last fetched

    def limiter(
        self, token: str, requests: int, period_seconds: float, reserve_fraction: float
    ) -> RateLimiter:
        """The token's budget, shared by every replica."""
        return SharedLimiter(
            self.redis,
            self.settings,
            token,
            requests,
            period_seconds,
            registry=self.registry,
            stats=self.stats,
            reserve_fraction=reserve_fraction,
        )

    async def run(
        self,
        states: Callable[[], Mapping[MeetingKey, MeetingState]],
        on_leader: Callable[[bool], None],
    ) -> None:
        """Until cancelled: keep the lease, mirror the states, report leadership changes."""
        leader, next_step, reachable = False, 0.0, True
        while True:
            now = time.monotonic()
            if now >= next_step:
                next_step = now + self.lease.interval
                if await self.lease.step() != leader:
                    leader = self.lease.is_leader
                    on_leader(leader)
            try:
                if leader:
                    await self.mirror.publish(states())
                else:
                    self.mirrored = await self.mirror.fetch()
            except CoordinationError as err:
                log.debug("coordination: mirror: %s", err)
            reachable = self._report(reachable, leader)
            await asyncio.sleep(self.MIRROR_SECONDS)

    def _report(self, reachable: bool, leader: bool) -> bool:
        """One line when Redis stops or starts answering a standby (a leader's budget says so
        itself, as it falls back); returns whether it answers now."""
        up = self.stats.up
        if up != reachable and not leader:
            if up:
                log.warning("coordination: Redis reachable again; standing by")
            else:
                log.warning(
                    "coordination: Redis unreachable (%s); standing by, not polling",
                    self.stats.last_error or "no answer",
                )
        return up

    async def close(self) -> None:
        await self.lease.release()
        await self.redis.aclose()
