"""Cardinality at scale (issue 26): what a scrape costs with and without per-meeting series.

    python bench/cardinality.py [--sessions 100000] [--meetings 10000] [--scrapes 40]
                                [--interval 30] [--quick] [--root DIR]

Two real exporter processes, one after the other, each discovering one app of the simulator
(its own process, every meeting LIVE, 100 sessions per page, unlimited budget):

1. ``--sessions`` live sessions with ``metrics: {per_meeting: false}``: only the per-app
   aggregates and the exporter's own families are exported;
2. ``--meetings`` live sessions with the default ``per_meeting: true`` (every per-meeting series).

After the first discovery cycle, ``--scrapes`` full ``/metrics`` scrapes of each encoding
(plain text and ``Accept-Encoding: gzip``, alternating, one after the other, 0.25 s apart, over a
keep-alive connection; time to the last byte of the body as sent) run while the cycles go on,
so some scrapes follow a new cycle (every state new) and the rest find the store unchanged; a
third scrape of the plain body each round is read by the standard library's ``http.client``
(one read of the whole body), whose client side costs far less than httpx's.
Printed per run: median and max ms of each encoding, body and gzip bytes, the histogram's
``+Inf`` bucket against the app's live sessions, the ``realtimekit_up`` series and the RSS
after the scrapes. For run 2 the same number of meetings, every one LIVE, is rendered in this
process by prometheus_client from ``MeetingCollector.collect()`` (the naive render) and the
ratio of each scrape median to it is printed. Bounded: each run gives up after
``3 × interval + 120`` s.
"""

from __future__ import annotations

import argparse
import http.client
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (
    ROOT,
    SimulatorProcess,
    exporter_config,
    machine,
    median,
    rss_mib,
    start_exporter,
    table,
    tmpdir,
)
from bench.render_cost import NOW, Fleet, registry_of
from exporter.model import Session

PAGES = "/metrics?name[]=realtimekit_discovery_pages_total"


def _value(text: str, name: str, extra: str = "") -> float | None:
    match = re.search(rf"^{name}{{[^}}]*{extra}[^}}]*}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def run(size: int, per_meeting: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One exporter discovering ``size`` live sessions; its scrapes, body and RSS."""
    tmp = tmpdir(f"cardinality-{size}-")
    sim = SimulatorProcess(size, tmp, "--all-live", "--no-auto")
    app = {
        "discover": {"enabled": True, "per_page": 100, "max_meetings": size + 10},
        "metrics": {"per_meeting": per_meeting},
    }
    config = exporter_config(sim.base_url, [], interval=args.interval, app=app)
    config["poll"]["stale_after_seconds"] = 3 * args.interval
    exporter = start_exporter(config, tmp, root=args.root)
    deadline = time.monotonic() + 3 * args.interval + 120
    try:
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < deadline:  # the first cycle
                text = client.get(exporter.base + PAGES).text
                if (_value(text, "realtimekit_discovery_pages_total") or 0) >= -(-size // 100):
                    break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"{size}: no complete cycle within the time bound")
            stdlib = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=120)
            readers: dict[str, Callable[[], tuple[float, bytes]]] = {
                "identity": lambda: scrape(client, exporter.base, "identity"),
                "gzip": lambda: scrape(client, exporter.base, "gzip"),
                "stdlib": lambda: scrape_stdlib(stdlib),
            }
            times: dict[str, list[float]] = {name: [] for name in readers}
            bodies: dict[str, bytes] = {}
            for _ in range(args.scrapes):
                for name, read in readers.items():
                    if time.monotonic() > deadline:
                        break
                    elapsed, bodies[name] = read()
                    times[name].append(elapsed)
                    time.sleep(0.25)
            stdlib.close()
        text = bodies["identity"].decode()
        return {
            "latencies": times["identity"],
            "gzip_latencies": times["gzip"],
            "stdlib_latencies": times["stdlib"],
            "body": len(bodies["identity"]),
            "gzip": len(bodies["gzip"]),
            "inf": _value(text, "realtimekit_app_session_participants_bucket", 'le="\\+Inf"'),
            "live": _value(text, "realtimekit_app_live_sessions"),
            "up_series": text.count("\nrealtimekit_up{"),
            "rss": rss_mib(exporter.pid),
        }
    finally:
        exporter.stop()
        sim.stop()


