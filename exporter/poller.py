"""Poll every exported meeting on a schedule and put the outcome in the store.

One APScheduler job per meeting, all on one asyncio loop. The jobs' first runs are spread evenly
over the interval (meeting *i* of *n* starts at ``i/n × interval``), so requests flow at a steady
rate instead of bursting at the top of each cycle. APScheduler never runs a meeting's job twice at
once (``max_instances=1``); a semaphore bounds how many polls are in flight in all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from exporter.client import ApiClient
from exporter.config import MeetingKey
from exporter.errors import ApiError
from exporter.model import Answer
from exporter.store import Store

log = logging.getLogger(__name__)

_JOB_PREFIX = "poll:"


def _job_id(key: MeetingKey) -> str:
    return f"{_JOB_PREFIX}{key.account_id}/{key.app_id}/{key.meeting_id}"


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
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._scheduler = scheduler
        self._client_for = client_for
        self._store = store
        self._interval = interval_seconds
        self._semaphore = asyncio.Semaphore(concurrency)
        self._clock = clock
        self._timer = timer
        self._down: dict[MeetingKey, str] = {}  # meetings whose last poll failed, with the reason
        self.skipped = 0  # polls not started because the previous one had not finished
        scheduler.add_listener(self._on_skip, EVENT_JOB_MAX_INSTANCES)

    @property
    def interval_seconds(self) -> float:
        return self._interval

    def schedule(self, keys: list[MeetingKey]) -> None:
        """Poll exactly these meetings from now on; their first polls are spread over one interval.

        Jobs of meetings that stay keep their phase; those of removed meetings are dropped.
        """
        wanted = {_job_id(key): key for key in keys}
        self._down = {key: reason for key, reason in self._down.items() if _job_id(key) in wanted}
        for job in self._scheduler.get_jobs():
            if job.id.startswith(_JOB_PREFIX) and job.id not in wanted:
                job.remove()
        existing = {job.id for job in self._scheduler.get_jobs()}
        new = [key for job_id, key in wanted.items() if job_id not in existing]
        start = datetime.now(UTC)
        for i, key in enumerate(new):
            offset = timedelta(seconds=self._interval * i / len(new))
            self._scheduler.add_job(
                self.poll_meeting,
                IntervalTrigger(seconds=self._interval, start_date=start + offset),
                args=[key],
                id=_job_id(key),
                name=_job_id(key),
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(self._interval)),
            )

    async def poll_meeting(self, key: MeetingKey) -> None:
        """Poll one meeting and record the outcome. Never raises."""
        async with self._semaphore:
            started = self._timer()
            outcome: Answer | ApiError | None
            try:
                outcome = await self._client_for(key).get_active_session(key)
            except ApiError as err:
                outcome = err
            except Exception:  # a bug, not the API: keep polling, keep the traceback
                log.exception("unexpected error polling meeting %s", key.meeting_id)
                outcome = None
            duration = self._timer() - started
        self._store.record(key, outcome, duration, self._clock())
        self._log_transition(key, outcome)

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

    def _on_skip(self, event: JobSubmissionEvent) -> None:
        self.skipped += 1
        log.debug("poll %s skipped: the previous poll has not finished", event.job_id)
