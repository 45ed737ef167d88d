"""The simulator's peers: ids that join and leave, their webhooks, and their peer reports at
``GET /sessions/peer-report/{peer_id}``, over real loopback HTTP."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from exporter.simulator import SECRET
from tests.support.clock import FakeTime
from tests.support.simulator import T0, Api, MakeSim, Receiver, make_sim_fixture

make_sim = make_sim_fixture(seed=8, meetings=2)


def report_of(api: Api, peer_id: str) -> dict[str, Any]:
    return api.ok(f"/sessions/peer-report/{peer_id}", filters="quality_stats")["data"]  # type: ignore[no-any-return]


def test_peers_join_leave_and_their_reports_appear_after_leaving(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim, api = make_sim(clock=clock)
    mid = sim.meeting_ids[0]
    sim.set_participants(mid, 3)
    peers = sim.peers.current(mid)
    assert len(peers) == 3 and len(set(peers)) == 3
    assert api.get(f"/sessions/peer-report/{peers[0]}").status_code == 404  # still in the call
    clock.advance(300)
    gone = sim.peers.leave(mid, peers[0])
    assert gone == peers[0] and sim.peers.current(mid) == peers[1:]
    assert sim.session(mid)["live_participants"] == 2  # type: ignore[index]
    participant = report_of(api, gone)["participant"]
    assert participant["joined_at"] == "2027-01-15T08:00:00.000Z"
    assert participant["left_at"] == "2027-01-15T08:05:00.000Z" and participant["duration"] == 5.0
    quality = participant["peer_report"]["quality"]
    assert sorted(quality) == sorted(f"{k}_cumulative" for k in sim.peers.report_kinds(gone))
    for kind, block in quality.items():
        assert 1 <= block["quality_mos"]["avg"] <= 5 and block["packet_loss"]["avg"] >= 0
        assert ("rtt" in block) == ("producer" in kind)
        assert ("jitter_buffer_delay" in block) == ("consumer" in kind)
    sim.end_session(mid)  # everyone left: every peer has a report
    assert sim.peers.gone(mid) == [gone, peers[2], peers[1]]
    assert sim.peers.current(mid) == []


def test_reports_carry_private_metadata_with_recognisable_fakes(make_sim: MakeSim) -> None:
    sim, api = make_sim()
    mid = sim.meeting_ids[0]
    sim.set_participants(mid, 1)
    peer = sim.peers.leave(mid)
    text = json.dumps(report_of(api, peer))
    meta = report_of(api, peer)["participant"]["peer_report"]["metadata"]
    assert meta["ip_information"]["ipv4"].startswith("203.0.113.")
    assert SECRET in meta["ip_information"]["asn"]["name"] and SECRET in meta["device_info"]["os"]
    assert text.count(SECRET) >= 8


def test_good_bad_partial_late_and_missing_reports(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim, api = make_sim(clock=clock, peer_bad_rate=1.0, peer_partial_rate=1.0)
    mid = sim.meeting_ids[0]
    sim.set_participants(mid, 6)
    sim.end_session(mid)
    reports = [report_of(api, p)["participant"]["peer_report"] for p in sim.peers.gone(mid)]
    for report in reports:
        kinds = set(report["quality"])
        assert kinds in (
            {"audio_producer_cumulative", "audio_consumer_cumulative"},
            {"audio_consumer_cumulative", "video_consumer_cumulative"},
        )
        assert all(b["quality_mos"]["avg"] < 3.5 for b in report["quality"].values())
    late_sim, late_api = make_sim(clock=clock, peer_late_rate=1.0, peer_late_seconds=100)
    late_sim.set_participants(late_sim.meeting_ids[0], 1)
    late = late_sim.peers.leave(late_sim.meeting_ids[0])
    assert late_api.get(f"/sessions/peer-report/{late}").status_code == 404
    assert late_sim.peers.report(late) is None
    clock.advance(99)
    assert late_api.get(f"/sessions/peer-report/{late}").status_code == 404
    clock.advance(1)
    assert set(report_of(late_api, late)["participant"]["peer_report"]["quality"]) >= {
        "audio_producer_cumulative",
        "video_consumer_cumulative",
    }  # a good, full call
    never_sim, never_api = make_sim(clock=clock, peer_missing_rate=1.0)
    never_sim.set_participants(never_sim.meeting_ids[0], 1)
    never = never_sim.peers.leave(never_sim.meeting_ids[0])
    clock.advance(86_400)
    r = never_api.get(f"/sessions/peer-report/{never}")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == f"No peer report found for peer_id {never}"


def test_set_report_overrides_one_peer(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim, api = make_sim(clock=clock)
    mid = sim.meeting_ids[1]
    sim.set_participants(mid, 2)
    a = sim.peers.leave(mid)
    b = sim.peers.leave(mid)
    sim.peers.set_report(a, quality="bad", kinds=["video_producer"], broken=True)
    (block,) = report_of(api, a)["participant"]["peer_report"]["quality"].values()
    assert block["quality_mos"]["avg"] == 7.5 and block["packet_loss"]["avg"] == -1.0
    assert block["rtt"]["avg"] is None
    sim.peers.set_report(b, delay=math.inf)
    assert api.get(f"/sessions/peer-report/{b}").status_code == 404
    sim.peers.set_report(b, delay=0)
    assert report_of(api, b)["participant"]["left_at"]
    with pytest.raises(ValueError, match="unknown stream kinds"):
        sim.peers.set_report(a, kinds=["smell_producer"])
    with pytest.raises(KeyError):
        sim.peers.set_report("never-joined", quality="good")
    other = sim.add_app("acc-x", "app-x", 1)[0]
    sim.set_participants(other, 1)
    stranger = sim.peers.leave(other)
    assert api.get(f"/sessions/peer-report/{stranger}").status_code == 404  # another app's


def test_participant_webhooks_carry_the_peer_ids(make_sim: MakeSim) -> None:
    receiver = Receiver()
    try:
        sim, _ = make_sim(webhook_url=receiver.url)
        mid = sim.meeting_ids[0]
        sim.set_participants(mid, 2)
        joined = sim.peers.current(mid)
        left = sim.peers.leave(mid, joined[0])
        sim.end_session(mid)
        receiver.wait_until(lambda: len(receiver.events("meeting.ended")) == 1)
        joins = [e["participant"]["peerId"] for e in receiver.events("meeting.participantJoined")]
        leaves = [e["participant"]["peerId"] for e in receiver.events("meeting.participantLeft")]
        assert joins == joined and leaves == [left, joined[1]]
        assert sorted(sim.peers.gone(mid)) == sorted(joined)
        names = [json.loads(b)["event"] for b in receiver.bodies]
        assert names[0] == "meeting.started" and names[-1] == "meeting.ended"
    finally:
        receiver.close()


def test_peer_controls_over_http(make_sim: MakeSim) -> None:
    import httpx

    sim, api = make_sim()
    root = sim.base_url.removesuffix("/client/v4") + "/_sim"
    mid = sim.meeting_ids[0]
    sim.set_participants(mid, 2)
    state = httpx.post(f"{root}/peers/{mid}", json={"leave": True}, timeout=5).json()
    assert len(state["current"]) == 1 and len(state["gone"]) == 1
    (gone,) = state["gone"]
    hidden = httpx.post(f"{root}/peer/{gone}", json={"delay": None}, timeout=5).json()
    assert hidden["report"] is None and api.get(f"/sessions/peer-report/{gone}").status_code == 404
    shown = httpx.post(
        f"{root}/peer/{gone}", json={"delay": 0, "kinds": ["audio_consumer"]}, timeout=5
    ).json()
    assert shown["kinds"] == ["audio_consumer"]
    assert list(shown["report"]["participant"]["peer_report"]["quality"]) == [
        "audio_consumer_cumulative"
    ]
    bad = httpx.post(f"{root}/peer/{gone}", json={"quality": "meh"}, timeout=5)
    assert bad.status_code == 400
    assert httpx.post(f"{root}/peer/nobody", json={}, timeout=5).status_code == 404