def scrape(client: httpx.Client, base: str, encoding: str) -> tuple[float, bytes]:
    """One full /metrics scrape: seconds to the last byte, and the body as sent."""
    started = time.perf_counter()
    with client.stream("GET", base + "/metrics", headers={"Accept-Encoding": encoding}) as r:
        body = b"".join(r.iter_raw())
        elapsed = time.perf_counter() - started
        if r.status_code != 200 or r.headers.get("content-encoding", "identity") != encoding:
            raise RuntimeError(f"/metrics answered {r.status_code} {r.headers}")
    return elapsed, body


def scrape_stdlib(conn: http.client.HTTPConnection) -> tuple[float, bytes]:
    """The same plain scrape read by the standard library's client (one ``read`` of the whole
    Content-Length into one buffer), which costs the client far less than httpx's chunked
    iteration: nearer what the exporter itself takes, and what a Go scraper sees."""
    started = time.perf_counter()
    conn.request("GET", "/metrics", headers={"Accept-Encoding": "identity"})
    response = conn.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"/metrics answered {response.status}")
    return elapsed, body


def naive_render_ms(size: int, repeat: int = 3) -> float:
    """prometheus_client rendering ``collect()`` of ``size`` meetings, every one LIVE like the
    simulator's (``bench/render_cost.py``'s store with every meeting polled LIVE), in this
    process."""
    fleet = Fleet(size)
    for i, key in enumerate(fleet.keys):
        session = Session(
            id=f"session-{i}", status="LIVE", live_participants=3.0, minutes_consumed=i / 7,
            max_concurrent_participants=3.0, started_at=NOW - i, type="meeting",
            meeting_display_name=f"Meeting {i + 1} – Weekly sync",
        )  # fmt: skip
        fleet.store.record(key, session, 0.01, NOW - 5)
    registry = registry_of(fleet.store)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        generate_latest(registry)
        times.append(time.perf_counter() - started)
    return median(times) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", type=int, default=100_000, help="run 1 (per_meeting: false)")
    p.add_argument("--meetings", type=int, default=10_000, help="run 2 (per_meeting: true)")
    p.add_argument("--scrapes", type=int, default=40)
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--root", type=Path, default=ROOT, help="source tree to run the exporter from")
    p.add_argument("--quick", action="store_true", help="10,000 and 1,000 sessions, 15 scrapes")
    args = p.parse_args()
    if args.quick:
        args.sessions, args.meetings, args.scrapes = 10_000, 1_000, 15
    rows = []
    naive = naive_render_ms(args.meetings)
    for size, per_meeting in ((args.sessions, False), (args.meetings, True)):
        r = run(size, per_meeting, args)
        ms = [t * 1000 for t in r["latencies"]]
        gz = [t * 1000 for t in r["gzip_latencies"]]
        std = [t * 1000 for t in r["stdlib_latencies"]]
        ratios = (median(ms) / naive, median(std) / naive, median(gz) / naive)
        ratio = " / ".join(f"{x:.3f}" for x in ratios) if per_meeting else ""
        rows.append([
            f"{size:,}", "true" if per_meeting else "false", f"{len(ms)} + {len(gz)}",
            f"{median(ms):.1f}", f"{max(ms):.1f}", f"{median(std):.1f}", f"{max(std):.1f}",
            f"{median(gz):.1f}", f"{max(gz):.1f}",
            f"{r['body'] / 1000:,.1f}", f"{r['gzip'] / 1000:,.1f}",
            f"{r['inf']:,.0f}" if r["inf"] is not None else "?",
            f"{r['live']:,.0f}" if r["live"] is not None else "?",
            f"{r['up_series']:,}", f"{r['rss']:.1f}", ratio,
        ])  # fmt: skip
    print(f"# cardinality: discovery every {args.interval:g}s, every meeting LIVE, "
          f"exporter from {args.root}; naive prometheus_client render of "
          f"{args.meetings:,} meetings in process: {naive:.0f} ms (median of 3)")  # fmt: skip
    print(f"# {machine()}")
    headers = ["live sessions", "per_meeting", "scrapes plain + gzip", "median ms", "max ms",
               "stdlib client median ms", "stdlib client max ms", "gzip median ms", "gzip max ms",
               "body KB", "gzip KB", "+Inf bucket", "app live sessions", "realtimekit_up series",
               "RSS MiB", "median / naive render (plain httpx / plain stdlib / gzip)"]  # fmt: skip
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
