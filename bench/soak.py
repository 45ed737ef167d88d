"""Soak: the real exporter against a faulty, rate-limited simulator for a bounded time.

    python bench/soak.py [--minutes 10] [--meetings 300] [--fault-rate 0.2]

Everything runs on 127.0.0.1. Prints RSS of the exporter at start (after warm-up) and end, requests
sent against the budget (most in any window), 429s received, scrape failures, and any traceback or
error line the exporter logged. Exit code 1 if the budget was exceeded, a 429 was drawn, a scrape
failed or an exception was logged.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import rss_mib
from exporter.simulator import FaultConfig, Simulator
from tests.support.metrics import max_in_window

TOKEN = "soak-token-" + os.urandom(8).hex()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--meetings", type=int, default=300)
    p.add_argument("--fault-rate", type=float, default=0.2)
    p.add_argument("--budget", default="600/60", help="requests/seconds, enforced by both sides")
    p.add_argument("--interval", type=float, default=30)
    args = p.parse_args()
    requests, window = (float(x) for x in args.budget.split("/"))
    f = args.fault_rate
    faults = FaultConfig(
        error_500=f * 0.25, error_503=f * 0.25, timeout=f * 0.1, reset=f * 0.15,
        non_json=f * 0.15, wrong_types=f * 0.1, slow_seconds=3,
    )  # fmt: skip
    sim = Simulator(
        token=TOKEN, meetings=args.meetings, speed=10, seed=11, faults=faults,
        rate_limit=(int(requests), window),
    )  # fmt: skip
    sim.start("127.0.0.1", 0)
    tmp = Path(tempfile.mkdtemp(prefix="rtk-soak-"))
    config = {
        "api": {
            "base_url": sim.base_url,
            "timeout_seconds": 2,
            "rate_limit": {"requests": int(requests), "period_seconds": window},
        },
        "poll": {"interval_seconds": args.interval, "concurrency": 20},
        "apps": [
            {
                "account_id": "023e105f4ecef8ad9ca31a8372d0c353",
                "app_id": "6f0a8a2c3b8e4f62a1d2c3b4e5f60718",
                "meetings": sim.meeting_ids,
            }
        ],
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    log_path = tmp / "exporter.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config.file", str(tmp / "config.yaml"),
             "--web.listen-address", "127.0.0.1:0"],
            stdout=log, stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "CLOUDFLARE_API_TOKEN": TOKEN},
        )  # fmt: skip
    port = None
    for _ in range(200):
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", log_path.read_text())
        if match:
            port = int(match.group(1))
            break
        time.sleep(0.05)
    if port is None:
        print(log_path.read_text())
        return 1
    url = f"http://127.0.0.1:{port}/metrics"
    started = time.time()
    deadline = started + args.minutes * 60
    scrapes = scrape_failures = 0
    rss_start = None
    last_body = ""
    try:
        while time.time() < deadline:
            try:
                response = httpx.get(url, timeout=10)
                scrapes += 1
                if response.status_code != 200:
                    scrape_failures += 1
                last_body = response.text
            except httpx.HTTPError:
                scrape_failures += 1
            if rss_start is None and time.time() - started > 60:
                rss_start = rss_mib(proc.pid)
            time.sleep(5)
        rss_end = rss_mib(proc.pid)
    finally:
        proc.terminate()
        code = proc.wait(15)
        sim.stop()
    log_text = log_path.read_text()
    sent = [t for t, _, _ in sim.request_log()]
    statuses = sim.status_counts()
    errors = [
        line for line in log_text.splitlines() if "level=error" in line or "Traceback" in line
    ]
    elapsed = time.time() - started
    up = re.findall(r"^realtimekit_up\{.*\} (\S+)$", last_body, re.M)
    print(f"duration                 {elapsed / 60:.1f} min, {args.meetings} meetings, "
          f"interval {args.interval:g}s, fault rate {f:.0%}")  # fmt: skip
    print(f"exporter RSS             start {rss_start or float('nan'):.1f} MiB (after 60 s), "
          f"end {rss_end:.1f} MiB")  # fmt: skip
    print(f"requests sent            {len(sent)} ({len(sent) / elapsed:.2f}/s; budget "
          f"{requests / window:.2f}/s)")  # fmt: skip
    print(f"most in any {window:g}s window {max_in_window(sent, window)} (budget {requests:g})")
    print(f"answers by status        {dict(sorted(statuses.items()))}")
    print(f"429s received            {statuses.get(429, 0)}")
    print(f"scrapes                  {scrapes}, failed {scrape_failures}")
    print(f"meetings up at the end   {sum(v == '1.0' for v in up)}/{len(up)}")
    print(f"errors/tracebacks logged {len(errors)}")
    for line in errors[:5]:
        print("   ", line[:300])
    print(f"token in log or metrics  {TOKEN in log_text or TOKEN in last_body}")
    print(f"exit code                {code}")
    bad = (
        max_in_window(sent, window) > requests
        or statuses.get(429, 0)
        or scrape_failures
        or errors
        or code != 0
        or TOKEN in log_text + last_body
    )
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
