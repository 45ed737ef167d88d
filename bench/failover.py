"""Failover: how long a SIGKILLed leader costs, and what the shared budget costs per request.

    python bench/failover.py [--kills 10] [--lease 3] [--meetings 8] [--interval 1]
                             [--acquisitions 1000]

A real ``redis-server`` (Debian's, on 127.0.0.1, a temp dir, no persistence), the simulator
(in this process, enforcing the budget: 60 requests per 10 s, the exporters' budget too) with
``--meetings`` idle meetings, and two exporter processes with the same config and
``coordination: {lease_seconds: --lease}``. Each of ``--kills`` rounds: find the leader, kill it
with SIGKILL, and measure from the kill (scraping the other every 0.1 s) until it leads and
serves every meeting (any age: the mirrored states, as Prometheus sees them), until every value
is fresh (``realtimekit_last_success_timestamp_seconds`` of every meeting at most ``lease +
effective interval`` old) and until every meeting has been polled again by the new leader (all
timestamps after the kill). Then the killed one is started again as the new standby, and once it
sees Redis the next round begins (each kill waits two mirror periods after finding the leader,
so the standby has fetched the leader's states). Bounded: every wait has a deadline.

Then the Redis cost per request: the median time of ``SharedLimiter.acquire`` (two ``limits``
moving windows in Redis plus the local spacing) minus that of the local ``RateLimiter.acquire``,
over ``--acquisitions`` each, with a budget so large neither ever waits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (
    TOKEN,
    bounded,
    exporter_config,
    machine,
    median,
    start_exporter,
    table,
    tmpdir,
)
from exporter.coordination import CoordinationSettings, Coordinator, connect, link_for
from exporter.limiter import RateLimiter
from exporter.limiter.shared import SharedLimiter
from exporter.simulator import Simulator
from tests.support.metrics import max_in_window, parse_metrics
from tests.support.process import ExporterProcess, wait_for
from tests.support.redis import RedisServer

BUDGET = (60, 10)


def scrape(proc: ExporterProcess) -> dict[str, Any] | None:
    """Leader flag, coordination_up, effective interval and each meeting's last success."""
    try:
        response = httpx.get(proc.base + "/metrics", timeout=3)
    except httpx.HTTPError:
        return None
    samples = parse_metrics(response.text)
    out: dict[str, Any] = {"last_success": {}}
    for (name, labels), v in samples.items():
        if name == "realtimekit_last_success_timestamp_seconds":
            out["last_success"][dict(labels)["meeting_id"]] = v
        elif name in (
            "realtimekit_exporter_leader",
            "realtimekit_coordination_up",
            "realtimekit_poll_effective_interval_seconds",
        ):
            out[name] = v
    return out


class Pair:
    """Two replicas on one config; ``start`` (re)starts one in a fresh directory."""

    def __init__(self, config: dict[str, Any], root: Path, meetings: int) -> None:
        self.config, self.root, self.meetings = config, root, meetings
        self.procs: list[ExporterProcess] = []
        self._started = 0

    def start(self) -> ExporterProcess:
        self._started += 1
        directory = self.root / f"replica{self._started}"
        directory.mkdir()
        proc = start_exporter(self.config, directory)
        self.procs.append(proc)
        return proc

    def leader(self, seconds: float) -> tuple[ExporterProcess, ExporterProcess, dict[str, Any]]:
        """(leader, standby, the leader's scrape) once one leads and serves every meeting."""

        def check() -> tuple[ExporterProcess, ExporterProcess, dict[str, Any]] | None:
            seen = [(p, scrape(p)) for p in self.procs]
            leading = [(p, s) for p, s in seen if s and s.get("realtimekit_exporter_leader") == 1]
            if len(leading) != 1 or len(leading[0][1]["last_success"]) < self.meetings:
                return None
            other = next(p for p in self.procs if p is not leading[0][0])
            return leading[0][0], other, leading[0][1]

        found: tuple[ExporterProcess, ExporterProcess, dict[str, Any]]
        found = wait_for(check, seconds, 0.2, what="one leader serving every meeting")
        return found

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


def one_kill(pair: Pair, lease: float) -> dict[str, float]:
    leader, standby, before = pair.leader(seconds=60)
    time.sleep(2 * Coordinator.MIRROR_SECONDS)  # the standby fetched the mirror (not visible)
    interval = before.get("realtimekit_poll_effective_interval_seconds", 1.0)
    fresh_age = lease + interval
    killed, killed_wall = time.monotonic(), time.time()
    os.kill(leader.proc.pid, signal.SIGKILL)
    leader.proc.wait(10)
    pair.procs.remove(leader)

    found = watch_takeover(standby, pair.meetings, killed, killed_wall, fresh_age)
    new = pair.start()
    wait_for(
        lambda: (s := scrape(new)) and s.get("realtimekit_coordination_up") == 1,
        60,
        what="restarted replica sees Redis",
    )
    return {**found, "fresh_age": fresh_age, "kill_wall": killed_wall}


