"""What the exporter watches of an app besides its sessions: recordings, livestreams, usage, the
webhook registration and call quality, each kept by its own module and run as a pull
(:mod:`exporter.pulls`). :class:`AppWatch` plans them all together, on each token's budget after
the session polls, hands them the webhook events that concern them, and exports their series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client.core import Metric

from exporter.client import ApiClient
from exporter.config import App, Config
from exporter.logs import FailureLog
from exporter.model import AppKey, MeetingKey
from exporter.pulls import PullCollector, PullJob, PullPlan, Pulls, PullStats
from exporter.quality import CallQuality
from exporter.recordings import Media
from exporter.store import Labels
from exporter.usage import Account

#: The webhook events that concern a pull rather than a session.
EVENTS = frozenset(
    {"recording.statusUpdate", "livestreaming.statusUpdate", "meeting.participantLeft"}
)


def polls_per_second(
    meetings: Mapping[MeetingKey, ApiClient],
    interval_of: Callable[[AppKey], float],
    discovering: Mapping[AppKey, ApiClient],
) -> dict[int, float]:
    """Requests per second the session polls take of each token (keyed by ``id`` of its
    limiter): one per meeting and interval, one page per discovering app and interval (more
    pages are taken from the pulls' share when needed: the limiter holds the budget in any
    case)."""
    demand: dict[int, float] = {}
    for key, client in meetings.items():
        token = id(client.limiter)
        demand[token] = demand.get(token, 0.0) + 1 / interval_of(key.app)
    for app, client in discovering.items():
        token = id(client.limiter)
        demand[token] = demand.get(token, 0.0) + 1 / interval_of(app)
    return demand


class AppWatch:
    """The app-level books and their pulls; kept across reloads and leadership changes."""

    def __init__(
        self,
        scheduler: AsyncIOScheduler,
        failures: FailureLog | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stats = PullStats()
        self.pulls = Pulls(scheduler, self.stats, failures)
        self.media = Media(clock)
        self.account = Account(clock)
        self.quality = CallQuality(clock)

    def plan(
        self,
        config: Config,
        apps: list[App],
        clients: Mapping[AppKey, ApiClient],
        demand: Mapping[int, float],
        slots: Any,
    ) -> None:
        """Pull for these apps from now on (none: a standby, or a shard without apps)."""
        hooks = config.webhooks
        planned = [
            *self.media.plan(apps),
            *self.account.plan(apps, hooks.public_url, hooks.registration_check_seconds),
            *self.quality.plan(apps),
        ]
        jobs = [PullJob(app, kind, every, pull, clients[app]) for app, kind, every, pull in planned]
        self.pulls.schedule(PullPlan(jobs, demand, slots))

    def take_event(self, app: AppKey, event: str, payload: Mapping[str, Any]) -> str | None:
        """A signed event for a pull: applied at once. Returns the meeting id it was about when
        a book changed; raises ValueError naming what is wrong with the payload."""
        if event == "meeting.participantLeft":
            self.quality.take_event(app, event, payload)
            return None
        return self.media.take_event(app, event, payload)

    def collector(
        self, exported: Callable[[Collection[AppKey]], Mapping[MeetingKey, Labels]]
    ) -> PullCollector:
        """The collector of every pull's series; per-meeting ones for the meetings
        ``exported(apps)`` gives of the apps with recordings or livestreams on."""

        def media() -> Iterator[Metric]:
            apps = {*self.media.recordings, *self.media.livestreams}
            return self.media.collect(exported(apps) if apps else {})

        return PullCollector(self.stats, media, self.account.collect, self.quality.collect)
