"""The app-level pulls against the real exporter process and the simulator over loopback:
recordings and livestreams (issue 24), usage and the webhook registration check (issue 25), call
quality from peer reports (issue 28)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.api import TOKEN
from tests.support.metrics import value
from tests.support.ports import free_port
from tests.support.process import wait_for

pytestmark = pytest.mark.process

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
APP = "6f0a8a2c3b8e4f62a1d2c3b4e5f60718"
IDS = {"account_id": ACCOUNT, "app_id": APP}


def start(
    start_exporter: Callable[..., Any],
    *,
    app: dict[str, Any],
    webhooks: bool = True,
    hooks: dict[str, Any] | None = None,
    meetings: int = 3,
    **sim_options: Any,
) -> tuple[Any, Any]:
    """A simulator (delivering signed webhooks when ``webhooks``) and a real exporter watching
    every meeting of its app with the given per-app blocks."""
    from exporter.simulator import Simulator

    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/{{account_id}}/{{app_id}}" if webhooks else None
    sim = Simulator(token=TOKEN, meetings=meetings, auto=False, seed=5, webhook_url=url,
                    **sim_options)  # fmt: skip
    sim.start("127.0.0.1", 0)
    config: dict[str, Any] = {
        "api": {"base_url": sim.base_url, "timeout_seconds": 2},
        "poll": {"interval_seconds": 2},
        "apps": [{"account_id": ACCOUNT, "app_id": APP, "meetings": list(sim.meeting_ids), **app}],
    }
    if webhooks:
        config["webhooks"] = {
            "listen_address": f"127.0.0.1:{port}",
            "public_key_url": sim.webhook_key_url,
            **(hooks or {}),
        }
        config["apps"][0]["webhooks"] = {"enabled": True}
    exporter = start_exporter(config)
    if webhooks:
        wait_for(lambda: "webhook public key loaded" in exporter.log())
    return sim, exporter


def recording_status(exporter: Any, meeting: str) -> str | None:
    samples = exporter.scrape()
    for status in ("INVOKED", "RECORDING", "UPLOADING", "UPLOADED", "ERRORED", "PAUSED"):
        if value(samples, "realtimekit_recording_status", meeting_id=meeting, status=status) == 1:
            return status
    return None


def finished(exporter: Any, status: str) -> float | None:
    return value(exporter.scrape(), "realtimekit_recordings_finished_total", status=status, **IDS)


def no_secret_anywhere(sim: Any, exporter: Any) -> None:
    from exporter.simulator import SECRET

    for path in ("/metrics", "/", "/config"):
        assert SECRET not in exporter.get(path).text, path
    assert SECRET not in exporter.log()
    assert "203.0.113." not in exporter.log()


def test_recordings_and_livestreams_follow_webhooks_at_once(start_exporter):
    # the listing runs every 10 minutes: whatever changes sooner came by webhook
    blocks = {"interval_seconds": 600}
    on = {**blocks, "enabled": True}
    sim, exporter = start(start_exporter, app={"recordings": on, "livestreams": on})
    try:
        a, b, _ = sim.meeting_ids
        sim.set_participants(a, 2)
        sim.set_participants(b, 2)
        exporter.wait_ready()
        wait_for(lambda: value(exporter.scrape(), "realtimekit_app_pull_up", pull="recordings"))
        uploaded = sim.recordings.start(a)
        seen = []
        for status in ("INVOKED", "RECORDING", "UPLOADING", "UPLOADED"):
            if status != "INVOKED":
                sim.recordings.set_status(uploaded, status)
            began = time.monotonic()
            wait_for(lambda s=status: recording_status(exporter, a) == s, timeout=5)
            seen.append(time.monotonic() - began)
        errored = sim.recordings.start(b)
        sim.recordings.set_status(errored, "RECORDING")
        sim.recordings.set_status(errored, "ERRORED")
        wait_for(lambda: recording_status(exporter, b) == "ERRORED", timeout=5)
        assert finished(exporter, "UPLOADED") == 1 and finished(exporter, "ERRORED") == 1
        samples = exporter.scrape()
        assert value(samples, "realtimekit_recording_active", meeting_id=a) == 0
        stopped = sim.recordings.get(uploaded)["stopped_time"]
        since = value(samples, "realtimekit_recording_state_since_timestamp_seconds", meeting_id=a)
        assert since is not None and abs(since - _unix(stopped)) < 1
        stream = sim.livestreams.start(a, status="LIVE")
        wait_for(lambda: value(exporter.scrape(), "realtimekit_livestream_status", meeting_id=a,
                               status="LIVE") == 1, timeout=5)  # fmt: skip
        sim.livestreams.set_status(stream, "ERRORED")
        wait_for(lambda: value(exporter.scrape(), "realtimekit_livestream_status", meeting_id=a,
                               status="ERRORED") == 1, timeout=5)  # fmt: skip
        assert max(seen) < 5
        no_secret_anywhere(sim, exporter)
    finally:
        sim.stop()


def _unix(text: str) -> float:
    from exporter.model import parse_timestamp

    moment = parse_timestamp(text)
    assert moment is not None
    return moment


@pytest.mark.parametrize("shape", ["list", "object"])
def test_the_listing_alone_keeps_the_window_and_restarts_count_nothing_twice(start_exporter, shape):
    blocks = {"enabled": True, "interval_seconds": 1}
    app = {"recordings": blocks, "livestreams": blocks}
    sim, exporter = start(start_exporter, app=app, webhooks=False, livestream_shape=shape)
    try:
        a, b, c = sim.meeting_ids
        for meeting in (a, b, c):
            sim.set_participants(meeting, 1)
        done = sim.recordings.start(a, status="UPLOADED")  # finished before the first look
        exporter.wait_ready()
        wait_for(lambda: recording_status(exporter, a) == "UPLOADED")
        assert finished(exporter, "UPLOADED") == 0
        moving = sim.recordings.start(b)
        wait_for(lambda: recording_status(exporter, b) == "INVOKED", timeout=5)
        sim.recordings.set_status(moving, "ERRORED")
        wait_for(lambda: finished(exporter, "ERRORED") == 1, timeout=5)
        sim.recordings.start(c, status="RECORDING")
        sim.livestreams.start(c, status="LIVE")
        wait_for(lambda: recording_status(exporter, c) == "RECORDING", timeout=5)
        samples = wait_for(lambda: _with(exporter, "realtimekit_livestream_status", c), timeout=5)
        counts = {
            s: value(samples, "realtimekit_app_recordings", status=s, **IDS)
            for s in ("INVOKED", "RECORDING", "UPLOADING", "UPLOADED", "ERRORED", "PAUSED")
        }
        assert counts == {"INVOKED": 0, "RECORDING": 1, "UPLOADING": 0, "UPLOADED": 1,
                          "ERRORED": 1, "PAUSED": 0}  # fmt: skip
        assert value(samples, "realtimekit_app_livestreams", status="LIVE", **IDS) == 1
        assert done
        exporter.stop()
        again = start_exporter(_config_of(exporter))
        again.wait_ready()
        wait_for(lambda: recording_status(again, b) == "ERRORED", timeout=10)
        assert finished(again, "ERRORED") == 0 and finished(again, "UPLOADED") == 0
        no_secret_anywhere(sim, again)
    finally:
        sim.stop()


def _with(exporter: Any, name: str, meeting: str) -> Any:
    samples = exporter.scrape()
    return (
        samples if any(n == name and ("meeting_id", meeting) in ls for n, ls in samples) else None
    )


def _config_of(exporter: Any) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(exporter.config_path.read_text())


def test_usage_matches_the_simulators_own_totals(start_exporter):
    sim, exporter = start(
        start_exporter, app={"usage": {"enabled": True, "interval_seconds": 1}}, webhooks=False,
        usage_day_format="datetime",
    )  # fmt: skip
    try:
        from datetime import UTC, datetime, timedelta

        today = datetime.now(UTC).date()
        sim.usage.add(today - timedelta(days=1), sessions=4, session_minutes=30.5, recordings=2,
                      recording_minutes=12)  # fmt: skip
        sim.usage.add(today - timedelta(days=20), sessions=7, session_minutes=100)
        sim.usage.add(today, sessions=2, session_minutes=5.25)  # no live session: totals hold
        exporter.wait_ready()
        want = {
            "today": sim.usage.day(today),
            "yesterday": sim.usage.day(today - timedelta(days=1)),
            "last_30_days": sim.usage.period(today - timedelta(days=29), today),
        }

        def matches() -> bool:
            samples = exporter.scrape()
            for period, totals in want.items():
                got = {
                    "sessions": value(samples, "realtimekit_app_usage_sessions", period=period),
                    "recordings": value(samples, "realtimekit_app_usage_recordings", period=period),
                    "session_minutes": (value(samples, "realtimekit_app_usage_session_seconds",
                                              period=period) or 0) / 60,
                    "recording_minutes": (value(samples, "realtimekit_app_usage_recording_seconds",
                                                period=period) or 0) / 60,
                }  # fmt: skip
                if any(abs(got[k] - totals[k]) > 1e-6 for k in totals if got[k] is not None):
                    return False
            return True

        try:
            wait_for(matches, timeout=10)
        except AssertionError:
            got = {k: v for k, v in exporter.scrape().items() if "usage" in k[0]}
            raise AssertionError(f"{want} vs {got}") from None
        assert want["yesterday"]["sessions"] == 4 and want["last_30_days"]["sessions"] == 13
    finally:
        sim.stop()


def test_a_registration_disabled_deleted_or_short_of_an_event_is_said_once(start_exporter):
    sim, exporter = start(
        start_exporter, app={},
        hooks={"public_url": "http://127.0.0.1:1/", "registration_check_seconds": 1},
    )  # fmt: skip
    try:
        registered = lambda: value(exporter.scrape(), "realtimekit_webhook_registered", **IDS)  # noqa: E731
        # the simulator registered its own URL; this exporter says it is reached at another
        wait_for(lambda: registered() == 0, timeout=10)
        assert exporter.log().count("no registration for http://127.0.0.1:1/webhooks/") == 1
        rid = sim.registrations.add(url=f"http://127.0.0.1:1/webhooks/{ACCOUNT}/{APP}")
        wait_for(lambda: registered() == 1, timeout=10)
        sim.registrations.set_events(rid, ["meeting.started"])
        wait_for(lambda: registered() == 0, timeout=10)
        wait_for(lambda: "lacks event(s) meeting.ended" in exporter.log(), timeout=5)
        sim.registrations.set_events(rid, ["meeting.started", "meeting.ended"])
        wait_for(lambda: registered() == 1, timeout=10)
        sim.registrations.disable(rid)
        wait_for(lambda: registered() == 0, timeout=10)
        sim.registrations.delete(rid)
        wait_for(lambda: exporter.log().count("no registration for http://127.0.0.1:1/") == 2,
                 timeout=10)  # fmt: skip
        assert exporter.log().count("is disabled") == 1
    finally:
        sim.stop()


def test_reports_of_peers_that_left_fill_the_histograms(start_exporter):
    sim, exporter = start(
        start_exporter,
        app={"quality": {"enabled": True, "delay_seconds": 0, "max_reports_per_hour": 3600}},
        peer_partial_rate=0.5,  # some reports carry only some stream kinds
    )
    try:
        a = sim.meeting_ids[0]
        sim.set_participants(a, 7)
        exporter.wait_ready()
        left = [sim.peers.leave(a) for _ in range(6)]
        kinds = [k for peer in left for k in sim.peers.report_kinds(peer)]
        wait_for(lambda: value(exporter.scrape(), "realtimekit_peer_reports_total",
                               result="fetched", **IDS) == 6, timeout=20)  # fmt: skip
        samples = exporter.scrape()
        # the seed gives full, partial and screen-sharing reports: the series' counts differ
        assert len(set(kinds)) == 6 and kinds.count("audio_consumer") > len(left) // 2
        for family, carried in expected_counts(kinds).items():
            got = {(dict(ls)["media"], dict(ls)["direction"]): v for (n, ls), v in samples.items()
                   if n == f"{family}_count"}  # fmt: skip
            assert got == carried, family
        assert value(samples, "realtimekit_peer_reports_total", result="missing", **IDS) == 0
        no_secret_anywhere(sim, exporter)
        for peer in left:
            assert peer not in exporter.get("/metrics").text and peer not in exporter.log()
    finally:
        sim.stop()


def test_a_report_not_there_yet_is_retried_twice_then_counted_missing(start_exporter):
    """About two and a half minutes: a 404 is asked again at most twice, 60 s apart
    (``exporter.quality.RETRY_SECONDS``, fixed by the design; no setting shortens it)."""
    sim, exporter = start(
        start_exporter,
        app={"quality": {"enabled": True, "delay_seconds": 1, "max_reports_per_hour": 3600}},
    )
    try:
        a = sim.meeting_ids[0]
        sim.set_participants(a, 6)
        exporter.wait_ready()
        first = len(sim.request_log())
        ready, late, never, after = (sim.peers.leave(a) for _ in range(4))
        # set within milliseconds of leaving; the first ask comes delay_seconds after the webhook
        sim.peers.set_report(late, delay=30)  # there for the first retry (~60 s after leaving)
        sim.peers.set_report(never, delay=math.inf)
        sim.peers.set_report(after, delay=140)  # there only after the last retry (~120 s)

        def results() -> dict[str, float | None]:
            samples = exporter.scrape()
            return {r: value(samples, "realtimekit_peer_reports_total", result=r, **IDS)
                    for r in ("fetched", "missing", "failed")}  # fmt: skip

        wait_for(lambda: results()["fetched"] == 1, timeout=20)
        wait_for(lambda: results()["fetched"] == 2, timeout=90, interval=1)  # late, on a retry
        wait_for(lambda: results()["missing"] == 2, timeout=120, interval=1)
        assert results() == {"fetched": 2, "missing": 2, "failed": 0}
        wait_for(lambda: sim.peers.report(after) is not None, timeout=40, interval=1)
        probe = sim.peers.leave(a)  # fetched once the report of `after` is there: not that one
        wait_for(lambda: results()["fetched"] == 3, timeout=20)
        assert results() == {"fetched": 3, "missing": 2, "failed": 0}
        asked = [t for _, t, _ in sim.request_log()[first:] if "/peer-report/" in t]
        times = {peer: sum(peer in t for t in asked) for peer in (ready, late, never, after, probe)}
        assert times == {ready: 1, late: 2, never: 3, after: 3, probe: 1}
        no_secret_anywhere(sim, exporter)
        assert not any(p in exporter.log() for p in times)
    finally:
        sim.stop()


def expected_counts(kinds: list[str]) -> dict[str, dict[tuple[str, str], int]]:
    """Per histogram, the ``_count`` each (media, direction) should have after reports carrying
    these stream kinds: MOS and loss for every kind, RTT for producers (what is sent), jitter
    buffer delay for consumers (what is received)."""
    counts: dict[str, dict[tuple[str, str], int]] = {
        f"realtimekit_peer_{name}": {}
        for name in ("mos", "packet_loss_ratio", "rtt_seconds", "jitter_buffer_delay_seconds")
    }
    for kind in kinds:
        media = "screenshare" if kind.startswith("screenshare") else kind.split("_")[0]
        sending = kind.endswith("producer")
        series = (media, "send" if sending else "receive")
        families = ["mos", "packet_loss_ratio", "rtt_seconds" if sending
                    else "jitter_buffer_delay_seconds"]  # fmt: skip
        for name in families:
            family = counts[f"realtimekit_peer_{name}"]
            family[series] = family.get(series, 0) + 1
    return counts
