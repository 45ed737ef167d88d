"""Sharding at scale: 30,000 discovered meetings split over 1, 2 and 4 exporter shards.

    python bench/shard_scale.py [--shards 1,2,4] [--apps 10] [--per-app 3000] [--scrapes 20]
                                [--interval 30] [--give-up 300] [--quick]

The simulator runs in its own process (a small launcher in this file: ``--serve-simulator``),
with ``--apps`` apps of ``--per-app`` LIVE sessions each and nothing changing on its own, budget
unlimited. Every app discovers (100 sessions per page), so polling them all costs
``apps × per_app / 100`` listings per ``--interval``. For each M in ``--shards``: M real exporter
processes (``python -m exporter --total-shards M --shard i``, the same config) on 127.0.0.1.
Once every shard has finished the first discovery cycle of each app it owns (read cheaply with
``/metrics?name[]=…``), each shard gets two warm-up scrapes and then ``--scrapes`` full
``/metrics`` scrapes (plain text, one after the other, shard after shard); the time is from
sending the request to the last byte of the body.

Per shard: apps owned, meetings exported (``realtimekit_up{`` lines), series, body MB, median
and p90 scrape ms, the longest first discovery cycle, RSS MiB. Per M: the sum of meetings over
the shards (it must be exactly ``apps × per_app``, else the run fails) and the balance, the
fullest shard's meetings over the mean. A discovering app is one unit of the hash, so with few
apps the balance is as coarse as the apps are. Bounded: each M gives up after ``--give-up`` s.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (
    ACCOUNT_ID,
    HUGE_BUDGET,
    ROOT,
    bounded,
    env,
    exporter_config,
    machine,
    median,
    percentile,
    rss_mib,
    table,
    tmpdir,
)
from bench.scrape_cost import scrape
from tests.support.process import ExporterProcess, Process

PER_PAGE = 100
PROGRESS = (
    "/metrics?name[]=realtimekit_discovery_pages_total&name[]=realtimekit_discovery_up"
    "&name[]=realtimekit_discovery_duration_seconds&name[]=realtimekit_exporter_shard_ordinal"
)
IDENTITY = {"Accept-Encoding": "identity"}


def app_ids(apps: int) -> list[str]:
    """Stable, realistic-looking (32 hex digits) app ids."""
    return [hashlib.md5(f"shard-scale-app-{i}".encode()).hexdigest() for i in range(apps)]


# -- the simulator, in its own process ----------------------------------------------------------


def serve_simulator(apps: int, per_app: int) -> int:
    """The launcher: a simulator with ``apps`` apps of ``per_app`` LIVE sessions, until SIGTERM."""
    from exporter.simulator import Simulator

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    token = os.environ["CLOUDFLARE_API_TOKEN"]  # the parent's TOKEN (each import draws a new one)
    sim = Simulator(token=token, account_id=ACCOUNT_ID, meetings=0, auto=False, seed=1)
    for app in app_ids(apps):
        sim.add_app(ACCOUNT_ID, app, per_app, live=True)
    sim.start("127.0.0.1", 0)
    live = sum(sim.live_session_count(ACCOUNT_ID, app) for app in app_ids(apps))
    print(f"simulator base_url={sim.base_url} live={live}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        sim.stop()
    return 0


class SimulatorLauncher(Process):
    def __init__(self, apps: int, per_app: int, tmp: Path) -> None:
        args = [__file__, "--serve-simulator", "--apps", str(apps), "--per-app", str(per_app)]
        super().__init__([sys.executable, *args], tmp / "simulator.log", env=env(), cwd=ROOT)
        match = self.wait_for(r"base_url=(\S+) live=(\d+)\n", timeout=60 + apps * per_app / 500)
        self.base_url = match.group(1)
        if (live := int(match.group(2))) != apps * per_app:
            raise RuntimeError(f"simulator has {live} live sessions, not {apps * per_app}")


# -- the exporter shards --------------------------------------------------------------------------


class ShardProcess(ExporterProcess):
    """An exporter process started as shard ``shard`` of ``total``."""

    def __init__(self, config: dict[str, Any], shard: int, total: int, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        extra = ("--total-shards", str(total), "--shard", str(shard))
        super().__init__(config, tmp, *extra, env=env(), root=ROOT, log_level="warning", timeout=60)
        self.shard = shard


def shard_config(base_url: str, apps: list[str], per_app: int, interval: float) -> dict[str, Any]:
    config = exporter_config(base_url, [], interval=interval, budget=HUGE_BUDGET)
    discover = {"enabled": True, "per_page": PER_PAGE, "max_meetings": per_app + 10}
    config["apps"] = [
        {"account_id": ACCOUNT_ID, "app_id": app, "meetings": [], "discover": discover}
        for app in apps
    ]
    config["poll"]["stale_after_seconds"] = 3 * interval
    return config


def per_app(text: str, name: str) -> dict[str, float]:
    """``{app_id: value}`` of a per-app family in an exposition."""
    pattern = rf'^{name}{{account_id="[^"]*",app_id="([^"]*)"}} (\S+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.M)}


def discovered(text: str, own: set[str], pages: int) -> bool:
    """Whether every app of ``own`` finished a discovery cycle of at least ``pages`` pages."""
    read = per_app(text, "realtimekit_discovery_pages_total")
    up = per_app(text, "realtimekit_discovery_up")
    return set(up) == own and all(up[a] == 1 and read.get(a, 0) >= pages for a in own)


def wait_discovered(
    shard: ShardProcess, own: set[str], pages: int, more: Any, client: httpx.Client
) -> str:
    """Poll the shard's progress families until its apps are discovered; returns the last text."""
    while more():
        if shard.proc.poll() is not None:
            raise RuntimeError(f"shard {shard.shard} exited:\n{shard.log()[-3000:]}")
        text = client.get(shard.base + PROGRESS).text
        if discovered(text, own, pages):
            ordinal = re.search(r"^realtimekit_exporter_shard_ordinal (\S+)$", text, re.M)
            if ordinal is None or float(ordinal.group(1)) != shard.shard:
                raise RuntimeError(f"shard {shard.shard} reports ordinal {ordinal}")
            return text
        time.sleep(0.5)
    raise RuntimeError(f"shard {shard.shard}: apps not discovered in time:\n{shard.log()[-3000:]}")


