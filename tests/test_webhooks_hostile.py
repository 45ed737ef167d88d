"""Hostile and stale webhook deliveries (issue 23 items 5, 6 and 12), against the real exporter
process and the simulator over loopback. Deliveries the test forges are signed with the
simulator's own webhook key, as a captured genuine delivery would be."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from tests.support.api import TOKEN
from tests.support.metrics import value
from tests.support.ports import free_port
from tests.support.process import wait_for

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
APP = "6f0a8a2c3b8e4f62a1d2c3b4e5f60718"


def signature(sim: Any, body: bytes) -> str:
    raw = sim.webhook_key.sign(body, padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(raw).decode("ascii")


def started(meeting: str, session: str, started_at: str, title: str = "Forged") -> bytes:
    return json.dumps(
        {
            "event": "meeting.started",
            "meeting": {
                "id": meeting,
                "sessionId": session,
                "title": title,
                "status": "LIVE",
                "startedAt": started_at,
            },
        }
    ).encode()


def start(
    start_exporter: Callable[..., Any], *, app: dict[str, Any], listed: bool = True
) -> tuple[Any, Any, str]:
    """A simulator delivering webhooks to a real exporter; returns (sim, exporter, webhook
    url of the app) once the key is loaded."""
    from exporter.simulator import Simulator

    port = free_port()
    sim = Simulator(
        token=TOKEN,
        meetings=4,
        auto=False,
        seed=5,
        rate_limit=(400, 10),
        webhook_url=f"http://127.0.0.1:{port}/webhooks/{{account_id}}/{{app_id}}",
    )
    sim.start("127.0.0.1", 0)
    config = {
        "api": {
            "base_url": sim.base_url,
            "timeout_seconds": 2,
            "rate_limit": {"requests": 400, "period_seconds": 10},
        },
        "poll": {"interval_seconds": 30},
        "webhooks": {"listen_address": f"127.0.0.1:{port}", "public_key_url": sim.webhook_key_url},
        "apps": [
            {
                "account_id": ACCOUNT,
                "app_id": APP,
                "meetings": list(sim.meeting_ids) if listed else [],
                "webhooks": {"enabled": True},
                **app,
            }
        ],
    }
    exporter = start_exporter(config)
    wait_for(lambda: "webhook public key loaded" in exporter.log())
    return sim, exporter, f"http://127.0.0.1:{port}/webhooks/{ACCOUNT}/{APP}"


def exported(exporter: Any) -> set[str]:
    return {
        dict(labels)["meeting_id"]
        for (name, labels), _ in exporter.scrape().items()
        if name == "realtimekit_up" and "meeting_id" in dict(labels)
    }


def test_events_respect_include_exclude_and_name_regex(start_exporter):
    from exporter.simulator import Simulator

    ids = Simulator(token=TOKEN, meetings=4, auto=False, seed=5).meeting_ids  # same seed: same ids
    a, b, c, d = ids
    rules = {"include": [a, b, c], "exclude": [b], "name_regex": "^Allowed"}
    sim, exporter, url = start(
        start_exporter, app={"discover": {"enabled": True, **rules}}, listed=False
    )
    try:
        assert list(sim.meeting_ids) == list(ids)
        wait_for(lambda: value(exporter.scrape(), "realtimekit_discovery_up") == 1)
        posted = 0
        for meeting, title in [(b, "Allowed"), (d, "Allowed"), (c, "Other"), (a, "Allowed")]:
            body = started(meeting, f"s-{meeting[:8]}", "2026-01-01T10:00:00Z", title)
            answer = httpx.post(url, content=body, headers={"rtk-signature": signature(sim, body)})
            assert answer.text == "accepted\n"
            posted += 1
        # a, started last, is admitted; once it is exported, the others' events were handled
        wait_for(lambda: a in exported(exporter), timeout=5)
        assert exported(exporter) == {a}  # b excluded, d not included, c's title not matched
        samples = exporter.scrape()
        assert value(samples, "realtimekit_webhook_events_total", event="meeting.started") == posted
    finally:
        sim.stop()


def test_a_replay_with_a_new_delivery_id_is_a_duplicate(start_exporter):
    sim, exporter, url = start(start_exporter, app={})
    try:
        meeting = sim.meeting_ids[0]
        body = started(meeting, "s-replayed", "2026-01-01T10:00:00Z")
        sig = signature(sim, body)
        answers = [
            httpx.post(url, content=body, headers={"rtk-signature": sig, "rtk-uuid": uuid}).text
            for uuid in ("u1", "u2", "")  # the original, a replay with a new id, one without
        ]
        assert answers == ["accepted\n", "duplicate\n", "duplicate\n"]
        samples = exporter.scrape()
        assert value(samples, "realtimekit_webhook_requests_total", result="duplicate") == 2
        assert value(samples, "realtimekit_webhook_events_total", event="meeting.started") == 1
    finally:
        sim.stop()


def test_a_late_end_of_an_older_session_leaves_the_live_one_live(start_exporter):
    sim, exporter, url = start(start_exporter, app={})
    try:
        meeting = sim.meeting_ids[0]
        wait_for(lambda: value(exporter.scrape(), "realtimekit_up", meeting_id=meeting) == 1)
        sim.set_participants(meeting, 2)  # a new session starts: its events arrive
        wait_for(
            lambda: (
                value(
                    exporter.scrape(),
                    "realtimekit_session_live_participants",
                    meeting_id=meeting,
                )
                == 2
            ),
            timeout=10,
        )
        current = sim.session(meeting)
        assert current is not None
        body = json.dumps(
            {
                "event": "meeting.ended",
                "reason": "ALL_PARTICIPANTS_LEFT",
                "meeting": {"id": meeting, "sessionId": "an-older-session", "status": "ENDED"},
            }
        ).encode()
        answer = httpx.post(url, content=body, headers={"rtk-signature": signature(sim, body)})
        assert answer.text == "accepted\n"
        wait_for(
            lambda: (
                value(exporter.scrape(), "realtimekit_webhook_events_total", event="meeting.ended")
                == 1
            )
        )
        samples = exporter.scrape()
        live = value(samples, "realtimekit_session_status", meeting_id=meeting, status="LIVE")
        assert live == 1
        assert value(samples, "realtimekit_session_live_participants", meeting_id=meeting) == 2
        info = [
            dict(labels)
            for (name, labels), _ in samples.items()
            if name == "realtimekit_session_info" and dict(labels)["meeting_id"] == meeting
        ]
        assert [i["session_id"] for i in info] == [current["id"]]
    finally:
        sim.stop()


def test_a_shard_answers_another_shards_app_2xx_and_forwards_nothing(start_exporter):
    from exporter.config import parse_config
    from exporter.shard import filter_config

    apps = [
        {
            "account_id": ACCOUNT,
            "app_id": f"app{i}",
            "discover": {"enabled": True},
            "webhooks": {"enabled": True},
        }
        for i in range(8)
    ]
    port = free_port()
    config = {
        "api": {"base_url": "http://127.0.0.1:9/client/v4", "timeout_seconds": 1},
        "webhooks": {
            "listen_address": f"127.0.0.1:{port}",
            "public_key_url": "http://127.0.0.1:9/k",
        },
        "apps": apps,
    }
    work = filter_config(parse_config(config), 0, 2)
    mine = {app.app_id for app in work.apps} if work is not None else set()
    assert mine and len(mine) < len(apps)  # the split gives shard 0 some apps, not all
    exporter = start_exporter(config, "--total-shards", "2", "--shard", "0")
    wait_for(lambda: "webhook receiver serving" in exporter.log())
    body = started("m1", "s1", "2026-01-01T10:00:00Z")
    for app in apps:
        url = f"http://127.0.0.1:{port}/webhooks/{ACCOUNT}/{app['app_id']}"
        answer = httpx.post(url, content=body, headers={"rtk-signature": "bm9wZQ=="})
        if app["app_id"] in mine:
            assert answer.status_code == 401  # its own app: verified (and this forgery refused)
        else:
            assert (answer.status_code, answer.text) == (200, "not this shard\n")
    answer = httpx.post(f"http://127.0.0.1:{port}/webhooks/{ACCOUNT}/unknown", content=body)
    assert answer.status_code == 404  # an app nobody configured
    samples = exporter.scrape()
    assert value(samples, "realtimekit_webhook_events_total", event="meeting.started") is None
    assert (
        value(
            samples,
            "realtimekit_webhook_requests_total",
            result="bad_signature",
            app_id=sorted(mine)[0],
        )
        == 1
    )
