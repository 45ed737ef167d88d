"""The simulator's usage (``GET /analytics/daywise``) and webhook registrations (``GET /webhooks``),
over real loopback HTTP."""

from __future__ import annotations

import httpx
import pytest

from tests.support.clock import FakeTime
from tests.support.simulator import T0, MakeSim, Receiver, make_sim_fixture

DAY = 86_400.0


make_sim = make_sim_fixture(seed=5, meetings=3)


def test_daywise_follows_sessions_and_recordings(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)  # 2027-01-15T08:00:00Z
    sim, api = make_sim(clock=clock)
    m1, m2, _ = sim.meeting_ids
    sim.set_participants(m1, 2)
    sim.set_participants(m2, 1)
    rid = sim.recordings.start(m1, status="RECORDING")
    clock.advance(600)  # 10 min: m1 2 people (20 min), m2 1 (10 min), recording 10 min
    sim.end_session(m2)
    sim.recordings.set_status(rid, "UPLOADED")
    stats = api.ok("/analytics/daywise", start_date="2027-01-15", end_date="2027-01-15")["data"]
    sessions, recordings = stats["session_stats"], stats["recording_stats"]
    assert sessions["sessions_count"] == 2 and sessions["sessions_minutes_consumed"] == 30.0
    assert sessions["day_stats"] == [
        {"day": "2027-01-15", "total_sessions": 2, "total_session_minutes": 30.0}
    ]
    assert recordings["recording_count"] == 1 and recordings["recording_minutes_consumed"] == 10.0
    assert recordings["day_stats"][0]["total_recordings"] == 1
    assert sim.usage.day() == {
        "sessions": 2,
        "session_minutes": 30.0,
        "recordings": 1,
        "recording_minutes": 10.0,
    }


