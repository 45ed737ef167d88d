"""Poll every exported meeting on a schedule and put the outcome in the store.

One APScheduler job per meeting, all on one asyncio loop. The jobs' first runs are spread evenly
over the interval (meeting *i* of *n* starts at ``i/n × interval``), so requests flow at a steady
rate instead of bursting at the top of each cycle. APScheduler never runs a meeting's job twice at
once (``max_instances=1``; a run that finds the previous one still going is counted as skipped); a
semaphore bounds how many polls are in flight in all.

Budget: the meetings that share a token share its :class:`~exporter.client.RateLimiter`. When
they need more requests than the budget allows at the configured interval, the interval of that
group is stretched evenly (:meth:`Poller.schedule` says so once) instead of queueing without end.

Discovery: an app with ``discover.enabled`` gets one job instead of one per meeting. Each cycle
it lists the app's live sessions page by page (``GET …/sessions?status=LIVE``) and records every
listed meeting from that one answer; configured meetings of the app are answered from the list
too. A meeting that was live at the last look and is not listed now is confirmed with one
active-session call (it may have ended, or slipped between two pages while others started or
ended); a discovered meeting unseen for ``stale_after`` seconds is dropped.

Failures: a timeout, connection error or 5xx gets one quick retry when the budget has a spare
slot; a meeting that keeps failing is backed off exponentially (interval × 2^(failures−1), capped)
so that a dead meeting cannot eat the budget of the live ones. Rate limiting is the token's
business, not the meeting's: it pauses the limiter and does not count toward a meeting's backoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from exporter.client import ApiClient, Listing
from exporter.config import App, Config
from exporter.errors import ApiError
from exporter.health import DURATION_BUCKETS
from exporter.model import NO_ACTIVE_SESSION, Answer, MeetingKey, Session
from exporter.store import Store

log = logging.getLogger(__name__)

_JOB_PREFIX = "poll:"
_DISCOVER_PREFIX = "discover:"
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: At most this many "was live, not listed now" meetings are confirmed per app and cycle.
MAX_CONFIRMATIONS = 100
#: Failures worth one immediate retry: the next attempt may well succeed.
TRANSIENT = frozenset({"timeout", "connect", "http_5xx"})
#: How often a line sums up the repeated failures that were not logged one by one.
SUPPRESSED_LOG_SECONDS = 60.0
#: Stretched intervals leave this much of the budget free for retries and jitter.
HEADROOM = 1.05


def _soon() -> datetime:
    """The first run time of new jobs. A trigger whose start is already past when the job is
    added first fires one interval later, so the meeting due "now" would wait a whole interval."""
    return datetime.now(UTC) + timedelta(milliseconds=50)


def _same(seconds: float, other: float) -> bool:
    """Equal as trigger intervals (which keep microseconds only)."""
    return abs(seconds - other) < 1e-3


def _where(key: MeetingKey) -> str:
    return f"account_id={key.account_id} app_id={key.app_id} meeting_id={key.meeting_id}"


def _job_id(key: MeetingKey) -> str:
    return f"{_JOB_PREFIX}{key.account_id}/{key.app_id}/{key.meeting_id}"


@dataclass(frozen=True, slots=True)
class AppStats:
    """What the last discovery cycles of one app saw (plain numbers for the collector)."""

    up: bool | None = None  # None until the first cycle finished
    live_sessions: int = 0  # as the API reported (total_count), not only what we export
    live_participants: float = 0.0  # summed over every listed session
    duration: float = 0.0  # of the last cycle, pages and confirmations included
    pages: int = 0  # total pages read
    confirmations: int = 0  # total active-session calls made to confirm an unlisted meeting
    dropped: int = 0  # total listed meetings not exported because of max_meetings
    errors: dict[str, int] = field(default_factory=dict)  # failed cycles by reason


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
    apps: dict[tuple[str, str], AppStats]  # discovery apps only


class Poller:
    """Schedules and runs the polls. ``client_for`` picks the API client (token) of an app,
    given ``(account_id, app_id)``."""

    def __init__(
        self,
        *,
        scheduler: AsyncIOScheduler,
        client_for: Callable[[tuple[str, str]], ApiClient],
        store: Store,
        interval_seconds: float,
        concurrency: int,
        max_backoff_seconds: float = 300.0,
        stale_after_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._scheduler = scheduler
        self._store = store
        self.configure(
            client_for=client_for,
            interval_seconds=interval_seconds,
            concurrency=concurrency,
            max_backoff_seconds=max_backoff_seconds,
            stale_after_seconds=stale_after_seconds,
        )
        self._clock = clock
        self._timer = timer
        self._lock = threading.Lock()  # guards what stats() reads from the HTTP thread
        self._effective: dict[tuple[str, str], float] = {}
        self._skipped: Counter[str] = Counter()
        self._retries = 0
        self._clients: list[ApiClient] = []
        self._suppressed: Counter[object] = Counter()  # repeated failures not logged, by key
        self._suppressed_since = clock()
        self._down: dict[object, str] = {}  # meetings or apps whose last poll failed: reason
        self._apps: dict[tuple[str, str], App] = {}  # discovery apps
        self._app_stats: dict[tuple[str, str], AppStats] = {}
        self._seen: dict[tuple[str, str], dict[MeetingKey, float]] = {}  # discovered: last listed
        scheduler.add_listener(self._on_overrun, EVENT_JOB_MAX_INSTANCES)

    def configure(
        self,
        *,
        client_for: Callable[[tuple[str, str]], ApiClient],
        interval_seconds: float,
        concurrency: int,
        max_backoff_seconds: float = 300.0,
        stale_after_seconds: float | None = None,
    ) -> None:
        """Take new settings (a reload); :meth:`apply` then reschedules what they change.
        Backoff starts afresh: the new settings (a rotated token, say) may cure the failures."""
        self._failures: dict[MeetingKey, int] = {}  # consecutive failures (not rate limiting)
        self._backoff_until: dict[MeetingKey, float] = {}
        self._client_for = client_for
        self._interval = interval_seconds
        self._max_backoff = max(max_backoff_seconds, interval_seconds)
        self._stale_after = stale_after_seconds or 3 * interval_seconds
        self._semaphore = asyncio.Semaphore(concurrency)

    def help_interval(self) -> float:
        """The longest effective interval, for HELP texts."""
        with self._lock:
            return max(self._effective.values(), default=self._interval)

    def stats(self) -> PollerStats:
        with self._lock:
            effective, skipped = dict(self._effective), dict(self._skipped)
            retries, clients = self._retries, list(self._clients)
            apps = dict(self._app_stats)
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
            apps=apps,
        )

    def apply(self, config: Config) -> None:
        """Export and poll what ``config`` lists: per-meeting jobs for plain apps, one discovery
        job per app with ``discover.enabled``. Safe to call again with a new config."""
        discovery = {app.key: app for app in config.apps if app.discover.enabled}
        targets = config.targets()
        for app_key, seen in self._seen.items():  # discovered meetings stay while their app does
            if app_key in discovery:
                labels = tuple(sorted(discovery[app_key].discover.labels.items()))
                targets.update({key: labels for key in seen if key not in targets})
        self._store.set_targets(targets)
        self._seen = {k: v for k, v in self._seen.items() if k in discovery}
        self._apps = discovery
        with self._lock:
            self._app_stats = {k: self._app_stats.get(k, AppStats()) for k in discovery}
        wanted_jobs = {f"{_DISCOVER_PREFIX}{a}/{b}" for a, b in discovery}
        for job in self._scheduler.get_jobs():
            if job.id.startswith(_DISCOVER_PREFIX) and (
                job.id not in wanted_jobs or not _same(job.trigger.interval_length, self._interval)
            ):
                job.remove()
        existing = {job.id for job in self._scheduler.get_jobs()}
        start = _soon()
        for i, app_key in enumerate(discovery):
            job_id = f"{_DISCOVER_PREFIX}{app_key[0]}/{app_key[1]}"
            if job_id in existing:
                continue
            offset = timedelta(seconds=self._interval * i / len(discovery))
            self._scheduler.add_job(
                self.discover_app,
                IntervalTrigger(seconds=self._interval, start_date=start + offset),
                args=[app_key],
                id=job_id,
                name=job_id,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(self._interval)),
            )
        self.schedule(key for key in config.targets() if key.app not in discovery)
        self._down = {k: v for k, v in self._down.items() if k in targets or k in discovery}
        clients = {id(c): c for c in map(self._client_for, {*discovery, *(k.app for k in targets)})}
        with self._lock:
            for app_key in discovery:
                self._effective[app_key] = self._interval
            self._clients = list(clients.values())

    def schedule(self, keys: Iterable[MeetingKey]) -> None:
        """Poll exactly these meetings from now on.

        Meetings that stay keep their job and phase (unless their effective interval changed);
        removed ones lose theirs; new ones get first runs spread over one interval.
        """
        keys = list(keys)
        groups: dict[int, list[MeetingKey]] = {}
        clients: dict[int, ApiClient] = {}
        for key in keys:
            client = self._client_for(key.app)
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
        wanted = {_job_id(key): key for key in keys}
        for state in (self._failures, self._backoff_until):
            for gone in [key for key in state if _job_id(key) not in wanted]:
                del state[gone]
        jobs = {job.id: job for job in self._scheduler.get_jobs() if job.id.startswith(_JOB_PREFIX)}
        kept: set[str] = set()
        for job_id, job in jobs.items():
            stays = wanted.get(job_id)
            if stays is None or not _same(job.trigger.interval_length, interval_of[stays]):
                job.remove()
            else:
                kept.add(job_id)
        new = [key for job_id, key in wanted.items() if job_id not in kept]
        start = _soon()
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
        try:
            await self._poll_meeting(key)
        except asyncio.CancelledError:  # shutdown cancels what is still waiting: not an error
            log.debug("poll of meeting %s cancelled", key.meeting_id)

    async def _poll_meeting(self, key: MeetingKey) -> None:
        if self._clock() < self._backoff_until.get(key, 0.0):
            with self._lock:
                self._skipped["backoff"] += 1
            return
        client = self._client_for(key.app)
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
        self._log_transition(key, _where(key), outcome)

    async def discover_app(self, app_key: tuple[str, str]) -> None:
        """One discovery cycle of an app. Never raises."""
        try:
            await self._discover_app(app_key)
        except asyncio.CancelledError:  # shutdown cancels what is still waiting: not an error
            log.debug("discovery of app %s/%s cancelled", *app_key)

    async def _discover_app(self, app_key: tuple[str, str]) -> None:
        app = self._apps.get(app_key)
        if app is None:  # removed by a reload while the job was due
            return
        client = self._client_for(app_key)
        started = self._timer()
        configured = {MeetingKey(*app_key, m.id) for m in app.meetings}
        max_pages = math.ceil((app.discover.max_meetings + len(configured)) / app.discover.per_page)
        try:
            async with self._semaphore:
                listing = await client.list_live_sessions(
                    *app_key, per_page=app.discover.per_page, max_pages=max_pages + 1
                )
        except ApiError as err:
            self._discovery_failed(app_key, err, self._timer() - started)
            return
        except Exception:  # a bug, not the API
            log.exception("unexpected error discovering app %s/%s", *app_key)
            self._discovery_failed(app_key, None, self._timer() - started)
            return
        confirmations, dropped = await self._apply_listing(app, listing, configured, started)
        duration = self._timer() - started
        self._log_transition(app_key, f"account_id={app_key[0]} app_id={app_key[1]}", True)
        with self._lock:
            old = self._app_stats.get(app_key, AppStats())
            self._app_stats[app_key] = replace(
                old,
                up=True,
                live_sessions=(
                    listing.total_count
                    if listing.total_count is not None
                    else len(listing.sessions)
                ),
                live_participants=sum(s.live_participants for s in listing.sessions),
                duration=duration,
                pages=old.pages + listing.pages,
                confirmations=old.confirmations + confirmations,
                dropped=old.dropped + dropped,
            )

    async def _apply_listing(
        self, app: App, listing: Listing, configured: set[MeetingKey], started: float
    ) -> tuple[int, int]:
        """Record what a listing says about every meeting of the app; returns how many
        active-session confirmations it took and how many listed meetings the cap dropped."""
        app_key, rules = app.key, app.discover
        now = self._clock()
        duration = self._timer() - started
        listed: dict[MeetingKey, Session] = {}
        for session in listing.sessions:
            meeting = session.associated_id
            if meeting is None or not _SAFE_ID.fullmatch(meeting):
                continue  # cannot be exported (or safely asked about) under that id
            key = MeetingKey(*app_key, meeting)
            other = listed.get(key)
            if other is None or (session.started_at or 0) >= (other.started_at or 0):
                listed[key] = session
        seen = self._seen.setdefault(app_key, {})
        pattern = re.compile(rules.name_regex) if rules.name_regex else None

        def wanted(key: MeetingKey, session: Session) -> bool:
            if rules.include and key.meeting_id not in rules.include:
                return False
            if key.meeting_id in rules.exclude:
                return False
            return pattern is None or bool(pattern.search(session.meeting_display_name or ""))

        candidates = [k for k, s in listed.items() if k not in configured and wanted(k, s)]
        candidates.sort(key=lambda k: k not in seen)  # already exported ones keep their place
        room = max(0, rules.max_meetings - sum(1 for k in seen if k not in listed))
        accepted, dropped = candidates[:room], max(0, len(candidates) - room)
        labels = tuple(sorted(rules.labels.items()))
        for key in accepted:
            self._store.add(key, labels)
            seen[key] = now
        to_confirm = []
        for key in [*configured, *seen]:
            if key in listed and (key in configured or key in accepted):
                self._store.record(key, listed[key], duration, now)
                self._log_transition(key, _where(key), listed[key])
                continue
            state = self._store.get(key)
            last = state.answer if state is not None and state.up is not False else None
            if isinstance(last, Session) and last.status == "LIVE":
                to_confirm.append(key)  # was live at the last look: ended, or missed by paging?
            else:
                self._store.record(key, NO_ACTIVE_SESSION, duration, now)
        client = self._client_for(app_key)
        for key in to_confirm[:MAX_CONFIRMATIONS]:
            outcome = await self._fetch(client, key)
            self._store.record(key, outcome, duration, self._clock())
            if isinstance(outcome, Session) and key in seen:
                seen[key] = now
        for key in to_confirm[MAX_CONFIRMATIONS:]:
            self._store.record(key, NO_ACTIVE_SESSION, duration, now)
        expired = [k for k, t in seen.items() if now - t > self._stale_after]
        for key in expired:
            del seen[key]
        self._store.remove(expired)
        return min(len(to_confirm), MAX_CONFIRMATIONS), dropped

    def _discovery_failed(
        self, app_key: tuple[str, str], err: ApiError | None, duration: float
    ) -> None:
        """The cycle failed: every meeting of the app is down; last good values stay until
        they are stale, like for a failed per-meeting poll."""
        now = self._clock()
        app = self._apps[app_key]
        keys = {MeetingKey(*app_key, m.id) for m in app.meetings} | set(self._seen.get(app_key, {}))
        for key in keys:
            self._store.record(key, err, duration, now)
        self._log_transition(app_key, f"account_id={app_key[0]} app_id={app_key[1]}", err)
        with self._lock:
            old = self._app_stats.get(app_key, AppStats())
            errors = dict(old.errors)
            if err is not None:
                errors[err.reason] = errors.get(err.reason, 0) + 1
            self._app_stats[app_key] = replace(old, up=False, duration=duration, errors=errors)

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

    def _log_transition(self, key: object, where: str, outcome: object) -> None:
        """One line when a meeting (or an app's discovery) starts failing or changes failure
        reason, one when it recovers. Repeated identical failures go to debug so that a dead API
        cannot flood the log; at most once a minute one line says how many were held back."""
        if isinstance(outcome, ApiError):
            status = "" if outcome.status is None else f" status={outcome.status}"
            line = f"poll failed {where} reason={outcome.reason}{status}: {outcome}"
            if self._down.get(key) != outcome.reason:
                self._down[key] = outcome.reason
                log.warning(line)
            else:
                log.debug(line)
                self._suppressed[key] += 1
        elif outcome is not None and self._down.pop(key, None) is not None:
            repeats = self._suppressed.pop(key, 0)
            log.info("poll recovered %s after %d more failed poll(s)", where, repeats)
        now = self._clock()
        if self._suppressed and now - self._suppressed_since >= SUPPRESSED_LOG_SECONDS:
            log.warning(
                "%d repeated poll failure(s) of %d meeting(s)/app(s) not logged in the last %.0fs "
                "(each first failure was; --log.level debug shows all)",
                sum(self._suppressed.values()), len(self._suppressed), now - self._suppressed_since,
            )  # fmt: skip
            self._suppressed.clear()
            self._suppressed_since = now
        elif not self._suppressed:
            self._suppressed_since = now

    def _on_overrun(self, event: JobSubmissionEvent) -> None:
        with self._lock:
            self._skipped["overrun"] += 1
        log.debug("poll %s skipped: the previous poll has not finished", event.job_id)
