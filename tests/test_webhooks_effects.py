"""What accepted webhook events do, through the narrow ports the runtime gives them, and how a
health flip re-plans one app alone (no sockets: the store and poller are real, the network is
never touched)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.client import ApiClient, make_http_client
from exporter.config import WebhooksConfig
from exporter.events import Event, EventEffects, EventPorts
from exporter.health import Health
from exporter.logs import FailureLog
from exporter.model import AppKey, MeetingKey, Session
from exporter.poller import Poller, PollPlan, job_id
from exporter.store import Store
from exporter.webhook_layer import Webhooks
from tests.support.api import TOKEN
from tests.support.clock import FakeTime

APP: AppKey = ("acc", "app")
OTHER: AppKey = ("acc", "other")


def client() -> ApiClient:
    http = make_http_client(
        timeout_seconds=1,
        max_connections=1,
        transport=httpx.MockTransport(lambda r: httpx.Response(500)),
    )
    return ApiClient(http, base_url="https://api.test/v4", token=TOKEN)


class Ports:
    """Fake ports that record every call; the store behind them is real."""

    def __init__(self, store: Store, *, adopt: bool = True) -> None:
        self.store = store
        self.client = client()
        self.calls: list[tuple[str, Any]] = []
        self._adopt = adopt

    def adopt(self, key: MeetingKey, title: str | None) -> bool:
        self.calls.append(("adopt", key))
        if self._adopt:
            self.store.merge(add={key: ()})
        return self._adopt

    def refresh(self, key: MeetingKey, client: ApiClient) -> bool:
        self.calls.append(("refresh", key))
        return True

    def ports(self) -> EventPorts:
        return EventPorts(
            client_of=lambda app: self.client if app == APP else None,
            state_of=self.store.get,
            push=self.store.push,
            adopt=self.adopt,
            refresh=self.refresh,
        )


def started(meeting: str = "m1", session: str = "s1") -> Event:
    return Event("meeting.started", meeting, session_id=session, title="Standup", status="LIVE")


def test_a_start_adopts_pushes_live_with_the_injected_clock_and_asks_one_refresh() -> None:
    store, t = Store(), FakeTime()
    ports = Ports(store)
    refreshed: list[AppKey] = []
    effects = EventEffects(ports.ports(), count_refresh=refreshed.append, clock=t.wall)
    effects.handle(APP, started())
    key = MeetingKey(*APP, "m1")
    state = store.get(key)
    assert state is not None and isinstance(state.answer, Session)
    assert (state.answer.status, state.answer.id) == ("LIVE", "s1")
    assert state.answer.meeting_display_name == "Standup"
    assert ports.calls == [("adopt", key), ("refresh", key)]
    assert refreshed == [APP]
    assert state.fresh_answer(t.wall(), 1.0) is not None  # stamped with the injected clock


def test_an_end_shows_ended_with_nobody_and_asks_no_refresh() -> None:
    store, t = Store(), FakeTime()
    key = MeetingKey(*APP, "m1")
    store.set_targets({key: ()})
    ports = Ports(store)
    effects = EventEffects(ports.ports(), count_refresh=lambda app: None, clock=t.wall)
    effects.handle(APP, started())
    effects.handle(APP, Event("meeting.ended", "m1", session_id="s1"))
    state = store.get(key)
    assert state is not None and isinstance(state.answer, Session)
    assert (state.answer.status, state.answer.live_participants) == ("ENDED", 0.0)
    assert [c for c, _ in ports.calls] == ["refresh"]  # only the start's; no adoption needed


def test_events_of_unknown_apps_and_meetings_change_nothing() -> None:
    store = Store()
    ports = Ports(store, adopt=False)
    effects = EventEffects(ports.ports(), count_refresh=lambda app: None)
    effects.handle(OTHER, started())  # no client: not an app polled here
    effects.handle(APP, Event("meeting.participantJoined", "m9"))  # not exported: no adoption
    effects.handle(APP, started("m2"))  # adoption refused (not discovering, or over the cap)
    assert store.size() == 0
    assert ports.calls == [("adopt", MeetingKey(*APP, "m2"))]


def test_the_health_watch_reports_only_the_apps_that_flipped() -> None:
    reports: list[tuple[AppKey, bool]] = []
    live: set[AppKey] = set()
    failing: set[AppKey] = set()
    webhooks = Webhooks(
        WebhooksConfig(listen_address="127.0.0.1:0", reconcile_interval_seconds=60),
        ports=Ports(Store()).ports(),
        apps=lambda: [APP, OTHER],
        summary=lambda: (live, failing),
        on_health=lambda app, healthy: reports.append((app, healthy)),
    )
    webhooks.check()
    assert reports == []  # nobody has had an event yet
    webhooks.health.accepted(APP)
    webhooks.check()
    webhooks.check()  # unchanged: not reported again
    assert reports == [(APP, True)]
    webhooks.health.accepted(OTHER)
    failing.add(APP)  # a failing meeting needs its normal polls
    webhooks.check()
    assert reports == [(APP, True), (APP, False), (OTHER, True)]


def test_retime_replaces_only_the_jobs_of_the_app_whose_interval_changed() -> None:
    t, store = FakeTime(), Store()
    api = client()
    mine = [MeetingKey(*APP, f"m{i}") for i in range(3)]
    theirs = [MeetingKey(*OTHER, f"o{i}") for i in range(3)]
    store.set_targets(dict.fromkeys(mine + theirs, ()))

    async def go() -> None:
        scheduler = AsyncIOScheduler()
        scheduler.start(paused=True)
        poller = Poller(
            scheduler=scheduler,
            store=store,
            health=Health(),
            failures=FailureLog(clock=t.clock),
            clock=t.clock,
        )
        poller.schedule(PollPlan(dict.fromkeys(mine + theirs, api), 10, 80, asyncio.Semaphore(2)))
        before = {j.id: (j.next_run_time, j.trigger.interval_length) for j in scheduler.get_jobs()}
        poller._backoff_until[theirs[0]] = t.now + 100  # a backed-off meeting of the other app
        poller.retime({APP: 300.0})
        after = {j.id: (j.next_run_time, j.trigger.interval_length) for j in scheduler.get_jobs()}
        assert set(after) == set(before)
        for key in theirs:  # untouched: same phase, same interval
            assert after[job_id(key)] == before[job_id(key)]
        for key in mine:  # slower now, and the next poll is never later than it was due
            assert after[job_id(key)][1] == 300.0
            assert after[job_id(key)][0] <= before[job_id(key)][0] + timedelta(milliseconds=60)
        assert poller._backoff_until[theirs[0]] == t.now + 100  # backoff kept
        scheduler.shutdown(wait=False)
        await api._http.aclose()

    asyncio.run(go())


def test_events_about_another_session_never_replace_the_current_one() -> None:
    from exporter.events import implied_answer

    live = Session(id="s2", status="LIVE", live_participants=4.0, started_at=2000.0)
    late_end = Event("meeting.ended", "m1", session_id="s1")
    assert implied_answer(late_end, live) is None
    late_start = Event("meeting.started", "m1", session_id="s1", started_at=1000.0)
    assert implied_answer(late_start, live) is None
    newer = implied_answer(Event("meeting.started", "m1", session_id="s3", started_at=3000.0), live)
    assert isinstance(newer, Session) and (newer.id, newer.live_participants) == ("s3", 0.0)
    own_end = implied_answer(Event("meeting.ended", "m1", session_id="s2"), live)
    assert isinstance(own_end, Session) and own_end.status == "ENDED"


def test_titles_from_events_are_cut_like_api_titles() -> None:
    import json

    from exporter.events import parse_event
    from exporter.model import MAX_LABEL_CHARS, TRUNCATED

    body = json.dumps(
        {"event": "meeting.started", "meeting": {"id": "m1", "title": "x" * 900_000}}
    ).encode()
    title = parse_event(body).title
    assert title is not None and len(title) == MAX_LABEL_CHARS + len(TRUNCATED)
    assert title.endswith(TRUNCATED)


def test_another_shards_app_is_answered_200_and_forwarded_nowhere() -> None:
    import io

    from exporter.webhooks import KeySource, WebhookReceiver, WebhookStats

    forwarded: list[object] = []
    stats = WebhookStats()
    receiver = WebhookReceiver(
        keys=KeySource(),
        apps=lambda: [APP],
        elsewhere=lambda: [OTHER],
        on_event=lambda app, event: forwarded.append(event),
        stats=stats,
    )
    answers: list[str] = []
    for path in ("/webhooks/acc/other", "/webhooks/acc/nobody"):
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": path,
            "CONTENT_LENGTH": "2",
            "wsgi.input": io.BytesIO(b"{}"),
        }
        receiver(environ, lambda status, headers: answers.append(status))
    assert answers == ["200 OK", "404 Not Found"]
    assert forwarded == []
    assert stats.snapshot().requests == {("acc", "nobody", "unknown_app"): 1}


def test_the_deduper_knows_a_body_under_any_delivery_id() -> None:
    from exporter.webhooks import Deduper

    dedup = Deduper(max_ids=4, clock=FakeTime())
    assert not dedup.seen_before(b"body", "u1")
    assert dedup.seen_before(b"body", "u2")  # a replay with a new id
    assert dedup.seen_before(b"other", "u1")  # a retry re-sent with its id
    assert not dedup.seen_before(b"third")
    assert len(dedup) <= 4  # bounded