def watch_takeover(
    standby: ExporterProcess, meetings: int, killed: float, killed_wall: float, fresh_age: float
) -> dict[str, float]:
    """Scrape the standby every 0.1 s until it has re-polled every meeting; the seconds since
    the kill when it first led and served every meeting (``serves``, with the age of its oldest
    value then, ``age``), served them all fresh (``warm``), and had re-polled them all."""
    found: dict[str, float] = {}
    more = bounded(60)
    while more() and "repolled" not in found:
        now = scrape(standby)
        if now and now.get("realtimekit_exporter_leader") == 1:
            stamps = list(now["last_success"].values())
            at, wall = time.monotonic() - killed, time.time()
            if len(stamps) == meetings and "serves" not in found:
                found["serves"], found["age"] = at, wall - min(stamps)
            if len(stamps) == meetings and min(stamps) >= wall - fresh_age:
                found.setdefault("warm", at)
            if len(stamps) == meetings and min(stamps) >= killed_wall:
                found["repolled"] = at
        time.sleep(0.1)
    if "repolled" not in found:
        raise RuntimeError(f"no complete takeover within 60s: {found}")
    return found


async def acquire_costs(limiter: RateLimiter, count: int) -> list[float]:
    costs = []
    for _ in range(count):
        started = time.perf_counter()
        await limiter.acquire()
        costs.append(time.perf_counter() - started)
    return costs


async def redis_cost(url: str, count: int) -> tuple[float, float]:
    """Median seconds of one acquire: (shared through Redis, local)."""
    settings = CoordinationSettings(redis_url=url, key_prefix="bench")
    redis = connect(settings)
    link = link_for(settings, redis)
    stats = link.stats
    big = (10**7, 1.0)
    shared = SharedLimiter(link, TOKEN, *big)
    local = RateLimiter(*big)
    await acquire_costs(shared, 20)  # connection set up
    shared_costs = await acquire_costs(shared, count)
    local_costs = await acquire_costs(local, count)
    assert not shared.fallback and stats.up, "Redis failed during the measurement"
    await redis.aclose()
    return statistics.median(shared_costs), statistics.median(local_costs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--meetings", type=int, default=8)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--acquisitions", type=int, default=1000)
    args = parser.parse_args()
    path = shutil.which("redis-server")
    if path is None:
        print("redis-server not installed (apt-get install redis-server)", file=sys.stderr)
        return 1
    root = tmpdir("failover")
    (root / "redis").mkdir()
    redis = RedisServer.local(path, root / "redis")
    redis.start()
    sim = Simulator(token=TOKEN, meetings=args.meetings, auto=False, seed=1, rate_limit=BUDGET)
    sim.start("127.0.0.1", 0)
    config = exporter_config(
        sim.base_url,
        sim.meeting_ids,
        interval=args.interval,
        budget={"requests": BUDGET[0], "period_seconds": BUDGET[1]},
        timeout=2,
    )
    config["coordination"] = {"redis_url": redis.url, "lease_seconds": args.lease}
    pair = Pair(config, root, args.meetings)
    rounds = []
    try:
        pair.start()
        pair.start()
        for _ in range(args.kills):
            rounds.append(one_kill(pair, args.lease))
        cost = asyncio.run(asyncio.wait_for(redis_cost(redis.url, args.acquisitions), 120))
    finally:
        pair.stop()
        sim.stop()
        redis.stop()
    report(args, rounds, cost, sim)
    return 0


def report(
    args: argparse.Namespace,
    rounds: list[dict[str, float]],
    cost: tuple[float, float],
    sim: Simulator,
) -> None:
    times = [t for t, _, _ in sim.request_log()]
    bursts = [
        max_in_window([t for t in times if r["kill_wall"] <= t < r["kill_wall"] + 10], 1.0)
        for r in rounds
    ]
    print(
        f"# failover: {args.kills} SIGKILLs of the leader of 2 replicas, lease_seconds "
        f"{args.lease:g}, {args.meetings} meetings polled every {args.interval:g}s, budget "
        f"{BUDGET[0]} per {BUDGET[1]}s (simulator enforcing it), real redis-server"
    )
    print(f"# {machine()}")
    rows = [
        (
            i + 1,
            f"{r['serves']:.2f}",
            f"{r['age']:.2f}",
            f"{r['warm']:.2f}",
            f"{r['repolled']:.2f}",
            burst,
        )
        for i, (r, burst) in enumerate(zip(rounds, bursts, strict=True))
    ]
    print(
        table(
            (
                "kill",
                "serves all s",
                "oldest age then s",
                "all fresh s",
                "all re-polled s",
                "max req/1s",
            ),
            rows,
        )
    )
    for key, what in (
        ("serves", "the other leads and serves every meeting (mirrored values)"),
        ("warm", "… every value fresh (age ≤ lease + one poll)"),
        ("repolled", "… every meeting re-polled by the new leader"),
    ):
        values = [r[key] for r in rounds]
        print(f"kill → {what}: median {median(values):.2f}s, max {max(values):.2f}s")
    print(
        f"lease_seconds {args.lease:g}; lease + one poll (effective interval) = "
        f"{rounds[0]['fresh_age']:.2f}s"
    )
    statuses = sim.status_counts()
    print(
        f"budget over the whole run: {len(times)} requests, most in any {BUDGET[1]}s window "
        f"{max_in_window(times, BUDGET[1])} (budget {BUDGET[0]}), 429s {statuses.get(429, 0)}, "
        f"most in any 1s after a kill {max(bursts)} (steady {BUDGET[0] / BUDGET[1]:g}/s)"
    )
    shared, local = cost
    print(
        f"Redis cost per request: SharedLimiter.acquire median {shared * 1e6:.0f} µs, "
        f"RateLimiter.acquire {local * 1e6:.1f} µs: {(shared - local) * 1e6:.0f} µs extra "
        f"(median of {args.acquisitions} each, budget never waits)"
    )


if __name__ == "__main__":
    sys.exit(main())
