"""App-level pulls: requests made for a whole app rather than for one meeting.

A pull of a kind (:data:`PULL_KINDS`: recordings, livestreams, usage, webhook registrations, peer
reports) runs as one scheduler job per app and kind. Pulls share each token's budget with the
session polls, and the polls come first: :func:`pull_intervals` gives the pulls of a token only
the requests per second the polls leave, stretching their intervals (said once per change) when
the rest is short. How a kind reads and keeps its data is its own module's business
(:mod:`exporter.recordings`); here are the schedule, the budget and the health numbers
``realtimekit_app_pull_*``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from exporter.client import ApiClient
from exporter.errors import ApiError
from exporter.logs import FailureLog
from exporter.model import AppKey
from exporter.poller import HEADROOM, add_job, same_interval

log = logging.getLogger(__name__)

PULL_KINDS: Final = ("recordings", "livestreams", "usage", "webhook_registrations", "peer_reports")
JOB_PREFIX: Final = "pull:"
#: Kinds that only take what the session polls and every other pull leave.
LAST: Final = frozenset({"peer_reports"})
#: A pull is never stretched beyond this (a day): when session polls leave nothing, pulls still
#: run now and then instead of never.
MAX_PULL_INTERVAL: Final = 86400.0
PullKey = tuple[AppKey, str]  # (app, kind)


class Pull(Protocol):
    """One kind's pull for one app: ``run`` makes its requests and keeps what they say, raising
    :class:`~exporter.errors.ApiError` when the answer is not valid; ``cost`` is how many
    requests a run is expected to take (the last run's pages)."""

    def cost(self) -> int: ...

    async def run(self, client: ApiClient) -> None: ...


@dataclass(frozen=True)
class PullJob:
    """A pull to schedule: which app and kind, every how many seconds, with which client."""

    app: AppKey
    kind: str
    interval: float  # as configured
    pull: Pull
    client: ApiClient

    @property
    def key(self) -> PullKey:
        return (self.app, self.kind)


@dataclass(frozen=True)
class PullPlan:
    """Every pull to run, and the requests per second the session polls of each token take
    (keyed by ``id`` of the token's limiter), which the pulls must leave to them."""

    jobs: Sequence[PullJob]
    polls_per_second: Mapping[int, float] = field(default_factory=dict)
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(4))


def pull_intervals(plan: PullPlan) -> dict[PullKey, float]:
    """Each pull's interval: as configured while the token's budget, less what the session polls
    take, sustains every pull of the token; else all of them stretched by the same factor (at
    most to :data:`MAX_PULL_INTERVAL`)."""
    groups: dict[int, list[PullJob]] = {}
    for job in plan.jobs:
        groups.setdefault(id(job.client.limiter), []).append(job)
    intervals: dict[PullKey, float] = {}
    for token, jobs in groups.items():
        spare = jobs[0].client.limiter.per_second / HEADROOM - plan.polls_per_second.get(token, 0)
        first = [job for job in jobs if job.kind not in LAST]
        spare -= _stretch(first, spare, intervals)
        _stretch([job for job in jobs if job.kind in LAST], spare, intervals)
    return intervals


def _stretch(jobs: list[PullJob], spare: float, intervals: dict[PullKey, float]) -> float:
    """Stretch ``jobs`` alike to fit in ``spare`` requests/s; returns what they then take."""
    demand = sum(max(1, job.pull.cost()) / job.interval for job in jobs)
    factor = max(1.0, demand / spare if spare > 0 else float("inf"))
    taken = 0.0
    for job in jobs:
        intervals[job.key] = min(job.interval * factor, MAX_PULL_INTERVAL)
        taken += max(1, job.pull.cost()) / intervals[job.key]
    return taken


@dataclass(slots=True)
class PullState:
    """One app's pull of one kind, as the collector shows it."""

    interval: float
    up: bool | None = None  # None until the first run finished
    errors: dict[str, int] = field(default_factory=dict)


