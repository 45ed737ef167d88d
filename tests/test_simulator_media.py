"""The simulator's recordings and livestreams: endpoints, lifecycle, conventions, faults and
their webhooks, over real loopback HTTP."""

from __future__ import annotations

import httpx
import pytest

from exporter.simulator import SECRET
from exporter.webhooks import parse_event, parse_well_known, verify
from tests.support.clock import FakeTime
from tests.support.simulator import T0, MakeSim, Receiver, make_sim_fixture

make_sim = make_sim_fixture(seed=3, meetings=3)


def test_a_recording_moves_invoked_recording_uploading_uploaded(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim, api = make_sim(clock=clock)
    mid = sim.meeting_ids[0]
    sim.set_participants(mid, 2)
    rid = sim.recordings.start(mid)
    first = api.ok("/recordings")["data"]
    assert [r["id"] for r in first] == [rid]
    assert first[0]["status"] == "INVOKED" and first[0]["started_time"] is None
    assert first[0]["invoked_time"] == "2027-01-15T08:00:00.000Z"
    assert first[0]["session_id"] == sim.session(mid)["id"]  # type: ignore[index]
    assert first[0]["meeting"]["id"] == mid
    assert api.ok(f"/recordings/active-recording/{mid}")["data"]["id"] == rid
    clock.advance(3)
    assert sim.recordings.step(rid) == "RECORDING"
    assert sim.recordings.get(rid)["started_time"] == "2027-01-15T08:00:03.000Z"
    clock.advance(120)
    assert sim.recordings.step(rid) == "UPLOADING"
    rec = api.ok("/recordings")["data"][0]
    assert rec["stopped_time"] == "2027-01-15T08:02:03.000Z" and rec["recording_duration"] == 120
    assert rec["file_size"] is None
    no_active = api.get(f"/recordings/active-recording/{mid}")  # uploading: not recording now
    assert no_active.status_code == 404
    assert no_active.json()["error"]["message"] == f"No active recording found for meeting_id {mid}"
    assert sim.recordings.step(rid) == "UPLOADED"
    assert sim.recordings.step(rid) == "UPLOADED"  # finished: stays
    done = api.ok("/recordings")["data"][0]
    assert done["status"] == "UPLOADED" and done["file_size"] > 0
    other = sim.recordings.start(sim.meeting_ids[1])
    sim.recordings.set_status(other, "ERRORED")
    assert sim.recordings.get(other)["status"] == "ERRORED"
    assert sim.recordings.get(other)["stopped_time"] is not None


def test_recordings_carry_private_fields_with_the_secret_mark(make_sim: MakeSim) -> None:
    sim, api = make_sim()
    sim.recordings.start(sim.meeting_ids[0], status="UPLOADED")
    rec = api.ok("/recordings")["data"][0]
    for name in ("download_url", "audio_download_url", "output_file_name"):
        assert SECRET in rec[name], name
    assert SECRET in rec["storage_config"]["bucket"]


def test_recordings_listing_filters_sorts_and_pages(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim, api = make_sim(clock=clock, meetings=2)
    m1, m2 = sim.meeting_ids
    ids = []
    for i, status in enumerate(["UPLOADED", "ERRORED", "RECORDING", "INVOKED", "UPLOADING"]):
        ids.append(sim.recordings.start((m1, m2)[i % 2], status=status))
        clock.advance(60)
    newest_first = [r["id"] for r in api.ok("/recordings", per_page=50)["data"]]
    assert newest_first == ids[::-1]
    oldest_first = api.ok("/recordings", sort_by="invokedTime", sort_order="ASC")["data"]
    assert [r["id"] for r in oldest_first] == ids
    joined = api.ok("/recordings", status="UPLOADED,ERRORED")["data"]
    repeated = api.ok("/recordings", status=["uploaded", "ERRORED"])["data"]
    assert {r["id"] for r in joined} == {r["id"] for r in repeated} == set(ids[:2])
    assert {r["id"] for r in api.ok("/recordings", meeting_id=m2)["data"]} == {ids[1], ids[3]}
    window = api.ok(
        "/recordings", start_time="2027-01-15T08:01:00Z", end_time="2027-01-15T08:03:00.000Z"
    )
    assert {r["id"] for r in window["data"]} == set(ids[1:4])
    page2 = api.ok("/recordings", per_page=2, page_no=2, sort_order="ASC")
    assert [r["id"] for r in page2["data"]] == ids[2:4]
    assert page2["paging"] == {"total_count": 5, "start_offset": 3, "end_offset": 4}


def test_recordings_follow_the_page_conventions_but_always_send_paging(make_sim: MakeSim) -> None:
    sim, api = make_sim(page_base=0, per_page_cap=2, paging="absent")
    for _ in range(3):
        sim.recordings.start(sim.meeting_ids[0])
    first = api.ok("/recordings", per_page=10, page_no=0, sort_order="ASC")
    assert len(first["data"]) == 2
    assert first["paging"] == {"total_count": 3, "start_offset": 1, "end_offset": 2}
    assert len(api.ok("/recordings", per_page=10, page_no=1)["data"]) == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "DONE"}, "status must be among"),
        ({"start_time": "yesterday"}, "start_time must be an ISO-8601 time"),
        ({"end_time": "2027-01-15T08:00:00"}, "end_time must carry a time zone"),
        ({"page_no": "x"}, "page_no and per_page must be integers"),
    ],
)
def test_bad_recording_queries_are_400(
    make_sim: MakeSim, params: dict[str, str], message: str
) -> None:
    _, api = make_sim()
    r = api.get("/recordings", **params)
    assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_no_active_recording_message_is_a_convention(make_sim: MakeSim) -> None:
    sim, api = make_sim(no_recording="not_found")
    r = api.get(f"/recordings/active-recording/{sim.meeting_ids[0]}")
    assert r.status_code == 404 and r.json()["error"] == {
        "code": 404,
        "message": "Recording not found",
    }


