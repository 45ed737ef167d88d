"""Webhooks: how fast a start or an end reaches /metrics, and what polling costs with and without.

    python bench/webhook_cost.py [--events 100] [--meetings 1000] [--window 60] [--quick]

1. Latency: a real exporter (polling every 300 s, so only a webhook can explain a change) and a
   simulator (in this process) that signs and delivers events to it. ``--events`` times a meeting
   is started or ended; each time, the clock runs from the call that makes the simulator send the
   event until a ``/metrics?name[]=realtimekit_session_status`` scrape shows the new state
   (scraped every 5 ms). Median and max.
2. Requests per hour: ``--meetings`` meetings in auto mode (sessions start and end, participants
   join and leave) polled every 30 s with an unlimited budget, once without webhooks and once with
   them (``reconcile_interval_seconds: 300``); requests counted by the simulator over ``--window``
   seconds once the exporter is ready, scaled to an hour.
Bounded in time; 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (
    ACCOUNT_ID,
    APP_ID,
    HUGE_BUDGET,
    TOKEN,
    machine,
    start_exporter,
    table,
    tmpdir,
)
from exporter.simulator import Simulator
from tests.support.ports import free_port
from tests.support.process import ExporterProcess


def _config(sim: Simulator, port: int | None, interval: float) -> dict[str, Any]:
    config: dict[str, Any] = {
        "api": {"base_url": sim.base_url, "timeout_seconds": 10, "rate_limit": HUGE_BUDGET},
        "poll": {"interval_seconds": interval, "stale_after_seconds": 3 * max(interval, 300)},
        "apps": [{"account_id": ACCOUNT_ID, "app_id": APP_ID, "meetings": list(sim.meeting_ids)}],
    }
    if port is not None:
        config["webhooks"] = {
            "listen_address": f"127.0.0.1:{port}",
            "public_key_url": sim.webhook_key_url,
            "reconcile_interval_seconds": 300,
        }
        config["apps"][0]["webhooks"] = {"enabled": True}
    return config


def _simulator(meetings: int, port: int | None, auto: bool) -> Simulator:
    url = None if port is None else f"http://127.0.0.1:{port}/webhooks/{{account_id}}/{{app_id}}"
    sim = Simulator(token=TOKEN, meetings=meetings, auto=auto, speed=5.0, seed=3, webhook_url=url)
    sim.start("127.0.0.1", 0)
    return sim


def _wait_key(exporter: ExporterProcess, timeout: float = 30) -> None:
    """Until the exporter loaded the webhook key (its log says so at info)."""
    deadline = time.monotonic() + timeout
    while "webhook public key loaded" not in exporter.log():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no webhook key:\n{exporter.log()[-2000:]}")
        time.sleep(0.05)


def latency(events: int) -> list[float]:
    port = free_port()
    sim = _simulator(4, port, auto=False)
    tmp = tmpdir("webhook-latency-")
    config = _config(sim, port, 300)
    exporter = start_exporter(config, tmp, "--log.level", "info")  # the key's line
    out: list[float] = []
    try:
        _wait_key(exporter)  # the meetings are exported from the start; their polls are 300 s apart
        url = exporter.base + "/metrics?name[]=realtimekit_session_status"
        with httpx.Client(timeout=10) as client:
            for i in range(events):
                meeting = sim.meeting_ids[i % 4]
                starting = (i // 4) % 2 == 0
                want = 'status="LIVE"'
                started = time.perf_counter()
                if starting:
                    sim.set_participants(meeting, 2)
                else:
                    sim.end_session(meeting)
                deadline = started + 10
                while time.perf_counter() < deadline:
                    body = client.get(url).text
                    line = next((x for x in body.splitlines() if meeting in x and want in x), "")
                    if line.endswith(" 1.0") is starting:  # ended: LIVE 0, or no session at all
                        break
                    time.sleep(0.005)
                out.append(time.perf_counter() - started)
                if not starting:
                    sim.clear_session(meeting)
    finally:
        exporter.stop()
        sim.stop()
    return out


def requests_per_hour(meetings: int, window: float, webhooks: bool) -> float:
    port = free_port() if webhooks else None
    sim = _simulator(meetings, port, auto=True)
    tmp = tmpdir("webhook-cost-")
    exporter = start_exporter(_config(sim, port, 30), tmp)
    try:
        exporter.wait_ready(timeout=120)
        time.sleep(10 if webhooks else 0)  # webhooks are judged healthy after the first events
        before = sim.request_count()
        time.sleep(window)
        return (sim.request_count() - before) * 3600 / window
    finally:
        exporter.stop()
        sim.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=100)
    p.add_argument("--meetings", type=int, default=1000)
    p.add_argument("--window", type=float, default=60.0)
    p.add_argument("--quick", action="store_true", help="20 events, 200 meetings, 20 s windows")
    args = p.parse_args()
    if args.quick:
        args.events, args.meetings, args.window = 20, 200, 20.0
    print("# webhooks: latency to /metrics and requests per hour")
    print(f"# {machine()}")
    lat = latency(args.events)
    within = f"{sum(x <= 1 for x in lat)}/{len(lat)}"
    row = [len(lat), f"{statistics.median(lat) * 1000:.0f}", f"{max(lat) * 1000:.0f}", within]
    print(table(["events", "median ms", "max ms", "within 1 s"], [row]))
    print()
    polling = requests_per_hour(args.meetings, args.window, webhooks=False)
    pushed = requests_per_hour(args.meetings, args.window, webhooks=True)
    headers = ["meetings", "polling every 30 s alone", "with webhooks (reconcile 300 s)", "ratio"]
    rate = [
        f"{args.meetings:,}",
        f"{polling:,.0f}/h",
        f"{pushed:,.0f}/h",
        f"{pushed / polling:.2f}",
    ]
    print(table(headers, [rate]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
