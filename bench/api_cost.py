"""API requests per poll cycle and age of the data at scrape time: per-meeting polling against
discovery (``apps[].discover``: one ``GET …/sessions?status=LIVE`` listing per page).

    python bench/api_cost.py [--meetings 1000] [--budget 1200/300] [--quick]

Both modes watch the same meetings (listed in the config; discovery answers them from the listing
and confirms with one active-session call a meeting that was live at the last look and is not
listed now) with the same token budget (default: the config's default, 1200 requests per 300 s)
and ``poll.interval_seconds: 30``. Per-meeting polling needs one request per meeting per cycle,
so the exporter stretches its interval to what the budget allows; discovery needs a few pages.

The simulator runs in this process (its request log tells listings from active-session calls);
the exporter is a real process. After ``/-/ready`` the requests of one effective cycle (at least
``--min-seconds``) are counted, and every 15 s a scrape reads each meeting's
``realtimekit_last_success_timestamp_seconds``: age = scrape time − that. "agrees" is the share
of meetings whose ``realtimekit_session_active`` matches the simulator at that moment.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (
    ROOT,
    TOKEN,
    bounded,
    exporter_config,
    machine,
    median,
    percentile,
    start_exporter,
    table,
    tmpdir,
)
from exporter.simulator import Simulator
from tests.support.process import ExporterProcess

INTERVAL = 30.0
LAST_OK = "realtimekit_last_success_timestamp_seconds"
SCRAPE_EVERY = 15.0


def scrape(exporter: ExporterProcess) -> tuple[float, dict[str, dict[str, float]]]:
    """Scrape time and {metric: {meeting_id: value}} of the per-meeting gauges we look at."""
    text = httpx.get(exporter.base + "/metrics", timeout=60).text
    when = time.time()
    wanted = {
        "realtimekit_last_success_timestamp_seconds",
        "realtimekit_session_active",
        "realtimekit_poll_effective_interval_seconds",
    }
    out: dict[str, dict[str, float]] = {name: {} for name in wanted}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in wanted:
                out[s.name][s.labels.get("meeting_id", "")] = s.value
    return when, out


def run_mode(mode: str, args: argparse.Namespace) -> list[Any]:
    tmp = tmpdir(f"api-{mode}")
    sim = Simulator(token=TOKEN, meetings=args.meetings, seed=1)
    sim.start("127.0.0.1", 0)
    exporter = None
    try:
        requests, period = (float(x) for x in args.budget.split("/"))
        app = {"discover": {"enabled": True, "per_page": 100}} if mode == "discovery" else None
        config = exporter_config(
            sim.base_url,
            sim.meeting_ids,
            interval=INTERVAL,
            budget={"requests": int(requests), "period_seconds": period},
            app=app,
        )
        exporter = start_exporter(config, tmp, root=args.root)
        # Per-meeting: the first polls are spread over one (stretched) interval.
        stretched = args.meetings * (period + max(0.5, 0.01 * period)) / requests * 1.05
        exporter.wait_ready(timeout=max(INTERVAL, stretched) * 1.5 + 60)
        _, first = scrape(exporter)
        effective = max(first["realtimekit_poll_effective_interval_seconds"].values(), default=0)
        cycle = effective if mode == "per-meeting" and effective else INTERVAL
        window = max(args.min_seconds, cycle)
        log_start = len(sim.request_log())
        t0 = time.time()
        ages: list[float] = []
        agree = checked = 0
        more = bounded(window)
        while more():
            when, samples = scrape(exporter)
            ages += [when - last for last in samples[LAST_OK].values()]
            for meeting, active in samples["realtimekit_session_active"].items():
                truth = sim.session(meeting) is not None
                agree += (active == 1.0) == truth
                checked += 1
            time.sleep(min(SCRAPE_EVERY, max(0.0, window - (time.time() - t0))))
        elapsed = time.time() - t0
        log = [(t, target) for t, target, _ in sim.request_log()[log_start:] if t >= t0]
    finally:
        if exporter is not None:
            exporter.stop()
        sim.stop()
    listings = sum(1 for _, target in log if "/sessions?" in target)
    single = sum(1 for _, target in log if target.endswith("/active-session"))
    cycles = elapsed / cycle
    return [
        mode,
        f"{cycle:.0f}",
        f"{(listings + single) / cycles:.1f}",
        f"{listings / cycles:.1f}",
        f"{single / cycles:.1f}",
        f"{(listings + single) / elapsed * 3600:,.0f}",
        f"{median(ages):.1f}",
        f"{percentile(ages, 99):.1f}",
        f"{max(ages):.1f}",
        f"{100 * agree / max(1, checked):.1f} %",
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--meetings", type=int, default=1000)
    p.add_argument("--budget", default="1200/300", help="requests/seconds of the token")
    p.add_argument("--min-seconds", type=float, default=120, help="shortest measuring window")
    p.add_argument("--modes", default="per-meeting,discovery")
    p.add_argument("--root", type=Path, default=ROOT, help="source tree to run the exporter from")
    p.add_argument("--quick", action="store_true", help="200 meetings, 60 s windows")
    args = p.parse_args()
    if args.quick:
        args.meetings, args.min_seconds = 200, 60
    rows = [run_mode(mode, args) for mode in args.modes.split(",")]
    print(f"# API cost: {args.meetings:,} meetings, poll.interval_seconds {INTERVAL:g}, "
          f"budget {args.budget.replace('/', ' requests per ')} s, "
          f"scraped every {SCRAPE_EVERY:g}s")  # fmt: skip
    print(f"# {machine()}")
    headers = ["mode", "cycle s", "requests/cycle", "listing pages/cycle",
               "active-session/cycle", "requests/hour", "age median s", "age p99 s",
               "age max s", "agrees"]  # fmt: skip
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
