"""CPU cost of rendering the metrics, in process: prometheus_client's rendering of
``MeetingCollector.collect()`` (what every scrape did before) against ``exposition()`` (the
cached per-meeting fragments) for the same store, and the gzip levels for the same body.

    python bench/render_cost.py [--sizes 100,1000,10000] [--repeat 7] [--quick]

The store is synthetic and fixed (half the meetings LIVE, the rest without a session, 2 % failing),
the clock frozen. "changed" re-polls that share of the meetings before each render (new state
objects, as every poll makes), which is what a scrape finds when Prometheus scrapes every 15 s
(50 %) or every 30 s or more (100 %) and the exporter polls every 30 s; "1 %" is what
back-to-back scrapes find. Every output is checked
to be the same bytes as prometheus_client's. Medians of ``--repeat`` renders.
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import ACCOUNT_ID, APP_ID, machine, median, table
from exporter.app import metrics_response
from exporter.collector import MeetingCollector
from exporter.errors import ApiError
from exporter.exposition import PartsGzip
from exporter.model import NO_ACTIVE_SESSION, MeetingKey, Session
from exporter.store import Store

NOW = 1795849800.0


class Fleet:
    """A store of ``n`` meetings and a way to poll some of them again."""

    def __init__(self, n: int, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.store = Store()
        self.keys = [
            MeetingKey(ACCOUNT_ID, APP_ID, str(uuid.UUID(int=self.rng.getrandbits(128), version=4)))
            for _ in range(n)
        ]
        teams = ("sales", "support", "eng")
        self.store.set_targets({k: (("team", teams[i % 3]),) for i, k in enumerate(self.keys)})
        for i in range(n):
            self.poll(i)

    def poll(self, i: int) -> None:
        rng, key = self.rng, self.keys[i]
        outcome: Session | object
        if i % 50 == 7:
            outcome = ApiError("http_5xx", "boom")
        elif i % 2 == 0:
            outcome = Session(
                id=f"session-{i}",
                status="LIVE",
                live_participants=float(rng.randint(1, 12)),
                max_concurrent_participants=float(rng.randint(12, 15)),
                minutes_consumed=rng.uniform(0, 500),
                started_at=NOW - 3000 + i * 0.01,
                type="meeting",
                meeting_display_name=f"Meeting {i} – Weekly sync",
            )
        else:
            outcome = NO_ACTIVE_SESSION
        self.store.record(key, outcome, rng.uniform(0.005, 0.2), NOW - rng.uniform(0, 30))  # type: ignore[arg-type]

    def repoll(self, share: float) -> None:
        step = round(1 / share)
        for i in range(0, len(self.keys), step):
            self.poll(i)


def registry_of(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MeetingCollector(store, stale_after_seconds=lambda: 90, clock=lambda: NOW))
    return registry


def exposition(registry: CollectorRegistry, gzip_: PartsGzip | None = None) -> list[bytes]:
    """What /metrics serves for the registry's collectors (gzip with ``gzip_``)."""
    collectors = list(registry._collector_to_names)  # the bench built it: order is known
    answer = metrics_response(
        collectors,
        gzip_ or PartsGzip(),
        accept=None,
        accept_encoding="gzip" if gzip_ else None,
        query="",
    )
    assert answer is not None
    return answer[1]


def timed(fn: Callable[[], object], repeat: int, before: Callable[[], None] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return median(times) * 1000


def measure(n: int, repeat: int) -> tuple[list[str], list[list[str]]]:
    """One row of the render table, and rows of the gzip table."""
    fleet = Fleet(n)
    registry = registry_of(fleet.store)

    parts_gzip = PartsGzip()

    def fast() -> bytes:
        return b"".join(exposition(registry))

    def fast_gzip() -> bytes:
        return exposition(registry, parts_gzip)[0]

    body = generate_latest(registry)
    assert fast() == body, "exposition() differs from prometheus_client"
    before = timed(lambda: generate_latest(registry), max(3, repeat // 2))
    warm = timed(fast, repeat)
    few = timed(fast, repeat, lambda: fleet.repoll(0.01))
    half = timed(fast, repeat, lambda: fleet.repoll(0.5))
    full = timed(fast, repeat, lambda: fleet.repoll(1.0))
    assert fast() == generate_latest(registry), "exposition() differs after changes"
    # A new collector has an empty cache (its construction costs nothing worth counting).
    cold = timed(lambda: exposition(registry_of(fleet.store)), repeat)
    ms = [f"{t:.1f}" for t in (before, cold, full, half, few, warm)]
    speedups = [f"{before / full:.0f}×", f"{before / few:.0f}×"]
    row = [f"{n:,}", f"{len(body) / 1e6:.2f}", *ms, *speedups]
    size = f"{n:,}"
    gz_rows = []
    for level in (9, 1):
        ms_gz = timed(lambda level=level: gzip.compress(body, compresslevel=level), 3)
        mb = len(gzip.compress(body, compresslevel=level)) / 1e6
        gz_rows.append([size, f"gzip.compress, level {level}", "any", f"{ms_gz:.0f}", f"{mb:.2f}"])
    fast_gzip()
    assert gzip.decompress(fast_gzip()) == fast()
    for share, label in ((1.0, "100%"), (0.5, "50%"), (0.01, "1%")):
        ms_gz = timed(fast_gzip, repeat, lambda share=share: fleet.repoll(share))
        mb = len(fast_gzip()) / 1e6
        gz_rows.append([size, "/metrics gzip (render + PartsGzip, level 1)", label,
                        f"{ms_gz:.0f}", f"{mb:.2f}"])  # fmt: skip
    return row, gz_rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="100,1000,10000")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="100 and 1,000 meetings, 3 repeats")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.repeat = "100,1000", 3
    rows = []
    gz_rows: list[list[str]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        row, gz_rows = measure(n, args.repeat)
        rows.append(row)
    print(f"# render cost in process (ms, median of {args.repeat}); outputs byte-identical")
    print(f"# {machine()}")
    print(
        table(
            ["meetings", "body MB", "prometheus_client", "fast: cold cache", "fast: 100% changed",
             "fast: 50% changed", "fast: 1% changed", "fast: nothing changed",
             "speed-up (100%)", "speed-up (1%)"],
            rows,
        )
    )  # fmt: skip
    print("\n# gzip at the largest size (ms, median); prometheus_client uses gzip.compress level 9")
    print(table(["meetings", "how", "changed", "ms", "MB"], gz_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