def measure_shard(
    shard: ShardProcess, own: set[str], progress: str, scrapes: int, client: httpx.Client
) -> dict[str, Any]:
    url = shard.base + "/metrics"
    for _ in range(2):  # warm-up
        scrape(client, url, IDENTITY)
    times, body = [], b""
    for _ in range(scrapes):
        elapsed, body, _encoding = scrape(client, url, IDENTITY)
        times.append(elapsed * 1000)
    durations = per_app(progress, "realtimekit_discovery_duration_seconds")
    return {
        "apps": len(own),
        "meetings": body.count(b"\nrealtimekit_up{"),
        "series": sum(1 for line in body.splitlines() if line and not line.startswith(b"#")),
        "mb": len(body) / 1e6,
        "median": median(times),
        "p90": percentile(times, 90),
        "cycle": max(durations.values(), default=0.0),
        "rss": rss_mib(shard.pid),
    }


def measure(total: int, base_url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start ``total`` shards, wait for their discovery, scrape each; stop them."""
    from exporter.shard import jump_hash

    apps = app_ids(args.apps)
    config = shard_config(base_url, apps, args.per_app, args.interval)
    tmp = tmpdir(f"shards-{total}")
    more = bounded(args.give_up)
    shards: list[ShardProcess] = []
    try:
        shards = [ShardProcess(config, i, total, tmp / f"shard-{i}") for i in range(total)]
        pages = -(-args.per_app // PER_PAGE)
        out = []
        with httpx.Client(timeout=60) as client:
            for shard in shards:
                own = {a for a in apps if jump_hash(f"{ACCOUNT_ID}/{a}", total) == shard.shard}
                progress = wait_discovered(shard, own, pages, more, client)
                out.append(measure_shard(shard, own, progress, args.scrapes, client))
        return out
    finally:
        for shard in shards:
            shard.stop()


def rows(total: int, stats: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            f"{total}", f"{i}", f"{s['apps']}", f"{s['meetings']:,}", f"{s['series']:,}",
            f"{s['mb']:.2f}", f"{s['median']:.0f}", f"{s['p90']:.0f}", f"{s['cycle']:.1f}",
            f"{s['rss']:.0f}",
        ]
        for i, s in enumerate(stats)
    ]  # fmt: skip


def summary(total: int, stats: list[dict[str, Any]], expected: int) -> list[str]:
    """The set's row; raises when the shards do not export every meeting exactly once."""
    meetings = [s["meetings"] for s in stats]
    if sum(meetings) != expected:
        raise AssertionError(f"{total} shards export {sum(meetings)} meetings, not {expected}")
    balance = max(meetings) / (sum(meetings) / total)
    slowest = max(s["median"] for s in stats)
    return [
        f"{total}", f"{sum(meetings):,}", " / ".join(f"{m:,}" for m in meetings),
        f"{balance:.2f}", f"{slowest:.0f}", f"{sum(s['rss'] for s in stats):.0f}",
    ]  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", default="1,2,4", help="shard counts M, comma-separated")
    p.add_argument("--apps", type=int, default=10, help="discovering apps")
    p.add_argument("--per-app", type=int, default=3000, help="LIVE sessions per app")
    p.add_argument("--scrapes", type=int, default=20, help="timed scrapes per shard")
    p.add_argument("--interval", type=float, default=30.0, help="the exporters' poll interval")
    p.add_argument("--give-up", type=float, default=300.0, help="seconds per M, at most")
    p.add_argument("--quick", action="store_true", help="3,000 meetings (10 × 300), 10 scrapes")
    p.add_argument("--serve-simulator", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_simulator:
        return serve_simulator(args.apps, args.per_app)
    if args.quick:
        args.per_app, args.scrapes = 300, 10
    expected = args.apps * args.per_app
    sim = SimulatorLauncher(args.apps, args.per_app, tmpdir("shards-sim"))
    try:
        results = {m: measure(m, sim.base_url, args) for m in map(int, args.shards.split(","))}
    finally:
        sim.stop()
    print(
        f"# sharding: {expected:,} meetings ({args.apps} discovering apps × {args.per_app:,} "
        f"LIVE sessions, {PER_PAGE} per page), cycles every {args.interval:g}s, budget "
        f"unlimited; {args.scrapes} plain /metrics scrapes per shard after 2 warm-ups"
    )
    print(f"# {machine()}")
    headers = ["M", "shard", "apps", "meetings", "series", "body MB", "median ms", "p90 ms",
               "last cycle s", "RSS MiB"]  # fmt: skip
    print(table(headers, [r for m, s in results.items() for r in rows(m, s)]))
    print()
    headers = ["M", "meetings (sum)", "per shard", "balance (max/mean)", "slowest shard median ms",
               "RSS MiB (sum)"]  # fmt: skip
    print(table(headers, [summary(m, s, expected) for m, s in results.items()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
