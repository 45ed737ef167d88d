"""Poll every exported meeting on a schedule and put the outcome in the store.

One APScheduler job per meeting, all on one asyncio loop. The jobs' first runs are spread evenly
over the interval (meeting *i* of *n* starts at ``i/n × interval``), so requests flow at a steady
rate instead of bursting at the top of each cycle. APScheduler never runs a meeting's job twice at
once (``max_instances=1``; a run that finds the previous one still going is counted as skipped); a
semaphore bounds how many polls are in flight in all.

Budget: the meetings that share a token share its :class:`~exporter.client.RateLimiter`. When
they need more requests than the budget allows at the configured interval, the interval of that
group is stretched evenly (:meth:`Poller.schedule` says so once) instead of queueing without end.

Failures: a timeout, connection error or 5xx gets one quick retry when the budget has a spare
slot; a meeting that keeps failing is backed off exponentially (interval × 2^(failures−1), capped)
so that a dead meeting cannot eat the budget of the live ones. Rate limiting is the token's
business, not the meeting's: it pauses the limiter and does not count toward a meeting's backoff.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from exporter.client import DURATION_BUCKETS, ApiClient
from exporter.config import MeetingKey
from exporter.errors import ApiError
from exporter.model import Answer
from exporter.store import Store

log = logging.getLogger(__name__)

_JOB_PREFIX = "poll:"
#: Failures worth one immediate retry: the next attempt may well succeed.
TRANSIENT = frozenset({"timeout", "connect", "http_5xx"})
#: Stretched intervals leave this much of the budget free for retries and jitter.
HEADROOM = 1.05


def _job_id(key: MeetingKey) -> str:
    return f"{_JOB_PREFIX}{key.account_id}/{key.app_id}/{key.meeting_id}"


@dataclass(frozen=True, slots=True)
class PollerStats:
    """The poller's and its clients' own numbers, as plain data for the collector."""

    effective_intervals: dict[tuple[str, str], float]  # (account_id, app_id) -> seconds
    skipped: dict[str, int]  # polls not sent, by reason: "backoff", "overrun"
    retries: int
    requests: dict[str, int]  # requests sent, by HTTP status or failure kind
    duration_buckets: list[int]  # non-cumulative counts per DURATION_BUCKETS bound, then +Inf
    duration_sum: float
    in_flight: int
    budget_per_second: float
    rate_limited_until: float  # Unix time; 0 when no token is paused


class Poller:
    """Schedules and runs the polls. ``client_for`` picks the API client (token) of a meeting."""

    def __init__(
        self,
        *,
        scheduler: AsyncIOScheduler,
        client_for: Callable[[MeetingKey], ApiClient],
        store: Store,
        interval_seconds: float,
        concurrency: int,
        max_backoff_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._scheduler = scheduler
        self._client_for = client_for
        self._store = store
        self._interval = interval_seconds
        self._max_backoff = max(max_backoff_seconds, interval_seconds)
        self._semaphore = asyncio.Semaphore(concurrency)
        self._clock = clock
        self._timer = timer
        self._lock = threading.Lock()  # guards what stats() reads from the HTTP thread
        self._effective: dict[tuple[str, str], float] = {}
        self._skipped: Counter[str] = Counter()
        self._retries = 0
        self._clients: list[ApiClient] = []
        self._failures: dict[MeetingKey, int] = {}  # consecutive failures (not rate limiting)
        self._backoff_until: dict[MeetingKey, float] = {}
        self._down: dict[MeetingKey, str] = {}  # meetings whose last poll failed, with the reason
        scheduler.add_listener(self._on_overrun, EVENT_JOB_MAX_INSTANCES)

    def help_interval(self) -> float:
        """The longest effective interval, for HELP texts."""
        with self._lock:
            return max(self._effective.values(), default=self._interval)

    def stats(self) -> PollerStats:
        with self._lock:
            effective, skipped = dict(self._effective), dict(self._skipped)
            retries, clients = self._retries, list(self._clients)
        requests: Counter[str] = Counter()
        buckets = [0] * (len(DURATION_BUCKETS) + 1)
        total, in_flight = 0.0, 0
        for client in clients:
            codes, counts, seconds, running = client.stats.snapshot()
            requests.update(codes)
            buckets = [a + b for a, b in zip(buckets, counts, strict=True)]
            total += seconds
            in_flight += running
        return PollerStats(
            effective_intervals=effective,
            skipped=skipped,
            retries=retries,
            requests=dict(requests),
            duration_buckets=buckets,
            duration_sum=total,
            in_flight=in_flight,
            budget_per_second=sum(c.limiter.per_second for c in clients),
            rate_limited_until=max((c.limiter.paused_until_wall() for c in clients), default=0.0),
        )

    def schedule(self, keys: Iterable[MeetingKey]) -> None:
        """Poll exactly these meetings from now on.

        Meetings that stay keep their job and phase (unless their effective interval changed);
        removed ones lose theirs; new ones get first runs spread over one interval.
        """
        keys = list(keys)
        groups: dict[int, list[MeetingKey]] = {}
        clients: dict[int, ApiClient] = {}
        for key in keys:
            client = self._client_for(key)
            groups.setdefault(id(client), []).append(key)
            clients[id(client)] = client
        interval_of: dict[MeetingKey, float] = {}
        effective: dict[tuple[str, str], float] = {}
        for group_id, members in groups.items():
            limiter = clients[group_id].limiter
            needed = len(members) * limiter.spacing * HEADROOM
            interval = max(self._interval, needed)
            if interval > self._interval:
                log.warning(
                    "%d meetings every %gs need %.2f requests/s but the token's budget allows "
                    "%.2f/s: polling them every %.1fs instead; raise poll.interval_seconds to "
                    "at least %.0f, poll fewer meetings, or use a token with more budget",
                    len(members), self._interval, len(members) / self._interval,
                    limiter.per_second, interval, interval,
                )  # fmt: skip
            for key in members:
                interval_of[key] = interval
                effective[(key.account_id, key.app_id)] = interval
        with self._lock:
            self._effective = effective
            self._clients = list(clients.values())
        wanted = {_job_id(key): key for key in keys}
        for state in (self._failures, self._backoff_until, self._down):
            for gone in [key for key in state if _job_id(key) not in wanted]:
                del state[gone]
        jobs = {job.id: job for job in self._scheduler.get_jobs() if job.id.startswith(_JOB_PREFIX)}
        kept: set[str] = set()
        for job_id, job in jobs.items():
            stays = wanted.get(job_id)
            if stays is None or job.trigger.interval_length != interval_of[stays]:
                job.remove()
            else:
                kept.add(job_id)
        new = [key for job_id, key in wanted.items() if job_id not in kept]
        start = datetime.now(UTC)
        for i, key in enumerate(new):
            interval = interval_of[key]
            self._scheduler.add_job(
                self.poll_meeting,
                IntervalTrigger(
                    seconds=interval, start_date=start + timedelta(seconds=interval * i / len(new))
                ),
                args=[key],
                id=_job_id(key),
                name=_job_id(key),
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(interval)),
            )

    async def poll_meeting(self, key: MeetingKey) -> None:
        """Poll one meeting (unless it is backed off) and record the outcome. Never raises."""
        if self._clock() < self._backoff_until.get(key, 0.0):
            with self._lock:
                self._skipped["backoff"] += 1
            return
        client = self._client_for(key)
        async with self._semaphore:
            started = self._timer()
            outcome = await self._fetch(client, key)
            if (
                isinstance(outcome, ApiError)
                and outcome.reason in TRANSIENT
                and client.limiter.has_spare()
            ):
                with self._lock:
                    self._retries += 1
                outcome = await self._fetch(client, key)
            duration = self._timer() - started
        now = self._clock()
        self._store.record(key, outcome, duration, now)
        self._track_failures(key, outcome, now)
        self._log_transition(key, outcome)

    async def _fetch(self, client: ApiClient, key: MeetingKey) -> Answer | ApiError | None:
        try:
            return await client.get_active_session(key)
        except ApiError as err:
            return err
        except Exception:  # a bug, not the API: keep polling, keep the traceback
            log.exception("unexpected error polling meeting %s", key.meeting_id)
            return None

    def _track_failures(
        self, key: MeetingKey, outcome: Answer | ApiError | None, now: float
    ) -> None:
        if isinstance(outcome, ApiError) and outcome.reason == "rate_limited":
            return
        if not isinstance(outcome, ApiError) and outcome is not None:
            self._failures.pop(key, None)
            self._backoff_until.pop(key, None)
            return
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        if failures >= 2:
            delay = min(self._interval * 2 ** (failures - 1), self._max_backoff)
            # Wake a little early so the job run at the end of the backoff is not skipped too.
            self._backoff_until[key] = now + delay - 0.5 * self._interval

    def _log_transition(self, key: MeetingKey, outcome: Answer | ApiError | None) -> None:
        """One line when a meeting starts failing or changes failure reason, one when it recovers;
        repeated identical failures go to debug so a dead API cannot flood the log."""
        where = f"account_id={key.account_id} app_id={key.app_id} meeting_id={key.meeting_id}"
        if isinstance(outcome, ApiError):
            status = "" if outcome.status is None else f" status={outcome.status}"
            line = f"poll failed {where} reason={outcome.reason}{status}: {outcome}"
            if self._down.get(key) != outcome.reason:
                self._down[key] = outcome.reason
                log.warning(line)
            else:
                log.debug(line)
        elif outcome is not None and self._down.pop(key, None) is not None:
            log.info("poll recovered %s", where)

    def _on_overrun(self, event: JobSubmissionEvent) -> None:
        with self._lock:
            self._skipped["overrun"] += 1
        log.debug("poll %s skipped: the previous poll has not finished", event.job_id)
