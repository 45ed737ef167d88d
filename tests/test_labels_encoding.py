"""Label values that cannot be encoded (a lone surrogate: half an emoji, valid JSON) never take
``/metrics`` or ``/`` down: they are replaced (U+FFFD), and one meeting whose rows cannot be
rendered is left out of the scrape and counted, never the whole scrape failed."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse

from exporter.collector import MeetingCollector
from exporter.config import parse_config
from exporter.exposition import escape, label_text
from exporter.health import Health
from exporter.model import NO_ACTIVE_SESSION, MeetingKey, Session
from exporter.status import status_page
from exporter.store import Store
from tests.support.api import sim_config
from tests.support.clock import FakeTime
from tests.support.metrics import parse_metrics, value
from tests.support.process import wait_for

ACC, APP = "023e105f4ecef8ad9ca31a8372d0c353", "6f0a8a2c3b8e4f62a1d2c3b4e5f60718"
BAD = "Weekly \ud83d sync"  # what json.loads makes of "Weekly \ud83d sync"
SHOWN = "Weekly \ufffd sync"
OM = "application/openmetrics-text; version=1.0.0"


def test_escape_replaces_what_utf8_cannot_encode() -> None:
    assert escape(BAD) == SHOWN
    assert escape("\ude00\ud83d x") == "\ufffd\ufffd x"  # a pair in the wrong order: two halves
    assert escape('ok 😀 \\ \n "') == 'ok 😀 \\\\ \\n \\"'  # a whole emoji is kept
    label_text({"a": BAD, "b": "\udfff"}).encode()  # encodable


def _session(**kw: Any) -> Session:
    base: dict[str, Any] = {"id": "s1", "status": "LIVE", "live_participants": 3.0}
    return Session(**(base | kw))


def test_one_meeting_that_cannot_be_rendered_is_left_out_and_counted() -> None:
    clock = FakeTime(1_800_000_000.0)
    store = Store()
    good, bad = MeetingKey(ACC, APP, "good"), MeetingKey(ACC, APP, "bad")
    store.set_targets({good: (), bad: ()})
    store.record(good, _session(meeting_display_name=BAD), 0.1, clock.now)
    store.record(bad, _session(live_participants="three"), 0.1, clock.now)  # a bug's value
    mc = MeetingCollector(store, stale_after_seconds=lambda: 90, clock=clock)
    for text in (mc.render().decode(), mc.render().decode()):
        samples = parse_metrics(text)
        assert value(samples, "realtimekit_session_live_participants", meeting_id="good") == 3
        assert value(samples, "realtimekit_up", meeting_id="bad") is None
        assert value(samples, "realtimekit_session_info", meeting_display_name=SHOWN) == 1
    # Counted on every scrape that left it out, by both renderers alike.
    assert value(parse_metrics(mc.render().decode()), "realtimekit_exporter_render_errors_total")
    store.record(bad, NO_ACTIVE_SESSION, 0.1, clock.now)  # fixed: back at once
    samples = parse_metrics(mc.render().decode())
    assert value(samples, "realtimekit_up", meeting_id="bad") == 1


def _get(base: str, path: str, **headers: str) -> httpx.Response:
    return httpx.get(base + path, headers=headers, timeout=10)


def test_a_lone_surrogate_from_the_api_keeps_metrics_and_the_page_up(simulator, start_exporter):
    sim = simulator
    bad, *others = sim.meeting_ids
    for meeting in sim.meeting_ids:
        sim.set_participants(meeting, 2)
    sim.set_fault(bad, "lone_surrogate")
    exporter = start_exporter(sim_config(sim))
    exporter.wait_ready()

    def shown() -> dict[Any, float]:
        samples = exporter.scrape()
        assert value(samples, "realtimekit_session_info", meeting_display_name=SHOWN) == 1
        return samples

    samples = wait_for(shown)
    for meeting in others:
        assert value(samples, "realtimekit_session_live_participants", meeting_id=meeting) == 2
    assert value(samples, "realtimekit_exporter_render_errors_total") == 0

    plain = _get(exporter.base, "/metrics", **{"Accept-Encoding": "gzip"})
    assert plain.status_code == 200, plain.text
    assert plain.headers["Content-Encoding"] == "gzip"
    assert SHOWN in plain.text  # httpx decoded the gzip; the title is readable UTF-8
    om = _get(exporter.base, "/metrics", Accept=OM, **{"Accept-Encoding": "gzip"})
    assert om.status_code == 200, om.text
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in om_parse(om.text)}
    titles = {
        s.labels.get("meeting_display_name") for s in families["realtimekit_session_info"].samples
    }
    assert SHOWN in titles
    gzipped = {"Accept-Encoding": "gzip"}
    with httpx.stream("GET", exporter.base + "/metrics", headers=gzipped, timeout=10) as raw:
        assert raw.headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(b"".join(raw.iter_raw()))
    assert SHOWN.encode() in body

    page = _get(exporter.base, "/")
    assert page.status_code == 200, page.text
    assert SHOWN in page.text
    assert _get(exporter.base, "/metrics", **{"Accept-Encoding": "identity"}).status_code == 200


def test_a_lone_surrogate_in_a_discovery_listing(simulator, start_exporter):
    sim = simulator
    for meeting in sim.meeting_ids:
        sim.set_participants(meeting, 1)
    sim.set_listing_fault("lone_surrogate")  # the page's first session carries it
    config = sim_config(sim, meetings=[])
    config["apps"][0]["discover"] = {"enabled": True, "per_page": 2}
    exporter = start_exporter(config)

    def listed() -> dict[Any, float]:
        samples = exporter.scrape()
        assert value(samples, "realtimekit_app_live_sessions") == 4
        titles = [dict(ls).get("meeting_display_name") for (name, ls) in samples]
        assert titles.count(SHOWN) == 2  # the first session of each of the two pages
        return samples

    wait_for(listed)
    assert _get(exporter.base, "/").status_code == 200
    assert _get(exporter.base, "/metrics", Accept=OM).status_code == 200


def test_the_status_page_replaces_halves_and_survives_a_bad_row() -> None:
    now = 1_800_000_000.0
    store = Store()
    ok, bug = MeetingKey(ACC, APP, "ok"), MeetingKey(ACC, APP, "bug")
    store.set_targets({ok: (), bug: ()})
    store.record(ok, _session(meeting_display_name=BAD), 0.1, now)
    store.record(bug, _session(started_at="yesterday"), 0.1, now)  # a bug's value
    config = parse_config({"apps": [{"account_id": ACC, "app_id": APP, "meetings": ["ok"]}]})
    text = status_page(
        states=store.snapshot()[1],
        health=Health(clock=lambda: now).snapshot(),
        config=config,
        now=now,
        stale_after=90,
        version="1",
        telemetry_path="/metrics",
    )
    text.encode()  # the server encodes it as UTF-8
    assert SHOWN in text
    assert "could not be shown" in text and ">bug<" in text
