"""The budget with the app-level pulls on: requests per hour by kind for one app of 1,000
meetings watched by discovery, without and with recordings and livestreams (issue 24); and a
storm of peer leaves against ``quality.max_reports_per_hour`` (issue 28).

    python bench/pulls_cost.py [--meetings 1000] [--seconds 120] [--leaves 10000]

The simulator runs in this process and enforces the token's budget (``rate_limit``: it answers
429 beyond it), so a window over budget shows as a 429; its request log tells the kinds apart.
The exporter is a real process. Each mode runs ``--seconds`` after ``/-/ready``; the storm mode
makes ``--leaves`` peers leave within a minute (signed ``meeting.participantLeft`` webhooks) and
counts the peer-report requests, the reports counted ``skipped`` and the exporter's RSS.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (
    TOKEN,
    bounded,
    exporter_config,
    machine,
    rss_mib,
    start_exporter,
    table,
    tmpdir,
)
from exporter.simulator import Simulator
from tests.support.ports import free_port
from tests.support.process import ExporterProcess

BUDGET = (1200, 300.0)  # the config's default: 4 requests/s
KINDS = (
    ("listing", "/sessions?"),
    ("active", "/active-session"),
    ("recordings", "/recordings"),
    ("livestreams", "/livestreams"),
    ("peer reports", "/peer-report/"),
)


def kind_of(target: str) -> str:
    return next((name for name, part in KINDS if part in target), "other")


def metric(exporter: ExporterProcess, name: str, **labels: str) -> float:
    text = httpx.get(exporter.base + "/metrics", timeout=30).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def start(args: argparse.Namespace, app: dict[str, Any], hooks: bool) -> tuple[Simulator, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/{{account_id}}/{{app_id}}"
    sim = Simulator(
        token=TOKEN, meetings=args.meetings, seed=1, rate_limit=BUDGET,
        recording_chance=0.5, livestream_chance=0.2, peer_late_rate=0.0,
        webhook_url=url if hooks else None,
    )  # fmt: skip
    sim.start("127.0.0.1", 0)
    config = exporter_config(
        sim.base_url,
        sim.meeting_ids,
        budget={"requests": BUDGET[0], "period_seconds": BUDGET[1]},
        app={"discover": {"enabled": True, "per_page": 100}, **app},
    )
    if hooks:
        config["webhooks"] = {
            "listen_address": f"127.0.0.1:{port}",
            "public_key_url": sim.webhook_key_url,
        }
        config["apps"][0]["webhooks"] = {"enabled": True}
    return sim, config


def run_mode(name: str, app: dict[str, Any], args: argparse.Namespace) -> list[Any]:
    sim, config = start(args, app, hooks=False)
    exporter = start_exporter(config, tmpdir(f"pulls-{name}"))
    try:
        exporter.wait_ready(timeout=120)
        first = len(sim.request_log())
        t0 = time.time()
        more = bounded(args.seconds)
        while more():
            time.sleep(1)
        elapsed = time.time() - t0
        log = [(target, code) for t, target, code in sim.request_log()[first:] if t >= t0]
    finally:
        exporter.stop()
        sim.stop()
    per_hour = {kind: 0.0 for kind, _ in KINDS}
    for target, _ in log:
        kind = kind_of(target)
        if kind in per_hour:
            per_hour[kind] += 3600 / elapsed
    limited = sum(1 for _, code in log if code == 429)
    total = len(log) * 3600 / elapsed
    return [name, *(f"{per_hour[k]:,.0f}" for k, _ in KINDS[:4]), f"{total:,.0f}",
            f"{BUDGET[0] * 3600 / BUDGET[1]:,.0f}", limited]  # fmt: skip


def storm(args: argparse.Namespace) -> list[Any]:
    quality = {"quality": {"enabled": True, "delay_seconds": 0, "max_reports_per_hour": 600}}
    sim, config = start(args, quality, hooks=True)
    exporter = start_exporter(config, tmpdir("pulls-storm"))
    try:
        exporter.wait_ready(timeout=120)
        time.sleep(3)  # the webhook key
        before = rss_mib(exporter.pid)
        meetings = sim.meeting_ids[: max(1, args.leaves // 200)]
        for meeting in meetings:  # 200 join each, then all leave: one webhook per leave
            sim.set_participants(meeting, 200)
        first, t0 = len(sim.request_log()), time.time()
        left = 0
        for meeting in meetings:  # one signed meeting.participantLeft per peer
            for _ in range(200):
                try:
                    sim.peers.leave(meeting)
                except KeyError:  # the session ended by itself meanwhile
                    break
                left += 1
        sent = time.time() - t0
        more = bounded(args.seconds)
        while more():
            time.sleep(1)
        elapsed = time.time() - t0
        log = [target for t, target, _ in sim.request_log()[first:] if t >= t0]
        skipped = metric(exporter, "realtimekit_peer_reports_total", result="skipped")
        fetched = metric(exporter, "realtimekit_peer_reports_total", result="fetched")
        after = rss_mib(exporter.pid)
    finally:
        exporter.stop()
        sim.stop()
    reports = sum(1 for target in log if "/peer-report/" in target)
    per_hour = f"{reports * 3600 / elapsed:,.0f}"
    return [left, f"{sent:.0f}", f"{elapsed:.0f}", reports, per_hour,
            int(fetched), int(skipped), f"{before:.0f} → {after:.0f}"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meetings", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--leaves", type=int, default=10_000)
    parser.add_argument("--storm-only", action="store_true", help="only the storm of leaves")
    args = parser.parse_args()
    print(machine())
    on = {"enabled": True, "interval_seconds": 60}
    if not args.storm_only:
        rows = [
            run_mode("sessions only", {}, args),
            run_mode("+ recordings, livestreams", {"recordings": on, "livestreams": on}, args),
        ]
        print(table(["mode", "listing/h", "active/h", "recordings/h", "livestreams/h",
                     "total/h", "budget/h", "429s"], rows))  # fmt: skip
    print(table(["leaves", "sent in s", "seconds", "report requests", "per hour", "fetched",
                 "skipped", "RSS MiB"], [storm(args)]))  # fmt: skip


if __name__ == "__main__":
    main()