def test_forced_faults_on_recordings_and_livestreams(make_sim: MakeSim) -> None:
    sim, api = make_sim()
    sim.recordings.start(sim.meeting_ids[0])
    sim.livestreams.start(sim.meeting_ids[0])
    sim.set_endpoint_fault("recordings", "500")
    assert api.get("/recordings").status_code == 500
    sim.set_endpoint_fault("recordings", "wrong_types")
    broken = api.ok("/recordings")["data"][0]
    assert broken["id"] == 12345 and isinstance(broken["invoked_time"], int)
    sim.set_endpoint_fault("recordings", "unknown_status")
    assert api.ok("/recordings")["data"][0]["status"] == "ARCHIVED"
    sim.set_endpoint_fault("recordings", None)
    assert api.ok("/recordings")["data"][0]["status"] == "INVOKED"
    sim.set_endpoint_fault("livestreams", "503")
    assert api.get("/livestreams").status_code in (502, 503)
    assert sim.endpoint_fault("livestreams") == "503"
    with pytest.raises(ValueError, match="unknown endpoint"):
        sim.set_endpoint_fault("active", "500")


def test_livestream_lifecycle_and_secrets(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim, api = make_sim(clock=clock)
    mid = sim.meeting_ids[0]
    assert api.get(f"/meetings/{mid}/active-livestream").status_code == 404
    sid = sim.livestreams.start(mid)
    active = api.ok(f"/meetings/{mid}/active-livestream")["data"]
    assert active["id"] == sid and active["status"] == "INVOKED" and active["meeting_id"] == mid
    for name in ("stream_key", "ingest_server", "playback_url"):
        assert SECRET in active[name], name
    clock.advance(5)
    sim.livestreams.set_status(sid, "LIVE")
    listed = api.ok("/livestreams")
    assert [(s["id"], s["status"]) for s in listed["data"]] == [(sid, "LIVE")]
    assert listed["paging"]["total_count"] == 1
    assert listed["data"][0]["updated_at"] == "2027-01-15T08:00:05.000Z"
    sim.livestreams.set_status(sid, "ERRORED")
    assert api.ok("/livestreams", status="ERRORED")["data"][0]["id"] == sid
    assert api.ok("/livestreams", status="LIVE,IDLE")["data"] == []
    assert api.get(f"/meetings/{mid}/active-livestream").status_code == 404


def test_livestream_listing_as_the_published_object(make_sim: MakeSim) -> None:
    sim, api = make_sim(livestream_shape="object")
    ids = [sim.livestreams.start(m, status="LIVE") for m in sim.meeting_ids]
    seen = []
    for page_no in (1, 2, 3, 4):
        data = api.ok("/livestreams", page_no=page_no, per_page=100)["data"]
        assert data["paging"]["total_count"] == 3
        if "id" in data:
            seen.append(data["id"])
            assert data["paging"]["start_offset"] == data["paging"]["end_offset"] == page_no
    assert seen == ids  # one per page, oldest first; page 4 is empty


def test_auto_recordings_and_livestreams_follow_sessions(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim, api = make_sim(
        clock=clock, auto=True, recording_chance=1.0, livestream_chance=1.0, meetings=[]
    )
    sim.add_meeting("m-auto")
    if sim.session("m-auto") is None:
        sim.set_participants("m-auto", 2)
    (rid,) = sim.recordings.ids("m-auto")
    (sid,) = sim.livestreams.ids("m-auto")
    clock.advance(9)
    assert sim.recordings.get(rid)["status"] == "RECORDING"
    assert sim.livestreams.get(sid)["status"] == "LIVE"
    sim.end_session("m-auto")
    assert sim.recordings.get(rid)["status"] == "UPLOADING"
    assert sim.livestreams.get(sid)["status"] == "IDLE"
    clock.advance(31)
    assert api.ok("/recordings")["data"][0]["status"] == "UPLOADED"


def test_auto_faults_error_and_stick(make_sim: MakeSim) -> None:
    clock = FakeTime(T0)
    sim, _ = make_sim(
        clock=clock, recording_chance=1.0, recording_error_rate=1.0, meetings=["a"], auto=True
    )
    if sim.session("a") is not None:
        sim.clear_session("a")
    sim.set_participants("a", 1)
    rid = sim.recordings.ids("a")[-1]
    clock.advance(70)  # 2-8 s to start, errored 5-60 s into the recording
    assert sim.recordings.get(rid)["status"] == "ERRORED"
    stuck_sim, _ = make_sim(clock=clock, meetings=["b"])
    stuck = stuck_sim.recordings.start("b", plan="stuck", status="UPLOADING")
    clock.advance(3600)
    assert stuck_sim.recordings.get(stuck)["status"] == "UPLOADING"  # never finishes


def test_status_webhooks_are_signed_and_parse(make_sim: MakeSim) -> None:
    receiver = Receiver()
    try:
        sim, _ = make_sim(webhook_url=receiver.url)
        mid = sim.meeting_ids[0]
        sim.set_participants(mid, 1)
        rid = sim.recordings.start(mid)
        sim.recordings.step(rid)
        sim.recordings.step(rid)
        sim.recordings.step(rid)
        sid = sim.livestreams.start(mid, status="LIVE")
        sim.livestreams.set_status(sid, "IDLE")
        receiver.wait_until(lambda: len(receiver.events("livestreaming.statusUpdate")) == 2)
        recs = receiver.events("recording.statusUpdate")
        assert [e["recording"]["status"] for e in recs] == [
            "INVOKED",
            "RECORDING",
            "UPLOADING",
            "UPLOADED",
        ]
        last = recs[-1]["recording"]
        assert last["recordingId"] == rid and last["meetingId"] == mid
        assert isinstance(last["fileSize"], str) and int(last["fileSize"]) > 0
        streams = receiver.events("livestreaming.statusUpdate")
        assert [(e["streamId"], e["status"]) for e in streams] == [(sid, "LIVE"), (sid, "OFFLINE")]
        key = parse_well_known(httpx.get(sim.webhook_key_url, timeout=5).content)
        for body, headers in zip(receiver.bodies, receiver.headers, strict=True):
            assert verify(key, body, headers["rtk-signature"])
            event = parse_event(body)
            assert event.meeting_id == mid
    finally:
        receiver.close()


def test_control_endpoints_drive_recordings_and_livestreams(make_sim: MakeSim) -> None:
    sim, api = make_sim()
    root = sim.base_url.removesuffix("/client/v4") + "/_sim"
    mid = sim.meeting_ids[0]
    made = httpx.post(f"{root}/recordings/{mid}", json={"status": "RECORDING"}, timeout=5).json()
    rid = made["recording"]["id"]
    assert made["ok"] and made["recording"]["status"] == "RECORDING"
    stepped = httpx.post(f"{root}/recording/{rid}", json={"step": True}, timeout=5).json()
    assert stepped["recording"]["status"] == "UPLOADING"
    bad = httpx.post(f"{root}/recording/{rid}", json={"status": "DONE"}, timeout=5)
    assert bad.status_code == 400 and "status must be one of" in bad.json()["error"]
    assert httpx.post(f"{root}/recording/nope", json={}, timeout=5).status_code == 404
    stream = httpx.post(f"{root}/livestreams/{mid}", json={"status": "LIVE"}, timeout=5).json()
    sid = stream["livestream"]["id"]
    errored = httpx.post(f"{root}/livestream/{sid}", json={"status": "ERRORED"}, timeout=5)
    assert errored.json()["livestream"]["status"] == "ERRORED"
    app = f"{root}/apps/{sim.account_id}/{sim.app_id}"
    forced = httpx.post(app, json={"fault": "500", "endpoint": "livestreams"}, timeout=5).json()
    assert forced["fault"] == "500" and api.get("/livestreams").status_code == 500
    assert api.ok("/recordings")["data"][0]["id"] == rid  # other endpoints unaffected
