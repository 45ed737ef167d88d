"""Budget and faults over loopback: the real exporter process against the simulator."""

from __future__ import annotations

import time

import pytest

from exporter.simulator import Simulator
from tests.support.api import TOKEN, sim_config
from tests.support.metrics import max_in_window, value
from tests.support.process import wait_for

# Forced fault of the simulator -> the reason the exporter must report.
FAULT_REASONS = {
    "500": "http_5xx",
    "503": "http_5xx",
    "timeout": "timeout",
    "reset": "connect",
    "non_json": "invalid_response",
    "wrong_types": "invalid_response",
    "401": "auth",
}


@pytest.fixture
def fault_sim():
    from exporter.simulator import FaultConfig

    sim = Simulator(
        token=TOKEN,
        meetings=len(FAULT_REASONS) + 2,
        auto=False,
        seed=3,
        faults=FaultConfig(slow_seconds=4),
    )
    sim.start("127.0.0.1", 0)
    yield sim
    sim.stop()


@pytest.mark.parametrize("together", [False, True], ids=["each-alone", "all-together"])
def test_fault_matrix(fault_sim, start_exporter, together):
    sim = fault_sim
    healthy = sim.meeting_ids[:2]
    faulty = dict(
        zip(sim.meeting_ids[2:], FAULT_REASONS.values(), strict=True)
    )  # meeting -> reason
    fault_of = dict(zip(sim.meeting_ids[2:], FAULT_REASONS, strict=True))  # meeting -> fault
    sim.set_participants(healthy[0], 4)
    sim.set_participants(healthy[1], 2)
    for meeting in faulty:
        sim.set_participants(meeting, 1)
    config = sim_config(sim, max_backoff_seconds=2, stale_after_seconds=60)
    config["api"]["timeout_seconds"] = 1
    exporter = start_exporter(config)
    wait_for(
        lambda: all(
            value(exporter.scrape(), "realtimekit_up", meeting_id=m) == 1 for m in sim.meeting_ids
        )
    )

    rounds = [list(faulty)] if together else [[m] for m in faulty]
    for broken in rounds:
        for meeting in broken:
            sim.set_fault(meeting, fault_of[meeting])

        def reported(broken: list[str] = broken) -> bool:
            samples = exporter.scrape()
            return all(
                value(samples, "realtimekit_up", meeting_id=m) == 0
                and (
                    value(samples, "realtimekit_poll_errors_total", meeting_id=m, reason=faulty[m])
                    or 0
                )
                >= 1
                for m in broken
            )

        wait_for(reported, timeout=20)
        samples = exporter.scrape()
        # Healthy meetings keep correct values throughout.
        assert value(samples, "realtimekit_up", meeting_id=healthy[0]) == 1
        assert value(samples, "realtimekit_session_live_participants", meeting_id=healthy[0]) == 4
        assert value(samples, "realtimekit_session_live_participants", meeting_id=healthy[1]) == 2
        # A faulty meeting keeps its last good values (within stale_after) and reports only its reason.
        for m in broken:
            assert value(samples, "realtimekit_session_live_participants", meeting_id=m) == 1
            others = set(FAULT_REASONS.values()) - {faulty[m]}
            assert all(
                value(samples, "realtimekit_poll_errors_total", meeting_id=m, reason=r) is None
                for r in others
            ), m
        # Faults stop: every meeting recovers with fresh values, nothing lost.
        for meeting in broken:
            sim.set_fault(meeting, None)
            sim.set_participants(meeting, 3)
        wait_for(
            lambda broken=broken: all(
                value(exporter.scrape(), "realtimekit_session_live_participants", meeting_id=m) == 3
                and value(exporter.scrape(), "realtimekit_up", meeting_id=m) == 1
                for m in broken
            ),
            timeout=20,
        )
    assert TOKEN not in exporter.metrics_text() + exporter.log()
    assert "Traceback" not in exporter.log()


def test_demand_above_budget_never_draws_a_429(start_exporter):
    sim = Simulator(token=TOKEN, meetings=20, auto=False, seed=4, rate_limit=(30, 10))
    sim.start("127.0.0.1", 0)
    try:
        config = sim_config(sim)  # 20 meetings every second: 20 requests/s against 3/s allowed
        config["api"]["rate_limit"] = {"requests": 30, "period_seconds": 10}
        exporter = start_exporter(config)
        started = time.time()

        def sent_since_start() -> list[float]:
            return [t for t, _, _ in sim.request_log() if t >= started - 1]

        # At 3 requests/s, 40 requests take more than one 10 s window: enough to judge it.
        wait_for(lambda: len(sent_since_start()) >= 40, timeout=30)
        samples = exporter.scrape()
        log = sim.request_log()
        assert sim.status_counts().get(429, 0) == 0, sim.status_counts()
        sent = [t for t, _, _ in log if t >= started - 1]
        assert len(sent) >= 25  # it did use the budget
        assert max_in_window(sent, 10) <= 30
        effective = value(samples, "realtimekit_poll_effective_interval_seconds")
        assert effective >= 20 / 3
        assert "need 20.00 requests/s" in exporter.log()
    finally:
        sim.stop()


def test_a_429_stops_every_request_until_retry_after(simulator, start_exporter):
    a, b, c, _ = simulator.meeting_ids
    exporter = start_exporter(sim_config(simulator, meetings=[a, b, c]))
    wait_for(lambda: value(exporter.scrape(), "realtimekit_up", meeting_id=a) == 1)
    simulator.set_fault(a, "429")  # answers 429 with Retry-After: 5
    wait_for(lambda: simulator.status_counts().get(429, 0) >= 1)
    limited_at = max(t for t, _, status in simulator.request_log() if status == 429)
    simulator.set_fault(a, None)

    def resumed() -> list[float]:
        return sorted(t for t, _, _ in simulator.request_log() if t > limited_at)

    wait_for(lambda: len(resumed()) >= 3, timeout=15)  # polling resumed after the pause
    after = resumed()
    assert after, "polling resumed after Retry-After"
    assert after[0] >= limited_at + 5 - 0.05, after[0] - limited_at
    assert simulator.status_counts()[429] == 1
    samples = exporter.scrape()
    for m in (b, c):  # the whole token was paused: other meetings counted rate_limited too
        assert (
            value(samples, "realtimekit_poll_errors_total", meeting_id=m, reason="rate_limited")
            >= 1
        )
    wait_for(
        lambda: all(
            value(exporter.scrape(), "realtimekit_up", meeting_id=m) == 1 for m in (a, b, c)
        )
    )
