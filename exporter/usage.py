"""Usage and webhook registrations: two app-level pulls that watch the account, not meetings.

Usage (``usage.enabled``): ``GET …/analytics/daywise?start_date=<today − 29 days>&end_date=<today>``
(UTC days) at most every ``usage.interval_seconds``. Each ``day`` is read as a date whatever time
part it carries; a day the API does not list is 0. Today and yesterday are worked out from the
clock at every scrape, so "today" turns over at UTC midnight without a restart (it reads 0 until
the next pull).

Registrations (apps with webhooks on, when ``webhooks.public_url`` is set): ``GET …/webhooks``
every ``webhooks.registration_check_seconds``. The app is registered when an enabled
registration has the url ``<public_url>/webhooks/<account_id>/<app_id>`` (trailing slashes
ignored) and every event the exporter needs; what is missing is logged once per change.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

from exporter.client import ApiClient
from exporter.config import App
from exporter.errors import ApiError
from exporter.model import AppKey, decode_json, error_for_status
from exporter.model import _error_doc as error_doc
from exporter.pulls import Pull

log = logging.getLogger(__name__)

PERIODS: Final = ("today", "yesterday", "last_30_days")
#: A usage figure beyond this is not a measurement (minutes or counts).
MAX_VALUE: Final = 1e12
#: (family, HELP, block, total field, day field, factor): the API's minutes are exported as seconds.
_FAMILIES: Final = (
    ("realtimekit_app_usage_sessions", "Sessions, by period (UTC days).",
     "session_stats", "sessions_count", "total_sessions", 1),
    ("realtimekit_app_usage_session_seconds", "Session time consumed, by period (UTC days).",
     "session_stats", "sessions_minutes_consumed", "total_session_minutes", 60),
    ("realtimekit_app_usage_recordings", "Recordings, by period (UTC days).",
     "recording_stats", "recording_count", "total_recordings", 1),
    ("realtimekit_app_usage_recording_seconds", "Recording time consumed, by period (UTC days).",
     "recording_stats", "recording_minutes_consumed", "total_recording_minutes", 60),
)  # fmt: skip


def _utc_day(moment: float) -> date:
    return datetime.fromtimestamp(moment, UTC).date()


def _value(raw: Any) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    number = float(raw)
    return number if math.isfinite(number) and 0 <= number <= MAX_VALUE else None


def _day(raw: Any) -> date | None:
    """``2026-12-05``, ``2026-12-05T00:00:00Z``, ``2026-12-05 00:00:00``: the date part."""
    if not isinstance(raw, str) or len(raw) < 10:
        return None
    try:
        return date.fromisoformat(raw[:10])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Usage:
    """What one daywise answer says: per family, the 30-day total and the value of each day."""

    totals: dict[str, float | None]  # family -> the API's total (None: not given)
    days: dict[str, dict[date, float]]  # family -> day -> value

    def values(self, today: date) -> dict[str, dict[str, float]]:
        """Per family, per period. A day not listed is 0; a missing total is the sum of the
        listed days of the 30 days ending today."""
        out = {}
        first = today - timedelta(days=29)
        for name, *_ in _FAMILIES:
            days = self.days.get(name, {})
            total = self.totals.get(name)
            if total is None:
                total = sum(v for d, v in days.items() if first <= d <= today)
            out[name] = {
                "today": days.get(today, 0.0),
                "yesterday": days.get(today - timedelta(days=1), 0.0),
                "last_30_days": total,
            }
        return out


def parse_usage(status: int, content_type: str, body: bytes) -> Usage:
    """Read a daywise answer; every field may be missing (then it counts as 0 or not given)."""
    if status != 200:
        raise error_for_status(status, error_doc(content_type, body))
    doc = decode_json(content_type, body)
    data = doc.get("data") if isinstance(doc, dict) and doc.get("success") is not False else None
    if not isinstance(data, dict):
        raise ApiError("invalid_response", "field data is missing or not an object")
    totals: dict[str, float | None] = {}
    days: dict[str, dict[date, float]] = {}
    for name, _, block_name, total_field, day_field, factor in _FAMILIES:
        block = data.get(block_name)
        block = block if isinstance(block, dict) else {}
        total = _value(block.get(total_field))
        totals[name] = None if total is None else total * factor
        per_day: dict[date, float] = {}
        stats = block.get("day_stats")
        for item in stats if isinstance(stats, list) else []:
            day = _day(item.get("day")) if isinstance(item, dict) else None
            value = _value(item.get(day_field)) if isinstance(item, dict) else None
            if day is not None and value is not None:
                per_day[day] = per_day.get(day, 0.0) + value * factor
        days[name] = per_day
    return Usage(totals, days)


class UsagePull:
    """The usage pull of one app: one request per run."""

    def __init__(self, app: AppKey, clock: Callable[[], float]) -> None:
        self.app, self._clock = app, clock
        self.usage: Usage | None = None

    def cost(self) -> int:
        return 1

    async def run(self, client: ApiClient) -> None:
        today = _utc_day(self._clock())
        params = {
            "start_date": (today - timedelta(days=29)).isoformat(),
            "end_date": today.isoformat(),
        }
        raw = await client.get(
            f"/accounts/{self.app[0]}/realtime/kit/{self.app[1]}/analytics/daywise", params
        )
        self.usage = parse_usage(raw.status, raw.content_type, raw.body)


def usage_families(pulls: Mapping[AppKey, UsagePull], now: float) -> Iterator[Metric]:
    """The four usage gauges of every app whose usage has been read."""
    today = _utc_day(now)
    known = [(app, pull.usage.values(today)) for app, pull in sorted(pulls.items()) if pull.usage]
    for name, doc, *_ in _FAMILIES:
        metric = Metric(name, doc, "gauge")
        for (account_id, app_id), values in known:
            for period in PERIODS:
                labels = {"account_id": account_id, "app_id": app_id, "period": period}
                metric.samples.append(Sample(name, labels, values[name][period]))
        yield metric


# --- webhook registrations ---------------------------------------------------------------------

BASE_EVENTS: Final = ("meeting.started", "meeting.ended")


@dataclass(frozen=True, slots=True)
class Registration:
    url: str
    enabled: bool
    events: frozenset[str]


def parse_registrations(status: int, content_type: str, body: bytes) -> list[Registration]:
    """``GET …/webhooks``: each registration's url, enabled flag and events (unreadable ones are
    left out: they cannot be the one we look for)."""
    if status != 200:
        raise error_for_status(status, error_doc(content_type, body))
    doc = decode_json(content_type, body)
    data = doc.get("data") if isinstance(doc, dict) and doc.get("success") is not False else None
    if not isinstance(data, list):
        raise ApiError("invalid_response", "field data is missing or not a list")
    found = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            continue
        events = item.get("events")
        names = (
            frozenset(e for e in events if isinstance(e, str))
            if isinstance(events, list)
            else frozenset()
        )
        found.append(Registration(item["url"], item.get("enabled") is True, names))
    return found


def missing(registrations: list[Registration], url: str, events: frozenset[str]) -> str | None:
    """What keeps the app from being registered at ``url`` for ``events`` (None: nothing)."""
    want = url.rstrip("/")
    matching = [r for r in registrations if r.url.rstrip("/") == want]
    if not matching:
        return f"no registration for {want}"
    enabled = [r for r in matching if r.enabled]
    if not enabled:
        return f"the registration for {want} is disabled"
    best = max(enabled, key=lambda r: len(r.events & events))
    lacking = sorted(events - best.events)
    return f"the registration for {want} lacks event(s) {', '.join(lacking)}" if lacking else None


class RegistrationPull:
    """The webhook registration check of one app: one request per run; ``registered`` is None
    until an answer came."""

    def __init__(self, app: AppKey, url: str, events: frozenset[str]) -> None:
        self.app, self.url, self.events = app, url, events
        self.registered: bool | None = None
        self._said: str | None = None  # what was last logged as missing

    def cost(self) -> int:
        return 1

    async def run(self, client: ApiClient) -> None:
        raw = await client.get(f"/accounts/{self.app[0]}/realtime/kit/{self.app[1]}/webhooks")
        problem = missing(
            parse_registrations(raw.status, raw.content_type, raw.body), self.url, self.events
        )
        where = f"account_id={self.app[0]} app_id={self.app[1]}"
        if problem != self._said or self.registered is None:
            if problem is not None:
                log.warning("webhooks of %s are not registered as needed: %s", where, problem)
            elif self.registered is False:
                log.info("webhooks of %s are registered again", where)
        self._said, self.registered = problem, problem is None


def registration_families(pulls: Mapping[AppKey, RegistrationPull]) -> Iterator[Metric]:
    metric = Metric(
        "realtimekit_webhook_registered",
        "1 when an enabled webhook registration of the app points at this exporter with every "
        "event it needs, else 0.",
        "gauge",
    )
    for (account_id, app_id), pull in sorted(pulls.items()):
        if pull.registered is not None:
            labels = {"account_id": account_id, "app_id": app_id}
            metric.samples.append(Sample(metric.name, labels, 1.0 if pull.registered else 0.0))
    yield metric


def needed_events(app: App) -> frozenset[str]:
    """The events the exporter needs from an app's registration."""
    events = set(BASE_EVENTS)
    if app.recordings.enabled:
        events.add("recording.statusUpdate")
    if app.livestreams.enabled:
        events.add("livestreaming.statusUpdate")
    return frozenset(events)


