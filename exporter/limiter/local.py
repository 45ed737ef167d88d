"""One token's request budget on this process: even spacing, 429 pauses, and the parsing of the
API's rate-limit headers (``Retry-After``, ``Ratelimit``, ``Ratelimit-Policy``, ``X-RateLimit-*``).

A budget shared by replicas through Redis builds on :class:`RateLimiter` beside this module.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC
from typing import Final

from exporter.errors import ApiError

#: Header values longer than this are ignored.
MAX_HEADER_CHARS: Final = 4096
#: Cloudflare blocks a token for 5 minutes after an exceeded quota: the longest sane pause.
MAX_BLOCK_SECONDS: Final = 300.0
#: A ``Ratelimit-Policy`` window longer than a day is not believed.
MAX_POLICY_WINDOW: Final = 86400.0
#: An ``X-RateLimit-Reset`` number above this (2001-09-09) is a Unix time, not seconds.
UNIX_TIME_AFTER: Final = 1e9

log = logging.getLogger(__name__)


class RateLimiter:
    """One token's request budget: requests are spaced evenly, never bursting, and paused after a
    429 until the API says it is safe to continue.

    ``requests`` per ``period_seconds`` becomes one slot every ``(period + margin) / usable``
    seconds, where ``usable = requests × (1 − reserve_fraction)`` and the margin (1 % of the
    period, at least 0.5 s) absorbs scheduling delay, so no window of ``period`` seconds ever
    sees more than ``requests`` of our requests. Callers reserve slots in arrival order; while
    paused, :meth:`acquire` fails at once with ``ApiError("rate_limited")`` instead of sending.

    Every pause is clamped to ``[1 s, max(period, 300 s)]`` (300 s: Cloudflare's block after an
    exceeded quota); a ``Ratelimit-Policy`` quota below the budget lowers the rate, never raises it.
    """

    def __init__(
        self,
        requests: int,
        period_seconds: float,
        *,
        reserve_fraction: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._requests, self._reserve = requests, reserve_fraction
        self.spacing = _spacing(requests, period_seconds, reserve_fraction)
        self.configured_spacing = self.spacing  # before any Ratelimit-Policy lowered it
        self.period = period_seconds
        self._max_wait = max(period_seconds, MAX_BLOCK_SECONDS)
        self._clock, self._wall, self._sleep = clock, wall, sleep
        self._next = clock()
        self._paused_until = 0.0

    @property
    def per_second(self) -> float:
        return 1.0 / self.spacing

    def paused_until_wall(self) -> float:
        """Unix time until which requests are paused; 0 when they are not."""
        left = self._paused_until - self._clock()
        return self._wall() + left if left > 0 else 0.0

    def has_spare(self) -> bool:
        """True when nobody waits for a slot and the next one is at most a second away: a
        request now (a retry) would not delay anyone else's."""
        now = self._clock()
        return self._next <= now + min(self.spacing, 1.0) and self._paused_until <= now

    def pause(self, seconds: float) -> None:
        """No request before ``seconds`` from now (a 429 or an exhausted quota said so); at most
        ``max(period, 300 s)``, however long it is asked for."""
        if not math.isfinite(seconds):
            seconds = self._max_wait if seconds > 0 else 0.0  # nan compares false: no pause
        until = self._clock() + min(max(0.0, seconds), self._max_wait)
        self._paused_until = max(self._paused_until, until)
        self._next = max(self._next, self._paused_until)

    async def acquire(self) -> None:
        """Wait for this caller's slot. Raises ``ApiError("rate_limited")`` while paused."""
        now = self._clock()
        self._check_pause(now)
        slot = max(now, self._next)
        self._next = slot + self.spacing
        if slot > now:
            await self._sleep(slot - now)
            self._check_pause(self._clock())

    def _check_pause(self, now: float) -> None:
        if now < self._paused_until:
            left = self._paused_until - now
            raise ApiError("rate_limited", f"not sent: API rate limit, paused for {left:.0f}s more")

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Learn from an answer's headers: pause after a 429 or when the quota is used up, and
        slow down when the API's policy allows less than the configured budget. Never raises."""
        self._adopt_policy(_policy(headers))
        now = self._wall()
        wait = _quota_wait(headers, now)
        if status == 429:
            retry = _retry_after(headers, now)
            hint = retry if retry is not None else wait
            # Cloudflare blocks the token for the rest of its window; without a hint, assume all.
            self.pause(max(1.0, hint) if hint is not None else self.period)
        elif wait is not None:
            self.pause(max(1.0, wait))

    def _adopt_policy(self, policy: tuple[int, float] | None) -> None:
        if policy is None:
            return
        quota, window = policy
        if quota / window >= self._requests / self.period:
            return
        spacing = min(_spacing(quota, window, self._reserve), self._max_wait)
        if spacing <= self.spacing:
            return
        log.warning(
            "the API's Ratelimit-Policy allows %d requests per %gs, less than the configured "
            "%d per %gs: sending at most %.3g requests/s instead of %.3g",
            quota,
            window,
            self._requests,
            self.period,
            1 / spacing,
            1 / self.spacing,
        )
        self.spacing = spacing


