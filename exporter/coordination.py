"""High availability through Redis: one request budget per token shared by every replica, one
leader per shard, and the leader's meeting states mirrored so a standby takes over warm.

Keys (``P`` is ``key_prefix``; a token appears only as a hash, never itself)::

    P:limits:LIMITER/<token-hash>/…   the shared budget (:mod:`exporter.limiter.shared`)
    P:pause:<token-hash>              Unix time until which the token is paused (after a 429)
    P:replicas:<shard>                the shard's live replicas (a sorted set, by expiry)
    P:lease:<shard>                   the shard's leader (its replica id, with a TTL)
    P:state:<shard>                   the leader's meeting states (:mod:`exporter.mirror`)

Layers, one way: :mod:`exporter.redislink` (a Redis client, counted calls) ← the shared
limiter and the mirror ← this module (settings, replicas, the lease, and the
:class:`Coordinator` that ties them together). Leadership is held in one place:
:attr:`Lease.is_leader`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from exporter.limiter import RateLimiter
from exporter.limiter.shared import SharedLimiter
from exporter.mirror import StateMirror
from exporter.model import MeetingKey
from exporter.redislink import (
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
        driver_info=None,  # no CLIENT SETINFO: a new connection costs no extra round trips
        **options,
    )


def link_for(
    settings: CoordinationSettings, redis: aredis.Redis, stats: CoordinationStats | None = None
) -> RedisLink:
    """The :class:`RedisLink` of ``settings`` over ``redis`` (the password hidden in errors)."""
    tls = settings.redis_url.startswith("rediss:")
    return RedisLink(redis, settings.key_prefix, password=settings.password, stats=stats, tls=tls)


def deployment_of(apps: Iterable[tuple[str, str]]) -> str:
    """A short name of a deployment: a hash of the apps its config watches (every shard and
    replica of one deployment reads the same config, so they agree).

    >>> deployment_of([("a", "y"), ("a", "x")]) == deployment_of([("a", "x"), ("a", "y")])
    True
    """
    text = "\n".join(sorted({f"{account}/{app}" for account, app in apps}))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def replica_id() -> str:
    """This process's id among the replicas: the host name (the pod's) and the process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


_ANNOUNCE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('ZCARD', KEYS[1])
"""
_TAKE_OR_RENEW: Final = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, ARGV[1]}
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, ARGV[1]}
end
return {0, holder}
"""
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
MAX_REPLICAS: Final = 1000  # the count is capped: a flood of entries cannot zero a budget


class ReplicaRegistry:
    """The live replicas of one shard: a sorted set ``P:replicas:<shard>`` of replica ids scored
    by when each entry expires (Redis' clock), refreshed by each replica; ``count`` is the number
    seen at the last successful refresh (at least 1, this replica). One key, one script: no step
    reads keys it does not own."""

    def __init__(
        self, link: RedisLink, replica: str, *, lease_seconds: float, shard: str = "0"
    ) -> None:
        self._link, self._replica = link, replica
        self._key = link.key("replicas", shard)
        self._ttl_ms = int(lease_seconds * 2000)
        self.count = 1

    async def refresh(self) -> int:
        """Announce this replica and count the shard's. Raises CoordinationError."""
        seen = await self._link.call(
            "replicas", self._link.redis.eval(_ANNOUNCE, 1, self._key, self._replica, self._ttl_ms)
        )
        self.count = min(MAX_REPLICAS, max(1, int(seen)))
        return self.count


