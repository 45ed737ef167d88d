"""Discovery: watch whole apps by listing their live sessions, one request per page.

An app with ``discover.enabled`` gets one job instead of one per meeting. Each cycle lists the
app's live sessions (``GET …/sessions?status=LIVE``, :meth:`ApiClient.list_live_sessions`), and
:func:`plan_cycle` — a pure function of the listing, what was seen before, the filters and the
clock — decides what to do with every meeting of the app:

- listed meetings (configured ones, and discovered ones within ``max_meetings``) are recorded
  from the listing, with no request of their own; the rest of the listed ones are dropped
  (counted);
- a meeting that is not listed but may still be live — it was live at the last look (it may have
  ended, or slipped between two pages while others started or ended), its session in the listing
  was malformed, or it is a discovered one and the listing fell short of ``total_count`` — is
  *confirmed* with one active-session call, at most :data:`MAX_CONFIRMATIONS` per cycle;
- any other unlisted meeting is idle (``session_active 0``); a discovered meeting unlisted for
  ``stale_after`` seconds stops being exported.

:class:`Discovery` runs the listing and applies the plan as one store batch; planning and
building the batch run off the event loop, so polls and scrapes go on during a cycle of any size.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from exporter.client import ApiClient
from exporter.config import App, Discover
from exporter.errors import ApiError
from exporter.health import AppHealth, bump
from exporter.logs import where
from exporter.model import NO_ACTIVE_SESSION, SAFE_ID, AppKey, MeetingKey, Session, active_rank
from exporter.paging import Listing
from exporter.poller import Jobs, Outcome, add_job, fetch, same_interval
from exporter.store import Labels, Recorded

log = logging.getLogger(__name__)

JOB_PREFIX: Final = "discover:"
#: At most this many unlisted meetings are confirmed per app and cycle.
MAX_CONFIRMATIONS: Final = 100


@dataclass(frozen=True, slots=True)
class Plan:
    """What one listing means for every meeting of an app."""

    record: dict[MeetingKey, Session]  # listed and exported: record this session
    add: dict[MeetingKey, Labels]  # discovered in this cycle: start exporting
    confirm: list[MeetingKey]  # ask with one active-session call each
    idle: list[MeetingKey]  # record "no active session"
    expire: list[MeetingKey]  # discovered meetings unlisted for too long: stop exporting
    seen: dict[MeetingKey, float]  # discovered meetings: when last listed
    dropped: int  # listed, not exported: over max_meetings


def plan_cycle(
    rules: Discover,
    app_key: AppKey,
    listing: Listing,
    *,
    configured: Collection[MeetingKey],
    seen: Mapping[MeetingKey, float],
    last_live: Collection[MeetingKey],
    now: float,
    stale_after: float,
    max_confirmations: int = MAX_CONFIRMATIONS,
) -> Plan:
    """Plan a cycle. O(sessions + known meetings): every membership test is a set or dict."""
    listed = _by_meeting(app_key, listing.sessions)
    accepted, dropped = _accept(rules, listed, configured, seen)
    record = {k: s for k, s in listed.items() if k in accepted or k in configured}
    labels = tuple(sorted(rules.labels.items()))
    new_seen = {**seen, **dict.fromkeys(accepted, now)}
    suspects = {MeetingKey(*app_key, bad.meeting_id) for bad in listing.invalid if bad.meeting_id}
    urgent, maybe, idle = [], [], []
    for key in dict.fromkeys([*configured, *seen]):
        if key in record:
            continue
        if key in suspects or key in last_live:
            urgent.append(key)
        elif not listing.complete and key in seen:
            maybe.append(key)  # a short listing may have missed it: ask rather than drop it
        else:
            idle.append(key)  # not live at the last look: idle (a wrong guess lasts one cycle)
    confirm = (urgent + maybe)[:max_confirmations]
    if listing.complete:  # over the cap: believe the listing
        idle.extend(urgent[max_confirmations:])
    asked = set(confirm)
    expire = [k for k, t in new_seen.items() if now - t > stale_after and k not in record]
    expire = [k for k in expire if k not in asked]  # decided after the call
    return Plan(
        record=record,
        add={k: labels for k in accepted if k not in seen},
        confirm=confirm,
        idle=idle,
        expire=expire,
        seen={k: t for k, t in new_seen.items() if k not in set(expire)},
        dropped=dropped,
    )


def _by_meeting(app_key: AppKey, sessions: Iterable[Session]) -> dict[MeetingKey, Session]:
    """Listed sessions by meeting; of several, the one its active-session endpoint would
    answer (:func:`~exporter.model.active_rank`)."""
    listed: dict[MeetingKey, Session] = {}
    for session in sessions:
        meeting = session.associated_id
        if meeting is None or not SAFE_ID.fullmatch(meeting):
            continue  # cannot be exported (or safely asked about) under that id
        key = MeetingKey(*app_key, meeting)
        other = listed.get(key)
        if other is None or active_rank(session) >= active_rank(other):
            listed[key] = session
    return listed


def live_totals(listing: Listing) -> tuple[int, float]:
    """``(sessions, participants)`` live in an app, each meeting counted once with the session
    exported for it: the API's ``total_count`` (else the sessions read) less the extra sessions
    of meetings listed more than once, and the participants of one session per meeting."""
    best: dict[str, Session] = {}
    alone: list[Session] = []  # no meeting id: each its own
    for session in listing.sessions:
        meeting = session.associated_id
        if meeting is None:
            alone.append(session)
        elif meeting not in best or active_rank(session) >= active_rank(best[meeting]):
            best[meeting] = session
    extra = len(listing.sessions) - len(best) - len(alone)
    reported = listing.total_count if listing.total_count is not None else len(listing.sessions)
    live = sum(s.live_participants for s in [*best.values(), *alone])
    return max(0, reported - extra), live


def _accept(
    rules: Discover,
    listed: Mapping[MeetingKey, Session],
    configured: Collection[MeetingKey],
    seen: Mapping[MeetingKey, float],
) -> tuple[set[MeetingKey], int]:
    """The listed meetings to export as discovered ones (already exported ones keep their
    place under ``max_meetings``), and how many the cap dropped."""
    candidates = [
        k
        for k, s in listed.items()
        if k not in configured and admits(rules, k.meeting_id, s.meeting_display_name)
    ]
    known = [k for k in candidates if k in seen]
    fresh = [k for k in candidates if k not in seen]
    room = max(0, rules.max_meetings - sum(1 for k in seen if k not in listed))
    accepted = (known + fresh)[:room]
    return set(accepted), len(candidates) - len(accepted)


def admits(rules: Discover, meeting_id: str, name: str | None) -> bool:
    """Whether ``rules`` let discovery export this one meeting: the one rule of a listing
    (:func:`_accept`) and of a webhook event, which must not export what a listing would not."""
    if (rules.include and meeting_id not in rules.include) or meeting_id in rules.exclude:
        return False
    return rules.name_regex is None or re.search(rules.name_regex, name or "") is not None


@dataclass(frozen=True)
class DiscoveryPlan:
    """The discovering apps, with the client (token) each uses, and the cycle settings."""

    apps: Mapping[AppKey, tuple[App, ApiClient]]
    interval: float
    stale_after: float
    slots: asyncio.Semaphore  # requests in flight at once, shared with the poller
    intervals: Mapping[AppKey, float] = field(default_factory=dict)  # apps polled otherwise

    def interval_of(self, app: AppKey) -> float:
        """An app's cycle interval (slower while its webhooks are healthy)."""
        return self.intervals.get(app, self.interval)


