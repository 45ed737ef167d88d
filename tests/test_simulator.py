"""Tests for exporter.simulator: a RealtimeKit API look-alike served over loopback HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from exporter.simulator import FaultConfig, PageServed, Simulator
from exporter.webhooks import (
    Event,
    KeySource,
    WebhookReceiver,
    WebhookStats,
    parse_event,
    parse_well_known,
    verify,
)
from tests.support.clock import FakeTime
from tests.support.process import wait_for
from tests.support.simulator import T0, Post, Receiver

TOKEN = "test-token-123"

SESSION_FIELDS = {
    "id": str,
    "associated_id": str,
    "created_at": str,
    "live_participants": int,
    "max_concurrent_participants": int,
    "meeting_display_name": str,
    "minutes_consumed": float,
    "organization_id": str,
    "started_at": str,
    "status": str,
    "type": str,
    "updated_at": str,
    "breakout_rooms": list,
    "meta": dict,
}


MakeSim = Callable[..., Simulator]


@pytest.fixture
def make_sim() -> Iterator[MakeSim]:
    sims: list[Simulator] = []

    def factory(**kwargs: Any) -> Simulator:
        kwargs.setdefault("token", TOKEN)
        kwargs.setdefault("auto", False)
        sim = Simulator(**kwargs)
        sim.start()
        sims.append(sim)
        return sim

    yield factory
    for sim in sims:
        sim.stop()


def client(sim: Simulator, token: str | None = TOKEN, timeout: float = 5.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.Client(base_url=sim.base_url, headers=headers, timeout=timeout)


def active(sim: Simulator, meeting_id: str, app: tuple[str, str] | None = None) -> str:
    account, app_id = app or (sim.account_id, sim.app_id)
    return f"/accounts/{account}/realtime/kit/{app_id}/meetings/{meeting_id}/active-session"


def sessions(sim: Simulator) -> str:
    return f"/accounts/{sim.account_id}/realtime/kit/{sim.app_id}/sessions"


def assert_cf_error(r: httpx.Response, status: int, code: int) -> dict[str, Any]:
    assert r.status_code == status
    body = r.json()
    assert body["success"] is False
    assert body["messages"] == [] and body["result"] is None
    assert body["errors"][0]["code"] == code
    return body  # type: ignore[no-any-return]


def assert_no_session(r: httpx.Response, meeting_id: str) -> None:
    assert r.status_code == 404
    assert r.json() == {
        "success": False,
        "error": {"code": 404, "message": f"No active session found for meeting_id {meeting_id}"},
    }


def test_active_session_shape_and_types(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim = make_sim(clock=clock, seed=1)
    mid = sim.meeting_ids[0]
    sim.set_participants(mid, 3)
    with client(sim) as c:
        r = c.get(active(sim, mid))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json; charset=utf-8"
    body = r.json()
    assert body["success"] is True
    data = body["data"]
    for name, typ in SESSION_FIELDS.items():
        assert isinstance(data[name], typ), name
    assert "ended_at" not in data
    assert data["associated_id"] == mid
    assert data["organization_id"] == sim.app_id
    assert data["status"] == "LIVE" and data["type"] == "meeting"
    assert data["live_participants"] == 3 and data["max_concurrent_participants"] == 3
    assert data["started_at"] == data["created_at"] == "2027-01-15T08:00:00.000Z"
    assert data["meeting_display_name"] == "Meeting 1 – Weekly sync"
    assert data == sim.session(mid)


def test_no_session_and_unknown_meeting_404(make_sim: MakeSim) -> None:
    sim = make_sim()
    with client(sim) as c:
        assert_no_session(c.get(active(sim, sim.meeting_ids[0])), sim.meeting_ids[0])
        assert_no_session(c.get(active(sim, "no-such-meeting")), "no-such-meeting")
    assert sim.session(sim.meeting_ids[0]) is None


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer"])
def test_bad_token_is_401(make_sim: MakeSim, auth: str | None) -> None:
    sim = make_sim()
    sim.set_participants(sim.meeting_ids[0], 1)
    headers = {"Authorization": auth} if auth is not None else {}
    with httpx.Client(base_url=sim.base_url, headers=headers, timeout=5) as c:
        body = assert_cf_error(c.get(active(sim, sim.meeting_ids[0])), 401, 10000)
        assert_cf_error(c.get(sessions(sim)), 401, 10000)
    assert body["errors"][0]["message"] == "Authentication error"
    assert sim.status_counts() == {401: 2}


def test_unknown_app_route_and_method(make_sim: MakeSim) -> None:
    sim = make_sim()
    with client(sim) as c:
        body = assert_cf_error(c.get(active(sim, "m", ("acc", "nope"))), 404, 7003)
        assert "Could not route to" in body["errors"][0]["message"]
        other_account = f"/accounts/other/realtime/kit/{sim.app_id}/sessions"
        assert_cf_error(c.get(other_account), 404, 7003)
        assert_cf_error(c.get("/accounts/x/realtime/kit/y/meetings"), 404, 7000)
        assert_cf_error(c.get("/nothing/here"), 404, 7000)
        r = c.post(active(sim, sim.meeting_ids[0]), json={})
        assert_cf_error(r, 405, 10405)
        assert r.headers["allow"] == "GET"
        # the connection is still usable after a request with a body
        assert_no_session(c.get(active(sim, sim.meeting_ids[0])), sim.meeting_ids[0])


def test_lifecycle_live_ended_cleared(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim = make_sim(clock=clock)
    mid = sim.meeting_ids[1]
    with client(sim) as c:
        sim.set_participants(mid, 2)
        live = c.get(active(sim, mid)).json()["data"]
        assert live["status"] == "LIVE"
        clock.advance(90.5)
        sim.end_session(mid)
        ended = c.get(active(sim, mid)).json()["data"]
        assert ended["status"] == "ENDED"
        assert ended["id"] == live["id"]
        assert ended["live_participants"] == 0
        assert ended["max_concurrent_participants"] == 2
        assert ended["ended_at"] == ended["updated_at"] == "2027-01-15T08:01:30.500Z"
        sim.clear_session(mid)
        assert_no_session(c.get(active(sim, mid)), mid)
        sim.set_participants(mid, 1)
        again = c.get(active(sim, mid)).json()["data"]
    assert again["status"] == "LIVE"
    assert again["id"] != live["id"]
    assert again["minutes_consumed"] == 0.0


def test_new_session_after_ended_without_clear(make_sim: MakeSim) -> None:
    sim = make_sim()
    mid = sim.meeting_ids[0]
    sim.set_participants(mid, 1)
    first = sim.session(mid)
    sim.end_session(mid)
    sim.set_participants(mid, 0)  # nobody joins: stays ENDED
    assert (sim.session(mid) or {})["status"] == "ENDED"
    sim.set_participants(mid, 4)
    second = sim.session(mid)
    assert first is not None and second is not None
    assert second["status"] == "LIVE" and second["id"] != first["id"]


def test_max_concurrent_tracks_peak(make_sim: MakeSim) -> None:
    sim = make_sim()
    mid = sim.meeting_ids[0]
    for n in (3, 7, 2, 5):
        sim.set_participants(mid, n)
    with client(sim) as c:
        data = c.get(active(sim, mid)).json()["data"]
    assert data["live_participants"] == 5
    assert data["max_concurrent_participants"] == 7


def test_minutes_consumed_with_fake_clock(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim = make_sim(clock=clock)
    mid = sim.meeting_ids[0]
    sim.set_participants(mid, 2)
    clock.advance(60)
    with client(sim) as c:
        assert c.get(active(sim, mid)).json()["data"]["minutes_consumed"] == pytest.approx(2.0)
        sim.set_participants(mid, 4)
        clock.advance(30)
        data = c.get(active(sim, mid)).json()["data"]
        assert data["minutes_consumed"] == pytest.approx(4.0)
        assert data["updated_at"] == "2027-01-15T08:01:00.000Z"  # last participant change
        sim.end_session(mid)
        clock.advance(600)
        assert c.get(active(sim, mid)).json()["data"]["minutes_consumed"] == pytest.approx(4.0)


def test_speed_scales_simulated_time(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim = make_sim(clock=clock, speed=10.0)
    mid = sim.meeting_ids[0]
    sim.set_participants(mid, 2)
    clock.advance(6)  # 60 simulated seconds
    assert (sim.session(mid) or {})["minutes_consumed"] == pytest.approx(2.0)


def _page(c: httpx.Client, sim: Simulator, **params: Any) -> dict[str, Any]:
    r = c.get(sessions(sim), params=params)
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    assert body["success"] is True
    return body


def test_sessions_paging(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim = make_sim(clock=clock, meetings=45)
    for mid in reversed(sim.meeting_ids):  # created in reverse meeting order
        sim.set_participants(mid, 1)
        clock.advance(1)
    seen: list[dict[str, Any]] = []
    with client(sim) as c:
        for page_no, size, start, end in ((1, 20, 1, 20), (2, 20, 21, 40), (3, 5, 41, 45)):
            body = _page(c, sim, page_no=page_no, per_page=20)
            assert len(body["data"]["sessions"]) == size
            assert body["paging"] == {"total_count": 45, "start_offset": start, "end_offset": end}
            seen += body["data"]["sessions"]
        past = _page(c, sim, page_no=4, per_page=20)
        assert past["data"]["sessions"] == []
        assert past["paging"] == {"total_count": 45, "start_offset": 0, "end_offset": 0}
        default = _page(c, sim)
    assert len(default["data"]["sessions"]) == 20
    assert [s["associated_id"] for s in seen] == list(reversed(sim.meeting_ids))
    assert len({s["id"] for s in seen}) == 45
    assert all(s["status"] == "LIVE" for s in seen)


def test_sessions_per_page_clamped_and_page_zero(make_sim: MakeSim) -> None:
    sim = make_sim(meetings=120, clock=FakeTime(T0))  # frozen: two reads of a page are equal
    for mid in sim.meeting_ids:
        sim.set_participants(mid, 2)
    with client(sim) as c:
        big = _page(c, sim, per_page=1000)
        assert len(big["data"]["sessions"]) == 100
        assert big["paging"] == {"total_count": 120, "start_offset": 1, "end_offset": 100}
        assert _page(c, sim, page_no=0, per_page=7) == _page(c, sim, page_no=1, per_page=7)
        assert len(_page(c, sim, page_no=0, per_page=7)["data"]["sessions"]) == 7
        r = c.get(sessions(sim), params={"page_no": "x"})
    assert r.status_code == 400
    assert r.json()["success"] is False


def test_sessions_filters(make_sim: MakeSim) -> None:
    sim = make_sim(meetings=6)
    ids = sim.meeting_ids
    for mid in ids[:4]:
        sim.set_participants(mid, 3)
    sim.end_session(ids[0])
    sim.end_session(ids[1])
    with client(sim) as c:
        live = _page(c, sim, status="LIVE")["data"]["sessions"]
        ended = _page(c, sim, status="ENDED")["data"]["sessions"]
        one = _page(c, sim, associated_id=ids[2])
        none = _page(c, sim, associated_id=ids[5])
        cafe = _page(c, sim, search="café")["data"]["sessions"]
        everything = _page(c, sim)
    assert {s["associated_id"] for s in live} == {ids[2], ids[3]}
    assert {s["associated_id"] for s in ended} == {ids[0], ids[1]}
    assert [s["associated_id"] for s in one["data"]["sessions"]] == [ids[2]]
    assert one["paging"]["total_count"] == 1
    assert none["data"]["sessions"] == [] and none["paging"]["total_count"] == 0
    assert [s["meeting_display_name"] for s in cafe] == ['Meeting 3 – Café "Zürich" stand-up']
    assert everything["paging"]["total_count"] == 4


def test_display_names_exercise_escaping(make_sim: MakeSim) -> None:
    sim = make_sim(meetings=5)
    for mid in sim.meeting_ids:
        sim.set_participants(mid, 1)
    with client(sim) as c:
        names = [s["meeting_display_name"] for s in _page(c, sim)["data"]["sessions"]]
    assert any('"' in n for n in names)
    assert any("\\" in n for n in names)
    assert any(not n.isascii() for n in names)


def test_rate_limit_blocks_rest_of_window(make_sim: MakeSim) -> None:
    sim = make_sim(rate_limit=(5, 10.0))
    with client(sim) as c:
        statuses = [c.get(sessions(sim)).status_code for _ in range(5)]
        blocked = c.get(sessions(sim))
        again = c.get(active(sim, sim.meeting_ids[0]))
    assert statuses == [200] * 5
    body = assert_cf_error(blocked, 429, 971)
    assert body["errors"][0]["message"] == "More than 5 requests per 10 seconds reached"
    assert 1 <= int(blocked.headers["retry-after"]) <= 10
    assert again.status_code == 429
    assert sim.request_count(TOKEN) == 7


def test_rate_limit_window_with_fake_clock(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim = make_sim(clock=clock, rate_limit=(5, 10.0))
    mid = sim.meeting_ids[0]
    with client(sim) as c:
        first = c.get(active(sim, mid))
        assert first.status_code == 404
        assert first.headers["ratelimit"] == '"default";r=4;t=10'
        assert first.headers["ratelimit-policy"] == '"default";q=5;w=10'
        for _ in range(4):
            last_ok = c.get(active(sim, mid))
        assert last_ok.status_code == 404 and last_ok.headers["ratelimit"] == '"default";r=0;t=10'
        clock.advance(3.5)
        blocked = c.get(active(sim, mid))
        assert blocked.status_code == 429
        assert blocked.headers["retry-after"] == "7"
        assert blocked.headers["ratelimit"] == '"default";r=0;t=7'
        clock.advance(6.0)  # 9.5 s into the window: still blocked
        assert c.get(active(sim, mid)).headers["retry-after"] == "1"
        clock.advance(0.5)  # window over
        fresh = c.get(active(sim, mid))
        assert fresh.status_code == 404
        assert fresh.headers["ratelimit"] == '"default";r=4;t=10'
        # another token is not charged for this one's requests (and it is rejected anyway)
    with client(sim, token="other") as other:
        assert other.get(active(sim, mid)).status_code == 401


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        ("500", 500),
        ("503", None),
        ("non_json", 200),
        ("wrong_types", 200),
        ("401", 401),
        ("429", 429),
    ],
)
def test_forced_faults(make_sim: MakeSim, kind: str, status: int | None) -> None:
    sim = make_sim(seed=5)
    mid, other = sim.meeting_ids[:2]
    sim.set_participants(mid, 4)
    sim.set_participants(other, 1)
    sim.set_fault(mid, kind)
    with client(sim) as c:
        rs = [c.get(active(sim, mid)) for _ in range(8)]
        healthy = c.get(active(sim, other))
        sim.set_fault(mid, None)
        cleared = c.get(active(sim, mid))
    r = rs[0]
    if status is None:
        assert {x.status_code for x in rs} <= {502, 503}
        assert r.headers["content-type"].startswith("text/html")
    else:
        assert {x.status_code for x in rs} == {status}
    if kind == "500":
        assert r.json() == {
            "success": False,
            "error": {"code": 500, "message": "Internal Server Error"},
        }
    elif kind == "non_json":
        assert r.text == "<html>oops</html>"
        assert r.headers["content-type"].startswith("text/html")
        with pytest.raises(json.JSONDecodeError):
            r.json()
    elif kind == "wrong_types":
        data = r.json()["data"]
        assert data["live_participants"] == "4"
        assert isinstance(data["id"], int)
    elif kind == "401":
        assert_cf_error(r, 401, 10000)
    elif kind == "429":
        assert_cf_error(r, 429, 971)
        assert r.headers["retry-after"] == "5"
    assert healthy.status_code == 200 and healthy.json()["data"]["live_participants"] == 1
    assert cleared.status_code == 200 and cleared.json()["data"]["live_participants"] == 4


def test_reset_fault_is_a_transport_error(make_sim: MakeSim) -> None:
    sim = make_sim()
    mid = sim.meeting_ids[0]
    sim.set_fault(mid, "reset")
    with client(sim) as c, pytest.raises(httpx.TransportError):
        c.get(active(sim, mid))
    request = f"GET /client/v4{active(sim, mid)} HTTP/1.1\r\nHost: x\r\n"
    request += f"Authorization: Bearer {TOKEN}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as raw:
        raw.sendall(request.encode())
        with pytest.raises(ConnectionResetError):  # a RST, not an orderly close (b"")
            raw.recv(1024)
    sim.set_fault(mid, None)
    with client(sim) as c:
        assert_no_session(c.get(active(sim, mid)), mid)
    assert sim.status_counts() == {0: 2, 404: 1}


def test_timeout_fault(make_sim: MakeSim) -> None:
    sim = make_sim(faults=FaultConfig(slow_seconds=1.0))
    mid = sim.meeting_ids[0]
    sim.set_fault(mid, "timeout")
    started = time.monotonic()
    with client(sim, timeout=0.2) as c, pytest.raises(httpx.TimeoutException):
        c.get(active(sim, mid))
    assert time.monotonic() - started < 0.9


def test_slow_answer_arrives_after_slow_seconds(make_sim: MakeSim) -> None:
    sim = make_sim(faults=FaultConfig(timeout=1.0, slow_seconds=0.3))
    started = time.monotonic()
    with client(sim) as c:
        r = c.get(sessions(sim))
    assert r.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_fault_probabilities(make_sim: MakeSim) -> None:
    always = make_sim(faults=FaultConfig(error_500=1.0))
    with client(always) as c:
        assert c.get(sessions(always)).status_code == 500
        assert c.get(active(always, always.meeting_ids[0])).status_code == 500
    half = make_sim(seed=11, faults=FaultConfig(non_json=0.5, error_503=0.2))
    with client(half) as c:
        answers = [c.get(sessions(half)) for _ in range(200)]
    codes = [r.status_code for r in answers]
    html_200 = sum(r.status_code == 200 and r.text == "<html>oops</html>" for r in answers)
    assert 70 <= html_200 <= 130  # p = 0.5
    assert 30 <= codes.count(200) - html_200 <= 90  # valid JSON, p = 0.3
    assert 20 <= sum(code in (502, 503) for code in codes) <= 60  # p = 0.2
    assert {502, 503} <= set(codes)
    assert set(codes) <= {200, 502, 503}


def test_latency(make_sim: MakeSim) -> None:
    sim = make_sim(faults=FaultConfig(latency_seconds=0.25))
    started = time.monotonic()
    with client(sim) as c:
        assert c.get("/no/route").status_code == 404
    assert time.monotonic() - started >= 0.25


def test_control_endpoints(make_sim: MakeSim) -> None:
    sim = make_sim()
    mid = sim.meeting_ids[0]
    root = sim.base_url.removesuffix("/client/v4")
    with httpx.Client(base_url=root, timeout=5) as ctl, client(sim) as c:
        assert ctl.get("/-/healthy").text == "ok"
        r = ctl.post(f"/_sim/meetings/{mid}", json={"participants": 3})
        assert r.status_code == 200 and r.json()["session"]["live_participants"] == 3
        assert c.get(active(sim, mid)).json()["data"]["status"] == "LIVE"
        ctl.post(f"/_sim/meetings/{mid}", json={"end": True})
        assert c.get(active(sim, mid)).json()["data"]["status"] == "ENDED"
        r = ctl.post(f"/_sim/meetings/{mid}", json={"clear": True})
        assert r.json() == {"ok": True, "session": None}
        assert_no_session(c.get(active(sim, mid)), mid)
        ctl.post(f"/_sim/meetings/{mid}", json={"fault": "500"})
        assert c.get(active(sim, mid)).status_code == 500
        ctl.post(f"/_sim/meetings/{mid}", json={"fault": None})
        assert c.get(active(sim, mid)).status_code == 404
        assert ctl.post("/_sim/meetings/nope", json={"participants": 1}).status_code == 404
        assert ctl.post(f"/_sim/meetings/{mid}", json={"fault": "boom"}).status_code == 400
        assert ctl.post(f"/_sim/meetings/{mid}", content=b"not json").status_code == 400
        assert ctl.post(f"/_sim/meetings/{mid}", json={"participants": "2"}).status_code == 400
        stats = ctl.get("/_sim/stats").json()
    assert stats["requests"] == 5  # control and health requests are not counted
    assert stats["status_counts"] == {"200": 2, "404": 2, "500": 1}
    assert stats["meetings"] == 5 and stats["live_sessions"] == 0


def test_counts_and_request_log(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim = make_sim(clock=clock)
    mid = sim.meeting_ids[0]
    sim.set_participants(mid, 1)
    with client(sim) as c, client(sim, token="bad") as bad:
        c.get(active(sim, mid))
        clock.advance(5)
        c.get(sessions(sim), params={"per_page": 3})
        bad.get(sessions(sim))
    assert sim.request_count() == 3
    assert sim.request_count(TOKEN) == 2
    assert sim.request_count("bad") == 1
    assert sim.request_count("never") == 0
    assert sim.status_counts() == {200: 2, 401: 1}
    assert sim.request_log() == [
        (T0, "/client/v4" + active(sim, mid), 200),
        (T0 + 5, "/client/v4" + sessions(sim) + "?per_page=3", 200),
        (T0 + 5, "/client/v4" + sessions(sim), 401),
    ]


def test_multiple_apps(make_sim: MakeSim) -> None:
    sim = make_sim(meetings=["room-a"])
    ids = sim.add_app("acc2", "app2", 3)
    sim.add_meeting("room-b")
    assert sim.meeting_ids == ["room-a", "room-b"]
    assert len(ids) == 3 and len(set(ids)) == 3
    sim.set_participants(ids[0], 2)
    sim.set_participants("room-a", 1)
    with client(sim) as c:
        r = c.get(active(sim, ids[0], ("acc2", "app2")))
        assert r.status_code == 200 and r.json()["data"]["organization_id"] == "app2"
        assert_no_session(c.get(active(sim, ids[0])), ids[0])  # not a meeting of app 1
        assert_no_session(c.get(active(sim, "room-a", ("acc2", "app2"))), "room-a")
        listed = c.get("/accounts/acc2/realtime/kit/app2/sessions").json()["data"]["sessions"]
    assert [s["associated_id"] for s in listed] == [ids[0]]
    with pytest.raises(ValueError):
        sim.add_app("acc3", "app3", ["room-a"])


def test_validation() -> None:
    with pytest.raises(ValueError):
        Simulator(token=TOKEN, speed=0)
    with pytest.raises(ValueError):
        Simulator(token="")
    with pytest.raises(ValueError):
        FaultConfig(error_500=1.5)
    with pytest.raises(ValueError):
        Simulator(token=TOKEN, meetings=["a", "a"])
    sim = Simulator(token=TOKEN, auto=False)
    with pytest.raises(ValueError):
        sim.set_fault(sim.meeting_ids[0], "explode")
    with pytest.raises(KeyError):
        sim.set_participants("missing", 1)
    with pytest.raises(RuntimeError):
        _ = sim.base_url


def _run_auto(seed: int, steps: int, meetings: int = 6) -> list[list[dict[str, Any] | None]]:
    clock = FakeTime(T0)
    sim = Simulator(token=TOKEN, meetings=meetings, seed=seed, clock=clock, speed=2.0)
    history = []
    for _ in range(steps):
        clock.advance(5)
        history.append([sim.session(mid) for mid in sim.meeting_ids])
    return history


def test_auto_mode_is_reproducible_and_cycles() -> None:
    one, two = _run_auto(42, 720), _run_auto(42, 720)  # 2 simulated hours
    assert one == two
    assert _run_auto(43, 20) != one[:20]
    for m in range(6):
        states = [None if h[m] is None else h[m]["status"] for h in one]  # type: ignore[index]
        assert {None, "LIVE", "ENDED"} <= set(states), m
        lives = {h[m]["live_participants"] for h in one if h[m] and h[m]["status"] == "LIVE"}  # type: ignore[index]
        assert len(lives) >= 3 and min(lives) >= 1 and max(lives) <= 12
    by_session: dict[str, list[dict[str, Any]]] = {}
    for h in one:
        for s in h:
            if s is not None:
                by_session.setdefault(s["id"], []).append(s)
    for snaps in by_session.values():
        minutes = [s["minutes_consumed"] for s in snaps]
        assert minutes == sorted(minutes)
        peaks = [s["max_concurrent_participants"] for s in snaps]
        assert peaks == sorted(peaks)
        assert all(s["max_concurrent_participants"] >= s["live_participants"] for s in snaps)
    assert len(by_session) > 12  # several sessions per meeting over two hours


def test_auto_starts_about_half_live() -> None:
    sim = Simulator(token=TOKEN, meetings=40, seed=7, clock=FakeTime(T0))
    live = [mid for mid in sim.meeting_ids if sim.session(mid) is not None]
    assert 10 <= len(live) <= 30
    manual = Simulator(token=TOKEN, meetings=40, seed=7, auto=False, clock=FakeTime(T0))
    assert all(manual.session(mid) is None for mid in manual.meeting_ids)


def test_keep_alive_throughput(make_sim: MakeSim) -> None:
    sim = make_sim()
    sim.set_participants(sim.meeting_ids[0], 2)
    started = time.monotonic()
    with client(sim) as c:
        for _ in range(300):
            c.get(active(sim, sim.meeting_ids[0]))
    # without keep-alive and a single send() per answer this takes ~40 ms per request
    assert time.monotonic() - started < 3.0
    assert sim.status_counts() == {200: 300}


@pytest.mark.process
def test_cli_runs_until_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "CLOUDFLARE_API_TOKEN": "cli-secret-token"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    args = ["--listen", "127.0.0.1:0", "--meetings", "3", "--seed", "1", "--rate-limit", "100/60"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.simulator", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "cli-secret-token" not in line
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        meetings = fields["meetings"].split(",")
        assert len(meetings) == 3
        path = (
            f"/accounts/{fields['account_id']}/realtime/kit/{fields['app_id']}"
            f"/meetings/{meetings[0]}/active-session"
        )
        headers = {"Authorization": "Bearer cli-secret-token"}
        r = httpx.get(fields["base_url"] + path, headers=headers, timeout=5)
        assert r.status_code in (200, 404)
        assert r.headers["ratelimit-policy"] == '"default";q=100;w=60'
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- API conventions as options -------------------------------------------------------------


def _live_sim(make_sim: MakeSim, n: int, **kwargs: Any) -> Simulator:
    """A frozen-clock simulator whose main app has `n` LIVE meetings (created in id order)."""
    sim = make_sim(meetings=0, clock=FakeTime(T0), seed=3, **kwargs)
    sim.add_app(sim.account_id, sim.app_id, n, live=True)
    return sim


def _walk(c: httpx.Client, sim: Simulator, pages: range, **params: Any) -> list[dict[str, Any]]:
    return [_page(c, sim, page_no=p, **params) for p in pages]


def test_page_base_zero_counts_pages_from_zero(make_sim: MakeSim) -> None:
    sim = _live_sim(make_sim, 7, page_base=0)
    with client(sim) as c:
        first, second, third, past = _walk(c, sim, range(4), per_page=3)
        everything = _page(c, sim, page_no=0)
        default = _page(c, sim)  # no page_no: the first page
        one = _page(c, sim, page_no=1)  # the SECOND page of 20: empty
    assert first["paging"] == {"total_count": 7, "start_offset": 1, "end_offset": 3}
    assert second["paging"] == {"total_count": 7, "start_offset": 4, "end_offset": 6}
    assert third["paging"] == {"total_count": 7, "start_offset": 7, "end_offset": 7}
    assert past["data"]["sessions"] == []
    assert everything["paging"] == {"total_count": 7, "start_offset": 1, "end_offset": 7}
    assert default == everything
    assert one["data"]["sessions"] == [] and one["paging"]["start_offset"] == 0
    walked = [s["id"] for p in (first, second, third) for s in p["data"]["sessions"]]
    assert walked == [s["id"] for s in everything["data"]["sessions"]]


def test_per_page_cap_serves_fewer_than_asked(make_sim: MakeSim) -> None:
    sim = _live_sim(make_sim, 60, per_page_cap=25)
    with client(sim) as c:
        pages = _walk(c, sim, range(1, 5), per_page=100)
        small = _page(c, sim, per_page=10)
    assert [len(p["data"]["sessions"]) for p in pages] == [25, 25, 10, 0]
    assert [(p["paging"]["start_offset"], p["paging"]["end_offset"]) for p in pages] == [
        (1, 25),
        (26, 50),
        (51, 60),
        (0, 0),
    ]
    assert {p["paging"]["total_count"] for p in pages} == {60}
    assert len({s["id"] for p in pages for s in p["data"]["sessions"]}) == 60
    assert len(small["data"]["sessions"]) == 10  # below the cap: as asked


def test_per_page_cap_above_100(make_sim: MakeSim) -> None:
    sim = _live_sim(make_sim, 1200, per_page_cap=1000)
    with client(sim) as c:
        big, rest = _walk(c, sim, range(1, 3), per_page=1000)
    assert len(big["data"]["sessions"]) == 1000
    assert rest["paging"] == {"total_count": 1200, "start_offset": 1001, "end_offset": 1200}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"paging": "absent"}, None),
        ({"paging": "partial"}, {"start_offset": 1, "end_offset": 2}),
        (
            {"paging": "partial", "paging_drop": ("start_offset", "end_offset")},
            {"total_count": 2},
        ),
        ({"paging": "full", "paging_drop": ("total_count",)}, None),  # drop applies to partial only
    ],
)
def test_paging_shapes(
    make_sim: MakeSim, options: dict[str, Any], expected: dict[str, int] | None
) -> None:
    sim = _live_sim(make_sim, 2, **options)
    with client(sim) as c:
        body = _page(c, sim)
    assert len(body["data"]["sessions"]) == 2
    if options["paging"] == "full":
        assert body["paging"] == {"total_count": 2, "start_offset": 1, "end_offset": 2}
    elif expected is None:
        assert "paging" not in body
    else:
        assert body["paging"] == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"page_base": 2}, "page_base must be 0 or 1"),
        ({"per_page_cap": 0}, "per_page_cap must be >= 1"),
        ({"paging": "some"}, "paging must be one of"),
        ({"paging": "partial", "paging_drop": ("total",)}, "paging_drop: unknown paging fields"),
        ({"paging": "partial", "paging_drop": ()}, "needs at least one field"),
        ({"unknown_meeting": "teapot"}, "unknown_meeting must be one of"),
        ({"churn_per_page": -1}, "churn_per_page must be >= 0"),
    ],
)
def test_convention_validation(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Simulator(token=TOKEN, **options)
    with pytest.raises(ValueError, match="trickle_seconds must be > 0"):
        FaultConfig(trickle_seconds=0)


def test_unknown_meeting_not_found(make_sim: MakeSim) -> None:
    sim = make_sim(unknown_meeting="not_found")
    ids = sim.add_app("acc2", "app2", 1)
    not_found = {"success": False, "error": {"code": 404, "message": "Meeting not found"}}
    with client(sim) as c:
        unknown = c.get(active(sim, "no-such-meeting"))
        other_app = c.get(active(sim, ids[0]))  # a meeting, but of another app
        idle = c.get(active(sim, sim.meeting_ids[0]))
    assert unknown.status_code == 404 and unknown.json() == not_found
    assert other_app.status_code == 404 and other_app.json() == not_found
    assert_no_session(idle, sim.meeting_ids[0])  # a known meeting without a session


# --- churn between pages and the page hook ----------------------------------------------------


def _churn_walk(seed: int) -> tuple[list[list[str]], list[str]]:
    """Meeting ids on each of 4 pages of 10 while 3 sessions end and 3 start after each page,
    and the 30 meetings live before the walk."""
    sim = Simulator(
        token=TOKEN, meetings=0, auto=False, seed=seed, clock=FakeTime(T0), churn_per_page=3
    )
    sim.add_app(sim.account_id, sim.app_id, 30, live=True)
    with sim, client(sim) as c:
        pages = _walk(c, sim, range(1, 5), per_page=10, status="LIVE")
        assert sim.live_session_count() == 30
        assert len(sim.meeting_ids) == 30 + 4 * 3
        initial = sim.meeting_ids[:30]
    assert {p["paging"]["total_count"] for p in pages} == {30}
    return [[s["associated_id"] for s in p["data"]["sessions"]] for p in pages], initial


def test_churn_shifts_pages_deterministically() -> None:
    walk, initial = _churn_walk(seed=9)
    assert (walk, initial) == _churn_walk(seed=9)
    assert walk != _churn_walk(seed=10)[0]
    assert [len(page) for page in walk] == [10, 10, 10, 0]
    seen = {mid for page in walk for mid in page}
    assert seen - set(initial), "meetings that went live during the walk were listed"
    assert set(initial) - seen, "offsets shifted: some meetings live at the start were never seen"


def test_churn_ends_and_clears_sessions(make_sim: MakeSim) -> None:
    sim = _live_sim(make_sim, 5, churn_per_page=2)
    with client(sim) as c:
        before = {s["associated_id"] for s in _page(c, sim)["data"]["sessions"]}
        after = {s["associated_id"] for s in _page(c, sim)["data"]["sessions"]}
    assert len(before) == len(after) == 5
    assert len(before - after) == 2  # two ended after the first page, two new ones went live
    assert all(sim.session(mid) is None for mid in before - after)  # ended and cleared
    assert len(sim.meeting_ids) == 5 + 2 * 2


def test_on_page_hook_may_change_the_simulator(make_sim: MakeSim) -> None:
    heard: list[PageServed] = []
    holder: list[Simulator] = []

    def hook(page: PageServed) -> None:  # called without the simulator's lock held
        heard.append(page)
        sim = holder[0]
        sim.set_participants(sim.meeting_ids[len(heard)], 1)  # one more meeting goes live

    sim = make_sim(meetings=6, clock=FakeTime(T0), on_page=hook)
    holder.append(sim)
    with client(sim) as c:
        totals = [_page(c, sim, per_page=1)["paging"]["total_count"] for _ in range(3)]
    assert totals == [0, 1, 2]  # each page sees the session the previous page's hook started
    assert heard == [
        PageServed(sim.account_id, sim.app_id, 1, 1, 0, 0),
        PageServed(sim.account_id, sim.app_id, 1, 1, 1, 1),
        PageServed(sim.account_id, sim.app_id, 1, 1, 1, 2),
    ]


# --- bulk ---------------------------------------------------------------------------------------


def test_bulk_live_meetings_and_fast_pages(make_sim: MakeSim) -> None:
    sim = make_sim(meetings=0, clock=FakeTime(T0), seed=2)
    started = time.monotonic()
    ids = sim.add_app(sim.account_id, sim.app_id, 100_000, live=True, participants=3)
    built = time.monotonic() - started
    assert len(ids) == 100_000 and sim.live_session_count() == 100_000
    started = time.monotonic()
    with client(sim) as c:
        last = _page(c, sim, page_no=1000, per_page=100, status="LIVE")
        pages = _walk(c, sim, range(500, 520), per_page=100)
    served = time.monotonic() - started
    assert last["paging"] == {"total_count": 100_000, "start_offset": 99_901, "end_offset": 100_000}
    assert {s["live_participants"] for p in pages for s in p["data"]["sessions"]} == {3}
    assert len({s["id"] for p in pages for s in p["data"]["sessions"]}) == 2000
    # generous bounds; a listing that walked all 100k meetings per request would take ~10 s
    assert built < 20 and served < 5, (built, served)
    with pytest.raises(ValueError, match="participants must be >= 1"):
        sim.add_app("a", "b", 1, live=True, participants=0)


# --- hostile answers --------------------------------------------------------------------------

HANDLER_THREAD = "process_request_thread"


def _handler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if HANDLER_THREAD in t.name and t.is_alive()]


@pytest.mark.parametrize(
    ("kind", "check"),
    [
        ("huge_int", lambda d: d["live_participants"] == 10**400),
        ("long_name", lambda d: d["meeting_display_name"] == "n" * 900 * 1024),
        ("unknown_status", lambda d: d["status"] == "PAUSED"),
    ],
)
def test_field_faults(
    make_sim: MakeSim, kind: str, check: Callable[[dict[str, Any]], bool]
) -> None:
    sim = make_sim(meetings=3, clock=FakeTime(T0))
    mid, other, idle = sim.meeting_ids
    sim.set_participants(mid, 2)
    sim.set_participants(other, 1)
    sim.set_fault(mid, kind)
    sim.set_fault(idle, kind)
    with client(sim) as c:
        data = c.get(active(sim, mid)).json()["data"]
        fabricated = c.get(active(sim, idle)).json()["data"]  # even without a session
        healthy = c.get(active(sim, other)).json()["data"]
        sim.set_listing_fault(kind)
        listed = _page(c, sim)["data"]["sessions"]
    assert check(data) and data["associated_id"] == mid
    assert check(fabricated)
    assert not check(healthy)
    assert check(listed[0]) and not check(listed[1])  # a listing: its first session only


def test_deep_json(make_sim: MakeSim) -> None:
    sim = make_sim(clock=FakeTime(T0))
    mid = sim.meeting_ids[0]
    sim.set_participants(mid, 1)
    sim.set_fault(mid, "deep_json")
    sim.set_listing_fault("deep_json")
    with client(sim) as c:
        one, listing = c.get(active(sim, mid)), c.get(sessions(sim))
    for r in (one, listing):
        assert r.status_code == 200
        assert '"meta":' + "[" * 10_000 + "]" * 10_000 + "}" in r.text
        assert "[" * 10_001 not in r.text
        with pytest.raises(RecursionError):
            r.json()


def test_retry_after_huge_and_not_found(make_sim: MakeSim) -> None:
    sim = make_sim()
    a, b, *_ = sim.meeting_ids
    sim.set_fault(a, "retry_after_huge")
    sim.set_fault(b, "not_found")
    sim.set_listing_fault("retry_after_huge")
    with client(sim) as c:
        limited, listing, missing = (
            c.get(active(sim, a)),
            c.get(sessions(sim)),
            c.get(active(sim, b)),
        )
    for r in (limited, listing):
        assert_cf_error(r, 429, 971)
        assert r.headers["retry-after"] == "1000000000"
    assert missing.status_code == 404
    assert missing.json() == {
        "success": False,
        "error": {"code": 404, "message": "Meeting not found"},
    }
    with pytest.raises(ValueError, match="unknown fault 'not_found'"):
        sim.set_listing_fault("not_found")
    with pytest.raises(KeyError):
        sim.set_listing_fault("500", "no", "app")


def test_huge_header(make_sim: MakeSim) -> None:
    sim = make_sim(rate_limit=(100, 60.0))
    mid = sim.meeting_ids[0]
    sim.set_fault(mid, "huge_header")
    with client(sim) as c:
        r = c.get(active(sim, mid))
    assert_no_session(r, mid)  # a valid answer otherwise
    values = r.headers.get_list("ratelimit")
    huge = max(values, key=len)
    assert len(huge) == 80 * 1024
    assert huge.startswith('"default";r=1;r=1;') and "t=" not in huge
    assert '"default";r=99;t=60' in values  # the simulator's own header is still there


def test_gzip_bomb_streams_zeros(make_sim: MakeSim) -> None:
    sim = make_sim()
    mid = sim.meeting_ids[0]
    sim.set_fault(mid, "gzip_bomb")
    decoded = bytearray()
    with client(sim) as c, c.stream("GET", active(sim, mid)) as r:
        assert r.headers["content-encoding"] == "gzip"
        compressed = int(r.headers["content-length"])
        for piece in r.iter_bytes():
            decoded += piece
            if len(decoded) >= 1 << 20:
                break
    assert r.status_code == 200
    assert 100_000 < compressed < 2_000_000  # 1 GiB in ~1 MB
    assert len(decoded) >= 1 << 20 and not any(decoded)


def test_gzip_bomb_is_one_valid_gzip_member_of_1_gib() -> None:
    from exporter.simulator.answers import gzip_bomb as _gzip_bomb
    from exporter.simulator.answers import gzip_bomb_chunks as _gzip_bomb_chunks

    length = _gzip_bomb()[3]
    stream = b"".join(_gzip_bomb_chunks())
    assert len(stream) == length
    assert stream.endswith(struct.pack("<I", 1 << 30))  # ISIZE: the size uncompressed
    inflate = zlib.decompressobj(zlib.MAX_WBITS | 16)
    assert inflate.decompress(stream[:4096], 1 << 20) == bytes(1 << 20)


def test_trickle_sends_a_valid_body_slowly(make_sim: MakeSim) -> None:
    sim = make_sim(meetings=["m1"], faults=FaultConfig(trickle_seconds=0.02))
    sim.set_fault("m1", "trickle")
    started = time.monotonic()
    with client(sim) as c, c.stream("GET", active(sim, "m1")) as r:
        pieces = r.iter_raw()
        first = next(pieces)
        first_at = time.monotonic() - started
        body = first + b"".join(pieces)
    took = time.monotonic() - started
    assert r.headers["content-length"] == str(len(body))
    assert len(first) <= 2 and first_at < 1.0
    assert took >= (len(body) - 1) * 0.02 * 0.9
    assert json.loads(body)["error"]["message"] == "No active session found for meeting_id m1"


def test_stop_ends_trickle_and_endless_answers(make_sim: MakeSim) -> None:
    sim = make_sim(meetings=["slow"], faults=FaultConfig(trickle_seconds=0.05))
    sim.set_fault("slow", "trickle")
    sim.set_listing_fault("endless")
    outcome: dict[str, Any] = {}
    under_way = {"trickle": threading.Event(), "endless": threading.Event()}

    def read(name: str, path: str) -> None:
        received = b""
        try:
            with client(sim, timeout=30) as c, c.stream("GET", path) as r:
                outcome[f"{name}_headers"] = r.headers
                for piece in r.iter_raw():
                    received += piece
                    if len(received) > 40 or (name == "trickle" and len(received) > 2):
                        under_way[name].set()
        except httpx.TransportError as exc:
            outcome[name] = exc
        outcome[f"{name}_received"] = received

    readers = [
        threading.Thread(target=read, args=("trickle", active(sim, "slow"))),
        threading.Thread(target=read, args=("endless", sessions(sim))),
    ]
    for t in readers:
        t.start()
    assert all(event.wait(10) for event in under_way.values())
    started = time.monotonic()
    sim.stop()
    stopped_in = time.monotonic() - started
    for t in readers:
        t.join(10)
    assert stopped_in < 2.0
    assert not any(t.is_alive() for t in readers)
    deadline = time.monotonic() + 5  # a handler thread may still be returning from its answer
    while _handler_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _handler_threads()
    assert outcome["endless_headers"]["transfer-encoding"] == "chunked"
    assert outcome["endless_received"].startswith(b'{"success":true,"data":{"sessions":[   ')
    assert isinstance(outcome["endless"], httpx.RemoteProtocolError)  # cut, never finished
    assert isinstance(outcome["trickle"], httpx.RemoteProtocolError)
    assert 0 < len(outcome["trickle_received"]) < int(outcome["trickle_headers"]["content-length"])


def test_listing_fault_control_endpoint(make_sim: MakeSim) -> None:
    sim = make_sim(clock=FakeTime(T0))
    sim.set_participants(sim.meeting_ids[0], 1)
    root = sim.base_url.removesuffix("/client/v4")
    app = f"/_sim/apps/{sim.account_id}/{sim.app_id}"
    with httpx.Client(base_url=root, timeout=5) as ctl, client(sim) as c:
        assert ctl.post(app, json={"fault": "unknown_status"}).json() == {
            "ok": True,
            "fault": "unknown_status",
        }
        assert _page(c, sim)["data"]["sessions"][0]["status"] == "PAUSED"
        assert ctl.post(app, json={"fault": None}).json() == {"ok": True, "fault": None}
        assert _page(c, sim)["data"]["sessions"][0]["status"] == "LIVE"
        assert ctl.post(app, json={"fault": "not_found"}).status_code == 400
        assert ctl.post("/_sim/apps/acc/nope", json={"fault": "500"}).status_code == 404
        assert ctl.post("/_sim/apps/only-account", json={}).status_code == 400
        assert ctl.get(app).status_code == 405


# --- command line --------------------------------------------------------------------------------


@contextlib.contextmanager
def _cli(tmp_path: Path, *args: str, env_token: str | None = None) -> Iterator[dict[str, str]]:
    """Run ``python -m exporter.simulator ARGS`` on a free port; yield its start line's fields."""
    env = {k: v for k, v in os.environ.items() if k != "CLOUDFLARE_API_TOKEN"}
    if env_token is not None:
        env["CLOUDFLARE_API_TOKEN"] = env_token
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "exporter.simulator", "--listen", "127.0.0.1:0", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "no start line within 20 s"
        line = proc.stdout.readline()
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        yield {**fields, "line": line}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.process
def test_cli_help_describes_every_flag() -> None:
    from exporter.simulator import _parser

    for action in _parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "(default: " in action.help, action.option_strings
    out = subprocess.run(
        [sys.executable, "-m", "exporter.simulator", "--help"],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        check=True,
    ).stdout
    flat = " ".join(out.split())
    assert "simulated seconds per real second" in flat
    assert "number of meetings of the app (default: 5)" in flat
    assert "(default: $CLOUDFLARE_API_TOKEN if set, else 'demo-token')" in flat
    assert (
        "--per-page-cap N serve at most N sessions per page whatever per_page asks (default: 100)"
        in flat
    )
    assert "gzip_bomb" in flat and "/_sim/apps/ACCOUNT/APP" in flat


