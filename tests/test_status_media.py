"""The status page shows each meeting's recording and livestream state (issue 24): rendered from
the books (states, "off" vs "none" vs "not pulled yet", escaping, nothing private, one read of a
book per page), then against the real exporter process and the simulator over loopback."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.config import Config, parse_config
from exporter.health import Health
from exporter.model import NO_ACTIVE_SESSION
from exporter.pulls import PullState
from exporter.recordings import LivestreamBook, Media, Recording, RecordingBook
from exporter.simulator import SECRET, Simulator
from exporter.status import status_page
from exporter.status_media import MediaView, ago
from exporter.store import Store
from tests.support.api import TOKEN
from tests.support.metrics import value
from tests.support.page import StatusPage
from tests.support.ports import free_port
from tests.support.process import wait_for

ACCOUNT, APP, PLAIN = "acc1", "app1", "app2"
NOW = 1_700_000_000.0
MARK = "sim-secret"
PULLED = {((ACCOUNT, APP), "recordings"): PullState(60, up=True),
          ((ACCOUNT, APP), "livestreams"): PullState(60, up=True)}  # fmt: skip


def meeting_rows(text: str) -> dict[str, dict[str, str]]:
    """The meetings table as {meeting id: {header: cell text}} (a <br> reads as " | ")."""
    return StatusPage(text, br=" | ").by_meeting()


def make_config(n: int = 3) -> Config:
    on = {"enabled": True}
    return parse_config({"apps": [
        {"account_id": ACCOUNT, "app_id": APP, "meetings": [f"m{i}" for i in range(n)],
         "recordings": on, "livestreams": on},
        {"account_id": ACCOUNT, "app_id": PLAIN, "meetings": ["p0"]},
    ]})  # fmt: skip


def states(config: Config) -> Any:
    store = Store()
    store.set_targets(config.targets())
    for key in config.targets():
        store.record(key, NO_ACTIVE_SESSION, 0.05, NOW - 1)
    return store.snapshot()[1]


def render(config: Config, media: MediaView | None, **kw: Any) -> str:
    return status_page(
        states=states(config), health=Health(clock=lambda: NOW).snapshot(), config=config,
        now=NOW, stale_after=90, version="9.9.9", telemetry_path="/metrics", media=media, **kw,
    )  # fmt: skip


def media_of(config: Config) -> Media:
    media = Media(clock=lambda: NOW)
    media.plan(config.apps)
    return media


def rec(meeting: str, status: str, **times: float) -> Recording:
    return Recording(f"r-{meeting}-{status}", meeting, status, invoked_at=NOW - 600, **times)


def test_ago_reads_in_one_unit() -> None:
    assert ago(NOW, NOW - 12.7) == "12 s ago" and ago(NOW, NOW + 5) == "0 s ago"
    assert ago(NOW, NOW - 300) == "5 min ago" and ago(NOW, NOW - 3 * 3600) == "3 h ago"
    assert ago(NOW, NOW - 3 * 86400) == "3 d ago"


def test_each_meeting_shows_its_recording_and_livestream_state() -> None:
    config = make_config()
    media = media_of(config)
    book = media.recordings[(ACCOUNT, APP)].book
    book.take_listing([rec("m0", "UPLOADED", started_at=NOW - 500, stopped_at=NOW - 400),
                       rec("m1", "RECORDING", started_at=NOW - 30)], NOW - 1, complete=True)  # fmt: skip
    # a newer recording of m0 counts, not the older one
    book.take_event(Recording("r-new", "m0", "ERRORED", NOW - 60, NOW - 50, NOW - 45), NOW)
    streams = media.livestreams[(ACCOUNT, APP)].book
    media.take_event((ACCOUNT, APP), "livestreaming.statusUpdate",
                     {"streamId": "ls1", "status": "LIVE", "meeting": {"id": "m0"}})  # fmt: skip
    media.take_event((ACCOUNT, APP), "livestreaming.statusUpdate",
                     {"streamId": "ls2", "status": "OFFLINE", "meeting": {"id": "m1"}})  # fmt: skip
    assert streams.view()[0]["m1"].status == "IDLE"
    rows = meeting_rows(render(config, MediaView.of(media, PULLED, NOW)))
    assert rows["m0"]["Recording"] == "ERRORED | since 45 s ago"
    assert rows["m1"]["Recording"] == "RECORDING | since 30 s ago"
    assert rows["m2"]["Recording"] == "none"  # watched, nothing known
    assert (rows["m0"]["Livestream"], rows["m1"]["Livestream"]) == ("LIVE", "IDLE")
    assert rows["m2"]["Livestream"] == "none"
    # the app that does not pull them says so, not "none"
    assert rows["p0"]["Recording"] == rows["p0"]["Livestream"] == "off | not watched"


def test_not_pulled_yet_and_a_failing_pull_are_said() -> None:
    config = make_config()
    media = media_of(config)
    fresh = {k: PullState(60) for k in PULLED}
    rows = meeting_rows(render(config, MediaView.of(media, fresh, NOW)))
    assert rows["m0"]["Recording"] == rows["m0"]["Livestream"] == "not pulled yet"
    media.recordings[(ACCOUNT, APP)].book.take_event(rec("m1", "INVOKED"), NOW - 5)
    failing = {k: PullState(60, up=False, errors={"timeout": 1}) for k in PULLED}
    rows = meeting_rows(render(config, MediaView.of(media, failing, NOW)))
    assert rows["m0"]["Recording"] == "none | last pull failed"
    assert rows["m1"]["Recording"] == "INVOKED | since 10 min ago; last pull failed"
    # no view at all (a caller that watches nothing): every meeting off
    rows = meeting_rows(render(config, None))
    assert {r["Recording"] for r in rows.values()} == {"off | not watched"}


EVIL = '<script>alert("x")</script>'


class EvilBook(RecordingBook):
    """A book whose meeting m2 has a status no parser would let through."""

    def view(self, now: float) -> Any:
        latest, active, counts = super().view(now)
        return {**latest, "m2": rec("m2", EVIL)}, active, counts


def test_states_are_escaped_and_nothing_private_is_shown() -> None:
    config = make_config()
    media = media_of(config)
    app = (ACCOUNT, APP)
    media.recordings[app].book = EvilBook(86400)
    private = {"downloadUrl": f"https://x.invalid/{MARK}-dl", "outputFileName": f"{MARK}-file.mp4",
               "download_url": f"https://x.invalid/{MARK}-dl2", "audio_download_url": MARK,
               "storage_config": {"secret": MARK}, "output_file_name": MARK}  # fmt: skip
    media.take_event(app, "recording.statusUpdate", {"recording": {
        "id": f"{MARK}-rec-id", "status": "UPLOADED", "meetingId": "m0",
        "invokedTime": "2023-11-14T22:00:00Z", "stoppedTime": "2023-11-14T22:10:00Z", **private,
    }})  # fmt: skip
    media.take_event(app, "livestreaming.statusUpdate", {
        "streamId": f"{MARK}-stream-id", "status": "LIVE", "meeting": {"id": "m1"},
        "stream_key": MARK, "ingest_server": f"rtmps://{MARK}", "playback_url": f"https://{MARK}",
    })  # fmt: skip
    text = render(config, MediaView.of(media, PULLED, NOW))
    assert MARK not in text  # no id, url, file name, key or server
    assert "<script" not in text and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    rows = meeting_rows(text)
    assert rows["m0"]["Recording"].startswith("UPLOADED | since ")
    assert rows["m1"]["Livestream"] == "LIVE" and rows["m2"]["Recording"].startswith(EVIL)


class CountingBook(RecordingBook):
    def __init__(self, window: float) -> None:
        super().__init__(window)
        self.views = 0

    def view(self, now: float) -> Any:
        self.views += 1
        return super().view(now)


class CountingStreams(LivestreamBook):
    def __init__(self) -> None:
        super().__init__()
        self.views = 0

    def view(self) -> Any:
        self.views += 1
        return super().view()


def test_a_page_reads_each_shown_apps_books_once_and_others_never() -> None:
    config = make_config(n=150)
    books, streams = CountingBook(86400), CountingStreams()
    books.take_listing([rec(f"m{i}", "RECORDING") for i in range(150)], NOW, complete=True)
    idle = CountingBook(86400)  # an app with no meeting on the page
    other = (ACCOUNT, "app-not-shown")
    view = MediaView({(ACCOUNT, APP): books, other: idle}, {(ACCOUNT, APP): streams}, PULLED, NOW)
    text = render(config, view, limit=100)
    assert text.count("<td>RECORDING<br>") == 100  # every shown row of the app
    assert (books.views, streams.views, idle.views) == (1, 1, 0)


# -- the real process ---------------------------------------------------------------------------


@pytest.mark.process
def test_the_live_page_follows_recordings_and_livestreams(start_exporter: Any) -> None:
    port = free_port()
    sim = Simulator(token=TOKEN, meetings=3, auto=False, seed=5,
                    webhook_url=f"http://127.0.0.1:{port}/webhooks/{{account_id}}/{{app_id}}")  # fmt: skip
    sim.start("127.0.0.1", 0)
    try:
        on = {"enabled": True, "interval_seconds": 1}
        exporter = start_exporter({
            "api": {"base_url": sim.base_url, "timeout_seconds": 2},
            "poll": {"interval_seconds": 2},
            "webhooks": {"listen_address": f"127.0.0.1:{port}",
                         "public_key_url": sim.webhook_key_url},
            "apps": [{"account_id": sim.account_id, "app_id": sim.app_id,
                      "meetings": list(sim.meeting_ids), "webhooks": {"enabled": True},
                      "recordings": on, "livestreams": on}],
        })  # fmt: skip
        a, b, _ = sim.meeting_ids
        exporter.wait_ready()

        def cells(meeting: str, column: str) -> str:
            return meeting_rows(exporter.get("/").text)[meeting][column]

        def pulled(kind: str) -> Any:
            return value(exporter.scrape(), "realtimekit_app_pull_up", pull=kind) == 1

        wait_for(lambda: pulled("recordings") and pulled("livestreams"), timeout=10)
        wait_for(lambda: cells(a, "Recording") == "none" and cells(a, "Livestream") == "none")
        uploaded = sim.recordings.start(a, status="RECORDING")
        wait_for(lambda: cells(a, "Recording").startswith("RECORDING | since "), timeout=10)
        sim.recordings.set_status(uploaded, "UPLOADED")
        wait_for(lambda: cells(a, "Recording").startswith("UPLOADED | since "), timeout=10)
        errored = sim.recordings.start(b, status="RECORDING")
        sim.recordings.set_status(errored, "ERRORED")
        wait_for(lambda: cells(b, "Recording").startswith("ERRORED | since "), timeout=10)
        stream = sim.livestreams.start(a, status="LIVE")
        wait_for(lambda: cells(a, "Livestream") == "LIVE", timeout=10)
        sim.livestreams.set_status(stream, "IDLE")  # the webhook says OFFLINE
        wait_for(lambda: cells(a, "Livestream") == "IDLE", timeout=10)
        page = exporter.get("/").text
        for private in (SECRET, uploaded, errored, stream):
            assert private not in page
    finally:
        sim.stop()
