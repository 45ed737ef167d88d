"""Does a meeting ever vanish from the webhook demo? (issue 22: staleness with webhooks)

    python bench/demo_gaps.py [--minutes 10] [--every 5]

Starts ``python -m exporter --demo`` (its simulator delivers signed webhooks, polling stretches to
the reconcile interval) on 127.0.0.1, waits for ``/-/ready``, then scrapes ``/metrics`` every
``--every`` seconds for ``--minutes`` minutes. A sample *misses* a meeting when one of the demo's
watched meetings has no ``realtimekit_session_active`` series in it. Prints the samples, how many
missed a meeting, and which; exit code 1 if any did. Bounded: at most minutes × 60 / every
samples, each with a 10 s timeout.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import machine
from tests.support.ports import free_port
from tests.support.process import demo, wait_ok

ACTIVE = re.compile(r'^realtimekit_session_active\{[^}]*meeting_id="([^"]+)"', re.M)
UP = re.compile(r'^realtimekit_up\{[^}]*meeting_id="([^"]+)"', re.M)
INTERVAL = re.compile(r"^realtimekit_poll_effective_interval_seconds\{[^}]*\} (\S+)", re.M)


def sample(base: str) -> tuple[set[str], set[str], str]:
    """(meetings with realtimekit_up, meetings with realtimekit_session_active, the effective
    poll interval: the reconcile interval, 30 s in the demo, while webhooks are healthy)"""
    text = httpx.get(base + "/metrics", timeout=10).text
    interval = ",".join(INTERVAL.findall(text))
    return set(UP.findall(text)), set(ACTIVE.findall(text)), interval


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--every", type=float, default=5)
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp, demo(Path(tmp) / "demo.log", port=port) as proc:
        wait_ok(base + "/-/ready", proc, 60)
        watched, _, _ = sample(base)
        print(f"# {machine()}; demo watching {len(watched)} meetings")
        missed, samples = 0, int(args.minutes * 60 / args.every)
        started = time.monotonic()
        for i in range(samples):
            due = started + i * args.every
            time.sleep(max(0.0, due - time.monotonic()))
            _, active, interval = sample(base)
            gone = sorted(watched - active)
            missed += bool(gone)
            print(
                f"{time.monotonic() - started:7.1f}s  active={len(active)}  "
                f"poll_every={interval}s  missing={gone}"
            )
        lines = proc.log().splitlines()
        errors = [ln for ln in lines if "Traceback" in ln or "level=error" in ln]
    print(f"samples={samples} with_a_meeting_missing={missed} errors_logged={len(errors)}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