def test_today_yesterday_and_thirty_days(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim, api = make_sim(clock=clock, usage_day_format="datetime")
    sim.usage.add("2027-01-14", sessions=4, session_minutes=90.5, recordings=1, recording_minutes=7)
    sim.usage.add("2026-12-10", sessions=100, session_minutes=1000)  # 36 days ago: outside
    sim.set_participants(sim.meeting_ids[0], 3)
    clock.advance(120)
    body = api.ok("/analytics/daywise")["data"]  # default: the 30 days ending today
    days = {d["day"]: d for d in body["session_stats"]["day_stats"]}
    assert set(days) == {"2027-01-14T00:00:00.000Z", "2027-01-15T00:00:00.000Z"}
    assert days["2027-01-15T00:00:00.000Z"]["total_session_minutes"] == 6.0
    assert body["session_stats"]["sessions_count"] == 5
    assert body["session_stats"]["sessions_minutes_consumed"] == 96.5
    assert body["recording_stats"]["recording_minutes_consumed"] == 7.0
    assert sim.usage.day("2027-01-14")["sessions"] == 4
    assert sim.usage.period("2026-12-17", "2027-01-15")["sessions"] == 5
    clock.advance(DAY)  # past UTC midnight: today has only the still-LIVE session's day, none
    assert sim.usage.day()["sessions"] == 0
    days_later = api.ok("/analytics/daywise", start_date="2027-01-16", end_date="2027-01-16")
    assert days_later["data"]["session_stats"]["day_stats"] == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"start_date": "15/01/2027"}, "start_date must be a date YYYY-MM-DD"),
        ({"start_date": "2027-01-16", "end_date": "2027-01-15"}, "on or before end_date"),
        ({"start_date": "2020-01-01", "end_date": "2027-01-15"}, "at most 366 days"),
    ],
)
def test_bad_daywise_queries_are_400(
    make_sim: MakeSim, params: dict[str, str], message: str
) -> None:
    _, api = make_sim(clock=FakeTime(T0))
    r = api.get("/analytics/daywise", **params)
    assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_registrations_are_served_and_changed_on_demand(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim, api = make_sim(clock=clock)
    assert api.ok("/webhooks")["data"] == []  # no webhook_url: nothing registered
    rid = sim.registrations.add("https://exporter.example/webhooks/a/b", events=["meeting.ended"])
    (reg,) = api.ok("/webhooks")["data"]
    assert reg == {
        "id": rid,
        "name": "exporter-1",
        "url": "https://exporter.example/webhooks/a/b",
        "enabled": True,
        "events": ["meeting.ended"],
        "created_at": "2027-01-15T08:00:00.000Z",
        "updated_at": "2027-01-15T08:00:00.000Z",
    }
    clock.advance(5)
    sim.registrations.disable(rid)
    sim.registrations.set_events(rid, ["meeting.started", "meeting.ended"])
    (changed,) = api.ok("/webhooks")["data"]
    assert changed["enabled"] is False and changed["events"] == ["meeting.started", "meeting.ended"]
    assert changed["updated_at"] == "2027-01-15T08:00:05.000Z"
    with pytest.raises(ValueError, match="unknown events"):
        sim.registrations.set_events(rid, ["meeting.exploded"])
    sim.registrations.delete(rid)
    assert api.ok("/webhooks")["data"] == []
    with pytest.raises(KeyError):
        sim.registrations.delete(rid)
    sim.set_endpoint_fault("webhooks", "403")
    forbidden = api.get("/webhooks")
    assert forbidden.status_code == 403 and forbidden.json()["errors"][0]["code"] == 9109


def test_a_registration_decides_whether_events_are_delivered(make_sim: MakeSim) -> None:
    receiver = Receiver()
    try:
        sim, api = make_sim(webhook_url=receiver.url)
        (reg,) = api.ok("/webhooks")["data"]  # registered with every event on creation
        expected = receiver.url.format(account_id=sim.account_id, app_id=sim.app_id)
        assert reg["url"] == expected and reg["enabled"] and "meeting.ended" in reg["events"]
        m1, m2, m3 = sim.meeting_ids
        sim.set_participants(m1, 1)
        receiver.wait_until(lambda: len(receiver.events("meeting.started")) == 1)
        sim.registrations.set_events(reg["id"], ["meeting.started"])
        sim.end_session(m1)  # meeting.ended is not registered: not sent
        sim.registrations.disable(reg["id"])
        sim.set_participants(m2, 1)  # disabled: nothing
        sim.registrations.enable(reg["id"])
        sim.set_participants(m3, 1)
        receiver.wait_until(lambda: len(receiver.events("meeting.started")) == 2)
        assert [e["meeting"]["id"] for e in receiver.events("meeting.started")] == [m1, m3]
        assert receiver.events("meeting.ended") == []
        assert sim.registrations.withheld >= 3  # ended, its leave, m2's start and join
        other = sim.add_app("acc-2", "app-2", 1)
        assert len(sim.registrations.list("acc-2", "app-2")) == 1  # new apps are registered
        sim.set_participants(other[0], 1)
        receiver.wait_until(lambda: len(receiver.events("meeting.started")) == 3)
    finally:
        receiver.close()


def test_usage_and_registration_controls_over_http(make_sim: MakeSim) -> None:
    sim, api = make_sim(clock=FakeTime(T0))
    root = sim.base_url.removesuffix("/client/v4") + "/_sim"
    app = f"{sim.account_id}/{sim.app_id}"
    booked = httpx.post(
        f"{root}/usage/{app}", json={"day": "2027-01-14", "sessions": 2, "session_minutes": 9.5}
    ).json()
    assert booked["usage"]["sessions"] == 2 and booked["usage"]["session_minutes"] == 9.5
    made = httpx.post(f"{root}/register/{app}", json={"url": "https://x.example/h"}).json()
    rid = made["id"]
    assert [r["url"] for r in made["registrations"]] == ["https://x.example/h"]
    off = httpx.post(f"{root}/registrations/{rid}", json={"enabled": False})
    assert off.status_code == 200 and api.ok("/webhooks")["data"][0]["enabled"] is False
    assert httpx.post(f"{root}/registrations/{rid}", json={"delete": True}).status_code == 200
    assert httpx.post(f"{root}/registrations/{rid}", json={"delete": True}).status_code == 404
    assert api.ok("/webhooks")["data"] == []
