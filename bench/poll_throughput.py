"""Meetings polled per second: the exporter's client + poller against a minimal raw httpx loop.

    python bench/poll_throughput.py [--meetings 1000] [--concurrency 10] [--rounds 5] [--quick]

The simulator runs in its own process (``python -m exporter.simulator``), so on a small machine
the server does not share a GIL with the code being measured. In this process, rounds alternate
between

* exporter: ``Poller.poll_meeting`` over every meeting (``ApiClient`` on ``make_http_client``,
  a ``RateLimiter`` with a budget it never reaches, the poller's semaphore = concurrency), each
  answer parsed and recorded in a ``Store``;
* raw: ``httpx.AsyncClient`` with the same pool size and an ``asyncio.Semaphore`` of the same
  size, GETting the same URLs with the same token and reading the bodies, nothing else;

and the medians of the rounds are compared (target: exporter/raw >= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (
    ACCOUNT_ID,
    APP_ID,
    TOKEN,
    SimulatorProcess,
    machine,
    median,
    table,
    tmpdir,
)
from exporter.client import ApiClient, make_http_client
from exporter.health import Health
from exporter.limiter import RateLimiter
from exporter.logs import FailureLog
from exporter.model import MeetingKey
from exporter.poller import Poller, PollPlan
from exporter.store import Store


async def exporter_round(base_url: str, keys: list[MeetingKey], concurrency: int) -> float:
    store = Store()
    store.set_targets({key: () for key in keys})
    http = make_http_client(timeout_seconds=10, max_connections=concurrency)
    client = ApiClient(
        http, base_url=base_url, token=TOKEN, limiter=RateLimiter(1_000_000_000, 1.0)
    )
    poller = Poller(
        scheduler=AsyncIOScheduler(), store=store, health=Health(), failures=FailureLog()
    )
    slots = asyncio.Semaphore(concurrency)
    poller.schedule(PollPlan(dict.fromkeys(keys, client), 30, 300, slots))
    try:
        started = time.perf_counter()
        await asyncio.gather(*(poller.poll_meeting(key) for key in keys))
        elapsed = time.perf_counter() - started
    finally:
        await http.aclose()
    _, states = store.snapshot()
    ok = sum(state.up is True for state in states.values())
    if ok != len(keys):
        raise RuntimeError(f"only {ok} of {len(keys)} polls succeeded")
    return len(keys) / elapsed


async def raw_round(base_url: str, keys: list[MeetingKey], concurrency: int) -> float:
    urls = [
        f"{base_url}/accounts/{k.account_id}/realtime/kit/{k.app_id}/meetings/{k.meeting_id}"
        "/active-session"
        for k in keys
    ]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=10, headers=headers) as http:

        async def get(url: str) -> int:
            async with semaphore:
                response = await http.get(url)
                return response.status_code

        started = time.perf_counter()
        codes = await asyncio.gather(*(get(url) for url in urls))
        elapsed = time.perf_counter() - started
    if any(code not in (200, 404) for code in codes):
        raise RuntimeError(f"unexpected answers: {sorted(set(codes))}")
    return len(urls) / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--meetings", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=10, help="the config's poll.concurrency")
    p.add_argument("--rounds", type=int, default=5, help="rounds of each, alternating")
    p.add_argument("--quick", action="store_true", help="200 meetings, 3 rounds")
    args = p.parse_args()
    if args.quick:
        args.meetings, args.rounds = 200, 3
    tmp = tmpdir("poll")
    sim = SimulatorProcess(args.meetings, tmp)
    try:
        keys = [MeetingKey(ACCOUNT_ID, APP_ID, m) for m in sim.meeting_ids]
        rates: dict[str, list[float]] = {"exporter": [], "raw": []}

        async def run() -> None:
            await raw_round(sim.base_url, keys[: min(50, len(keys))], args.concurrency)  # warm-up
            for _ in range(args.rounds):
                rates["exporter"].append(await exporter_round(sim.base_url, keys, args.concurrency))
                rates["raw"].append(await raw_round(sim.base_url, keys, args.concurrency))

        asyncio.run(asyncio.wait_for(run(), timeout=600))
    finally:
        sim.stop()
    exp, raw = median(rates["exporter"]), median(rates["raw"])
    ratio = exp / raw
    print(f"# poll throughput: {args.meetings} meetings, concurrency {args.concurrency}, "
          f"{args.rounds} rounds each, simulator in its own process")  # fmt: skip
    print(f"# {machine()}")
    paths = (("exporter (ApiClient + Poller)", rates["exporter"]), ("raw httpx", rates["raw"]))
    rows = [[name, f"{median(v):.0f}", f"{min(v):.0f}–{max(v):.0f}"] for name, v in paths]
    print(table(["path", "meetings/s (median)", "range"], rows))
    print(f"exporter/raw = {ratio:.2f} (target >= 0.8): {'OK' if ratio >= 0.8 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
