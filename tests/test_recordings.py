"""Recordings and livestreams: parsing, listings, books, pulls and their series, with the network
faked at the transport (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client.core import Metric

from exporter.client import ApiClient, RateLimiter, make_http_client
from exporter.config import App
from exporter.errors import ApiError
from exporter.listings import PER_PAGE, walk
from exporter.model import MeetingKey
from exporter.pulls import PullCollector, PullJob, PullPlan, Pulls, PullStats, pull_intervals
from exporter.recordings import (
    LivestreamBook,
    Media,
    RecordingBook,
    parse_livestream,
    parse_recording,
)

BASE = "https://api.test/client/v4"
APP = ("acc", "app")
SECRETS = ("https://download.example/secret.mp4", "secret-stream-key", "rtmp://ingest.secret")
T0 = 1_760_000_000.0


def iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat()


def rec(rid: str, status: str, *, meeting: str = "m1", invoked: float = T0, **extra: Any) -> dict:
    return {
        "id": rid,
        "status": status,
        "invoked_time": iso(invoked),
        "meeting": {"id": meeting, "title": "t"},
        "download_url": SECRETS[0],
        "output_file_name": "secret-name.mp4",
        "storage_config": {"secret": "x"},
        **extra,
    }


@dataclass
class Api:
    """A fake app listing: page base 0 or 1, a per-page cap below what is asked, paging or not,
    livestreams as a list or as one object with paging inside data."""

    recordings: list[dict] = field(default_factory=list)
    livestreams: list[dict] = field(default_factory=list)
    base: int = 1
    cap: int = 1000
    paging: bool = True
    stream_shape: str = "list"
    status: int = 200
    requests: list[dict[str, list[str]]] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        query = parse_qs(request.url.query.decode())
        self.requests.append(query)
        if self.status != 200:
            return httpx.Response(self.status, json={"success": False, "error": {"message": "no"}})
        items = self.recordings if request.url.path.endswith("/recordings") else self.livestreams
        size = min(int(query["per_page"][0]), self.cap)
        first = (int(query["page_no"][0]) - self.base) * size
        chunk = items[first : first + size] if first >= 0 else []
        paging = {
            "total_count": len(items),
            "start_offset": first + 1,
            "end_offset": first + len(chunk),
        }
        if request.url.path.endswith("/livestreams") and self.stream_shape == "object":
            data: Any = chunk[0] if chunk else {}
            doc = {"success": True, "data": {**data, "paging": paging}}
            return httpx.Response(200, json=doc)
        doc = {"success": True, "data": chunk}
        if self.paging:
            doc["paging"] = paging
        return httpx.Response(200, json=doc)


def run(api: Api, work: Callable[[ApiClient], Any]) -> Any:
    async def go() -> Any:
        http = make_http_client(
            timeout_seconds=1, max_connections=2, transport=httpx.MockTransport(api)
        )
        async with http:
            client = ApiClient(http, base_url=BASE, token="tok", limiter=RateLimiter(10**9, 1))
            return await work(client)

    return asyncio.run(go())


# --- parsing -----------------------------------------------------------------------------------


def test_a_recording_is_read_from_a_listing_and_from_a_webhook():
    listed = parse_recording(rec("r1", "RECORDING", started_time=iso(T0 + 5)))
    assert (listed.id, listed.meeting_id, listed.status) == ("r1", "m1", "RECORDING")
    assert listed.invoked_at == T0 and listed.started_at == T0 + 5
    hook = {"recordingId": "r2", "status": "UPLOADED", "meetingId": "m2", "stoppedTime": iso(T0)}
    got = parse_recording(hook, now=T0 + 9)
    assert (got.id, got.meeting_id, got.status, got.invoked_at) == ("r2", "m2", "UPLOADED", T0 + 9)
    assert not any(secret in repr(listed) for secret in (*SECRETS, "secret-name"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "EXPLODED"}, "unknown status 'EXPLODED'"),
        ({"status": None}, "status is missing"),
        ({"invoked_time": "yesterday"}, "invoked_time"),
        ({"meeting": {"id": "../x"}}, "meeting.id"),
        ({"id": ""}, "id is missing"),
    ],
)
def test_a_malformed_recording_is_refused_naming_what_is_wrong(change, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_recording({**rec("r1", "INVOKED"), **change})


def test_livestream_offline_is_idle_and_secrets_are_not_kept():
    stream = parse_livestream(
        {"streamId": "s1", "status": "OFFLINE", "meetingId": "m1", "stream_key": SECRETS[1]}
    )
    assert (stream.id, stream.status, stream.meeting_id) == ("s1", "IDLE", "m1")
    assert SECRETS[1] not in repr(stream)


# --- listings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("base", [0, 1])
@pytest.mark.parametrize("cap", [7, 1000])
@pytest.mark.parametrize("paging", [True, False])
def test_the_walk_reads_every_item_whatever_the_page_base_cap_and_paging(base, cap, paging):
    if not paging and cap < PER_PAGE:
        pytest.skip("without paging a capped page cannot be told from the last one")
    if not paging and base == 0:
        pytest.skip("without paging the page base cannot be learned")
    api = Api([rec(f"r{i}", "UPLOADED") for i in range(23)], base=base, cap=cap, paging=paging)
    walked = run(
        api,
        lambda c: walk(
            c, "/accounts/acc/realtime/kit/app/recordings", {}, parse_recording, key=lambda r: r.id
        ),
    )
    assert sorted(r.id for r in walked.items) == sorted(f"r{i}" for i in range(23))
    assert walked.complete


def test_malformed_items_are_skipped_with_their_page_and_index():
    api = Api(
        [rec("r0", "UPLOADED"), {**rec("r1", "X"), "status": "WHAT"}, rec("r2", "ERRORED")], cap=2
    )
    walked = run(api, lambda c: walk(c, "/x/recordings", {}, parse_recording, key=lambda r: r.id))
    assert [r.id for r in walked.items] == ["r0", "r2"]
    assert walked.invalid == ["page 1, index 1: unknown status 'WHAT'"]


def test_a_failed_page_fails_the_pull():
    with pytest.raises(ApiError) as err:
        run(
            Api(status=403),
            lambda c: walk(c, "/x/recordings", {}, parse_recording, key=lambda r: r.id),
        )
    assert err.value.reason == "auth"


# --- books -------------------------------------------------------------------------------------


def take(book: RecordingBook, *recs: dict, now: float = T0 + 10, complete: bool = True) -> None:
    book.take_listing([parse_recording(r) for r in recs], now, complete)


def test_finished_recordings_are_counted_once_and_not_at_the_first_look():
    book = RecordingBook(86400)
    take(book, rec("old", "UPLOADED"), rec("a", "RECORDING"), rec("b", "INVOKED"))
    assert book.finished_total == {"UPLOADED": 0, "ERRORED": 0}  # already finished: not counted
    take(book, rec("old", "UPLOADED"), rec("a", "UPLOADED"), rec("b", "ERRORED"))
    assert book.finished_total == {"UPLOADED": 1, "ERRORED": 1}
    book.take_event(parse_recording({"id": "a", "status": "UPLOADED", "meetingId": "m1"}, T0), T0)
    take(
        book, rec("old", "UPLOADED"), rec("a", "UPLOADED"), rec("b", "ERRORED"), rec("c", "ERRORED")
    )
    assert book.finished_total == {"UPLOADED": 1, "ERRORED": 2}  # c: new, finished between looks


def test_a_webhook_counts_a_finish_at_once_and_the_listing_does_not_count_it_again():
    book = RecordingBook(86400)
    take(book, rec("a", "UPLOADING"))
    event = {"recording": {"id": "a", "status": "UPLOADED", "meetingId": "m1"}}
    media = Media(lambda: T0 + 20)
    media.recordings[APP] = type("P", (), {"book": book})()  # type: ignore[assignment]
    assert media.take_event(APP, "recording.statusUpdate", event) == "m1"
    assert book.finished_total["UPLOADED"] == 1
    take(book, rec("a", "UPLOADED"), now=T0 + 30)
    assert book.finished_total["UPLOADED"] == 1


def test_a_restart_does_not_count_old_finished_recordings_again():
    for _ in range(2):  # a new book is what a restart starts from
        book = RecordingBook(86400)
        take(book, rec("a", "UPLOADED"), rec("b", "ERRORED"))
        assert book.finished_total == {"UPLOADED": 0, "ERRORED": 0}


def test_the_view_has_the_latest_recording_its_state_since_and_all_six_counts():
    book = RecordingBook(3600)
    take(
        book,
        rec("r1", "UPLOADED", invoked=T0 - 100, stopped_time=iso(T0 - 50)),
        rec("r2", "RECORDING", invoked=T0 - 10, started_time=iso(T0 - 5)),
        rec("r3", "PAUSED", meeting="m2", invoked=T0 - 7200),  # outside the window
        now=T0,
    )
    latest, active, counts = book.view(T0)
    assert latest["m1"].id == "r2" and latest["m1"].since() == T0 - 5
    assert "m2" not in latest and active == {"m1": True, "m2": True}
    assert counts == {
        "INVOKED": 0,
        "RECORDING": 1,
        "UPLOADING": 0,
        "UPLOADED": 1,
        "ERRORED": 0,
        "PAUSED": 0,
    }


def test_a_state_without_its_time_is_dated_when_first_seen():
    book = RecordingBook(86400)
    take(book, rec("r1", "UPLOADING", invoked=T0), now=T0 + 1)
    take(book, rec("r1", "UPLOADING", invoked=T0), now=T0 + 99)
    assert book.view(T0 + 99)[0]["m1"].since() == T0 + 1


def test_memory_is_bounded_by_the_window():
    book = RecordingBook(60)
    take(book, *(rec(f"r{i}", "UPLOADED", invoked=T0) for i in range(100)), now=T0)
    take(book, rec("new", "INVOKED", invoked=T0 + 1000), now=T0 + 1000)
    assert len(book._finished) == 0 and len(book._recordings) == 1


def test_livestreams_keep_the_latest_per_meeting_and_count_every_status():
    book = LivestreamBook()
    book.take_listing(
        [
            parse_livestream(
                {"id": "s1", "status": "IDLE", "meeting_id": "m1", "created_at": iso(T0)}
            ),
            parse_livestream(
                {"id": "s2", "status": "LIVE", "meeting_id": "m1", "created_at": iso(T0 + 1)}
            ),
        ],
        complete=True,
    )
    book.take_event(parse_livestream({"streamId": "s2", "status": "ERRORED"}))
    latest, counts = book.view()
    assert latest["m1"].id == "s2" and latest["m1"].status == "ERRORED"
    assert counts == {"LIVE": 0, "IDLE": 1, "ERRORED": 1, "INVOKED": 0}


# --- pulls and series --------------------------------------------------------------------------


def app_config(**kw: Any) -> App:
    return App.model_validate(
        {"account_id": "acc", "app_id": "app", "meetings": [{"id": "m1"}, {"id": "m2"}], **kw}
    )


def samples(metrics: Iterator[Metric]) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in metrics for s in m.samples}


@pytest.mark.parametrize("shape", ["list", "object"])
def test_pulls_fill_the_series_of_exported_meetings_and_never_a_secret(shape):
    api = Api(
        [rec("r1", "RECORDING", started_time=iso(T0 + 1)), rec("r0", "ERRORED", meeting="m9")],
        [{"id": "s1", "status": "LIVE", "meeting_id": "m1", "stream_key": SECRETS[1],
          "ingest_server": SECRETS[2]}],
        stream_shape=shape,
    )  # fmt: skip
    media = Media(lambda: T0 + 10)
    pulls = media.plan([app_config(recordings={"enabled": True}, livestreams={"enabled": True})])
    assert [(kind, every) for _, kind, every, _ in pulls] == [
        ("recordings", 60),
        ("livestreams", 60),
    ]

    async def both(client: ApiClient) -> None:
        for *_, pull in pulls:
            await pull.run(client)

    run(api, both)
    exported = {
        MeetingKey("acc", "app", "m1"): (("team", "a"),),
        MeetingKey("acc", "app", "m2"): (),
    }
    got = samples(media.collect(exported))
    m1 = (("account_id", "acc"), ("app_id", "app"), ("meeting_id", "m1"))
    m2 = (("account_id", "acc"), ("app_id", "app"), ("meeting_id", "m2"))
    assert got[("realtimekit_recording_active", (*m1, ("team", "a")))] == 1
    assert got[("realtimekit_recording_active", m2)] == 0
    assert got[("realtimekit_recording_status", (*m1, ("status", "RECORDING"), ("team", "a")))] == 1
    assert (
        got[("realtimekit_recording_state_since_timestamp_seconds", (*m1, ("team", "a")))] == T0 + 1
    )
    assert not any(
        name == "realtimekit_recording_status" and ("meeting_id", "m2") in labels
        for name, labels in got
    )
    app = (("account_id", "acc"), ("app_id", "app"))
    assert got[("realtimekit_app_recordings", (*app, ("status", "ERRORED")))] == 1
    assert got[("realtimekit_recordings_finished_total", (*app, ("status", "ERRORED")))] == 0
    assert got[("realtimekit_livestream_status", (*m1, ("status", "LIVE"), ("team", "a")))] == 1
    assert got[("realtimekit_app_livestreams", (*app, ("status", "IDLE")))] == 0
    text = json.dumps([list(k) for k in got])
    assert not any(secret in text for secret in (*SECRETS, "secret-name"))
    window = api.requests[0]
    assert window["sort_by"] == ["invokedTime"] and window["sort_order"] == ["DESC"]
    assert window["start_time"][0].startswith(iso(T0 + 10 - 86400)[:16])


class FakePull:
    def __init__(self, pages: int, error: ApiError | None = None) -> None:
        self.pages, self.error, self.runs = pages, error, 0

    def cost(self) -> int:
        return self.pages

    async def run(self, client: ApiClient) -> None:
        self.runs += 1
        if self.error is not None:
            raise self.error


def client_with(requests: int, period: float) -> ApiClient:
    http = make_http_client(timeout_seconds=1, max_connections=1)
    return ApiClient(http, base_url=BASE, token="t", limiter=RateLimiter(requests, period))


def test_pulls_take_only_what_the_session_polls_leave():
    client = client_with(60, 60)  # 1 request/s
    jobs = [
        PullJob(APP, "recordings", 10, FakePull(3), client),
        PullJob(APP, "livestreams", 10, FakePull(1), client),
    ]
    free = pull_intervals(PullPlan(jobs, {}))
    assert free == {(APP, "recordings"): 10, (APP, "livestreams"): 10}  # 0.4/s of 0.95/s
    busy = pull_intervals(PullPlan(jobs, {id(client.limiter): 0.85}))  # 0.1/s left for 0.4/s
    assert busy[(APP, "recordings")] == pytest.approx(
        10 * 0.4 / (client.limiter.per_second / 1.05 - 0.85)
    )
    full = pull_intervals(PullPlan(jobs, {id(client.limiter): 5.0}))
    assert set(full.values()) == {86400.0}


def test_a_pull_reports_up_errors_and_interval():
    client = client_with(60, 60)
    good, bad = FakePull(1), FakePull(1, ApiError("auth", "HTTP 403: no"))
    stats = PullStats()

    async def go() -> None:
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.start(paused=True)
        pulls = Pulls(scheduler, stats)
        pulls.schedule(
            PullPlan(
                [
                    PullJob(APP, "usage", 900, good, client),
                    PullJob(APP, "recordings", 60, bad, client),
                ]
            )
        )
        assert len(scheduler.get_jobs()) == 2
        await pulls.run_pull((APP, "usage"))
        await pulls.run_pull((APP, "recordings"))
        await pulls.run_pull((APP, "recordings"))
        pulls.schedule(PullPlan([PullJob(APP, "usage", 900, good, client)]))
        assert [j.id for j in scheduler.get_jobs()] == ["pull:usage:acc/app"]
        scheduler.shutdown(wait=False)

    asyncio.run(go())
    got = samples(PullCollector(stats).collect())
    labels = (("account_id", "acc"), ("app_id", "app"), ("pull", "usage"))
    assert got[("realtimekit_app_pull_up", labels)] == 1
    assert got[("realtimekit_app_pull_interval_seconds", labels)] == 900
    assert not any(("pull", "recordings") in k for _, k in got)  # unscheduled: gone
    assert good.runs == 1 and bad.runs == 2


def test_a_failing_pull_is_up_0_with_its_reason():
    client = client_with(60, 60)
    stats = PullStats()

    async def go() -> None:
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.start(paused=True)
        pulls = Pulls(scheduler, stats)
        pulls.schedule(
            PullPlan([PullJob(APP, "recordings", 60, FakePull(1, ApiError("auth", "x")), client)])
        )
        await pulls.run_pull((APP, "recordings"))
        await pulls.run_pull((APP, "recordings"))
        scheduler.shutdown(wait=False)

    asyncio.run(go())
    got = samples(PullCollector(stats).collect())
    labels = (("account_id", "acc"), ("app_id", "app"), ("pull", "recordings"))
    assert got[("realtimekit_app_pull_up", labels)] == 0
    assert got[("realtimekit_app_pull_errors_total", (*labels, ("reason", "auth")))] == 2


def test_peer_reports_only_take_what_every_other_pull_leaves():
    client = client_with(60, 60)
    jobs = [
        PullJob(APP, "peer_reports", 6, FakePull(1), client),
        PullJob(APP, "recordings", 2, FakePull(1), client),
    ]
    got = pull_intervals(PullPlan(jobs, {id(client.limiter): 0.2}))
    assert got[(APP, "recordings")] == 2  # 0.5/s fits in what the polls leave
    left = client.limiter.per_second / 1.05 - 0.2 - 0.5
    assert got[(APP, "peer_reports")] == pytest.approx(max(6, 1 / left))


def test_a_failing_pull_is_logged_once_per_change(caplog):
    client = client_with(60, 60)
    pull = FakePull(1, ApiError("auth", "HTTP 403: no"))

    async def go() -> None:
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.start(paused=True)
        pulls = Pulls(scheduler, PullStats())
        pulls.schedule(PullPlan([PullJob(APP, "usage", 60, pull, client)]))
        for _ in range(5):
            await pulls.run_pull((APP, "usage"))
        pull.error = None
        await pulls.run_pull((APP, "usage"))
        scheduler.shutdown(wait=False)

    with caplog.at_level("INFO", logger="exporter.pulls"):
        asyncio.run(go())
    lines = [r.getMessage() for r in caplog.records if r.name == "exporter.pulls"]
    assert len([line for line in lines if "reason=auth" in line]) == 1
    assert any("recovered usage pull" in line for line in lines)
