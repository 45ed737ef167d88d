"""The exporter's own health, as plain numbers: written by the client, the poller, discovery and
the reload service, read by the collector — like the store, but for the exporter itself.

Nothing here knows Prometheus or HTTP. Writers call the small methods below (each takes the lock
for a moment); the collector takes one :meth:`Health.snapshot` per scrape.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

from exporter.model import AppKey

#: Upper bounds of the request-duration histogram, in seconds.
DURATION_BUCKETS: Final = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Budget(Protocol):
    """What the health snapshot reads of one token's request budget."""

    @property
    def per_second(self) -> float: ...

    def paused_until_wall(self) -> float: ...


class RequestStats:
    """Counts of the API requests sent, for the collector. Thread-safe. One per process: the
    counters of a token that a reload removed stay counted (counters never go down)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # by HTTP status, or failure kind without one
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.duration_sum = 0.0
        self.in_flight = 0

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def finished(self, code: str, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests[code] += 1
            self.buckets[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
            self.duration_sum += seconds

    def snapshot(self) -> tuple[dict[str, int], list[int], float, int]:
        with self._lock:
            return dict(self.requests), list(self.buckets), self.duration_sum, self.in_flight


@dataclass(frozen=True, slots=True)
class AppHealth:
    """What the last discovery cycles of one app saw."""

    up: bool | None = None  # None until the first cycle finished
    live_sessions: int = 0  # as the API reported (total_count), not only what we export
    live_participants: float = 0.0  # summed over every listed session
    duration: float = 0.0  # of the last cycle, pages and confirmations included
    pages: int = 0  # total pages read
    confirmations: int = 0  # total active-session calls made to confirm an unlisted meeting
    dropped: int = 0  # total listed meetings not exported because of max_meetings
    incomplete: int = 0  # total cycles whose listing fell short of total_count
    invalid_sessions: int = 0  # total malformed sessions skipped in listings
    errors: dict[str, int] = field(default_factory=dict)  # failed cycles by reason


@dataclass(frozen=True, slots=True)
class CoordinationState:
    """A replica's view of its coordination through Redis."""

    up: bool  # Redis reachable at the last operation
    leader: bool  # this replica polls and exports its shard's meetings
    errors: dict[str, int]  # failed Redis operations, by operation
    conflict: str = ""  # another deployment holds this shard's lease (a sentence), else ""


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """One consistent reading of :class:`Health`."""

    effective_intervals: dict[AppKey, float]
    skipped: dict[str, int]  # polls not sent, by reason: "backoff", "overrun"
    retries: int
    requests: dict[str, int]  # requests sent, by HTTP status or failure kind
    duration_buckets: list[int]  # non-cumulative counts per DURATION_BUCKETS bound, then +Inf
    duration_sum: float
    in_flight: int
    budget_per_second: float
    rate_limited_until: float  # Unix time; 0 when no token is paused
    apps: dict[AppKey, AppHealth]  # discovering apps only
    reload_ok: bool
    reload_success_time: float
    help_interval: float  # the longest effective interval, for HELP texts
    shard: int  # this process' shard (0 when not sharded)
    total_shards: int


class Health:
    """The exporter's own numbers. Thread-safe."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self.requests = RequestStats()
        self._budgets: list[Budget] = []
        self._effective: dict[AppKey, float] = {}
        self._discovery_intervals: dict[AppKey, float] = {}
        self._interval = 0.0
        self._skipped: Counter[str] = Counter()
        self._retries = 0
        self._apps: dict[AppKey, AppHealth] = {}
        self._reload_ok = True
        self._reload_time = clock()
        self._clock = clock
        self._shard = (0, 1)

    # The runtime (start and reload).
    def set_budgets(self, budgets: Iterable[Budget], interval: float) -> None:
        """The request budgets in use now (one per token) and the configured poll interval."""
        with self._lock:
            self._budgets = list(budgets)
            self._interval = interval

    def set_shard(self, shard: int, total: int) -> None:
        with self._lock:
            self._shard = (shard, total)

    def reloaded(self, ok: bool) -> None:
        with self._lock:
            self._reload_ok = ok
            if ok:
                self._reload_time = self._clock()

    # The poller.
    def set_effective_intervals(self, intervals: dict[AppKey, float]) -> None:
        """Seconds between polls per plain app, after stretching for the budget."""
        with self._lock:
            self._effective = dict(intervals)

    def skipped(self, reason: str) -> None:
        with self._lock:
            self._skipped[reason] += 1

    def retried(self) -> None:
        with self._lock:
            self._retries += 1

    # Discovery.
    def set_discovering(self, apps: dict[AppKey, float]) -> None:
        """The discovering apps now, with their cycle intervals; others' numbers are dropped."""
        with self._lock:
            self._discovery_intervals = dict(apps)
            self._apps = {key: self._apps.get(key, AppHealth()) for key in apps}

    def update_app(self, key: AppKey, change: Callable[[AppHealth], AppHealth]) -> None:
        """Replace one app's numbers by ``change(old)`` (ignored for an app no longer known)."""
        with self._lock:
            old = self._apps.get(key)
            if old is not None:
                self._apps[key] = change(old)

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            effective = {**self._discovery_intervals, **self._effective}
            skipped, retries, apps = dict(self._skipped), self._retries, dict(self._apps)
            budgets, interval = list(self._budgets), self._interval
            reload_ok, reload_time = self._reload_ok, self._reload_time
            shard, total = self._shard
        codes, buckets, seconds, in_flight = self.requests.snapshot()
        return HealthSnapshot(
            effective_intervals=effective,
            skipped={"backoff": skipped.get("backoff", 0), "overrun": skipped.get("overrun", 0)},
            retries=retries,
            requests=codes,
            duration_buckets=buckets,
            duration_sum=seconds,
            in_flight=in_flight,
            budget_per_second=sum(b.per_second for b in budgets),
            rate_limited_until=max((b.paused_until_wall() for b in budgets), default=0.0),
            apps=apps,
            reload_ok=reload_ok,
            reload_success_time=reload_time,
            help_interval=max(effective.values(), default=interval),
            shard=shard,
            total_shards=total,
        )


def bump(app: AppHealth, **totals: int) -> AppHealth:
    """``app`` with the given totals increased (``pages=3`` adds 3 to ``pages``)."""
    return replace(app, **{name: getattr(app, name) + n for name, n in totals.items()})
