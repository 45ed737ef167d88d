"""Issue 13, against the real process: hostile answers of the (simulated) API and hostile reloads.

Each test starts the real exporter (``python -m exporter``) against the real simulator on
127.0.0.1 and reproduces one numbered item of the issue: 1 (trickling and endless bodies), 2 (an
80 KiB ``Ratelimit`` header), 3 (``Retry-After: 1000000000``), 4 (answers that escape the error
tree), 5 (a gzip bomb), 11 (reload storms, a FIFO token file) and 13 (the shutdown grace).
Unit tests of the same items live in ``test_client_hostile.py``; items 6, 8 and 9 (the HTTP
server) in ``test_server.py``.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from exporter.model import MAX_LABEL_CHARS, TRUNCATED
from exporter.simulator import FaultConfig, Simulator
from tests.support.api import TOKEN, sim_config
from tests.support.metrics import value
from tests.support.process import ExporterProcess, proc_status, wait_for

MakeSim = Callable[..., Simulator]


@pytest.fixture
def make_sim() -> Iterator[MakeSim]:
    """Simulators on 127.0.0.1 (``auto=False``: meetings change only when told), every one
    stopped at the end (which also ends trickling and endless answers at once)."""
    started: list[Simulator] = []

    def make(meetings: int = 3, **kw: Any) -> Simulator:
        sim = Simulator(token=TOKEN, meetings=meetings, auto=False, seed=13, **kw)
        sim.start("127.0.0.1", 0)
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def failures(samples: Samples, meeting: str, reason: str) -> float:
    """A meeting's failed polls for one reason, 0 while the series is absent."""
    found = value(samples, "realtimekit_poll_errors_total", meeting_id=meeting, reason=reason)
    return found or 0.0


def other_reasons(samples: Samples, meeting: str, reason: str) -> list[str]:
    """Reasons other than ``reason`` the meeting's failures were counted under."""
    return [
        dict(labels)["reason"]
        for name, labels in samples
        if name == "realtimekit_poll_errors_total"
        and dict(labels)["meeting_id"] == meeting
        and dict(labels)["reason"] != reason
    ]


def errors(exporter: ExporterProcess, meeting: str, reason: str) -> float:
    return failures(exporter.scrape(), meeting, reason)


def down_for(exporter: ExporterProcess, meetings: list[str], reason: str, at_least: int) -> bool:
    """Every one of ``meetings`` is ``up 0`` with ``at_least`` failures counted as ``reason``."""
    samples = exporter.scrape()
    return all(
        value(samples, "realtimekit_up", meeting_id=m) == 0
        and failures(samples, m, reason) >= at_least
        for m in meetings
    )


def served(sim: Simulator, meeting: str, since: float = 0.0) -> int:
    """Answers the simulator gave (or began to stream) for one meeting's active-session."""
    return sum(1 for t, target, _ in sim.request_log() if f"/{meeting}/" in target and t >= since)


def healthy_latency(exporter: ExporterProcess) -> float:
    """Seconds ``/-/healthy`` takes to answer 200 (a timeout counts as failing the probe)."""
    started = time.monotonic()
    response = httpx.get(exporter.base + "/-/healthy", timeout=5)
    assert response.status_code == 200, response.text
    return time.monotonic() - started


def rate(times: list[float], start: float, end: float) -> float:
    return sum(1 for t in times if start <= t < end) / (end - start)


def assert_no_traceback(exporter: ExporterProcess) -> None:
    log = exporter.log()
    assert "Traceback" not in log, log[-4000:]


# --- 1. trickling and endless bodies -----------------------------------------------------------