class PullStats:
    """Thread-safe health of every scheduled pull: written by the jobs, read by the collector."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[PullKey, PullState] = {}

    def plan(self, intervals: Mapping[PullKey, float]) -> None:
        """Keep the pulls still scheduled (with their new intervals), drop the others."""
        with self._lock:
            old = self._states
            self._states = {
                key: PullState(every, old[key].up, old[key].errors)
                if key in old
                else PullState(every)
                for key, every in intervals.items()
            }

    def finished(self, key: PullKey, error: ApiError | None) -> None:
        with self._lock:
            state = self._states.get(key)
            if state is None:  # unscheduled while it ran
                return
            state.up = error is None
            if error is not None:
                state.errors[error.reason] = state.errors.get(error.reason, 0) + 1

    def snapshot(self) -> dict[PullKey, PullState]:
        with self._lock:
            return {k: PullState(s.interval, s.up, dict(s.errors)) for k, s in self._states.items()}


class Pulls:
    """Runs one job per app and kind of a :class:`PullPlan`, each at its stretched interval."""

    def __init__(
        self, scheduler: AsyncIOScheduler, stats: PullStats, failures: FailureLog | None = None
    ) -> None:
        self._scheduler = scheduler
        self.stats = stats
        self._failures = failures or FailureLog(logging.getLogger(__name__))
        self._plan = PullPlan(())
        self._jobs: dict[PullKey, PullJob] = {}
        self._intervals: dict[PullKey, float] = {}

    def schedule(self, plan: PullPlan) -> None:
        """Run these pulls from now on; a pull that stays keeps its job unless its interval
        changed. New ones start spread over a few seconds, not all at once."""
        self._plan = plan
        self._jobs = {job.key: job for job in plan.jobs}
        intervals = pull_intervals(plan)
        self._say_stretched(intervals)
        self._intervals = intervals
        self.stats.plan(intervals)
        for job in self._scheduler.get_jobs():
            if job.id.startswith(JOB_PREFIX):
                key = _key_of(job.id)
                if key not in intervals or not same_interval(
                    job.trigger.interval_length, intervals[key]
                ):
                    job.remove()
        existing = {job.id for job in self._scheduler.get_jobs()}
        for i, (key, every) in enumerate(sorted(intervals.items())):
            if _job_id(key) not in existing:
                add_job(self._scheduler, _job_id(key), self.run_pull, key, every, 0.1 * i)

    def _say_stretched(self, intervals: Mapping[PullKey, float]) -> None:
        for key, every in sorted(intervals.items()):
            configured = self._jobs[key].interval
            before = self._intervals.get(key, configured)
            if not same_interval(every, before):
                (account_id, app_id), kind = key
                log.warning(
                    "%s pull of account_id=%s app_id=%s runs every %.0fs (configured %gs): "
                    "%s",
                    kind, account_id, app_id, every, configured,
                    "the session polls leave too little of the token's budget"
                    if every > configured else "the budget allows it again",
                )  # fmt: skip

    async def run_pull(self, key: PullKey) -> None:
        """One run of one pull. Never raises; a run whose cost changed re-plans the pulls."""
        job = self._jobs.get(key)
        if job is None:  # removed by a swap while it was due
            return
        cost = job.pull.cost()
        error: ApiError | None = None
        try:
            async with self._plan.slots:
                await job.pull.run(job.client)
        except ApiError as err:
            error = err
        except asyncio.CancelledError:
            return
        except Exception:  # a bug, not the API
            log.exception("unexpected error in the %s pull of %s/%s", key[1], *key[0])
            error = ApiError("invalid_response", "internal error")
        self.stats.finished(key, error)
        where = f"{key[1]} pull of account_id={key[0][0]} app_id={key[0][1]}"
        self._failures.outcome(key, where, error or True)
        if job.pull.cost() != cost and self._jobs.get(key) is job:
            self.schedule(self._plan)


def _job_id(key: PullKey) -> str:
    (account_id, app_id), kind = key
    return f"{JOB_PREFIX}{kind}:{account_id}/{app_id}"


def _key_of(job_id: str) -> PullKey:
    kind, _, app = job_id[len(JOB_PREFIX) :].partition(":")
    account_id, _, app_id = app.partition("/")
    return ((account_id, app_id), kind)


_FAMILIES: Final = (
    ("realtimekit_app_pull_up", "gauge",
     "1 if the last pull of that kind got a valid answer, else 0."),
    ("realtimekit_app_pull_interval_seconds", "gauge",
     "Seconds between pulls of that kind after stretching for the budget."),
)  # fmt: skip


class PullCollector(Collector):
    """``realtimekit_app_pull_*`` from a :class:`PullStats`, and the families of each kind."""

    def __init__(self, stats: PullStats, *kinds: Callable[[], Iterator[Metric]]) -> None:
        self._stats = stats
        self._kinds = kinds

    def collect(self) -> Iterator[Metric]:
        states = sorted(self._stats.snapshot().items())
        up, interval = (Metric(name, doc, kind) for name, kind, doc in _FAMILIES)
        errors = Metric(
            "realtimekit_app_pull_errors", "Failed pulls, by kind and reason.", "counter"
        )
        for ((account_id, app_id), kind), state in states:
            labels = {"account_id": account_id, "app_id": app_id, "pull": kind}
            if state.up is not None:
                up.samples.append(Sample(up.name, labels, 1.0 if state.up else 0.0))
            interval.samples.append(Sample(interval.name, labels, state.interval))
            for reason, count in sorted(state.errors.items()):
                errors.samples.append(
                    Sample("realtimekit_app_pull_errors_total", {**labels, "reason": reason}, count)
                )
        yield from (up, errors, interval)
        for families in self._kinds:
            yield from families()