class Lease:
    """Leadership of one shard, held in one place (:attr:`is_leader`): the key
    ``P:lease:<shard>`` holds the leader's id for ``lease_seconds``; one script takes it when
    free or renews it when ours, every ``lease_seconds / 3``.

    The leader stops leading before its lease can pass to another replica: at the latest
    ``lease_seconds - margin`` after it *sent* its last successful renewal (Redis counts the
    lease from when it ran the script, which is later), however slowly Redis answers — a
    renewal still unanswered then is abandoned. ``margin`` is 10 % of the lease, at least
    0.5 s. A standby takes over at most ``lease + lease/3`` after the holder's last renewal.
    With ``hold_on_outage`` a holder whose Redis *refuses* connections (down for every replica)
    keeps leading until Redis answers again; a Redis that does not answer in time may be
    answering others, so then the holder steps down. A standby never takes over while Redis is
    unreachable.
    """

    def __init__(
        self,
        link: RedisLink,
        shard: str,
        replica: str,
        *,
        lease_seconds: float,
        hold_on_outage: bool = False,
        deployment: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link, self._hold, self._deployment = link, hold_on_outage, deployment
        # The lease's value: who holds it, and of which deployment (see deployment_of).
        self._replica = f"{replica} {deployment}" if deployment else replica
        self._clock = clock
        self.key = link.key("lease", shard)
        self.seconds = lease_seconds
        self.interval = lease_seconds / 3
        self.margin = max(0.5, 0.1 * lease_seconds)
        self._leader = False
        self._holding = False  # leading on through an outage (hold_on_outage)
        self._renewed = -math.inf  # when the last successful take or renewal was sent
        self._started = -math.inf  # when the last step began
        self.holder = ""  # who holds the lease, as last seen ("" unknown)
        self.foreign = ""  # the holder's deployment when it is not ours (else "")

    @property
    def is_leader(self) -> bool:
        return self._leader

    def deadline(self) -> float:
        """When this leader must have stopped leading unless it renews (monotonic)."""
        return self._renewed + self.seconds - self.margin

    def next_step_in(self) -> float:
        """Seconds until the next step is due: an interval after the last one began (however
        long Redis took to answer it), and at the latest at a leader's deadline."""
        due = self._started + self.interval
        if self._leader and not self._holding:
            due = min(due, self.deadline())
        return max(0.0, due - self._clock())

    async def step(self) -> bool:
        """One try to take or renew the lease, bounded by the deadline. Returns is_leader."""
        started = self._started = self._clock()
        bounded = self._leader and not self._holding
        left = self.deadline() - started if bounded else None
        if left is not None and left <= 0:
            self._set_leader(False, "could not renew the lease in time")
            return False
        try:
            # EVAL, not EVALSHA: one round trip always (a NOSCRIPT retry would cost three)
            take = self._link.redis.eval(_TAKE_OR_RENEW, 1, self.key, *self._args())
            call = self._link.call("lease", take)
            ours, holder = await asyncio.wait_for(call, timeout=left)
        except TimeoutError:
            self._set_leader(False, f"renewal unanswered after {left:.2f}s; stepped down in time")
        except CoordinationError as err:
            self._unreachable(err)
        else:
            self._answered(started, bool(ours), holder)
        return self._leader

    def _args(self) -> list[str | int]:
        return [self._replica, max(1, int(self.seconds * 1000))]

    def _answered(self, started: float, ours: bool, holder: bytes | str) -> None:
        self._holding = False
        self.holder = holder.decode(errors="replace") if isinstance(holder, bytes) else holder
        self._check_deployment(ours)
        if ours:
            self._renewed = started
            self._set_leader(True, "took the lease")
        else:
            self._set_leader(False, "the lease is no longer ours")

    def _check_deployment(self, ours: bool) -> None:
        """Say once (and keep in :attr:`foreign`) when the holder is of another deployment: a
        config watching other apps under the same ``key_prefix`` would otherwise keep this
        replica standing by, silently, for ever."""
        replica, _, theirs = self.holder[:200].partition(" ")
        foreign = "" if ours or not theirs or theirs == self._deployment else theirs
        if foreign and foreign != self.foreign:
            log.warning(
                "coordination: %s is held by %s of another deployment (its config watches "
                "other apps: %s, here %s); this replica stays standby and exports no meeting. "
                "Give each deployment its own coordination.key_prefix (or, during a config "
                "rollout, this ends when every replica runs the new config)",
                self.key,
                replica,
                foreign,
                self._deployment or "unknown",
            )
        elif self.foreign and not foreign:
            log.warning("coordination: %s: no longer held by another deployment", self.key)
        self.foreign = foreign

    def _unreachable(self, err: CoordinationError) -> None:
        log.debug("coordination: %s", err)
        if not self._leader:
            return
        if self._hold and not err.timeout:
            self._holding = True  # Redis is down for everyone: nobody can take over
        elif self._clock() >= self.deadline():
            self._set_leader(False, "could not renew the lease in time")

    def _set_leader(self, leader: bool, why: str) -> None:
        if leader != self._leader:
            log.warning("coordination: %s %s: %s", self.key, "leader" if leader else "standby", why)
        self._leader = leader
        if not leader:
            self._holding = False

    async def release(self) -> None:
        """Give the lease up (on shutdown) so a standby takes over at once."""
        if not self._leader:
            return
        self._set_leader(False, "released")
        try:
            release = self._link.redis.eval(_RELEASE, 1, self.key, self._replica)
            await self._link.call("lease", release)
        except CoordinationError as err:
            log.debug("coordination: release: %s", err)


class Coordinator:
    """This process' part in a replicated deployment: one Redis client, the shared budgets of
    its tokens, the lease of its shard, and the mirror of the leader's meeting states.

    :meth:`run` keeps the lease in a task of its own (every ``lease_seconds / 3``, and at its
    deadline: a slow mirror never delays a renewal) and, every :data:`MIRROR_SECONDS`, either
    publishes this process' states (leader) or fetches the leader's (standby), so that a standby
    that wins the lease serves complete values at once. ``on_leader(bool)`` is called on the
    loop whenever leadership changes.
    """

    MIRROR_SECONDS: Final = 1.0

    def __init__(
        self,
        settings: CoordinationSettings,
        shard: str,
        *,
        replica: str | None = None,
        apps: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.settings, self.shard = settings, shard
        self.stats = CoordinationStats()
        self.redis = connect(settings)
        self.link = link_for(settings, self.redis, self.stats)
        self.replica = replica or replica_id()
        lease = settings.lease_seconds
        self.registry = ReplicaRegistry(self.link, self.replica, lease_seconds=lease, shard=shard)
        deployment = deployment_of(apps)
        self.lease = Lease(
            self.link, shard, self.replica, lease_seconds=lease, hold_on_outage=True,
            deployment=deployment,
        )  # fmt: skip
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

    @property
    def conflict(self) -> str:
        """A sentence for the status page when another deployment holds this shard's lease
        under the same ``key_prefix`` (this replica then stands by for ever), else ""."""
        if not self.lease.foreign:
            return ""
        return (
            f"Standing by: the lease {self.lease.key} is held by another deployment (config "
            f"watching other apps, {self.lease.foreign}); give each deployment its own "
            "coordination.key_prefix."
        )

    async def run(
        self,
        states: Callable[[], Mapping[MeetingKey, MeetingState]],
        on_leader: Callable[[bool], None],
    ) -> None:
        """Until cancelled: keep the lease, mirror the states, report leadership changes."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._keep_lease(on_leader))
            group.create_task(self._mirror(states))

    async def _keep_lease(self, on_leader: Callable[[bool], None]) -> None:
        while True:
            before = self.lease.is_leader
            if await self.lease.step() != before:
                on_leader(self.lease.is_leader)
            await asyncio.sleep(self.lease.next_step_in())

    async def _mirror(self, states: Callable[[], Mapping[MeetingKey, MeetingState]]) -> None:
        reachable, next_count = True, 0.0
        while True:
            leader = self.lease.is_leader
            try:
                if time.monotonic() >= next_count:
                    next_count = time.monotonic() + self.lease.interval
                    await self.registry.refresh()
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