def test_trickle_and_endless_bodies_time_out_and_do_not_starve_others(make_sim, start_exporter):
    sim = make_sim(3)
    trickle, endless, healthy = sim.meeting_ids
    for meeting in sim.meeting_ids:
        sim.set_participants(meeting, 2)
    sim.set_fault(trickle, "trickle")  # a valid body, one byte a second
    sim.set_fault(endless, "endless")  # a chunked body that never ends
    # As many hostile meetings as slots, and no backoff to speak of: they take every slot they can.
    config = sim_config(sim, concurrency=2, max_backoff_seconds=1)
    config["api"]["timeout_seconds"] = 1
    exporter = start_exporter(config)

    wait_for(lambda: down_for(exporter, [trickle, endless], "timeout", 1), timeout=15)
    exporter.wait_ready(timeout=10)
    samples = exporter.scrape()
    assert value(samples, "realtimekit_up", meeting_id=healthy) == 1
    successes = {value(samples, "realtimekit_last_success_timestamp_seconds", meeting_id=healthy)}

    def polled_again() -> bool:
        samples = exporter.scrape()
        successes.add(
            value(samples, "realtimekit_last_success_timestamp_seconds", meeting_id=healthy)
        )
        return len(successes) >= 4

    # The healthy meeting keeps being polled while the others take every slot they can (it
    # waits its turn for a slot, so about every 2 s instead of 1 s; never stuck behind them).
    wait_for(polled_again, timeout=20, interval=0.2)
    assert errors(exporter, trickle, "timeout") >= 2  # still tried, still timing out
    assert value(exporter.scrape(), "realtimekit_up", meeting_id=healthy) == 1
    assert_no_traceback(exporter)


def test_a_trickling_listing_fails_the_discovery_cycle_with_timeout(make_sim, start_exporter):
    sim = make_sim(3)
    for meeting in sim.meeting_ids:
        sim.set_participants(meeting, 1)
    sim.set_listing_fault("trickle")
    config = sim_config(sim, meetings=[])
    config["apps"][0]["discover"] = {"enabled": True, "per_page": 10}
    config["api"]["timeout_seconds"] = 1
    exporter = start_exporter(config)
    app = {"account_id": sim.account_id, "app_id": sim.app_id}

    def discovery_timed_out() -> bool:
        samples = exporter.scrape()
        return (
            value(samples, "realtimekit_discovery_up", **app) == 0
            and (value(samples, "realtimekit_discovery_errors_total", reason="timeout", **app) or 0)
            >= 1
        )

    wait_for(discovery_timed_out, timeout=15)
    # The listing recovers: the next cycle finds the live meetings.
    sim.set_listing_fault(None)
    wait_for(lambda: value(exporter.scrape(), "realtimekit_discovery_up", **app) == 1, timeout=15)
    wait_for(
        lambda: all(
            value(exporter.scrape(), "realtimekit_up", meeting_id=m) == 1 for m in sim.meeting_ids
        ),
        timeout=15,
    )
    assert_no_traceback(exporter)


# --- 2. an 80 KiB Ratelimit header ---------------------------------------------------------------


def test_a_huge_ratelimit_header_never_freezes_the_process(make_sim, start_exporter):
    sim = make_sim(2)
    hostile, other = sim.meeting_ids
    sim.set_participants(hostile, 5)
    sim.set_participants(other, 1)
    sim.set_fault(hostile, "huge_header")  # valid answer, 80 KiB of `r=1;` in Ratelimit
    exporter = start_exporter(sim_config(sim))
    exporter.wait_ready()
    since = time.time()
    latencies = []
    for probe in range(20):  # spread over about ten polls of the hostile meeting
        latencies.append(healthy_latency(exporter))
        if probe % 2:
            seen = served(sim, hostile)
            wait_for(lambda seen=seen: served(sim, hostile) > seen, timeout=10, interval=0.05)
    print(f"/-/healthy under huge headers: max {max(latencies) * 1000:.0f} ms")
    assert max(latencies) < 1.0, latencies
    assert served(sim, hostile, since) >= 8
    samples = exporter.scrape()  # counted as the valid answer it is
    assert value(samples, "realtimekit_up", meeting_id=hostile) == 1
    assert value(samples, "realtimekit_session_live_participants", meeting_id=hostile) == 5
    assert other_reasons(samples, hostile, "") == []  # no failure of any reason
    assert value(samples, "realtimekit_up", meeting_id=other) == 1
    assert_no_traceback(exporter)