class Account:
    """The usage pulls and registration checks of every app that has them; kept across reloads
    for the apps whose settings did not change."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.usage: dict[AppKey, UsagePull] = {}
        self.registrations: dict[AppKey, RegistrationPull] = {}

    def plan(
        self, apps: Iterable[App], public_url: str | None, check_seconds: float
    ) -> list[tuple[AppKey, str, float, Pull]]:
        usage: dict[AppKey, UsagePull] = {}
        registrations: dict[AppKey, RegistrationPull] = {}
        pulls: list[tuple[AppKey, str, float, Pull]] = []
        for app in apps:
            if app.usage.enabled:
                usage[app.key] = self.usage.get(app.key) or UsagePull(app.key, self._clock)
                pulls.append((app.key, "usage", app.usage.interval_seconds, usage[app.key]))
            if public_url is not None and app.webhooks.enabled:
                url = f"{public_url.rstrip('/')}/webhooks/{app.key[0]}/{app.key[1]}"
                old, events = self.registrations.get(app.key), needed_events(app)
                same = old is not None and (old.url, old.events) == (url, events)
                check = old if same and old is not None else RegistrationPull(app.key, url, events)
                registrations[app.key] = check
                pulls.append((app.key, "webhook_registrations", check_seconds, check))
        self.usage, self.registrations = usage, registrations
        return pulls

    def collect(self) -> Iterator[Metric]:
        yield from usage_families(self.usage, self._clock())
        yield from registration_families(self.registrations)
