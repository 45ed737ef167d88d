"""Discovery at scale: one app with N live sessions (the simulator in its own process, budget
unlimited, 100 sessions per page), discovered by a real exporter process.

    python bench/discovery_scale.py [--sizes 1000,10000,30000,100000] [--interval 30] [--quick]

Per size it prints: the first cycle's duration (``realtimekit_discovery_duration_seconds``), the
exporter's CPU seconds per steady cycle (from /proc, between the ends of cycles 1 and 2, with
nobody scraping, so neither the start-up nor rendering is in it), its RSS, how many meetings are
exported at the end (every listed meeting must be), and the latency of full ``/metrics``
scrapes made one after the other (a new one a second after the last ended) during cycle 3:
median and worst. Progress is read with
``/metrics?name[]=…``, which renders only the app's families. Bounded: each size gives up after
``4 × interval + 120`` seconds.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (
    SimulatorProcess,
    cpu_seconds,
    exporter_config,
    machine,
    median,
    rss_mib,
    start_exporter,
    table,
    tmpdir,
)

PROGRESS = (
    "/metrics?name[]=realtimekit_discovery_pages_total"
    "&name[]=realtimekit_discovery_duration_seconds"
)


def _value(text: str, name: str) -> float | None:
    match = re.search(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


class Scraper(threading.Thread):
    """Full /metrics scrapes, one after the other, a second apart, until stopped."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base = base
        self.latencies: list[float] = []
        self.exported = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self.stopping.is_set():
                started = time.perf_counter()
                body = client.get(self.base + "/metrics").text
                self.latencies.append(time.perf_counter() - started)
                self.exported = body.count("\nrealtimekit_up{")
                self.stopping.wait(1.0)


def measure(size: int, interval: float) -> list[str]:
    tmp = tmpdir(f"discovery-{size}-")
    sim = SimulatorProcess(size, tmp, "--all-live", "--no-auto")
    app = {"discover": {"enabled": True, "per_page": 100, "max_meetings": size + 10}}
    config = exporter_config(sim.base_url, [], interval=interval, app=app)
    config["poll"]["stale_after_seconds"] = 3 * interval
    exporter = start_exporter(config, tmp)
    deadline = time.monotonic() + 4 * interval + 120
    try:
        pages_per_cycle = -(-size // 100)
        marks: list[tuple[float, float]] = []  # (pages read, cpu seconds) at each cycle's end
        first = None
        scraper = Scraper(exporter.base)
        with httpx.Client(timeout=60) as client:
            while len(marks) < 3 and time.monotonic() < deadline:
                text = client.get(exporter.base + PROGRESS).text
                pages = _value(text, "realtimekit_discovery_pages_total") or 0
                if pages >= pages_per_cycle * (len(marks) + 1):
                    marks.append((pages, cpu_seconds(exporter.pid)))
                    if first is None:
                        first = _value(text, "realtimekit_discovery_duration_seconds")
                    if len(marks) == 2:
                        scraper.start()  # during the third cycle
                time.sleep(0.2)
        scraper.stopping.set()
        scraper.join(timeout=180)
        if len(marks) < 3:
            raise RuntimeError(f"{size}: only {len(marks)} cycle(s) within the time bound")
        cpu = marks[1][1] - marks[0][1]
        lat = scraper.latencies or [float("nan")]
        return [
            f"{size:,}",
            f"{first:.1f}" if first is not None else "?",
            f"{cpu:.1f}",
            f"{rss_mib(exporter.pid):.0f}",
            f"{scraper.exported:,}",
            f"{len(lat)}",
            f"{median(lat) * 1000:.0f}",
            f"{max(lat) * 1000:.0f}",
        ]
    finally:
        exporter.stop()
        sim.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,10000,30000,100000")
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--quick", action="store_true", help="1,000 and 10,000 sessions, 10 s cycles")
    args = p.parse_args()
    sizes = [1000, 10000] if args.quick else [int(s) for s in args.sizes.split(",")]
    interval = 10.0 if args.quick else args.interval
    print(f"# discovery at scale, cycles every {interval:g}s")
    print(f"# {machine()}")
    rows = [measure(size, interval) for size in sizes]
    headers = ["live sessions", "first cycle s", "CPU s per cycle", "RSS MiB", "exported",
               "scrapes", "scrape median ms", "scrape max ms"]  # fmt: skip
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
