"""One Redis client as the coordination uses it: key names under ``key_prefix``, and every
operation counted (``realtimekit_coordination_up``, ``realtimekit_coordination_errors_total{op}``)
with its failure translated into :class:`CoordinationError`, the password cut out.

The layer below the shared limiter (:mod:`exporter.limiter.shared`), the state mirror
(:mod:`exporter.mirror`) and the lease (:mod:`exporter.coordination`); it knows nothing of them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Final, TypeVar

import redis.asyncio as aredis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from exporter.errors import ExporterError

#: Log lines of every coordination module keep this logger name (the log-line contract).
log = logging.getLogger("exporter.coordination")

#: Values of the ``op`` label of ``realtimekit_coordination_errors_total``.
OPS: Final = ("limiter", "pause", "replicas", "lease", "publish", "fetch")
REDIS_ERRORS: Final = (RedisError, OSError)
_T = TypeVar("_T")


class CoordinationError(ExporterError):
    """A Redis operation failed. The message names the operation, never the password.
    ``timeout``: Redis did not answer in time (it may be answering others), as opposed to
    refusing or dropping the connection (down for everyone)."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


@dataclass(slots=True)
class CoordinationStats:
    """What the collector exports of Redis: ``realtimekit_coordination_up`` and
    ``realtimekit_coordination_errors_total{op}`` (leadership is the lease's alone)."""

    up: bool = False
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPS, 0))
    last_error: str = ""  # what the last failure said (the password cut out)

    def failed(self, op: str, why: str = "") -> None:
        self.errors[op] = self.errors.get(op, 0) + 1
        self.up = False
        self.last_error = why

    def succeeded(self) -> None:
        self.up = True


def token_hash(token: str) -> str:
    """The name of a token in Redis keys: a hash, so the token itself is never stored."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class RedisLink:
    """A Redis client, the key prefix, the password to hide, and the stats every call counts in."""

    def __init__(
        self,
        redis: aredis.Redis,
        key_prefix: str,
        *,
        password: str | None = None,
        stats: CoordinationStats | None = None,
        tls: bool = False,
    ) -> None:
        self.redis, self.prefix, self.tls = redis, key_prefix, tls
        self.stats = stats if stats is not None else CoordinationStats()
        self._password = password

    def key(self, *parts: str) -> str:
        """``prefix:part:part…``."""
        return ":".join((self.prefix, *parts))

    def describe(self, err: BaseException) -> str:
        """An error's type and text, with the password cut out should a library ever show it."""
        text = f"{type(err).__name__}: {err}"
        return text.replace(self._password, "***") if self._password else text

    async def call(self, op: str, action: Awaitable[_T]) -> _T:
        """Run one Redis operation: count it, and translate a failure into CoordinationError."""
        try:
            result = await action
        except REDIS_ERRORS as err:
            why = self.describe(err)
            self.stats.failed(op, why)
            timeout = isinstance(err, RedisTimeoutError | TimeoutError)
            raise CoordinationError(f"redis {op} failed: {why}", timeout=timeout) from None
        self.stats.succeeded()
        return result
