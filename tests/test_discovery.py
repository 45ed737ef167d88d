"""Discovery: listing an app's live sessions page by page, with the network faked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from exporter.client import ApiClient, make_http_client
from exporter.config import parse_config
from exporter.discovery import Discovery
from exporter.health import Health
from exporter.limiter import RateLimiter
from exporter.model import NO_ACTIVE_SESSION, MeetingKey, Session
from exporter.store import Store
from tests.support.api import NO_SESSION_BODY, TOKEN, reply, sim_config, start_discovery
from tests.support.metrics import value
from tests.support.process import wait_for

ACC, APP = "acc", "app"


def session(meeting: str, live: int = 2, name: str = "Meeting") -> dict[str, Any]:
    return {
        "id": f"s-{meeting}",
        "associated_id": meeting,
        "status": "LIVE",
        "live_participants": live,
        "meeting_display_name": name,
        "started_at": "2026-11-28T07:00:00Z",
    }


def page_body(items: list[dict[str, Any]], start: int, total: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": True, "data": {"sessions": items}}
    if total is not None:
        end = start + len(items) - 1 if items else 0
        body["paging"] = {
            "total_count": total,
            "start_offset": start if items else 0,
            "end_offset": end,
        }
    return body


class FakeApi:
    """Serves ``/sessions`` from a list of live sessions (1-based pages unless ``zero_based``),
    and active-session from ``active``; records every request."""

    def __init__(
        self, live: list[dict[str, Any]], *, paging: bool = True, zero_based: bool = False
    ):
        self.live = live
        self.paging = paging
        self.zero_based = zero_based
        self.requests: list[httpx.Request] = []
        self.active: dict[str, dict[str, Any] | None] = {}
        self.before_page: Callable[[int], None] = lambda page_no: None
        self.fail_page: int | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("/active-session"):
            meeting = request.url.path.split("/")[-2]
            data = self.active.get(meeting)
            if data is None:
                return reply(404, NO_SESSION_BODY)
            return reply(200, {"success": True, "data": data})
        page_no = int(request.url.params["page_no"])
        per_page = int(request.url.params["per_page"])
        assert request.url.params["status"] == "LIVE"
        self.before_page(page_no)
        if page_no == self.fail_page:
            return reply(502, b"<html>bad gateway</html>")
        index = page_no if self.zero_based else max(page_no, 1) - 1
        items = self.live[index * per_page : (index + 1) * per_page]
        total = len(self.live) if self.paging else None
        return reply(200, page_body(items, index * per_page + 1, total))

    def pages(self) -> list[int]:
        return [int(r.url.params["page_no"]) for r in self.requests if "page_no" in r.url.params]

    def confirmations(self) -> list[str]:
        return [
            r.url.path.split("/")[-2]
            for r in self.requests
            if r.url.path.endswith("/active-session")
        ]


def setup(api: FakeApi, discover: dict[str, Any] | None = None, meetings: list[Any] | None = None):
    config = parse_config(
        {
            "poll": {"interval_seconds": 10, "stale_after_seconds": 30},
            "apps": [
                {
                    "account_id": ACC,
                    "app_id": APP,
                    "meetings": meetings or [],
                    "discover": {"enabled": True, "per_page": 3, **(discover or {})},
                }
            ],
        }
    )
    now = [1000.0]
    store = Store()
    health = Health()

    async def make() -> Discovery:
        http = make_http_client(
            timeout_seconds=1, max_connections=4, transport=httpx.MockTransport(api)
        )
        client = ApiClient(
            http, base_url="https://api.test/v4", token=TOKEN, limiter=RateLimiter(10**9, 1)
        )
        return start_discovery(config, client, store=store, health=health, clock=lambda: now[0])

    loop = asyncio.new_event_loop()
    discovery = loop.run_until_complete(make())

    def cycle(advance: float = 10) -> dict[MeetingKey, Any]:
        loop.run_until_complete(discovery.discover_app((ACC, APP)))
        now[0] += advance
        return {k: v for k, v in store.snapshot()[1].items()}

    return health, store, cycle


def key(meeting: str) -> MeetingKey:
    return MeetingKey(ACC, APP, meeting)


def live_meetings(states: dict[MeetingKey, Any]) -> set[str]:
    return {k.meeting_id for k, s in states.items() if isinstance(s.answer, Session) and s.up}


def test_empty_app_is_one_request_and_configured_meetings_show_no_session():
    api = FakeApi([])
    health, _, cycle = setup(api, meetings=[{"id": "conf", "labels": {"team": "a"}}])
    states = cycle()
    assert api.pages() == [1]
    assert states[key("conf")].answer is NO_ACTIVE_SESSION
    assert states[key("conf")].labels == (("team", "a"),)
    stats = health.snapshot().apps[(ACC, APP)]
    assert (stats.up, stats.live_sessions, stats.live_participants, stats.pages) == (True, 0, 0, 1)


def test_exactly_one_full_page_stops_on_end_offset():
    api = FakeApi([session(f"m{i}") for i in range(3)])
    _, _, cycle = setup(api)
    assert live_meetings(cycle()) == {"m0", "m1", "m2"}
    assert api.pages() == [1]


def test_page_boundaries_without_paging_stop_on_a_short_or_empty_page():
    api = FakeApi([session(f"m{i}") for i in range(7)], paging=False)
    _, _, cycle = setup(api)
    assert live_meetings(cycle()) == {f"m{i}" for i in range(7)}
    assert api.pages() == [1, 2, 3]
    api6 = FakeApi([session(f"m{i}") for i in range(6)], paging=False)
    _, _, cycle6 = setup(api6)
    assert len(live_meetings(cycle6())) == 6
    assert api6.pages() == [1, 2, 3]  # the third page comes back empty


def test_zero_based_pages_are_detected_and_nothing_is_missed():
    api = FakeApi([session(f"m{i}") for i in range(7)], zero_based=True)
    _, _, cycle = setup(api)
    assert live_meetings(cycle()) == {f"m{i}" for i in range(7)}
    assert sorted(api.pages()) == [0, 1, 2]


def test_session_starting_between_pages_is_not_doubled():
    api = FakeApi([session(f"m{i}") for i in range(6)])

    def start_one(page_no: int) -> None:
        if page_no == 2:  # a new session sorts first and shifts everything by one
            api.live.insert(0, session("new"))

    api.before_page = start_one
    health, _, cycle = setup(api)
    states = cycle()
    assert live_meetings(states) >= {f"m{i}" for i in range(6)}
    assert health.snapshot().apps[(ACC, APP)].live_participants == 2 * len(live_meetings(states))


def test_session_ending_between_pages_loses_no_meeting():
    api = FakeApi([session(f"m{i}") for i in range(6)])
    _, _, cycle = setup(api)
    assert live_meetings(cycle()) == {f"m{i}" for i in range(6)}

    def end_one(page_no: int) -> None:
        if page_no == 2 and api.live[0]["associated_id"] == "m0":
            del api.live[0]  # m0 ends: m3 moves to page 1, which was already read

    api.before_page = end_one
    api.active = {"m3": session("m3"), "m0": None}
    states = cycle()
    # m0 was live when page 1 was read; m3 slipped from page 2 to page 1 and was not listed,
    # but it was live at the last look, so one active-session call confirms it.
    assert live_meetings(states) == {f"m{i}" for i in range(6)}
    assert api.confirmations() == ["m3"]
    states = cycle()  # next cycle: m0 is not listed any more and is confirmed gone
    assert live_meetings(states) == {"m1", "m2", "m3", "m4", "m5"}
    assert states[key("m0")].answer is NO_ACTIVE_SESSION and states[key("m0")].up
    assert api.confirmations() == ["m3", "m0"]


def test_unlisted_discovered_meeting_goes_to_zero_then_vanishes_after_stale():
    api = FakeApi([session("m0"), session("m1")])
    _, _, cycle = setup(api)
    cycle()
    api.live = [session("m1")]
    states = cycle()
    assert states[key("m0")].answer is NO_ACTIVE_SESSION
    assert api.confirmations() == ["m0"]
    for _ in range(3):
        states = cycle()
    assert key("m0") not in states  # unseen for more than stale_after (30 s)
    assert key("m1") in states
    assert api.confirmations() == ["m0"]  # confirmed once, not every cycle


def test_failing_page_fails_the_cycle_and_keeps_last_good_values():
    api = FakeApi([session(f"m{i}", live=i) for i in range(5)])
    health, _store, cycle = setup(api, meetings=["conf"])
    cycle()
    api.fail_page = 2
    states = cycle()
    for k in (key("m0"), key("m4"), key("conf")):
        assert states[k].up is False
        assert states[k].errors[5] == 1  # REASONS[5] == "http_5xx"
    assert states[key("m4")].fresh_answer(1015, 30).live_participants == 4  # kept until stale
    stats = health.snapshot().apps[(ACC, APP)]
    assert stats.up is False and stats.errors == {"http_5xx": 1}


def test_filters_cap_and_configured_meetings():
    names = {
        "m0": "Sales weekly",
        "m1": "Sales daily",
        "m2": "Eng sync",
        "m3": "Sales QBR",
        "m4": "Sales x",
    }
    api = FakeApi([session(m, name=n) for m, n in names.items()] + [session("conf", live=9)])
    health, _, cycle = setup(
        api,
        discover={
            "name_regex": "^Sales",
            "exclude": ["m1"],
            "max_meetings": 2,
            "labels": {"source": "discovered"},
        },
        meetings=[{"id": "conf", "labels": {"team": "ops"}}, "idle"],
    )
    states = cycle()
    discovered = {k.meeting_id for k in states} - {"conf", "idle"}
    assert discovered == {"m0", "m3"}  # m2 fails the regex, m1 is excluded, m4 is over the cap
    assert states[key("m0")].labels == (("source", "discovered"),)
    assert states[key("conf")].answer.live_participants == 9  # configured: answered by the list
    assert states[key("conf")].labels == (("team", "ops"),)
    assert states[key("idle")].answer is NO_ACTIVE_SESSION
    stats = health.snapshot().apps[(ACC, APP)]
    assert stats.dropped == 1
    assert stats.live_sessions == 6 and stats.live_participants == 5 * 2 + 9  # all listed
    assert api.confirmations() == []  # nothing needed an extra request


def test_include_list_limits_discovery():
    api = FakeApi([session(f"m{i}") for i in range(4)])
    _, _, cycle = setup(api, discover={"include": ["m1", "m3", "other"]})
    assert set(k.meeting_id for k in cycle()) == {"m1", "m3"}


# --- the real exporter process against the simulator --------------------------------------------


def test_discovery_end_to_end(start_exporter):
    from exporter.simulator import Simulator

    sim = Simulator(token=TOKEN, meetings=25, auto=False, seed=5)
    sim.start("127.0.0.1", 0)
    try:
        live = sim.meeting_ids[:12]
        for i, meeting in enumerate(live):
            sim.set_participants(meeting, i + 1)
        idle = sim.meeting_ids[20]
        config = sim_config(
            sim, meetings=[{"id": idle, "labels": {"team": "x"}}], stale_after_seconds=4
        )
        config["apps"][0]["discover"] = {"enabled": True, "per_page": 5, "labels": {"source": "d"}}
        exporter = start_exporter(config)

        def exported() -> dict[str, float]:
            samples = exporter.scrape()
            return {
                dict(labels)["meeting_id"]: v
                for (name, labels), v in samples.items()
                if name == "realtimekit_session_live_participants"
            }

        wait_for(lambda: exported() == {**{m: i + 1 for i, m in enumerate(live)}, idle: 0})
        samples = exporter.scrape()
        assert value(samples, "realtimekit_app_live_sessions") == 12
        assert value(samples, "realtimekit_app_live_participants") == sum(range(1, 13))
        assert value(samples, "realtimekit_discovery_up") == 1
        assert value(samples, "realtimekit_up", meeting_id=live[0], source="d") == 1
        assert value(samples, "realtimekit_up", meeting_id=idle, team="x") == 1

        # A handful of requests per cycle, not one per meeting: 12 live at 5 per page = 3 pages.
        before = sim.request_count()
        pages_before = value(samples, "realtimekit_discovery_pages_total")
        wait_for(
            lambda: (
                value(exporter.scrape(), "realtimekit_discovery_pages_total") >= pages_before + 9
            )
        )
        assert sim.request_count() - before <= 3 * 4  # at most a fourth cycle started meanwhile
        assert all("/sessions" in path for _, path, _ in sim.request_log()[-9:])

        # A session ends: confirmed with one call, shown as no session, then gone after stale_after.
        sim.clear_session(live[0])
        wait_for(lambda: exported().get(live[0]) == 0)
        assert value(exporter.scrape(), "realtimekit_session_active", meeting_id=live[0]) == 0
        wait_for(lambda: live[0] not in exported(), timeout=20)
        assert idle in exported()  # listed meetings stay, whatever happens
        assert TOKEN not in exporter.log()
    finally:
        sim.stop()


def test_an_ended_session_is_confirmed_once_not_every_cycle():
    api = FakeApi([session("m0"), session("m1")])
    _, _, cycle = setup(api, meetings=["m0"])
    cycle()
    api.live = [session("m1")]
    api.active = {"m0": {**session("m0", live=0), "status": "ENDED"}}
    states = cycle()
    assert states[key("m0")].answer.status == "ENDED"  # what the confirmation said
    states = cycle()
    states = cycle()
    assert api.confirmations() == ["m0"]
    assert states[key("m0")].answer is NO_ACTIVE_SESSION


# --- the planner and the store batch at 100,000 sessions (issue 12) -----------------------------


def test_a_cycle_of_100k_sessions_is_one_store_write_and_linear():
    from exporter.config import Discover
    from exporter.discovery import plan_cycle
    from exporter.paging import Listing

    n = 100_000
    sessions = [
        Session(id=f"s{i}", status="LIVE", live_participants=1.0, associated_id=f"m{i}")
        for i in range(n)
    ]
    rules = Discover(enabled=True, max_meetings=n)
    store = Store()
    store.set_targets({})
    seen: dict[MeetingKey, float] = {}
    for cycle, now in enumerate((1000.0, 1030.0)):
        listing = Listing(sessions[cycle:], n - cycle, 1000, True)  # m0 ended before cycle 2
        plan = plan_cycle(
            rules,
            (ACC, APP),
            listing,
            configured=frozenset(),
            seen=seen,
            last_live=store.last_live(seen),
            now=now,
            stale_after=90,
        )
        version, writes = store.snapshot()[0], store.writes
        records = [(k, s, 0.1, now) for k, s in plan.record.items()]
        records += [(k, NO_ACTIVE_SESSION, 0.1, now) for k in plan.idle]
        store.merge(add=plan.add, record=records, remove=plan.expire)
        assert store.writes == writes + 1  # the whole cycle is one write...
        assert store.snapshot()[0] == version + 1  # ...and one version bump
        seen = plan.seen
    states = store.snapshot()[1]
    assert len(states) == n and len(plan.add) == 0  # cycle 2 adds nothing new
    assert plan.confirm == [key("m0")]  # was live, not listed: one call, not n
    assert sum(isinstance(s.answer, Session) for s in states.values()) == n


def test_a_store_batch_keeps_the_state_objects_it_does_not_name():
    store = Store()
    keys = [key(f"m{i}") for i in range(3)]
    store.set_targets(dict.fromkeys(keys, ()))
    before = store.snapshot()[1]
    store.merge(record=[(keys[0], NO_ACTIVE_SESSION, 0.1, 1000.0)])
    after = store.snapshot()[1]
    assert after[keys[0]] is not before[keys[0]]
    assert after[keys[1]] is before[keys[1]] and after[keys[2]] is before[keys[2]]  # fragments kept


def test_an_incomplete_listing_asks_about_discovered_meetings_and_idles_configured_ones():
    from exporter.config import Discover
    from exporter.discovery import plan_cycle
    from exporter.paging import Listing

    configured = frozenset(key(f"c{i}") for i in range(500))  # idle at the last look
    seen = {key("d0"): 990.0, key("d1"): 990.0}  # discovered earlier, not listed now
    listing = Listing([], 3, 1, False)  # total_count 3, nothing read: incomplete
    plan = plan_cycle(
        Discover(enabled=True),
        (ACC, APP),
        listing,
        configured=configured,
        seen=seen,
        last_live=set(),
        now=1000.0,
        stale_after=30,
    )
    assert set(plan.idle) == configured  # every configured one gets a value, none waits
    assert plan.confirm == [key("d0"), key("d1")]  # asked about, not dropped
    assert plan.expire == []
