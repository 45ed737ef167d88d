"""Poll the listed meetings of plain (non-discovering) apps on a schedule; put the outcomes in the
store.

One APScheduler job per meeting, all on one asyncio loop. The jobs' first runs are spread evenly
over the interval (meeting *i* of *n* starts at ``i/n × interval``), so requests flow at a steady
rate instead of bursting at the top of each cycle. APScheduler never runs a meeting's job twice at
once (``max_instances=1``; a run that finds the previous one still going is counted as skipped); a
semaphore bounds how many polls are in flight in all.

Budget: the meetings that share a token share its rate limiter. When they need more requests than
the budget allows at the configured interval, :func:`stretched_interval` spreads them evenly over
a longer one (said once, with the numbers) instead of queueing without end.

Failures: a timeout, connection error or 5xx gets one quick retry when the budget has a spare
slot; a meeting that keeps failing is backed off exponentially (interval × 2^(failures−1), capped)
so that a dead meeting cannot eat the budget of the live ones. Rate limiting is the token's
business, not the meeting's: it pauses the limiter and does not count toward a meeting's backoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.job import Job
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from exporter.client import ApiClient
from exporter.errors import ApiError
from exporter.health import Health
from exporter.logs import FailureLog, where
from exporter.model import Answer, AppKey, MeetingKey, meeting_path
from exporter.store import Store

log = logging.getLogger(__name__)

JOB_PREFIX = "poll:"
#: Failures worth one immediate retry: the next attempt may well succeed.
TRANSIENT = frozenset({"timeout", "connect", "http_5xx"})
#: Stretched intervals leave this much of the budget free for retries and jitter.
HEADROOM = 1.05
#: Seconds in-flight polls get to finish at shutdown before they are cancelled.
SHUTDOWN_GRACE = 3.0
#: At most one refresh (a poll asked for by a webhook) per meeting in this many seconds.
REFRESH_SECONDS = 3.0
#: Refreshes may cost at most this share of what polling alone (every meeting at the configured
#: interval) would, and at most this share of each token's budget, so that webhooks make the
#: exporter cheaper however busy the meetings are.
REFRESH_SHARE = 0.25
#: At most this many meetings wait for a refresh; more asks are dropped (polling reconciles).
MAX_REFRESH_QUEUE = 10_000

Outcome = Answer | ApiError | None  # None: a bug of ours, logged with its traceback


def stretched_interval(meetings: int, spacing: float, interval: float) -> float:
    """Seconds between polls of ``meetings`` that share one token whose budget gives a slot
    every ``spacing`` seconds: ``interval``, or longer when the budget cannot sustain it."""
    return max(interval, meetings * spacing * HEADROOM)


def _mean_interval(intervals: list[float]) -> float:
    """The interval that sends as many requests as ``intervals`` together: their harmonic mean,
    exactly the configured one when all are alike (30, not 30.000000000000004, on /metrics)."""
    if len(set(intervals)) == 1:
        return intervals[0]
    return len(intervals) / sum(1 / every for every in intervals)


def over_budget(meetings: int, every: float, spacing: float) -> str | None:
    """The warning when ``meetings`` polled every ``every`` seconds on one token whose budget
    gives a slot every ``spacing`` seconds need more than it allows (None: they fit); said by
    the poller, which stretches their interval, and by ``--config.check``."""
    needed = stretched_interval(meetings, spacing, every)
    if needed <= every:
        return None
    return (
        f"{meetings} meetings every {every:g}s need {meetings / every:.2f} requests/s but the "
        f"token's budget allows {1 / spacing:.2f}/s: polling them every {needed:.1f}s instead; "
        f"raise poll.interval_seconds to at least {needed:.0f}, poll fewer meetings, or use a "
        "token with more budget"
    )


def add_job(
    scheduler: AsyncIOScheduler,
    job_id: str,
    func: Callable[..., Coroutine[Any, Any, None]],
    arg: object,
    interval: float,
    delay: float,
) -> None:
    """One repeating job, first run ``delay`` seconds from (just after) now. A trigger whose
    start is already past when the job is added first fires one interval later, so the job due
    "now" starts 50 ms ahead instead."""
    start = datetime.now(UTC) + timedelta(seconds=delay, milliseconds=50)
    scheduler.add_job(
        func,
        IntervalTrigger(seconds=interval, start_date=start),
        args=[arg],
        id=job_id,
        name=job_id,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, int(interval)),
    )


def same_interval(seconds: float, other: float) -> bool:
    """Equal as trigger intervals (which keep microseconds only)."""
    return abs(seconds - other) < 1e-3


def job_id(key: MeetingKey) -> str:
    return JOB_PREFIX + meeting_path(key)


@dataclass(frozen=True)
class PollPlan:
    """What to poll one by one, and how: every meeting with the client (token) it uses."""

    meetings: Mapping[MeetingKey, ApiClient]
    interval: float
    max_backoff: float
    slots: asyncio.Semaphore  # polls (and discovery pages) in flight at once
    intervals: Mapping[AppKey, float] = field(default_factory=dict)  # apps polled otherwise

    def interval_of(self, app: AppKey) -> float:
        """The configured interval of an app (slower while its webhooks are healthy)."""
        return self.intervals.get(app, self.interval)


class Jobs:
    """What the poller and discovery share: the scheduler they add jobs to, the store and the
    health they write, the failure log, and their clocks."""

    def __init__(
        self,
        *,
        scheduler: AsyncIOScheduler,
        store: Store,
        health: Health,
        failures: FailureLog,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._scheduler = scheduler
        self._store = store
        self._health = health
        self._failures = failures
        self._clock = clock
        self._timer = timer


class Poller(Jobs):
    """Schedules and runs the per-meeting polls of a :class:`PollPlan`."""

    def __init__(self, **parts: Any) -> None:
        super().__init__(**parts)
        self._plan = PollPlan({}, 30.0, 300.0, asyncio.Semaphore(1))
        self._interval_of: dict[MeetingKey, float] = {}  # each job's effective interval
        self._streak: dict[MeetingKey, int] = {}  # consecutive failures (not rate limiting)
        self._backoff_until: dict[MeetingKey, float] = {}
        self._refresher = Refresher(self._refresh, self._refresh_rate, clock=self._clock)
        self._running: set[asyncio.Task[None]] = set()
        self._scheduler.add_listener(self._on_overrun, EVENT_JOB_MAX_INSTANCES)

    def schedule(self, plan: PollPlan) -> None:
        """Poll exactly the plan's meetings from now on. Meetings that stay keep their job and
        phase; a meeting whose effective interval changed gets a new job that runs no later
        than the old one was due; removed ones lose theirs; new ones get first runs spread
        over one interval (see :meth:`_add_jobs`). Backoff starts afresh: the new settings (a
        rotated token, say) may cure the failures."""
        self._plan = plan
        self._streak, self._backoff_until = {}, {}
        interval_of = self._intervals(plan)
        kept: set[str] = set()
        due: dict[MeetingKey, float] = {}
        for job in self._scheduler.get_jobs():
            if not job.id.startswith(JOB_PREFIX):
                continue
            key = job.args[0]
            if key in interval_of and same_interval(job.trigger.interval_length, interval_of[key]):
                kept.add(job.id)
                continue
            if key in interval_of:
                due[key] = _due_in(job)
            job.remove()
        self._add_jobs([key for key in plan.meetings if job_id(key) not in kept], interval_of, due)
        self._interval_of = interval_of

    def retime(self, intervals: Mapping[AppKey, float]) -> None:
        """Poll some apps at other intervals (their webhooks turned healthy or unhealthy): only
        the jobs whose effective interval changed are replaced, each running no later than it
        was due; every other job, and every meeting's backoff, stays as it is."""
        self._plan = replace(self._plan, intervals=dict(intervals))
        interval_of = self._intervals(self._plan)
        due: dict[MeetingKey, float] = {}
        for key, seconds in interval_of.items():
            if same_interval(self._interval_of.get(key, -1.0), seconds):
                continue
            job = self._scheduler.get_job(job_id(key))
            due[key] = 0.0 if job is None else _due_in(job)
            if job is not None:
                job.remove()
        self._add_jobs(list(due), interval_of, due)
        self._interval_of = interval_of

    def _add_jobs(
        self,
        keys: list[MeetingKey],
        interval_of: Mapping[MeetingKey, float],
        due: Mapping[MeetingKey, float],
    ) -> None:
        """Jobs for ``keys``. First runs are spread evenly over the interval the meetings would
        have without webhooks (a meeting first seen while its app's webhooks are healthy is not
        kept waiting for the reconcile interval: alone, it is polled at once), and never later
        than ``due`` seconds from now (a job replaced for its new interval)."""
        plan = self._plan
        for i, key in enumerate(keys):
            interval = interval_of[key]
            spread = interval * plan.interval / plan.interval_of(key.app)
            delay = min(spread * i / len(keys), due.get(key, math.inf))
            add_job(self._scheduler, job_id(key), self.poll_meeting, key, interval, delay)

    def _intervals(self, plan: PollPlan) -> dict[MeetingKey, float]:
        """Each meeting's interval, stretched per token when its budget cannot sustain the
        configured one; published as the apps' effective intervals."""
        groups: dict[int, list[MeetingKey]] = {}
        for key, client in plan.meetings.items():
            groups.setdefault(id(client), []).append(key)
        interval_of: dict[MeetingKey, float] = {}
        effective: dict[AppKey, float] = {}
        for members in groups.values():
            limiter = plan.meetings[members[0]].limiter
            every = _mean_interval([plan.interval_of(key.app) for key in members])
            needed = stretched_interval(len(members), limiter.spacing, every)
            warning = over_budget(len(members), every, limiter.spacing)
            if warning is not None:
                log.warning(warning)
            for key in members:  # each stretched in proportion when needed (needed >= every)
                own = plan.interval_of(key.app)
                alike = abs(own - every) <= 1e-9 * every  # every meeting at one interval
                interval_of[key] = needed if alike else own * needed / every
                effective[key.app] = interval_of[key]
        self._health.set_effective_intervals(effective)
        return interval_of

    async def poll_meeting(self, key: MeetingKey) -> None:
        """Poll one meeting (unless it is backed off) and record the outcome. Never raises."""
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            await self._poll_meeting(key)
        except asyncio.CancelledError:  # shutdown cancels what is still running: not an error
            log.debug("poll of meeting %s cancelled", key.meeting_id)
        finally:
            if task is not None:
                self._running.discard(task)

    async def _poll_meeting(self, key: MeetingKey) -> None:
        if self._clock() < self._backoff_until.get(key, 0.0):
            self._health.skipped("backoff")
            return
        plan = self._plan
        client = plan.meetings.get(key)
        if client is None:  # removed by a reload while the job was due
            return
        async with plan.slots:
            started = self._timer()
            outcome = await fetch(client, key)
            if (
                isinstance(outcome, ApiError)
                and outcome.reason in TRANSIENT
                and client.limiter.has_spare()
            ):
                self._health.retried()
                outcome = await fetch(client, key)
            duration = self._timer() - started
        now = self._clock()
        self._store.record(key, outcome, duration, now)
        self._track_failures(key, outcome, now)
        self._failures.outcome(key, where(key), outcome)

    def refresh(self, key: MeetingKey, client: ApiClient) -> bool:
        """Poll ``key`` soon, outside its schedule (a webhook said something changed); see
        :class:`Refresher` for the limits. False when coalesced with a recent or queued one."""
        return self._refresher.ask(key, client)

    def _refresh_rate(self) -> float:
        """Prompt polls per second allowed in all: :data:`REFRESH_SHARE` of what polling every
        exported meeting at the configured interval would cost (at least one per 5 s)."""
        return max(0.2, REFRESH_SHARE * self._store.size() / self._plan.interval)

    async def _refresh(self, key: MeetingKey, client: ApiClient) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            async with self._plan.slots:
                started = self._timer()
                outcome = await fetch(client, key)
                duration = self._timer() - started
            self._store.record(key, outcome, duration, self._clock())
            self._failures.outcome(key, where(key), outcome)
        except asyncio.CancelledError:
            log.debug("refresh of meeting %s cancelled", key.meeting_id)
        finally:
            if task is not None:
                self._running.discard(task)

    async def drain(self, timeout: float = SHUTDOWN_GRACE) -> None:
        """Give the polls in flight up to ``timeout`` seconds to finish (shutdown)."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=timeout)

    def _track_failures(self, key: MeetingKey, outcome: Outcome, now: float) -> None:
        if isinstance(outcome, ApiError) and outcome.reason == "rate_limited":
            return
        if not isinstance(outcome, ApiError) and outcome is not None:
            self._streak.pop(key, None)
            self._backoff_until.pop(key, None)
            return
        failures = self._streak.get(key, 0) + 1
        self._streak[key] = failures
        if failures >= 2:
            interval = self._plan.interval
            delay = min(interval * 2 ** (failures - 1), max(self._plan.max_backoff, interval))
            # Wake a little early so the job run at the end of the backoff is not skipped too.
            self._backoff_until[key] = now + delay - 0.5 * interval

    def _on_overrun(self, event: JobSubmissionEvent) -> None:
        self._health.skipped("overrun")
        log.debug("job %s skipped: its previous run has not finished", event.job_id)


class Refresher:
    """Prompt polls asked for by webhook events. Each meeting is asked at most once per
    :data:`REFRESH_SECONDS`; asks wait in a queue (a meeting once, however many events it had,
    at most :data:`MAX_REFRESH_QUEUE` meetings: beyond, an ask is dropped and polling
    reconciles) that is drained at ``rate()`` per second at most. A refresh goes out only into a
    spare slot of the token's budget (like a retry), so it never delays a routine poll, and at
    most one per ``spacing / REFRESH_SHARE`` seconds per token, so refreshes never take more than
    :data:`REFRESH_SHARE` of a token's budget however long a storm lasts. Every step is O(1):
    10,000s of distinct meetings asking at once never hold the event loop."""

    def __init__(
        self,
        send: Callable[[MeetingKey, ApiClient], Coroutine[Any, Any, None]],
        rate: Callable[[], float],
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Coroutine[Any, Any, None]] = asyncio.sleep,
        max_queue: int = MAX_REFRESH_QUEUE,
    ) -> None:
        self._send, self._rate, self._clock, self._sleep = send, rate, clock, sleep
        self._max_queue = max_queue
        self._queue: dict[MeetingKey, ApiClient] = {}  # in order of asking
        self._asked: OrderedDict[MeetingKey, float] = OrderedDict()  # last asked, oldest first
        self._next: dict[int, float] = {}  # id(limiter) -> earliest time of its next refresh
        self._draining: asyncio.Task[None] | None = None

    def ask(self, key: MeetingKey, client: ApiClient) -> bool:
        """Queue a prompt poll of ``key``; False when coalesced with a recent or queued one, or
        when the queue is full."""
        now = self._clock()
        asked = self._asked
        while asked and now - next(iter(asked.values())) >= REFRESH_SECONDS:
            asked.popitem(last=False)  # forget the old ones: each is popped once
        if key in self._queue or key in asked or len(self._queue) >= self._max_queue:
            return False
        asked[key] = now
        self._queue[key] = client
        if self._draining is None or self._draining.done():
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        return True

    async def _drain(self) -> None:
        """Send the oldest ask, then wait 1/rate: a lone ask goes out at once, a burst is paced
        (the wait before the drain ends also spaces it from the next one)."""
        while self._queue:
            key, client = next(iter(self._queue.items()))
            del self._queue[key]
            limiter, now = client.limiter, self._clock()
            if limiter.has_spare() and now >= self._next.get(id(limiter), now):
                if len(self._next) > 1000:  # limiters replaced by reloads: forget them
                    self._next.clear()
                self._next[id(limiter)] = now + limiter.spacing / REFRESH_SHARE
                await self._send(key, client)
            else:  # the budget is busy, or this token's share is spent: try again later
                self._queue[key] = client
            await self._sleep(1 / self._rate())


def _due_in(job: Job) -> float:
    """Seconds from now until the job's next run (its first, before the scheduler started)."""
    when = getattr(job, "next_run_time", None) or getattr(job.trigger, "start_date", None)
    return 0.0 if when is None else max(0.0, (when - datetime.now(UTC)).total_seconds())


async def fetch(client: ApiClient, key: MeetingKey) -> Outcome:
    """One active-session request: the answer, the API's error, or ``None`` for a bug of ours
    (logged with its traceback; polling goes on)."""
    try:
        return await client.get_active_session(key)
    except ApiError as err:
        return err
    except Exception:  # a bug, not the API: keep polling, keep the traceback
        log.exception("unexpected error polling meeting %s", key.meeting_id)
        return None
