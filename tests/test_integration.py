"""The real exporter process against the simulator, both on 127.0.0.1, scraped over HTTP."""

from __future__ import annotations

import signal
import time

from tests.support.api import TOKEN, sim_config
from tests.support.metrics import parse_metrics, value
from tests.support.process import wait_for


def test_values_follow_the_simulator(simulator, start_exporter):
    a, b, c, d = simulator.meeting_ids
    simulator.set_participants(a, 3)
    simulator.set_fault(d, "500")
    config = sim_config(simulator, meetings=[{"id": a, "labels": {"team": "sales"}}, b, c, d])
    exporter = start_exporter(config)

    def live(meeting: str, expected: float) -> bool:
        samples = exporter.scrape()
        return (
            value(samples, "realtimekit_session_live_participants", meeting_id=meeting) == expected
        )

    exporter.wait_ready()
    wait_for(lambda: live(a, 3))
    samples = exporter.scrape()
    assert value(samples, "realtimekit_up", meeting_id=a, team="sales") == 1
    assert value(samples, "realtimekit_session_active", meeting_id=a) == 1
    assert value(samples, "realtimekit_session_status", meeting_id=a, status="LIVE") == 1
    assert value(samples, "realtimekit_session_status", meeting_id=a, status="ENDED") == 0
    session_id = simulator.session(a)["id"]
    assert value(samples, "realtimekit_session_info", meeting_id=a, session_id=session_id) == 1

    # Meetings without a session: up, and explicitly not active.
    for m in (b, c):
        assert value(samples, "realtimekit_up", meeting_id=m) == 1
        assert value(samples, "realtimekit_session_active", meeting_id=m) == 0
        assert value(samples, "realtimekit_session_live_participants", meeting_id=m) == 0
        assert value(samples, "realtimekit_session_info", meeting_id=m) is None

    # The erroring meeting is down with its reason; the others are unaffected.
    assert value(samples, "realtimekit_up", meeting_id=d) == 0
    assert (
        value(samples, "realtimekit_poll_errors_total", meeting_id=d, reason="http_5xx") or 0
    ) >= 1
    assert value(samples, "realtimekit_session_active", meeting_id=d) is None

    # Participants join and leave; the peak and consumed time follow.
    simulator.set_participants(a, 7)
    wait_for(lambda: live(a, 7))
    simulator.set_participants(a, 2)
    wait_for(lambda: live(a, 2))
    samples = exporter.scrape()
    assert value(samples, "realtimekit_session_max_concurrent_participants", meeting_id=a) == 7
    assert value(samples, "realtimekit_session_consumed_seconds", meeting_id=a) > 0

    # The session ends: status flips to ENDED, then the session goes away entirely.
    simulator.end_session(a)
    wait_for(
        lambda: (
            value(exporter.scrape(), "realtimekit_session_status", meeting_id=a, status="ENDED")
            == 1
        )
    )
    simulator.clear_session(a)
    wait_for(lambda: value(exporter.scrape(), "realtimekit_session_active", meeting_id=a) == 0)
    samples = exporter.scrape()
    assert value(samples, "realtimekit_session_status", meeting_id=a, status="LIVE") is None
    assert value(samples, "realtimekit_session_max_concurrent_participants", meeting_id=a) is None

    # The fault clears: the broken meeting recovers.
    simulator.set_fault(d, None)
    wait_for(lambda: value(exporter.scrape(), "realtimekit_up", meeting_id=d) == 1)

    text = exporter.metrics_text()
    assert exporter.stop() == 0
    assert TOKEN not in text
    assert TOKEN not in exporter.log()
    assert "Traceback" not in exporter.log()


def test_stale_values_survive_failures_then_vanish(simulator, start_exporter):
    a = simulator.meeting_ids[0]
    simulator.set_participants(a, 4)
    exporter = start_exporter(sim_config(simulator, meetings=[a], stale_after_seconds=5))
    wait_for(lambda: value(exporter.scrape(), "realtimekit_session_live_participants") == 4)
    simulator.set_fault(a, "503")
    wait_for(lambda: value(exporter.scrape(), "realtimekit_up") == 0)
    # Still within stale_after: the last good values are kept.
    samples = exporter.scrape()
    last_ok = value(samples, "realtimekit_last_success_timestamp_seconds")
    assert time.time() - last_ok < 5, "the scrape came too late to see kept values"
    assert value(samples, "realtimekit_session_live_participants") == 4
    assert value(samples, "realtimekit_session_active") == 1
    # Past stale_after: they vanish; the health series stay.
    wait_for(lambda: value(exporter.scrape(), "realtimekit_session_live_participants") is None)
    samples = exporter.scrape()
    assert value(samples, "realtimekit_up") == 0
    assert value(samples, "realtimekit_session_active") is None
    assert value(samples, "realtimekit_last_success_timestamp_seconds") == last_ok