# --- 3. Retry-After: 1000000000 --------------------------------------------------------------------


def test_a_huge_retry_after_pauses_for_a_bounded_time_across_reloads(make_sim, start_exporter):
    sim = make_sim(2)
    hostile, other = sim.meeting_ids
    sim.set_fault(hostile, "retry_after_huge")
    config = sim_config(sim)  # rate_limit period 10 s: the longest pause is max(10, 300) s
    exporter = start_exporter(config)
    wait_for(lambda: sim.status_counts().get(429, 0) >= 1)
    # The pause holds: the token's other meeting is refused locally, not sent.
    wait_for(lambda: errors(exporter, other, "rate_limited") >= 1)
    bound = max(config["api"]["rate_limit"]["period_seconds"], 300)

    def until() -> float:
        found = value(exporter.scrape(), "realtimekit_api_rate_limited_until_timestamp_seconds")
        assert found is not None and math.isfinite(found), found
        now = time.time()
        assert now < found <= now + bound + 5, (found - now, bound)
        return found

    before = until()
    exporter.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded" in exporter.log(), timeout=10)
    assert value(exporter.scrape(), "realtimekit_config_last_reload_successful") == 1
    assert until() == pytest.approx(before, abs=1.0)  # the same bounded pause, kept
    assert sim.status_counts().get(429, 0) == 1  # nothing sent into the block
    assert_no_traceback(exporter)


# --- 4. answers that escape the error tree -------------------------------------------------------


def test_bad_answers_are_invalid_response_without_traceback(make_sim, start_exporter):
    sim = make_sim(5)
    deep, huge, paused, long_name, healthy = sim.meeting_ids
    for i, meeting in enumerate(sim.meeting_ids):
        sim.set_participants(meeting, i + 1)
    for meeting, kind in ((deep, "deep_json"), (huge, "huge_int"), (paused, "unknown_status")):
        sim.set_fault(meeting, kind)
    sim.set_fault(long_name, "long_name")  # a 900 KiB meeting_display_name
    exporter = start_exporter(sim_config(sim))

    hostile = [deep, huge, paused]
    # every poll is counted, not just the first
    wait_for(lambda: down_for(exporter, hostile, "invalid_response", 2), timeout=20)
    exporter.wait_ready()
    text = exporter.metrics_text()
    samples = exporter.scrape()
    info = [
        dict(ls)
        for (n, ls) in samples
        if n == "realtimekit_session_info" and dict(ls)["meeting_id"] == long_name
    ]
    assert len(info) == 1, info
    name = info[0]["meeting_display_name"]
    assert len(name) <= MAX_LABEL_CHARS + len(TRUNCATED), len(name)
    assert name.startswith("nnnn") and name.endswith(TRUNCATED)
    assert len(text) < 200_000, len(text)  # the 900 KiB name is not served
    assert value(samples, "realtimekit_up", meeting_id=long_name) == 1
    assert value(samples, "realtimekit_session_live_participants", meeting_id=long_name) == 4
    assert value(samples, "realtimekit_up", meeting_id=healthy) == 1
    assert value(samples, "realtimekit_session_live_participants", meeting_id=healthy) == 5
    for m in hostile:  # only the one reason, nothing else counted
        assert other_reasons(samples, m, "invalid_response") == [], m
    assert_no_traceback(exporter)
    assert "internal error" not in exporter.log()


# --- 5. a gzip bomb ------------------------------------------------------------------------------


