"""Staleness with webhooks (issue 22 items 1 and 2), against the real exporter process and the
simulator delivering signed webhooks over loopback.

A meeting's values vanish only when the exporter no longer knows them: while an app's webhooks
are healthy its meetings are polled every ``reconcile_interval_seconds``, and their staleness is
measured against that interval, not the configured one. Webhook events never move
``realtimekit_last_success_timestamp_seconds`` (the last valid API answer).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from pytest import approx

from tests.support.api import TOKEN
from tests.support.metrics import value
from tests.support.ports import free_port
from tests.support.process import wait_for

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
APP = "6f0a8a2c3b8e4f62a1d2c3b4e5f60718"


def start(
    start_exporter: Callable[..., Any],
    *,
    meetings: int,
    poll: dict[str, Any],
    reconcile: float,
    setup: Callable[[Any], None] = lambda sim: None,
) -> tuple[Any, Any]:
    """A simulator delivering webhooks to a real exporter (every meeting listed, webhooks on);
    ``setup(sim)`` runs before the exporter starts. Returns once the webhook key is loaded."""
    from exporter.simulator import Simulator

    port = free_port()
    sim = Simulator(
        token=TOKEN,
        meetings=meetings,
        auto=False,
        seed=3,
        rate_limit=(400, 10),
        webhook_url=f"http://127.0.0.1:{port}/webhooks/{{account_id}}/{{app_id}}",
    )
    sim.start("127.0.0.1", 0)
    setup(sim)
    config = {
        "api": {
            "base_url": sim.base_url,
            "timeout_seconds": 2,
            "rate_limit": {"requests": 400, "period_seconds": 10},
        },
        "poll": poll,
        "webhooks": {
            "listen_address": f"127.0.0.1:{port}",
            "public_key_url": sim.webhook_key_url,
            "reconcile_interval_seconds": reconcile,
        },
        "apps": [
            {
                "account_id": ACCOUNT,
                "app_id": APP,
                "meetings": list(sim.meeting_ids),
                "webhooks": {"enabled": True},
            }
        ],
    }
    exporter = start_exporter(config)
    wait_for(lambda: "webhook public key loaded" in exporter.log())
    return sim, exporter


def polls_of(sim: Any, meeting: str, since: float) -> int:
    """Active-session requests for ``meeting`` the simulator received since ``since``."""
    return sum(1 for t, target, _ in sim.request_log() if t >= since and f"/{meeting}/" in target)


def test_steady_meetings_keep_their_series_while_webhooks_slow_polling(start_exporter):
    reconcile = 5.0

    def steady(sim: Any) -> None:
        sim.set_participants(sim.meeting_ids[0], 2)  # live, nobody joins or leaves

    sim, exporter = start(
        start_exporter, meetings=3, poll={"interval_seconds": 1}, reconcile=reconcile, setup=steady
    )
    try:
        a, b, c = sim.meeting_ids  # a: live and steady; b: idle; c: churns (keeps webhooks healthy)
        exporter.wait_ready()
        sim.set_participants(c, 1)
        wait_for(lambda: "webhooks healthy for 1 app(s)" in exporter.log(), timeout=15)
        began = time.time()
        missing: list[tuple[float, str]] = []
        participants, last_churn = 1, time.monotonic()
        deadline = time.monotonic() + 4 * reconcile  # four reconcile intervals, bounded
        while time.monotonic() < deadline:
            samples = exporter.scrape()
            for meeting in (a, b, c):
                if value(samples, "realtimekit_session_active", meeting_id=meeting) is None:
                    missing.append((round(time.time() - began, 2), meeting))
            if time.monotonic() - last_churn > 2:
                participants = 3 - participants  # 1 <-> 2: an event every 2 s
                sim.set_participants(c, participants)
                last_churn = time.monotonic()
            time.sleep(0.2)
        assert missing == [], f"series vanished between polls: {missing[:10]}"
        # the slow path was really taken: a is polled every reconcile interval, not every second
        assert polls_of(sim, a, began) <= 4 * reconcile / reconcile + 2
        samples = exporter.scrape()
        assert value(samples, "realtimekit_session_live_participants", meeting_id=a) == 2
        assert value(samples, "realtimekit_poll_effective_interval_seconds") == approx(reconcile)
    finally:
        sim.stop()


def test_a_meeting_not_polled_yet_when_webhooks_turn_healthy_is_not_kept_waiting(start_exporter):
    interval, reconcile = 20.0, 200.0  # first polls spread over 20 s: 0, 5, 10, 15 s
    sim, exporter = start(
        start_exporter, meetings=4, poll={"interval_seconds": interval}, reconcile=reconcile
    )
    try:
        first = sim.meeting_ids[0]
        wait_for(lambda: value(exporter.scrape(), "realtimekit_up", meeting_id=first) == 1)
        sim.set_participants(first, 1)  # an event: healthy at the next check (within 5 s)
        wait_for(lambda: "webhooks healthy for 1 app(s)" in exporter.log(), timeout=10)
        polled = value(exporter.scrape(), "realtimekit_up", meeting_id=sim.meeting_ids[3])
        assert polled is None  # the flip came before the last meeting's first poll...

        def all_up() -> bool:
            samples = exporter.scrape()
            return all(value(samples, "realtimekit_up", meeting_id=m) == 1 for m in sim.meeting_ids)

        # ...which still comes when it was due (15 s after start), not a reconcile interval later
        wait_for(all_up, timeout=interval)
    finally:
        sim.stop()


def test_events_never_move_last_success_and_a_failing_meeting_goes_stale(start_exporter):
    def live(sim: Any) -> None:
        sim.set_participants(sim.meeting_ids[0], 1)

    stale_after = 3.0
    sim, exporter = start(
        start_exporter,
        meetings=2,
        poll={"interval_seconds": 1, "stale_after_seconds": stale_after},
        reconcile=5,
        setup=live,
    )
    try:
        meeting = sim.meeting_ids[0]
        exporter.wait_ready()
        last = value(
            exporter.scrape(), "realtimekit_last_success_timestamp_seconds", meeting_id=meeting
        )
        assert last is not None
        sim.set_fault(meeting, "401")  # every poll of it fails from now on
        wait_for(lambda: value(exporter.scrape(), "realtimekit_up", meeting_id=meeting) == 0)
        last = value(
            exporter.scrape(), "realtimekit_last_success_timestamp_seconds", meeting_id=meeting
        )
        sim.end_session(meeting)  # meeting.ended, then meeting.started: states an event implies
        sim.set_participants(meeting, 1)
        seen: set[float | None] = set()
        vanished = False
        deadline = time.monotonic() + 4 * stale_after  # bounded
        participants = 1
        while time.monotonic() < deadline and not vanished:
            participants = 1 + participants % 3  # joins and leaves keep arriving
            sim.set_participants(meeting, participants)
            samples = exporter.scrape()
            seen.add(
                value(samples, "realtimekit_last_success_timestamp_seconds", meeting_id=meeting)
            )
            vanished = value(samples, "realtimekit_session_active", meeting_id=meeting) is None
            time.sleep(0.3)
        samples = exporter.scrape()
        assert seen == {last}, "a webhook event moved the last success time"
        assert vanished, "the failing meeting's values never went stale while events arrived"
        assert value(samples, "realtimekit_up", meeting_id=meeting) == 0
        started = value(samples, "realtimekit_webhook_events_total", event="meeting.started")
        assert started is not None and started >= 2  # the events really were accepted
        assert re.search(r'poll_errors_total\{[^}]*reason="auth"', exporter.metrics_text())
    finally:
        sim.stop()
