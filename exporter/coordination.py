"""High availability through Redis: one request budget per token shared by every replica, one
leader per shard, and the leader's meeting states mirrored so a standby takes over warm.

Keys (``P`` is ``key_prefix``; a token appears only as a hash, never itself)::

    P:limits:LIMITER/<token-hash>/…   the shared budget (:mod:`exporter.limiter.shared`)
    P:pause:<token-hash>              Unix time until which the token is paused (after a 429)
    P:replicas:<replica-id>           one per live replica, with a TTL
    P:lease:<shard>                   the shard's leader (redis-py ``Lock``, value = replica id)
    P:state:<shard>                   the leader's meeting states (:mod:`exporter.mirror`)

Layers, one way: :mod:`exporter.redislink` (a Redis client, counted calls) ← the shared
limiter and the mirror ← this module (settings, replicas, the lease, and the
:class:`Coordinator` that ties them together). Leadership is held in one place:
:attr:`Lease.is_leader`.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import redis.asyncio as aredis
from redis.asyncio.lock import Lock
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import LockError

from exporter.client import RateLimiter
from exporter.errors import ConfigError
from exporter.limiter.shared import SharedLimiter
from exporter.mirror import StateMirror
from exporter.model import MeetingKey
from exporter.redislink import (
    REDIS_ERRORS,
    CoordinationError,
    CoordinationStats,
    RedisLink,
    log,
)
from exporter.store import MeetingState

__all__ = ["CoordinationError", "CoordinationSettings", "Coordinator", "Lease", "connect"]


@dataclass(frozen=True, slots=True)
class CoordinationSettings:
    """The ``coordination:`` config block. ``password`` comes from a file or the environment,
    never from the config text, and is never shown (``repr`` hides it)."""

    redis_url: str
    key_prefix: str = "realtimekit-exporter"
    lease_seconds: float = 15.0
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # CA bundle for rediss://, when not the system's

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ConfigError(problems)


def _problems(settings: CoordinationSettings) -> list[str]:
    problems = []
    try:
        url = urlsplit(settings.redis_url)
        has_password = url.password is not None
    except ValueError:
        return ["coordination.redis_url: not a valid URL"]
    if url.scheme not in ("redis", "rediss") or not url.hostname:
        problems.append("coordination.redis_url: must be redis://host:port/db or rediss://…")
    if has_password:
        problems.append(
            "coordination.redis_url: must not contain a password; "
            "give it in a password file or environment variable"
        )
    if not settings.key_prefix or any(c.isspace() for c in settings.key_prefix):
        problems.append("coordination.key_prefix: must be non-empty, without spaces")
    if not 1.0 <= settings.lease_seconds <= 3600:
        problems.append("coordination.lease_seconds: must be between 1 and 3600")
    return problems


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


def link_for(
    settings: CoordinationSettings, redis: aredis.Redis, stats: CoordinationStats | None = None
) -> RedisLink:
    """The :class:`RedisLink` of ``settings`` over ``redis`` (the password hidden in errors)."""
    tls = settings.redis_url.startswith("rediss:")
    return RedisLink(redis, settings.key_prefix, password=settings.password, stats=stats, tls=tls)


def replica_id() -> str:
    """This process's id among the replicas: the host name (the pod's) and the process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ReplicaRegistry:
    """Which replicas are alive: each refreshes ``P:replicas:<id>`` with a TTL; ``count`` is
    the number seen at the last successful refresh (at least 1, this replica)."""

    def __init__(self, link: RedisLink, replica: str, *, lease_seconds: float) -> None:
        self._link = link
        self._key = link.key("replicas", replica)
        self._pattern = link.key("replicas", "*")
        self._ttl_ms = int(lease_seconds * 2000)
        self.count = 1

    async def refresh(self) -> int:
        """Announce this replica and count the others. Raises CoordinationError."""
        await self._link.call("replicas", self._announce())
        return self.count

    async def _announce(self) -> None:
        redis = self._link.redis
        await redis.set(self._key, b"1", px=self._ttl_ms)
        seen = 0
        async for _ in redis.scan_iter(match=self._pattern, count=100):
            seen += 1
            if seen >= 1000:
                break
        self.count = max(1, seen)


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
        link: RedisLink,
        shard: str,
        replica: str,
        *,
        lease_seconds: float,
        registry: ReplicaRegistry | None = None,
        hold_on_outage: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._link, self._registry = link, registry
        self._replica, self._hold = replica, hold_on_outage
        self._clock, self._sleep = clock, sleep
        self.seconds = lease_seconds
        self.interval = lease_seconds / 3
        self._lock = Lock(
            link.redis,
            link.key("lease", shard),
            timeout=lease_seconds,
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
            await self._link.call("lease", self._take_or_renew(started))
            if self._registry is not None:
                await self._registry.refresh()
        except CoordinationError as err:
            self._unreachable(started, err)
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
        expired = started - self._renewed >= self.seconds - self.interval
        if self._leader and expired and not self._hold:
            self._set_leader(False, "could not renew the lease in time")

    def _set_leader(self, leader: bool, why: str) -> None:
        if leader != self._leader:
            log.warning(
                "coordination: %s %s: %s", self._lock.name, "leader" if leader else "standby", why
            )
        self._leader = leader

    async def release(self) -> None:
        """Give the lease up (on shutdown) so a standby takes over at once."""
        if not self._leader:
            return
        self._set_leader(False, "released")
        try:
            await self._lock.release()
        except (*REDIS_ERRORS, LockError) as err:
            log.debug("coordination: release: %s", self._link.describe(err))


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
        self.settings, self.shard = settings, shard
        self.stats = CoordinationStats()
        self.redis = connect(settings)
        self.link = link_for(settings, self.redis, self.stats)
        self.replica = replica_id()
        lease = settings.lease_seconds
        self.registry = ReplicaRegistry(self.link, self.replica, lease_seconds=lease)
        self.lease = Lease(
            self.link,
            shard,
            self.replica,
            lease_seconds=lease,
            registry=self.registry,
            hold_on_outage=True,
        )
        self.mirror = StateMirror(self.link, shard, ttl_ms=int(lease * 10_000))
        self.mirrored: dict[MeetingKey, MeetingState] = {}  # the leader's, as last fetched

    def limiter(
        self, token: str, requests: int, period_seconds: float, reserve_fraction: float
    ) -> RateLimiter:
        """The token's budget, shared by every replica."""
        return SharedLimiter(
            self.link,
            token,
            requests,
            period_seconds,
            share=self.shard,  # each shard's part of the budget has its own windows
            replicas=lambda: self.registry.count,
            reserve_fraction=reserve_fraction,
        )

    @property
    def leader(self) -> bool:
        """This replica leads its shard (the lease says so; nothing else holds it)."""
        return self.lease.is_leader

    async def run(
        self,
        states: Callable[[], Mapping[MeetingKey, MeetingState]],
        on_leader: Callable[[bool], None],
    ) -> None:
        """Until cancelled: keep the lease, mirror the states, report leadership changes."""
        next_step, reachable = 0.0, True
        while True:
            now = time.monotonic()
            if now >= next_step:
                next_step = now + self.lease.interval
                before = self.lease.is_leader
                if await self.lease.step() != before:
                    on_leader(self.lease.is_leader)
            leader = self.lease.is_leader
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