def test_gzip_bombs_are_cut_at_the_cap_and_memory_stays_flat(make_sim, start_exporter):
    sim = make_sim(6)
    *bombs, healthy = sim.meeting_ids
    for meeting in sim.meeting_ids:
        sim.set_participants(meeting, 2)
    exporter = start_exporter(sim_config(sim, max_backoff_seconds=1))
    exporter.wait_ready()
    pid = exporter.proc.pid
    baseline = proc_status(pid, "VmRSS")
    since = time.time()
    for meeting in bombs:  # 1 GiB of zeros each, in ~1 MB of gzip
        sim.set_fault(meeting, "gzip_bomb")
    peak = [baseline]

    def ten_each() -> bool:
        peak.append(proc_status(pid, "VmRSS"))
        return all(served(sim, m, since) >= 10 for m in bombs)

    wait_for(ten_each, timeout=60, interval=0.05)
    high_water = proc_status(pid, "VmHWM")  # the peak ever, between our samples too
    limit = 64 << 20
    print(f"RSS baseline {baseline >> 20} MiB, sampled max {max(peak) >> 20} MiB, "
          f"VmHWM {high_water >> 20} MiB")  # fmt: skip
    assert max(peak) - baseline < limit, (baseline >> 20, max(peak) >> 20)
    assert high_water - baseline < limit, (baseline >> 20, high_water >> 20)
    assert down_for(exporter, bombs, "invalid_response", 5)
    assert value(exporter.scrape(), "realtimekit_up", meeting_id=healthy) == 1
    assert_no_traceback(exporter)


# --- 11. reload storms and a FIFO token file -------------------------------------------------------


class Prober:
    """Probes ``/-/healthy`` from a thread until stopped; keeps every latency."""

    def __init__(self, exporter: ExporterProcess) -> None:
        self.exporter = exporter
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(2000):  # bounded: about 200 s at the most
            if self._stop.wait(0.1):
                return
            try:
                self.latencies.append(healthy_latency(self.exporter))
            except (httpx.HTTPError, AssertionError):
                self.latencies.append(math.inf)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def post_reloads(exporter: ExporterProcess, times: int, codes: list[int]) -> None:
    for _ in range(times):
        codes.append(httpx.post(exporter.base + "/-/reload", timeout=30).status_code)


def start_thousand(make_sim: MakeSim, start_exporter: Any) -> tuple[Simulator, ExporterProcess]:
    """1,000 meetings polled every 20 s (50 requests/s), polling under way."""
    sim = make_sim(1000)
    config = sim_config(sim, interval_seconds=20)
    config["api"]["rate_limit"] = {"requests": 100_000, "period_seconds": 60}
    exporter = start_exporter(config)
    wait_for(lambda: sim.request_count() >= 200, timeout=30)
    return sim, exporter


def sighups(exporter: ExporterProcess, times: int = 50, within: float = 2.0) -> None:
    for _ in range(times):
        exporter.proc.send_signal(signal.SIGHUP)
        time.sleep(within / times)  # pacing: signals sent at once would merge in the kernel


def reloads_logged(exporter: ExporterProcess) -> int:
    return exporter.log().count("config reloaded")


def test_a_reload_storm_leaves_polling_and_serving_alone(make_sim, start_exporter):
    sim, exporter = start_thousand(make_sim, start_exporter)
    calm_start = time.time()
    wait_for(lambda: time.time() - calm_start >= 3, timeout=5)  # a calm window to compare with
    storm_start = time.time()
    codes: list[int] = []
    posters = [
        threading.Thread(target=post_reloads, args=(exporter, 10, codes), daemon=True)
        for _ in range(3)
    ]
    with Prober(exporter) as prober:
        for thread in posters:
            thread.start()
        sighups(exporter)
        for thread in posters:
            thread.join(60)
        storm_end = time.time()
    assert not any(t.is_alive() for t in posters)
    assert codes == [200] * 30, codes
    times = [t for t, _, _ in sim.request_log()]
    calm, stormy = rate(times, calm_start, storm_start), rate(times, storm_start, storm_end)
    assert stormy >= 0.5 * calm, (calm, stormy, storm_end - storm_start)
    assert prober.latencies and max(prober.latencies) < 1.0, prober.latencies
    wait_for(
        lambda: value(exporter.scrape(), "realtimekit_config_last_reload_successful") == 1,
        timeout=10,
    )
    reloads = reloads_logged(exporter)
    assert 1 <= reloads < 80, reloads  # 80 requests: those that came during a reload joined it
    assert exporter.proc.poll() is None
    assert_no_traceback(exporter)
    print(f"calm {calm:.1f}/s, storm {stormy:.1f}/s over {storm_end - storm_start:.1f}s, "
          f"{reloads} reloads, probe max {max(prober.latencies) * 1000:.0f} ms")  # fmt: skip


