"""/metrics latency and body size at 100, 1,000 and 10,000 meetings.

    python bench/scrape_cost.py [--sizes 100,1000,10000] [--scrapes 100] [--quick]
                                [--discover] [--root DIR]

For each size: the simulator and a real exporter process (``python -m exporter``), both on
127.0.0.1; the exporter polls every meeting every ``--interval`` seconds (30, as in production,
so the store keeps changing while we scrape) with a budget it never reaches. Once ``/-/ready``
says every meeting was polled, scrapes alternate between plain text and ``Accept-Encoding:
gzip`` (the latter is what Prometheus sends), one at a time over a keep-alive connection; the
time is from sending the request to the last byte of the (still compressed) body.

``--discover`` polls by discovery instead (one ``GET …/sessions?status=LIVE`` per 100 live
sessions every interval): the store then changes in one burst per cycle, and the poller leaves
the CPUs to the scrapes. ``--root DIR`` runs the exporter from another source tree (e.g. a
copy without an optimisation) for a before/after comparison on the same machine.
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
    exporter_config,
    machine,
    median,
    percentile,
    start_exporter,
    table,
    tmpdir,
)

ENCODINGS = {"identity": {"Accept-Encoding": "identity"}, "gzip": {"Accept-Encoding": "gzip"}}


def scrape(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[float, bytes, str]:
    started = time.perf_counter()
    with client.stream("GET", url, headers=headers) as response:
        body = b"".join(response.iter_raw())
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"/metrics answered {response.status_code}")
        return elapsed, body, response.headers.get("content-encoding", "identity")


def measure(size: int, args: argparse.Namespace) -> list[object]:
    tmp = tmpdir(f"scrape-{size}")
    sim = SimulatorProcess(size, tmp)
    exporter = None
    try:
        app = {"discover": {"enabled": True, "per_page": 100}} if args.discover else None
        config = exporter_config(
            sim.base_url,
            sim.meeting_ids,
            interval=args.interval,
            concurrency=args.concurrency,
            app=app,
        )
        exporter = start_exporter(config, tmp, root=args.root)
        ready = exporter.wait_ready(timeout=2 * args.interval + size / 20 + 60)
        url = exporter.base + "/metrics"
        times: dict[str, list[float]] = {name: [] for name in ENCODINGS}
        sizes: dict[str, int] = {}
        with httpx.Client(timeout=60) as client:
            for _ in range(3):  # warm-up
                body = scrape(client, url, ENCODINGS["identity"])[1]
            samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            for _ in range(args.scrapes):
                for name, headers in ENCODINGS.items():
                    elapsed, body, encoding = scrape(client, url, headers)
                    if encoding != name:
                        raise RuntimeError(f"asked for {name}, got {encoding}")
                    times[name].append(elapsed)
                    sizes[name] = len(body)
            om = client.get(url, headers={"Accept": "application/openmetrics-text"})
            om_ok = om.text.endswith("# EOF\n")
        ms = {name: [t * 1000 for t in v] for name, v in times.items()}
        return [
            f"{size:,}",
            f"{samples:,}",
            f"{sizes['identity'] / 1e6:.2f}",
            f"{sizes['gzip'] / 1e6:.2f}",
            f"{median(ms['identity']):.0f}",
            f"{percentile(ms['identity'], 99):.0f}",
            f"{median(ms['gzip']):.0f}",
            f"{percentile(ms['gzip'], 99):.0f}",
            f"{ready:.0f}",
            "yes" if om_ok else "NO",
        ]
    finally:
        if exporter is not None:
            exporter.stop()
        sim.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100,1000,10000", help="meeting counts, comma-separated")
    p.add_argument("--scrapes", type=int, default=100, help="scrapes per encoding and size")
    p.add_argument("--interval", type=float, default=30, help="the exporter's poll interval")
    p.add_argument("--concurrency", type=int, default=20, help="the exporter's poll concurrency")
    p.add_argument("--root", type=Path, default=ROOT, help="source tree to run the exporter from")
    p.add_argument(
        "--discover",
        action="store_true",
        help="poll by discovery (one listing per 100 live sessions) instead of one request per "
        "meeting: what 10,000 meetings need within a real token's budget",
    )
    p.add_argument("--quick", action="store_true", help="100 and 1,000 meetings, 20 scrapes")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.scrapes = "100,1000", 20
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = [measure(size, args) for size in sizes]
    mode = "by discovery" if args.discover else "each meeting"
    print(f"# /metrics cost: {args.scrapes} scrapes per encoding, exporter polling {mode} every "
          f"{args.interval:g}s meanwhile; exporter from {args.root}")  # fmt: skip
    print(f"# {machine()}")
    headers = ["meetings", "samples", "body MB", "gzip MB", "median ms", "p99 ms",
               "gzip median ms", "gzip p99 ms", "ready after s", "OpenMetrics # EOF"]  # fmt: skip
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