def _spacing(requests: float, period: float, reserve_fraction: float) -> float:
    usable = max(1.0, requests * (1.0 - reserve_fraction))
    margin = max(0.5, 0.01 * period)
    return (period + margin) / usable


# --- rate-limit headers: linear-time parsing, never raising, absurd values ignored ---------------


def header_value(headers: Mapping[str, str], name: str) -> str:
    """A header's value, stripped; ``""`` when missing or longer than :data:`MAX_HEADER_CHARS`."""
    value = headers.get(name) or ""
    return value.strip() if len(value) <= MAX_HEADER_CHARS else ""


def _seconds(text: str | None) -> float | None:
    """A finite non-negative decimal number, or ``None``."""
    if text is None or len(text) > 24:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _count(text: str | None) -> int | None:
    """A non-negative integer of at most 12 digits, or ``None``."""
    if text is None:
        return None
    text = text.strip()
    if not (0 < len(text) <= 12 and text.isascii() and text.isdigit()):
        return None
    return int(text)


def _http_date_wait(text: str, now: float) -> float | None:
    """Seconds from ``now`` until an HTTP (RFC 1123) date; ``None`` if unreadable or past."""
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        left = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return left if left > 0 else None


def _items(value: str) -> list[dict[str, str]]:
    """The parameters of each item of a structured-field list (``"a";r=1;t=2, "b";r=0``)."""
    items = []
    for item in value.split(","):
        params = {}
        for param in item.split(";")[1:]:
            key, _, val = param.partition("=")
            params[key.strip().lower()] = val.strip()
        items.append(params)
    return items


def _retry_after(headers: Mapping[str, str], now: float) -> float | None:
    value = header_value(headers, "retry-after")
    if not value:
        return None
    seconds = _seconds(value)
    return seconds if seconds is not None else _http_date_wait(value, now)


def _quota_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait when the answer says no requests remain, ``None`` otherwise.

    ``Ratelimit: "default";r=50;t=30, "burst";r=0;t=5``: of the items with ``r=0`` the longest
    ``t`` wins. Without a readable ``Ratelimit``, ``X-RateLimit-Remaining: 0`` with
    ``X-RateLimit-Reset`` (seconds, a Unix time or an HTTP date)."""
    items = [
        p for p in _items(header_value(headers, "ratelimit")) if _count(p.get("r")) is not None
    ]
    if items:
        waits = [_seconds(p.get("t")) for p in items if _count(p.get("r")) == 0]
        return max((w for w in waits if w is not None), default=None)
    if _count(header_value(headers, "x-ratelimit-remaining")) != 0:
        return None
    reset = header_value(headers, "x-ratelimit-reset")
    seconds = _seconds(reset)
    if seconds is None:
        return _http_date_wait(reset, now)
    if seconds <= UNIX_TIME_AFTER:
        return seconds
    left = seconds - now  # a Unix time
    return left if left > 0 else None


def _policy(headers: Mapping[str, str]) -> tuple[int, float] | None:
    """The most restrictive ``Ratelimit-Policy`` item (``"default";q=600;w=300``) as
    ``(quota, window)``, or ``None`` when there is no usable one."""
    best: tuple[int, float] | None = None
    for params in _items(header_value(headers, "ratelimit-policy")):
        quota, window = _count(params.get("q")), _seconds(params.get("w"))
        if not quota or window is None or not 0 < window <= MAX_POLICY_WINDOW:
            continue
        if best is None or quota / window < best[0] / best[1]:
            best = (quota, window)
    return best
