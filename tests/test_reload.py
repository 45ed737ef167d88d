"""Hot reload (SIGHUP and POST /-/reload) of the real exporter process against the simulator."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import httpx

from tests.support.api import TOKEN, sim_config
from tests.support.metrics import value
from tests.support.process import wait_for

if TYPE_CHECKING:
    from exporter.runtime import Service


def meetings_exported(exporter) -> set[str]:
    return {
        dict(labels)["meeting_id"]
        for (name, labels), _ in exporter.scrape().items()
        if name == "realtimekit_up"
    }


def test_reload_adds_removes_relabels_and_keeps_state(simulator, start_exporter):
    a, b, c, d = simulator.meeting_ids
    simulator.set_participants(a, 3)
    exporter = start_exporter(sim_config(simulator, meetings=[a, b]))
    wait_for(lambda: meetings_exported(exporter) == {a, b})
    wait_for(
        lambda: value(exporter.scrape(), "realtimekit_session_live_participants", meeting_id=a) == 3
    )
    first_success = value(
        exporter.scrape(), "realtimekit_last_success_timestamp_seconds", meeting_id=a
    )

    # Add c and d, drop b, relabel a, change the interval: via SIGHUP.
    config = sim_config(
        simulator, meetings=[{"id": a, "labels": {"team": "x"}}, c, d], interval_seconds=2
    )
    exporter.write_config(config)
    exporter.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: meetings_exported(exporter) == {a, c, d}, timeout=10)
    samples = exporter.scrape()
    assert value(samples, "realtimekit_up", meeting_id=b) is None  # removed: gone at once
    assert value(samples, "realtimekit_up", meeting_id=a, team="x") == 1  # kept its state...
    assert (
        value(samples, "realtimekit_last_success_timestamp_seconds", meeting_id=a) >= first_success
    )
    assert value(samples, "realtimekit_config_last_reload_successful") == 1
    wait_for(lambda: value(exporter.scrape(), "realtimekit_up", meeting_id=d) == 1, timeout=10)
    assert value(exporter.scrape(), "realtimekit_poll_effective_interval_seconds") == 2
    assert "config reloaded" in exporter.log()


def test_invalid_reload_keeps_the_running_config(simulator, start_exporter):
    a, b, *_ = simulator.meeting_ids
    exporter = start_exporter(sim_config(simulator, meetings=[a, b]))
    wait_for(lambda: meetings_exported(exporter) == {a, b})
    before = value(exporter.scrape(), "realtimekit_config_last_reload_success_timestamp_seconds")
    exporter.config_path.write_text("apps:\n  - account_id: a/b\n    nonsense: [\n")
    response = httpx.post(exporter.base + "/-/reload", timeout=10)
    assert response.status_code == 500
    assert "invalid YAML" in response.text
    exporter.config_path.write_text("apps: []\n")
    exporter.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "apps: must list at least one entry" in exporter.log())
    samples = exporter.scrape()
    assert value(samples, "realtimekit_config_last_reload_successful") == 0
    assert value(samples, "realtimekit_config_last_reload_success_timestamp_seconds") == before
    assert meetings_exported(exporter) == {a, b}
    wait_for(lambda: value(exporter.scrape(), "realtimekit_up", meeting_id=a) == 1)
    assert exporter.proc.poll() is None


def test_reload_over_http(simulator, start_exporter):
    a, b, *_ = simulator.meeting_ids
    exporter = start_exporter(sim_config(simulator, meetings=[a]))
    wait_for(lambda: meetings_exported(exporter) == {a})
    assert exporter.get("/-/reload").status_code == 405
    exporter.write_config(sim_config(simulator, meetings=[b]))
    response = httpx.post(exporter.base + "/-/reload", timeout=10)
    assert response.status_code == 200, response.text
    assert "config reloaded" in response.text
    wait_for(lambda: meetings_exported(exporter) == {b}, timeout=5)  # polled right away


def test_token_file_rotation_is_picked_up_on_reload(simulator, start_exporter, tmp_path):
    a = simulator.meeting_ids[0]
    token_file = tmp_path / "token"
    token_file.write_text("wrong-token\n")
    config = sim_config(simulator, meetings=[a])
    config["api"]["token_file"] = str(token_file)
    exporter = start_exporter(config, env={"CLOUDFLARE_API_TOKEN": ""})
    wait_for(
        lambda: (
            (
                value(
                    exporter.scrape(), "realtimekit_poll_errors_total", meeting_id=a, reason="auth"
                )
                or 0
            )
            >= 1
        )
    )
    token_file.write_text(TOKEN + "\n")
    exporter.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: value(exporter.scrape(), "realtimekit_up", meeting_id=a) == 1, timeout=15)
    assert TOKEN not in exporter.log() + exporter.metrics_text()


def scheduled_service(raw: dict[str, Any]) -> Service:
    """A Service on ``raw`` (this module's token) with its jobs planned on a paused scheduler;
    to be made inside a running event loop."""
    from exporter.config import parse_config
    from exporter.logs import RedactingFilter
    from exporter.runtime import Service

    service = Service(
        parse_config(raw), {("CLOUDFLARE_API_TOKEN", None): TOKEN}, config_path=None,
        redact=RedactingFilter(),
    )  # fmt: skip
    service.scheduler.start(paused=True)
    service.swap(service.runtime)
    return service


def test_applying_the_same_config_again_keeps_every_job_and_its_phase():
    import asyncio

    from exporter.runtime import build_runtime

    raw = {
        "api": {"rate_limit": {"requests": 30, "period_seconds": 10}},  # forces stretching
        "poll": {"interval_seconds": 3},
        "apps": [
            {"account_id": "a", "app_id": "b", "meetings": [f"m{i}" for i in range(40)]},
            {"account_id": "a", "app_id": "c", "discover": {"enabled": True}},
        ],
    }

    async def go() -> None:
        service = scheduled_service(raw)
        scheduler = service.scheduler
        config = service.config
        before = {job.id: job.next_run_time for job in scheduler.get_jobs()}
        rebuilt = build_runtime(config, service.runtime.tokens, health=service.health,
                                previous=service.runtime)  # fmt: skip
        service.swap(rebuilt)
        after = {job.id: job.next_run_time for job in scheduler.get_jobs()}
        scheduler.shutdown(wait=False)
        assert len(before) == 41
        assert after == before
        await service.runtime.http.aclose()

    asyncio.run(go())


def test_closing_just_after_jobs_were_submitted_logs_no_failed_job(caplog):
    """Shutdown cancels what is still running; a poll the scheduler had just submitted (a task
    not yet started) must end as quietly as one in flight, not as APScheduler's "raised an
    exception" with a CancelledError traceback."""
    import asyncio
    import logging
    from datetime import UTC, datetime

    raw = {
        "api": {"base_url": "http://127.0.0.1:9"},  # nothing listens: polls fail at once
        "apps": [{"account_id": "a", "app_id": "b", "meetings": ["m1", "m2", "m3"]}],
    }

    async def go() -> int:
        service = scheduled_service(raw)
        for job in service.scheduler.get_jobs():
            job.modify(next_run_time=datetime.now(UTC))
        service.scheduler.resume()
        service.scheduler._process_jobs()  # submits every due poll: tasks, none started yet
        submitted = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await service.close()
        return len(submitted)

    with caplog.at_level(logging.DEBUG, logger="apscheduler"):
        submitted = asyncio.run(go())
    assert submitted >= 3
    failed = [r for r in caplog.records if r.name.startswith("apscheduler") and r.levelno >= 30]
    assert not failed, [r.getMessage() for r in failed]
