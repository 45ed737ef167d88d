"""Several live sessions of one meeting in a listing (issue 22 item 4): sessions have a ``type``
(``meeting``, ``livestream``, ``participant``) and a listing may hold more than one per meeting.
The one exported is the one the active-session endpoint would answer — the ``meeting``-type one,
then the newest — and ``realtimekit_app_live_sessions`` / ``_participants`` count each meeting
once. Discovery runs for real over a faked transport, and the app numbers are read from a real
scrape of the collector."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, generate_latest

from exporter.client import ApiClient, make_http_client
from exporter.collector import ExporterCollector
from exporter.config import parse_config
from exporter.health import Health
from exporter.limiter import RateLimiter
from exporter.model import Session, active_rank, parse_session
from exporter.store import Store
from tests.support.api import TOKEN, reply, start_discovery

ACC, APP = "acc", "app"


def session(
    sid: str, meeting: str | None, kind: str | None, live: int, **times: str
) -> dict[str, Any]:
    data: dict[str, Any] = {"id": sid, "status": "LIVE", "live_participants": live, **times}
    if meeting is not None:
        data["associated_id"] = meeting
    if kind is not None:
        data["type"] = kind
    return data


LISTING = [
    # m1: a livestream started after the meeting, and a participant-type session: the meeting wins
    session("m1-meeting", "m1", "meeting", 3, started_at="2026-11-28T07:00:00Z"),
    session("m1-stream", "m1", "livestream", 50, started_at="2026-11-28T07:05:00Z"),
    session("m1-peer", "m1", "participant", 1, started_at="2026-11-28T07:06:00Z"),
    # m2: two meeting-type sessions: the newest wins (one has only created_at)
    session("m2-old", "m2", "meeting", 4, started_at="2026-11-28T06:00:00Z"),
    session("m2-new", "m2", "meeting", 6, created_at="2026-11-28T06:30:00Z"),
    # m3: one session without a type: exported as always
    session("m3-only", "m3", None, 2, started_at="2026-11-28T05:00:00Z"),
]


def run_cycle(listing: list[dict[str, Any]], total: int | None) -> tuple[Store, str]:
    """One discovery cycle over ``listing`` (one page); the store and a scrape of /metrics."""
    config = parse_config(
        {
            "poll": {"interval_seconds": 10, "stale_after_seconds": 30},
            "apps": [{"account_id": ACC, "app_id": APP, "discover": {"enabled": True}}],
        }
    )

    def api(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/sessions"), request.url.path
        body: dict[str, Any] = {"success": True, "data": {"sessions": listing}}
        if total is not None:
            body["paging"] = {"total_count": total, "start_offset": 1, "end_offset": len(listing)}
        return reply(200, body)

    store, health = Store(), Health()

    async def run() -> None:
        transport = httpx.MockTransport(api)
        http = make_http_client(timeout_seconds=1, max_connections=4, transport=transport)
        client = ApiClient(
            http, base_url="https://api.test/v4", token=TOKEN, limiter=RateLimiter(10**9, 1)
        )
        discovery = start_discovery(config, client, store=store, health=health, clock=lambda: 1e3)
        await discovery.discover_app((ACC, APP))
        await http.aclose()

    asyncio.run(run())
    registry = CollectorRegistry()
    registry.register(ExporterCollector(health.snapshot))
    return store, generate_latest(registry).decode()


def sample(text: str, name: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(name + "{")]
    assert len(lines) == 1, lines
    return float(lines[0].rsplit(" ", 1)[1])


def exported(store: Store) -> dict[str, Session]:
    return {
        k.meeting_id: s.answer
        for k, s in store.snapshot()[1].items()
        if isinstance(s.answer, Session)
    }


def test_each_meeting_exports_the_session_its_active_session_endpoint_would_answer():
    store, _ = run_cycle(LISTING, total=len(LISTING))
    chosen = exported(store)
    assert {m: s.id for m, s in chosen.items()} == {
        "m1": "m1-meeting",
        "m2": "m2-new",
        "m3": "m3-only",
    }
    assert (chosen["m1"].live_participants, chosen["m1"].type) == (3, "meeting")


def test_app_totals_count_each_meeting_once():
    _, text = run_cycle(LISTING, total=len(LISTING))
    assert sample(text, "realtimekit_app_live_sessions") == 3
    assert sample(text, "realtimekit_app_live_participants") == 3 + 6 + 2


def test_sessions_the_walk_did_not_read_still_count_by_the_api_total():
    """total_count says 8 while the page held 6 sessions of 3 meetings: 2 unread sessions are
    still live sessions (of meetings the walk could not see), the 3 duplicates are not."""
    _, text = run_cycle(LISTING, total=8)
    assert sample(text, "realtimekit_app_live_sessions") == 8 - 3


def test_without_paging_the_sessions_read_are_counted_by_meeting():
    _, text = run_cycle(LISTING, total=None)
    assert sample(text, "realtimekit_app_live_sessions") == 3


def test_sessions_without_a_meeting_id_each_count_as_their_own():
    listing = [session("a", None, "meeting", 2), session("b", None, "meeting", 5)]
    _, text = run_cycle(listing, total=2)
    assert sample(text, "realtimekit_app_live_sessions") == 2
    assert sample(text, "realtimekit_app_live_participants") == 7


def test_the_rank_prefers_the_meeting_type_then_the_newest():
    stream = parse_session(session("s", "m", "livestream", 9, started_at="2026-11-28T08:00:00Z"))
    meeting = parse_session(session("t", "m", "meeting", 1, started_at="2026-11-28T07:00:00Z"))
    newer = parse_session(session("u", "m", "meeting", 1, created_at="2026-11-28T07:30:00Z"))
    assert max([stream, meeting, newer], key=active_rank) is newer
    assert max([stream, meeting], key=active_rank) is meeting
    assert newer.created_at is not None and meeting.created_at is None