def test_endpoints_and_graceful_shutdown(simulator, start_exporter):
    exporter = start_exporter(sim_config(simulator))
    wait_for(lambda: exporter.get("/-/ready").status_code == 200)
    assert exporter.get("/-/healthy").status_code == 200
    landing = exporter.get("/")
    assert landing.status_code == 200 and "/metrics" in landing.text
    assert exporter.get("/nope").status_code == 404
    assert (
        exporter.get("/metrics", headers={"Accept-Encoding": "gzip"}).headers.get(
            "content-encoding"
        )
        == "gzip"
    )
    om = exporter.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")
    build = parse_metrics(exporter.metrics_text())
    assert value(build, "realtimekit_exporter_build_info") == 1
    exporter.proc.send_signal(signal.SIGINT)
    assert exporter.proc.wait(10) == 0


def test_port_in_use_is_one_clear_line(simulator, start_exporter, tmp_path):
    import subprocess
    import sys

    first = start_exporter(sim_config(simulator))
    config = tmp_path / "second.yaml"
    config.write_text(first.config_path.read_text())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(config),
            "--web.listen-address",
            f"127.0.0.1:{first.port}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "CLOUDFLARE_API_TOKEN": TOKEN},
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "cannot listen on" in proc.stderr and "in use" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_not_ready_until_first_poll_then_ready(start_exporter):
    from exporter.simulator import FaultConfig, Simulator

    sim = Simulator(token=TOKEN, meetings=2, auto=False, faults=FaultConfig(latency_seconds=2))
    sim.start("127.0.0.1", 0)
    try:
        config = sim_config(sim)
        config["api"]["timeout_seconds"] = 5
        exporter = start_exporter(config)
        assert exporter.get("/-/ready").status_code == 503  # the first answers take 2 s
        assert exporter.get("/-/healthy").status_code == 200
        wait_for(lambda: exporter.get("/-/ready").status_code == 200, timeout=15)
    finally:
        sim.stop()


def test_sigterm_with_requests_in_flight_exits_within_bound(start_exporter):
    from exporter.simulator import FaultConfig, Simulator

    sim = Simulator(token=TOKEN, meetings=3, auto=False, faults=FaultConfig(slow_seconds=30))
    sim.start("127.0.0.1", 0)
    try:
        for meeting in sim.meeting_ids:
            sim.set_fault(meeting, "timeout")  # every answer takes 30 s
        config = sim_config(sim)
        config["api"]["timeout_seconds"] = 20
        exporter = start_exporter(config)
        wait_for(lambda: value(exporter.scrape(), "realtimekit_api_requests_in_flight") >= 2)
        started = time.monotonic()
        exporter.proc.send_signal(signal.SIGTERM)
        assert exporter.proc.wait(15) == 0
        assert time.monotonic() - started < 6  # in-flight polls cancelled after ~3 s
        assert "Traceback" not in exporter.log()
        assert "level=error" not in exporter.log()
    finally:
        sim.stop()


def test_head_name_filters_and_refused_gzip_on_the_real_process(simulator, start_exporter):
    import httpx

    exporter = start_exporter(sim_config(simulator))
    exporter.wait_ready()
    url = exporter.base + "/metrics"
    head = httpx.head(url, timeout=10)
    full = httpx.get(url, timeout=10)
    assert head.status_code == 200 and head.content == b""  # HEAD: headers only, no 405
    assert head.headers["content-type"] == full.headers["content-type"]
    only = httpx.get(url, params=[("name[]", "realtimekit_up")], timeout=10).text
    families = {line.split()[2] for line in only.splitlines() if line.startswith("# TYPE")}
    assert families == {"realtimekit_up"} and "realtimekit_up{" in only  # not an empty 200
    refused = httpx.get(url, headers={"Accept-Encoding": "gzip;q=0"}, timeout=10)
    assert "content-encoding" not in refused.headers
    wanted = httpx.get(url, headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert wanted.headers.get("content-encoding") == "gzip"
    assert "realtimekit_up{" in wanted.text  # httpx decoded it
