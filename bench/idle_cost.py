"""CPU the exporter uses when there is little to do: 100 meetings polled every 30 s.

    python bench/idle_cost.py [--meetings 100] [--seconds 240] [--quick]

The simulator and a real exporter (``python -m exporter``) on 127.0.0.1, with the config's
default request budget (1200 per 300 s, enough for 100 meetings every 30 s). After ``/-/ready``
and one more interval of warm-up, utime + stime of the exporter (/proc/PID/stat) are read at the
start and end of ``--seconds`` while it is scraped every 15 s, as Prometheus would; the
difference is extrapolated to an hour (target: <= 36 CPU-s/hour, 1 % of one core).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (
    ROOT,
    SimulatorProcess,
    bounded,
    cpu_seconds,
    exporter_config,
    machine,
    start_exporter,
    table,
    tmpdir,
)

INTERVAL = 30.0
SCRAPE_EVERY = 15.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--meetings", type=int, default=100)
    p.add_argument("--seconds", type=float, default=240, help="measured time after warm-up")
    p.add_argument("--quick", action="store_true", help="60 s")
    p.add_argument("--root", type=Path, default=ROOT, help="source tree to run the exporter from")
    args = p.parse_args()
    if args.quick:
        args.seconds = 60
    tmp = tmpdir("idle")
    sim = SimulatorProcess(args.meetings, tmp)
    exporter = None
    try:
        config = exporter_config(
            sim.base_url,
            sim.meeting_ids,
            interval=INTERVAL,
            budget={"requests": 1200, "period_seconds": 300},
        )
        exporter = start_exporter(config, tmp, root=args.root)
        exporter.wait_ready(timeout=3 * INTERVAL + 60)
        time.sleep(INTERVAL)
        scrapes = 0
        with httpx.Client(timeout=30) as client:
            cpu0, t0 = cpu_seconds(exporter.pid), time.monotonic()
            more = bounded(args.seconds)
            while more():
                if client.get(exporter.base + "/metrics").status_code != 200:
                    raise RuntimeError("scrape failed")
                scrapes += 1
                time.sleep(min(SCRAPE_EVERY, max(0.0, args.seconds - (time.monotonic() - t0))))
            cpu1, t1 = cpu_seconds(exporter.pid), time.monotonic()
    finally:
        if exporter is not None:
            exporter.stop()
        sim.stop()
    per_hour = (cpu1 - cpu0) / (t1 - t0) * 3600
    print(
        f"# idle cost: {args.meetings} meetings every {INTERVAL:g}s, scraped every "
        f"{SCRAPE_EVERY:g}s ({scrapes} scrapes), measured {t1 - t0:.0f}s after warm-up"
    )
    print(f"# {machine()}")
    print(
        table(
            ["CPU s measured", "CPU s/hour", "% of one core", "target"],
            [[f"{cpu1 - cpu0:.2f}", f"{per_hour:.1f}", f"{per_hour / 36:.2f}",
              "<= 36 s/hour (1 %): " + ("OK" if per_hour <= 36 else "MISSED")]],
        )
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