class Discovery(Jobs):
    """Runs one discovery job per app of a :class:`DiscoveryPlan`."""

    def __init__(self, **parts: Any) -> None:
        super().__init__(**parts)
        self._plan = DiscoveryPlan({}, 30.0, 90.0, asyncio.Semaphore(1))
        self._seen: dict[AppKey, dict[MeetingKey, float]] = {}  # discovered: when last listed

    def schedule(self, plan: DiscoveryPlan) -> dict[MeetingKey, Labels]:
        """Run these apps' jobs from now on; returns the discovered meetings that stay exported
        (with their labels) for the store's targets. An app that stays keeps its job and phase
        and its discovered meetings."""
        self._plan = plan
        self._seen = {k: v for k, v in self._seen.items() if k in plan.apps}
        interval_of = {app: plan.interval_of(app) for app in plan.apps}
        self._health.set_discovering(interval_of)
        wanted = {f"{JOB_PREFIX}{a}/{b}": (a, b) for a, b in plan.apps}
        for job in self._scheduler.get_jobs():
            if job.id.startswith(JOB_PREFIX) and (
                job.id not in wanted
                or not same_interval(job.trigger.interval_length, interval_of[wanted[job.id]])
            ):
                job.remove()
        existing = {job.id for job in self._scheduler.get_jobs()}
        for i, (job_id, app_key) in enumerate(wanted.items()):
            if job_id not in existing:
                every = interval_of[app_key]
                delay = every * i / len(wanted)
                add_job(self._scheduler, job_id, self.discover_app, app_key, every, delay)
        kept: dict[MeetingKey, Labels] = {}
        for app_key, seen in self._seen.items():
            labels = tuple(sorted(plan.apps[app_key][0].discover.labels.items()))
            kept.update(dict.fromkeys(seen, labels))
        return kept

    def adopt(self, keys: Iterable[MeetingKey]) -> set[MeetingKey]:
        """Export meetings of discovering apps before their next listing (a webhook said one
        started; a new HA leader takes over the old leader's): they are discovered now and
        expire like any other. Returns those adopted: not those of apps that do not discover,
        nor those over ``max_meetings``. One store write for all."""
        now, added = self._clock(), {}
        for key in keys:
            target = self._plan.apps.get(key.app)
            if target is None:
                continue
            rules = target[0].discover
            seen = self._seen.setdefault(key.app, {})
            if key not in seen and len(seen) >= rules.max_meetings:
                continue
            seen[key] = now
            added[key] = tuple(sorted(rules.labels.items()))
        if added:
            self._store.merge(add=added)
        return set(added)

    async def discover_app(self, app_key: AppKey) -> None:
        """One discovery cycle of an app. Never raises."""
        try:
            await self._cycle(app_key)
        except asyncio.CancelledError:  # shutdown cancels what is still running: not an error
            log.debug("discovery of app %s/%s cancelled", *app_key)

    async def _cycle(self, app_key: AppKey) -> None:
        plan = self._plan
        target = plan.apps.get(app_key)
        if target is None:  # removed by a reload while the job was due
            return
        app, client = target
        started = self._timer()
        configured = frozenset(MeetingKey(*app_key, m.id) for m in app.meetings)
        rules = app.discover
        # Pages as the server really serves them (it may cap them below per_page).
        page_size = min(client.page_size(*app_key) or rules.per_page, rules.per_page)
        max_pages = math.ceil((rules.max_meetings + len(configured)) / page_size) + 2
        try:
            async with plan.slots:
                listing = await client.list_live_sessions(
                    *app_key, per_page=rules.per_page, max_pages=max_pages
                )
        except ApiError as err:
            self._failed(app, err, self._timer() - started)
            return
        except Exception:  # a bug, not the API
            log.exception("unexpected error discovering app %s/%s", *app_key)
            self._failed(app, None, self._timer() - started)
            return
        listed_at, seen = self._clock(), self._seen.get(app_key, {})
        last_live = self._store.last_live([*configured, *seen])
        cycle = await asyncio.to_thread(
            self._plan_and_record,
            app, listing, configured, seen, last_live, listed_at, self._timer() - started,
        )  # fmt: skip
        self._seen[app_key] = cycle.seen
        confirmed = await self._confirm(app_key, client, cycle, plan.slots, started)
        self._report(app, listing, max_pages, cycle, confirmed, self._timer() - started)

    def _plan_and_record(
        self,
        app: App,
        listing: Listing,
        configured: frozenset[MeetingKey],
        seen: dict[MeetingKey, float],
        last_live: set[MeetingKey],
        now: float,
        duration: float,
    ) -> Plan:
        """Plan the cycle and write what the listing says in one store batch (off the loop)."""
        cycle = plan_cycle(
            app.discover,
            app.key,
            listing,
            configured=configured,
            seen=seen,
            last_live=last_live,
            now=now,
            stale_after=self._plan.stale_after,
        )
        records: list[Recorded] = [(k, s, duration, now) for k, s in cycle.record.items()]
        records += [(k, NO_ACTIVE_SESSION, duration, now) for k in cycle.idle]
        self._store.merge(add=cycle.add, record=records, remove=cycle.expire)
        return cycle

    async def _confirm(
        self,
        app_key: AppKey,
        client: ApiClient,
        cycle: Plan,
        slots: asyncio.Semaphore,
        started: float,
    ) -> int:
        """Ask about each meeting the plan could not decide; record the answers in one batch."""
        outcomes: list[tuple[MeetingKey, Outcome]] = []
        for key in cycle.confirm:
            async with slots:
                outcomes.append((key, await fetch(client, key)))
        if not outcomes:
            self._failures.recovered([*cycle.record, *cycle.idle])
            return 0
        now, duration = self._clock(), self._timer() - started
        seen = self._seen.get(app_key, {})
        expire = []
        for key, outcome in outcomes:
            if key not in seen:
                continue
            if isinstance(outcome, Session):
                seen[key] = now
            elif now - seen[key] > self._plan.stale_after:
                expire.append(key)
                del seen[key]
        self._store.merge(record=[(k, o, duration, now) for k, o in outcomes], remove=expire)
        self._failures.recovered([*cycle.record, *cycle.idle])
        for key, outcome in outcomes:
            self._failures.outcome(key, where(key), outcome)
        return len(outcomes)

    def _report(
        self,
        app: App,
        listing: Listing,
        max_pages: int,
        cycle: Plan,
        confirmations: int,
        duration: float,
    ) -> None:
        """The cycle's numbers for the health snapshot, and what is worth a log line."""
        app_key = app.key
        self._failures.outcome(app_key, f"account_id={app_key[0]} app_id={app_key[1]}", True)
        short = not listing.complete and listing.pages < max_pages  # not just the page bound
        if short:
            log.warning(
                "discovery listing of account_id=%s app_id=%s incomplete: %d unique session(s) "
                "read, the API reported total_count=%s; unlisted meetings are confirmed one by "
                "one instead of taken as idle",
                *app_key, len(listing.sessions), listing.total_count,
            )  # fmt: skip
        for bad in listing.invalid:
            log.warning(
                "discovery of account_id=%s app_id=%s skipped a malformed session "
                "(page %d, index %d, meeting_id=%s): %s",
                *app_key, bad.page, bad.index, bad.meeting_id or "unknown", bad.message,
            )  # fmt: skip
        every = self._plan.interval_of(app_key)
        if duration > every:
            log.warning(
                "discovery cycle of account_id=%s app_id=%s took %.1fs, longer than its "
                "interval of %gs (%d session(s), %d page(s))",
                *app_key, duration, every, len(listing.sessions), listing.pages,
            )  # fmt: skip
        total, live = live_totals(listing)

        def change(old: AppHealth) -> AppHealth:
            new = replace(old, up=True, live_sessions=total, live_participants=live)
            return bump(
                replace(new, duration=duration),
                pages=listing.pages,
                confirmations=confirmations,
                dropped=cycle.dropped,
                incomplete=int(short),
                invalid_sessions=len(listing.invalid),
            )

        self._health.update_app(app_key, change)

    def _failed(self, app: App, err: ApiError | None, duration: float) -> None:
        """The cycle failed: every meeting of the app is down; last good values stay until
        they are stale, like for a failed per-meeting poll."""
        now = self._clock()
        keys = {MeetingKey(*app.key, m.id) for m in app.meetings} | set(self._seen.get(app.key, {}))
        self._store.merge(record=[(k, err, duration, now) for k in keys])
        self._failures.outcome(app.key, f"account_id={app.key[0]} app_id={app.key[1]}", err)

        def change(old: AppHealth) -> AppHealth:
            errors = dict(old.errors)
            if err is not None:
                errors[err.reason] = errors.get(err.reason, 0) + 1
            return replace(old, up=False, duration=duration, errors=errors)

        self._health.update_app(app.key, change)