def test_a_sighup_storm_becomes_a_few_reloads(make_sim, start_exporter):
    sim, exporter = start_thousand(make_sim, start_exporter)
    sighups(exporter)
    wait_for(
        lambda: value(exporter.scrape(), "realtimekit_config_last_reload_successful") == 1,
        timeout=10,
    )
    seen = sim.request_count()
    wait_for(lambda: sim.request_count() >= seen + 50, timeout=10)  # the storm is over
    reloads = reloads_logged(exporter)
    print(f"{reloads} reloads for 50 SIGHUPs in 2 s")
    assert 1 <= reloads <= 10, reloads


def test_a_fifo_token_file_fails_the_reload_and_sigterm_still_stops(
    make_sim, start_exporter, tmp_path
):
    sim = make_sim(2)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = sim_config(sim)
    config["api"]["token_file"] = str(token_file)
    exporter = start_exporter(config, env={"CLOUDFLARE_API_TOKEN": ""})
    exporter.wait_ready()
    token_file.unlink()
    os.mkfifo(token_file)  # nobody ever writes: a blocking read would wait for ever
    exporter.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reload failed" in exporter.log(), timeout=10)
    lines = [line for line in exporter.log().splitlines() if "config reload failed" in line]
    assert len(lines) == 1, lines
    assert "token_file" in lines[0] and str(token_file) in lines[0], lines[0]
    assert value(exporter.scrape(), "realtimekit_config_last_reload_successful") == 0
    seen = sim.request_count()
    wait_for(lambda: sim.request_count() >= seen + 4, timeout=10)  # polling goes on
    assert value(exporter.scrape(), "realtimekit_up", meeting_id=sim.meeting_ids[0]) == 1
    started = time.monotonic()
    exporter.proc.terminate()
    assert exporter.proc.wait(5) == 0
    assert time.monotonic() - started < 5
    assert_no_traceback(exporter)


# --- 13. the shutdown grace ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer_seconds", "completes", "exit_within"),
    [(2, True, 4.0), (10, False, 5.0)],
    ids=["2s-answer-completes", "10s-answer-cancelled"],
)
def test_sigterm_gives_polls_in_flight_a_grace(
    make_sim, start_exporter, answer_seconds, completes, exit_within
):
    sim = make_sim(1, faults=FaultConfig(slow_seconds=answer_seconds))
    (meeting,) = sim.meeting_ids
    sim.set_participants(meeting, 3)
    sim.set_fault(meeting, "500")  # failing first, so that a poll's completion is logged
    config = sim_config(sim, max_backoff_seconds=1)
    config["api"]["timeout_seconds"] = 15
    exporter = start_exporter(config)
    wait_for(lambda: "reason=http_5xx" in exporter.log(), timeout=15)
    sim.set_fault(meeting, "timeout")  # from now on each answer takes `answer_seconds`
    seen = sim.request_count()
    wait_for(lambda: sim.request_count() > seen, timeout=10, interval=0.02)  # one in flight
    started = time.monotonic()
    exporter.proc.terminate()
    code = exporter.proc.wait(exit_within + 5)
    took = time.monotonic() - started
    log = exporter.log()
    print(f"{answer_seconds}s answer in flight: exited {code} after {took:.2f}s")
    assert code == 0, log[-3000:]
    assert took < exit_within, took
    recovered = f"poll recovered account_id={sim.account_id}"
    cancelled = f"poll of meeting {meeting} cancelled"
    if completes:  # waited for the answer, used it, then exited
        assert took >= answer_seconds - 1.0, took
        assert recovered in log and cancelled not in log, log[-3000:]
        assert any(f"/{meeting}/" in target and status == 200
                   for _, target, status in sim.request_log())  # fmt: skip
    else:  # the grace (3 s) ran out: cancelled, and said so
        assert took >= 2.5, took
        assert cancelled in log and recovered not in log, log[-3000:]
    assert_no_traceback(exporter)
