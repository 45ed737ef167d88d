"""RSS of the exporter process at 100, 1,000 and 10,000 meetings, and its growth over a soak.

    python bench/memory.py [--sizes 100,1000,10000] [--soak-seconds 240] [--quick]

For each size: the simulator and a real exporter (``python -m exporter``) on 127.0.0.1, polling
every 30 s with a budget it never reaches. After ``/-/ready`` (every meeting polled once) comes a
warm-up of one more poll interval with a scrape every 5 s (the scrape cache is part of the steady
state); then the RSS (VmRSS of /proc/PID/status) is read. The exporter of the soak size (1,000)
then keeps running for ``--soak-seconds``, scraped and sampled every 10 s: first, last and max RSS
and the least-squares slope.
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
    exporter_config,
    machine,
    rss_mib,
    slope_per_hour,
    start_exporter,
    table,
    tmpdir,
)
from tests.support.process import ExporterProcess

INTERVAL = 30.0


def scrape(exporter: ExporterProcess) -> None:
    response = httpx.get(exporter.base + "/metrics", timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"/metrics answered {response.status_code}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--soak-size", type=int, default=1000)
    p.add_argument("--soak-seconds", type=float, default=240)
    p.add_argument("--quick", action="store_true", help="100 and 1,000 meetings, 60 s soak")
    p.add_argument("--root", type=Path, default=ROOT, help="source tree to run the exporter from")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.soak_seconds = "100,1000", 60
    rows = []
    soak: list[tuple[float, float]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        tmp = tmpdir(f"mem-{size}")
        sim = SimulatorProcess(size, tmp)
        exporter = None
        try:
            config = exporter_config(
                sim.base_url, sim.meeting_ids, interval=INTERVAL, concurrency=20
            )
            exporter = start_exporter(config, tmp, root=args.root)
            exporter.wait_ready(timeout=2 * INTERVAL + size / 20 + 60)
            at_ready = rss_mib(exporter.pid)
            more = bounded(INTERVAL)
            while more():
                scrape(exporter)
                time.sleep(5)
            warm = rss_mib(exporter.pid)
            rows.append([f"{size:,}", f"{at_ready:.1f}", f"{warm:.1f}"])
            if size == args.soak_size:
                started = time.monotonic()
                more = bounded(args.soak_seconds)
                while more():
                    scrape(exporter)
                    soak.append((time.monotonic() - started, rss_mib(exporter.pid)))
                    time.sleep(10)
        finally:
            if exporter is not None:
                exporter.stop()
            sim.stop()
    print(f"# exporter RSS (MiB), polling every {INTERVAL:g}s, scraped every 5 s during warm-up")
    print(f"# {machine()}")
    print(table(["meetings", "RSS when ready", "RSS after warm-up"], rows))
    if soak:
        values = [v for _, v in soak]
        print(f"\n# soak: {args.soak_size:,} meetings, {soak[-1][0]:.0f} s, "
              f"RSS sampled every 10 s after a scrape ({len(soak)} samples)")  # fmt: skip
        half = soak[len(soak) // 2 :]
        print(
            table(
                ["first MiB", "last MiB", "max MiB", "slope MiB/hour",
                 "slope of the 2nd half MiB/hour"],
                [[f"{values[0]:.1f}", f"{values[-1]:.1f}", f"{max(values):.1f}",
                  f"{slope_per_hour(soak):+.1f}", f"{slope_per_hour(half):+.1f}"]],
            )
        )  # fmt: skip
        print("samples (MiB): " + " ".join(f"{v:.1f}" for v in values))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