@pytest.mark.parametrize(
    ("args", "env_token", "source", "token"),
    [
        ((), None, "built-in", "demo-token"),
        (("--token", "flag-secret"), "env-secret", "--token", "flag-secret"),
        ((), "env-secret", "$CLOUDFLARE_API_TOKEN", "env-secret"),
    ],
)
@pytest.mark.process
def test_cli_says_where_the_token_comes_from(
    tmp_path: Path, args: tuple[str, ...], env_token: str | None, source: str, token: str
) -> None:
    with _cli(tmp_path, "--meetings", "1", *args, env_token=env_token) as fields:
        assert fields["token_source"] == source
        shown = fields.get("token")
        assert shown == ("demo-token" if source == "built-in" else None)
        assert "secret" not in fields["line"]
        headers = {"Authorization": f"Bearer {token}"}
        r = httpx.get(fields["base_url"] + "/accounts/x/realtime/kit/y/sessions", headers=headers)
        assert_cf_error(r, 404, 7003)  # authenticated: the app is what is wrong


@pytest.mark.process
def test_cli_convention_flags(tmp_path: Path) -> None:
    args = "--meetings 30 --all-live --no-auto --page-base 0 --per-page-cap 25 --paging partial"
    args += " --paging-drop total_count,end_offset --unknown-meeting not_found --churn-per-page 1"
    args += f" --token {TOKEN}"
    with _cli(tmp_path, *args.split()) as fields:
        root = f"/accounts/{fields['account_id']}/realtime/kit/{fields['app_id']}"
        with httpx.Client(
            base_url=fields["base_url"], headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
        ) as c:
            first = c.get(f"{root}/sessions", params={"page_no": 0, "per_page": 100}).json()
            second = c.get(f"{root}/sessions", params={"page_no": 1, "per_page": 100}).json()
            missing = c.get(f"{root}/meetings/nope/active-session")
    assert len(first["data"]["sessions"]) == 25 and first["paging"] == {"start_offset": 1}
    assert len(second["data"]["sessions"]) == 5 and second["paging"] == {"start_offset": 26}
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "Meeting not found"
    for flag in (["--page-base", "2"], ["--paging-drop", "nope"], ["--paging", "odd"]):
        bad = subprocess.run(
            [sys.executable, "-m", "exporter.simulator", *flag],
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        assert bad.returncode == 2 and flag[0] in bad.stderr


def test_auto_listing_agrees_with_each_meeting() -> None:
    """The kept listing follows auto mode's changes (due times in a heap) and manual controls."""
    clock = FakeTime(T0)
    sim = Simulator(token=TOKEN, meetings=30, seed=4, clock=clock, speed=5.0)
    sim.add_app("acc2", "app2", 5)
    listed_states = set()
    with sim, client(sim) as c:
        for step in range(60):
            clock.advance(7)  # 35 simulated seconds a step: every meeting changes now and then
            if step == 30:
                mid = sim.meeting_ids[0]
                sim.set_participants(mid, 2)
                sim.end_session(mid)
                sim.set_participants(mid, 3)  # a new session replaces the ENDED one
            listed = _page(c, sim, per_page=100)["data"]["sessions"]
            live = _page(c, sim, per_page=100, status="LIVE")["paging"]["total_count"]
            current = [sim.session(mid) for mid in sim.meeting_ids]
            expected = sorted((s for s in current if s), key=lambda s: (s["created_at"], s["id"]))
            assert [s["id"] for s in listed] == [s["id"] for s in expected], step
            assert [s["status"] for s in listed] == [s["status"] for s in expected], step
            assert live == sum(s["status"] == "LIVE" for s in expected)
            listed_states |= {s["status"] for s in listed}
    assert listed_states == {"LIVE", "ENDED"}


# --- webhooks ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def factory(*statuses: int, gate: threading.Event | None = None) -> Receiver:
        made.append(Receiver(statuses, gate))
        return made[-1]

    yield factory
    for r in made:
        r.close()


def root(sim: Simulator) -> str:
    return sim.base_url.removesuffix("/client/v4")


def served_key(sim: Simulator) -> rsa.RSAPublicKey:
    r = httpx.get(root(sim) + "/.well-known/webhooks.json", timeout=5)  # no token
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    return parse_well_known(r.content)


def verified_events(posts: list[Post], public: rsa.RSAPublicKey) -> list[Event]:
    for post in posts:
        assert verify(public, post.body, post.headers["rtk-signature"]), post.body[:80]
        assert post.headers["content-type"] == "application/json"
    return [parse_event(post.body) for post in posts]


def test_webhook_events_are_signed_and_verify(
    make_sim: MakeSim, receiver: Callable[..., Receiver], key: rsa.RSAPrivateKey
) -> None:
    recv = receiver()
    sim = make_sim(clock=FakeTime(T0), seed=1, webhook_url=recv.url, webhook_key=key)
    public = served_key(sim)
    assert public.public_numbers() == key.public_key().public_numbers()
    mid = sim.meeting_ids[0]
    sim.set_participants(mid, 3)
    session = cast(dict[str, Any], sim.session(mid))
    sim.set_participants(mid, 2)
    sim.end_session(mid)
    posts = recv.wait_for(8)
    events = verified_events(posts, public)
    assert [e.name.removeprefix("meeting.") for e in events] == [
        "started",
        *["participantJoined"] * 3,
        "participantLeft",
        *["participantLeft"] * 2,
        "ended",
    ]
    assert {e.meeting_id for e in events} == {mid}
    assert {e.session_id for e in events} == {session["id"]}
    started, ended = events[0], events[-1]
    assert started.status == "LIVE" and started.title == "Meeting 1 – Weekly sync"
    assert started.started_at == T0 and started.ended_at is None
    assert (ended.status, ended.reason, ended.ended_at) == ("ENDED", "HOST_ENDED_MEETING", T0)
    joined = [e.peer_id for e in events[1:4]]
    assert len(set(joined)) == 3 and {e.peer_id for e in events[4:7]} == set(joined)
    assert events[4].peer_id == joined[-1]  # the latest to join leaves first
    doc = json.loads(posts[0].body)
    assert doc["meeting"]["organizedBy"] == {
        "id": sim.app_id,
        "name": doc["meeting"]["organizedBy"]["name"],
    }
    assert doc["meeting"]["roomName"] and doc["meeting"]["createdAt"] == "2027-01-15T08:00:00.000Z"
    assert {p.path for p in posts} == {f"/webhooks/{sim.account_id}/{sim.app_id}"}
    assert {p.headers["rtk-webhook-id"] for p in posts} == {sim.webhook_id}
    assert len({p.headers["rtk-uuid"] for p in posts}) == 8
    wait_for(lambda: sim.webhook_stats()["delivered"] == 8, timeout=10, interval=0.01)
    stats = httpx.get(root(sim) + "/_sim/stats", timeout=5).json()["webhooks"]
    assert stats == {**dict.fromkeys(("failed", "retried", "dropped", "queued"), 0),
                     "delivered": 8, "last_error": ""}  # fmt: skip


def test_webhook_url_is_a_template_per_app(
    make_sim: MakeSim, receiver: Callable[..., Receiver], key: rsa.RSAPrivateKey
) -> None:
    recv = receiver()
    sim = make_sim(meetings=0, webhook_url=recv.url, webhook_key=key)
    (mid,) = sim.add_app("acc-2", "app-2", 1, live=True, participants=1)
    events = verified_events(recv.wait_for(2), key.public_key())
    assert [(e.name, e.meeting_id) for e in events] == [
        ("meeting.started", mid),
        ("meeting.participantJoined", mid),
    ]
    assert {p.path for p in recv.posts} == {"/webhooks/acc-2/app-2"}


def test_webhook_5xx_is_retried_with_the_same_uuid(
    make_sim: MakeSim, receiver: Callable[..., Receiver], key: rsa.RSAPrivateKey
) -> None:
    recv = receiver(500, 503)
    sim = make_sim(webhook_url=recv.url, webhook_key=key, webhook_retry_delays=(0.01, 0.02))
    sim.set_participants(sim.meeting_ids[0], 1)
    posts = recv.wait_for(4)
    assert len({p.headers["rtk-uuid"] for p in posts[:3]}) == 1  # one delivery, three attempts
    assert len({p.body for p in posts[:3]}) == 1
    assert posts[3].headers["rtk-uuid"] != posts[0].headers["rtk-uuid"]
    names = [e.name for e in verified_events(posts, key.public_key())]
    assert names == ["meeting.started"] * 3 + ["meeting.participantJoined"]
    wait_for(lambda: sim.webhook_stats()["delivered"] == 2, timeout=10, interval=0.01)
    stats = sim.webhook_stats()
    assert (stats["retried"], stats["failed"], stats["last_error"]) == (2, 0, "HTTP 503")


@pytest.mark.parametrize("status", [400, 401, 404, 413])
def test_webhook_4xx_is_not_retried(
    make_sim: MakeSim, receiver: Callable[..., Receiver], key: rsa.RSAPrivateKey, status: int
) -> None:
    recv = receiver(status)
    sim = make_sim(webhook_url=recv.url, webhook_key=key, webhook_retry_delays=(0.01,))
    sim.set_participants(sim.meeting_ids[0], 1)
    posts = recv.wait_for(2)
    assert posts[0].headers["rtk-uuid"] != posts[1].headers["rtk-uuid"]
    wait_for(lambda: sim.webhook_stats()["delivered"] == 1, timeout=10, interval=0.01)
    stats = sim.webhook_stats()
    assert (stats["failed"], stats["retried"], stats["last_error"]) == (1, 0, f"HTTP {status}")
    assert len(recv.posts) == 2


def test_webhook_retries_end_in_failure(make_sim: MakeSim, key: rsa.RSAPrivateKey) -> None:
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim = make_sim(
        webhook_url=f"http://127.0.0.1:{port}/x",
        webhook_key=key,
        webhook_retries=2,
        webhook_retry_delays=(0.01,),
    )
    sim.set_participants(sim.meeting_ids[0], 1)
    wait_for(lambda: sim.webhook_stats()["failed"] == 2, timeout=10, interval=0.01)
    stats = sim.webhook_stats()
    assert (stats["retried"], stats["delivered"]) == (4, 0)
    assert stats["last_error"].startswith("ConnectError")


def test_webhook_full_queue_drops_and_never_blocks(
    make_sim: MakeSim, receiver: Callable[..., Receiver], key: rsa.RSAPrivateKey
) -> None:
    gate = threading.Event()
    recv = receiver(gate=gate)
    sim = make_sim(webhook_url=recv.url, webhook_key=key, webhook_queue_size=3, webhook_timeout=20)
    mid = sim.meeting_ids[0]
    try:
        sim.set_participants(mid, 1)  # started (in flight, held by the gate) + 1 joined queued
        recv.wait_for(1)
        started = time.monotonic()
        sim.set_participants(mid, 6)  # 5 joined: 2 fit, 3 are dropped
        with client(sim) as c:
            assert c.get(active(sim, mid)).json()["data"]["live_participants"] == 6
        assert time.monotonic() - started < 2.0  # the stuck delivery holds up nothing
        stats = sim.webhook_stats()
        assert (stats["dropped"], stats["queued"], stats["delivered"]) == (3, 3, 0)
    finally:
        gate.set()
    assert len(recv.wait_for(4)) == 4
    wait_for(lambda: sim.webhook_stats()["delivered"] == 4, timeout=10, interval=0.01)
    assert sim.webhook_stats()["dropped"] == 3


def test_webhook_auto_mode_sends_events_nobody_polls_for(
    receiver: Callable[..., Receiver], key: rsa.RSAPrivateKey
) -> None:
    recv = receiver()
    sim = Simulator(
        token=TOKEN, meetings=4, seed=5, speed=200, webhook_url=recv.url, webhook_key=key
    )
    sim.start()
    try:
        with recv.cond:  # a whole session: started, then ended
            assert recv.cond.wait_for(lambda: _whole_session(recv.posts) is not None, 20)
    finally:
        sim.stop()
    assert sim.request_count() == 0
    events = verified_events(list(recv.posts), key.public_key())
    by_session: dict[str | None, list[str]] = {}
    for e in events:
        by_session.setdefault(e.session_id, []).append(e.name)
    for names in by_session.values():
        if names[0] == "meeting.started" and names[-1] == "meeting.ended":
            assert names.count("meeting.participantJoined") == names.count(
                "meeting.participantLeft"
            )
            assert names.count("meeting.started") == names.count("meeting.ended") == 1
    ended = [e for e in events if e.name == "meeting.ended"]
    assert {e.reason for e in ended} == {"ALL_PARTICIPANTS_LEFT"}


def _whole_session(posts: list[Post]) -> str | None:
    started = {
        json.loads(p.body)["meeting"]["sessionId"] for p in posts if b'"meeting.started"' in p.body
    }
    for p in posts:
        doc = json.loads(p.body)
        if doc["event"] == "meeting.ended" and doc["meeting"]["sessionId"] in started:
            return str(doc["meeting"]["sessionId"])
    return None


def test_webhook_key_without_url_and_no_webhooks(make_sim: MakeSim, key: rsa.RSAPrivateKey) -> None:
    keyed = make_sim(webhook_key=key)
    assert served_key(keyed).public_numbers() == key.public_key().public_numbers()
    assert keyed.webhook_key_url == root(keyed) + "/.well-known/webhooks.json"
    plain = make_sim()
    with httpx.Client(timeout=5) as c:
        assert c.get(root(plain) + "/.well-known/webhooks.json").status_code == 404
        assert c.post(root(keyed) + "/.well-known/webhooks.json").status_code == 405
        for sim in (keyed, plain):
            assert "webhooks" not in c.get(root(sim) + "/_sim/stats").json()
            with pytest.raises(RuntimeError, match="no webhook_url"):
                sim.webhook_stats()
            sim.set_participants(sim.meeting_ids[0], 2)  # no events without a URL
    assert not [t for t in threading.enumerate() if t.name == "sim-webhooks"]
    assert keyed.request_count() == plain.request_count() == 0


def test_webhook_sender_and_real_receiver(make_sim: MakeSim, key: rsa.RSAPrivateKey) -> None:
    got: list[tuple[tuple[str, str], Event]] = []
    done = threading.Condition()

    def on_event(app: tuple[str, str], event: Event) -> None:
        with done:
            got.append((app, event))
            done.notify_all()

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

    sim = make_sim(webhook_key=key)  # first only the key, to configure the receiver with it
    keys = KeySource(served_key(sim))
    stats = WebhookStats()
    app = WebhookReceiver(keys=keys, apps=lambda: {("acc", "app")}, on_event=on_event, stats=stats)
    server = make_server("127.0.0.1", 0, app, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/webhooks/{{account_id}}/{{app_id}}"
        sender = make_sim(meetings=0, webhook_url=url, webhook_key=key)
        (mid,) = sender.add_app("acc", "app", 1)
        sender.set_participants(mid, 2)
        sender.end_session(mid)
        with done:
            assert done.wait_for(lambda: len(got) == 6, 15)
    finally:
        server.shutdown()
        server.server_close()
    assert [e.name for _, e in got][::5] == ["meeting.started", "meeting.ended"]
    assert stats.snapshot().requests == {("acc", "app", "accepted"): 6}


def test_webhook_validation(key: rsa.RSAPrivateKey) -> None:
    url = "http://127.0.0.1:9/w"
    for options, message in [
        ({"webhook_url": "ftp://host/x"}, "webhook_url must be an http"),
        ({"webhook_url": "/webhooks"}, "webhook_url must be an http"),
        ({"webhook_url": url, "webhook_retries": -1}, "webhook_retries must be >= 0"),
        ({"webhook_url": url, "webhook_retry_delays": ()}, "webhook_retry_delays"),
        ({"webhook_url": url, "webhook_retry_delays": (-1,)}, "webhook_retry_delays"),
        ({"webhook_url": url, "webhook_timeout": 0}, "webhook_timeout must be > 0"),
        ({"webhook_url": url, "webhook_queue_size": 0}, "webhook_queue_size must be >= 1"),
        ({"webhook_key": "not a key"}, "webhook_key must be an RSA private key"),
    ]:
        options.setdefault("webhook_key", key)
        with pytest.raises(ValueError, match=message):
            Simulator(token=TOKEN, **options)


@pytest.mark.process
def test_cli_webhooks(tmp_path: Path, receiver: Callable[..., Receiver]) -> None:
    recv = receiver()
    args = ["--meetings", "1", "--all-live", "--no-auto", "--token", TOKEN]
    with _cli(tmp_path, *args, "--webhook-url", recv.url) as fields:
        public = parse_well_known(httpx.get(fields["webhook_key_url"], timeout=5).content)
        assert public.key_size == 2048  # made at start
        base = fields["base_url"].removesuffix("/client/v4")
        httpx.post(f"{base}/_sim/meetings/{fields['meetings']}", json={"end": True}, timeout=5)
        events = verified_events(recv.wait_for(2), public)
    assert [e.name for e in events] == ["meeting.participantLeft", "meeting.ended"]
    assert events[1].reason == "HOST_ENDED_MEETING"


@pytest.mark.process
def test_cli_webhook_key_file(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with _cli(tmp_path, "--meetings", "1", "--webhook-key-file", str(pem)) as fields:
        public = parse_well_known(httpx.get(fields["webhook_key_url"], timeout=5).content)
    assert public.public_numbers() == key.public_key().public_numbers()
    (tmp_path / "bad.pem").write_text("not a key")
    for path, message in [
        ("bad.pem", "not an unencrypted PEM private key"),
        ("nope", "cannot read"),
    ]:
        run = subprocess.run(
            [sys.executable, "-m", "exporter.simulator", "--webhook-key-file", path],
            capture_output=True,
            text=True,
            timeout=20,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        assert run.returncode == 2 and message in run.stderr, run.stderr
