"""The budget with the app-level pulls on: requests per hour by kind for one app of 1,000
meetings watched by discovery, without and with recordings and livestreams (issue 24); and a
storm of peer leaves against ``quality.max_reports_per_hour`` (issue 28).

    python bench/pulls_cost.py [--meetings 1000] [--seconds 120] [--leaves 10000]
        [--storm-only] [--storm-seconds 60] [--connections 8]

The simulator runs in this process and enforces the token's budget (``rate_limit``: it answers
429 beyond it), so a window over budget shows as a 429; its request log tells the kinds apart.
The exporter is a real process. Each mode runs ``--seconds`` after ``/-/ready``.

The storm: ``--leaves`` peers (200 a meeting, so ``--meetings`` >= leaves / 200) leave the
simulator's sessions, quietly; this process then POSTs one signed ``meeting.participantLeft``
per peer (the simulator's payload, signed with its key by its ``sign``) to the exporter's real
webhook receiver over ``--connections`` keep-alive connections, spread evenly over
``--storm-seconds`` (0: as fast as answered; bodies are signed before the clock starts). It
prints what was delivered (answers, the receiver's ``accepted`` count, latencies) and, until
``--seconds`` after the first POST, what followed: peer-report requests (per hour, smallest gap,
busiest minute) against ``max_reports_per_hour`` 600, ``fetched``/``skipped``/``missing``/
``failed``, 429s, all requests per hour against the budget, the exporter's CPU and its RSS
before, at most (read every 0.2 s) and after.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (
    ACCOUNT_ID,
    APP_ID,
    TOKEN,
    bounded,
    cpu_seconds,
    exporter_config,
    machine,
    median,
    percentile,
    rss_mib,
    start_exporter,
    table,
    tmpdir,
)
from exporter.simulator import Simulator
from exporter.simulator.answers import dumps
from exporter.simulator.delivery import delivery_headers, sign
from exporter.simulator.events import peer_json
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


def start(
    args: argparse.Namespace, app: dict[str, Any], hooks: bool, **sim: Any
) -> tuple[Simulator, Any]:
    """The simulator (in this process, enforcing the budget) and the exporter's config; with
    ``hooks`` the exporter takes webhooks (the simulator serves its key, the caller sends)."""
    port = free_port()
    sim_options: dict[str, Any] = {
        "recording_chance": 0.5, "livestream_chance": 0.2,
        **({"webhook_key": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
           if hooks else {}),
        **sim,
    }  # fmt: skip
    simulator = Simulator(token=TOKEN, meetings=args.meetings, seed=1, rate_limit=BUDGET,
                          **sim_options)  # fmt: skip
    simulator.start("127.0.0.1", 0)
    config = exporter_config(
        simulator.base_url,
        simulator.meeting_ids,
        budget={"requests": BUDGET[0], "period_seconds": BUDGET[1]},
        app={"discover": {"enabled": True, "per_page": 100}, **app},
    )
    if hooks:
        config["webhooks"] = {
            "listen_address": f"127.0.0.1:{port}",
            "public_key_url": simulator.webhook_key_url,
        }
        config["apps"][0]["webhooks"] = {"enabled": True}
    return simulator, config


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


PER_MEETING = 200  # peers that leave each meeting of the storm (one more stays: still live)


def left_bodies(sim: Simulator, leaves: int) -> list[bytes]:
    """Make ``leaves`` peers leave, PER_MEETING a meeting, quietly (the simulator has no webhook
    URL); the ``meeting.participantLeft`` body the simulator's webhooks carry for each."""
    meetings = sim.meeting_ids[: -(-leaves // PER_MEETING)]
    if len(meetings) * PER_MEETING < leaves:
        raise SystemExit(f"--leaves {leaves} needs --meetings >= {-(-leaves // PER_MEETING)}")
    bodies: list[bytes] = []
    for meeting in meetings:
        count, joined = min(PER_MEETING, leaves - len(bodies)), time.time()
        sim.set_participants(meeting, count + 1)
        session = sim.session(meeting) or {}
        about = {"id": meeting, "sessionId": session["id"], "status": "LIVE",
                 "title": session["meeting_display_name"], "createdAt": session["created_at"],
                 "startedAt": session["started_at"]}  # fmt: skip
        for _ in range(count):
            peer = sim.peers.leave(meeting)
            participant = peer_json((peer, joined), time.time())
            bodies.append(dumps({"event": "meeting.participantLeft", "meeting": about,
                                 "participant": participant}))  # fmt: skip
    return bodies


def headers(sim: Simulator, body: bytes, signature: str | None = None) -> dict[str, str]:
    assert sim.webhook_key is not None
    return delivery_headers(sim.webhook_key, sim.webhook_id, body, signature)


def wait_for_key(sim: Simulator, url: str, seconds: float = 60) -> None:
    """Until a signed, harmless event (``meeting.chatSynced``) is accepted: the key is loaded."""
    more = bounded(seconds)
    for probe in range(10**6):
        body = dumps({"event": "meeting.chatSynced", "meeting": {"id": sim.meeting_ids[-1]},
                      "probe": probe})  # fmt: skip
        status = httpx.post(url, content=body, headers=headers(sim, body), timeout=10).status_code
        if status == 200 or not more():
            return
        time.sleep(0.5)


def deliver(
    url: str,
    sim: Simulator,
    signed: list[tuple[bytes, str]],
    connections: int,
    spread: float,
    limit: float,
) -> tuple[Counter[int], list[float], float]:
    """POST every signed body over ``connections`` keep-alive connections, the i-th not before
    ``i * spread / n`` seconds (0: as fast as the receiver answers); the answers' statuses (0: a
    network error), the seconds each took, and the seconds until the last answer. Gives up
    after ``limit`` seconds."""
    lock, statuses, answered, took = threading.Lock(), Counter[int](), [0.0], list[float]()
    order = iter(range(len(signed)))
    t0 = time.monotonic()

    def worker() -> None:
        with httpx.Client(timeout=10, trust_env=False) as client:
            while time.monotonic() < t0 + limit:
                with lock:
                    i = next(order, None)
                if i is None:
                    return
                time.sleep(max(0.0, t0 + i * spread / len(signed) - time.monotonic()))
                body, signature = signed[i]
                asked = time.monotonic()
                try:
                    answer = client.post(url, content=body, headers=headers(sim, body, signature))
                    status = answer.status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    statuses[status] += 1
                    took.append(time.monotonic() - asked)
                    answered[0] = time.monotonic() - t0

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, t0 + limit + 15 - time.monotonic()))
    return statuses, took, answered[0]


class RssPeak(threading.Thread):
    """The highest RSS of a process, read every 0.2 s until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.2):
            try:
                self.peak = max(self.peak, rss_mib(self.pid))
            except OSError:
                return

    def stop(self) -> float:
        self._done.set()
        self.join(timeout=5)
        return self.peak


def counters(exporter: ExporterProcess) -> dict[str, float]:
    """The exporter's webhook and peer-report counters, from one scrape."""
    text = httpx.get(exporter.base + "/metrics", timeout=30).text
    got: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = {
                "realtimekit_webhook_requests_total": s.labels.get("result"),
                "realtimekit_webhook_refreshes_total": "refreshes",
                "realtimekit_peer_reports_total": s.labels.get("result"),
                "realtimekit_app_pull_interval_seconds": "interval"
                if s.labels.get("pull") == "peer_reports" else None,
            }.get(s.name)  # fmt: skip
            if key:
                got[key] = got.get(key, 0.0) + s.value
    return got


@dataclass
class Storm:
    """What one storm measured (times in seconds, RSS in MiB)."""

    leaves: int
    connections: int
    spread: float
    took: float  # until the last answer
    statuses: Counter[int]  # of the storm's POSTs (0: a network error)
    latencies: list[float]  # of each POST
    cpu: float  # the exporter's CPU seconds from the first POST to the end
    delta: dict[str, float]  # exporter counters, after - before
    interval: float  # the peer_reports pull's interval at the end
    elapsed: float
    requests: list[tuple[float, str, int]]  # the simulator's log from the storm on
    rss: tuple[float, float, float]  # before, max during, after

    SENT: ClassVar = ("leaves", "connections", "spread s", "sent in s", "per s", "200s",
                      "accepted", "unsent, not 200", "median ms", "p99 ms", "max ms",
                      "prompt polls")  # fmt: skip
    EFFECT: ClassVar = ("seconds", "report requests", "per hour", "min gap s", "busiest 60 s",
                        "interval s", "fetched", "skipped", "missing", "failed", "queued",
                        "429s", "requests/h", "CPU s", "RSS MiB before / max / after")  # fmt: skip

    def rows(self) -> tuple[list[Any], list[Any]]:
        d, log, elapsed = self.delta, self.requests, self.elapsed
        ok = sum(n for status, n in self.statuses.items() if status == 200)
        rate = len(self.latencies) / self.took  # answers a second
        sent = [self.leaves, self.connections, f"{self.spread:g}", f"{self.took:.1f}",
                f"{rate:,.0f}", f"{ok:,}", f"{d.get('accepted', 0):,.0f}", f"{self.leaves - ok:,}",
                f"{median(self.latencies) * 1000:.1f}",
                f"{percentile(self.latencies, 99) * 1000:.0f}",
                f"{max(self.latencies) * 1000:.0f}", f"{d.get('refreshes', 0):,.0f}"]  # fmt: skip
        asked = [t for t, target, _ in log if "/peer-report/" in target]
        gap = min((b - a for a, b in itertools.pairwise(asked)), default=float("nan"))
        busiest = max((sum(t <= u < t + 60 for u in asked) for t in asked), default=0)
        results = [d.get(r, 0.0) for r in ("fetched", "skipped", "missing", "failed")]
        effect = [f"{elapsed:.0f}", len(asked), f"{len(asked) * 3600 / elapsed:,.0f}",
                  f"{gap:.1f}", busiest, f"{self.interval:g}", *(f"{r:,.0f}" for r in results),
                  f"{d.get('accepted', 0) - sum(results):,.0f}",
                  sum(1 for *_, code in log if code == 429), f"{len(log) * 3600 / elapsed:,.0f}",
                  f"{self.cpu:.1f}",
                  " / ".join(f"{r:.0f}" for r in self.rss)]  # fmt: skip
        return sent, effect


def storm(args: argparse.Namespace) -> Storm:
    """The storm: ``--leaves`` signed leaves POSTed to the real receiver within
    ``--storm-seconds``, then watched until ``--seconds`` after the first."""
    quality = {"quality": {"enabled": True, "delay_seconds": 0, "max_reports_per_hour": 600}}
    sim, config = start(args, quality, hooks=True, auto=False)
    url = f"http://{config['webhooks']['listen_address']}/webhooks/{ACCOUNT_ID}/{APP_ID}"
    exporter = start_exporter(config, tmpdir("pulls-storm"))
    try:
        exporter.wait_ready(timeout=120)
        bodies = left_bodies(sim, args.leaves)
        assert sim.webhook_key is not None
        signed = [(body, sign(sim.webhook_key, body)) for body in bodies]  # before the clock
        wait_for_key(sim, url)
        before, rss_before = counters(exporter), rss_mib(exporter.pid)
        peak = RssPeak(exporter.pid)
        peak.start()
        first, t0, cpu = len(sim.request_log()), time.time(), cpu_seconds(exporter.pid)
        statuses, latencies, took = deliver(
            url, sim, signed, args.connections, args.storm_seconds, args.storm_seconds + 120
        )
        more = bounded(args.seconds - (time.time() - t0))
        while more():
            time.sleep(1)
        elapsed, after = time.time() - t0, counters(exporter)
        cpu = cpu_seconds(exporter.pid) - cpu
        rss = (rss_before, peak.stop(), rss_mib(exporter.pid))
        log = [(t, target, code) for t, target, code in sim.request_log()[first:] if t >= t0]
    finally:
        exporter.stop()
        sim.stop()
    delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return Storm(len(signed), args.connections, args.storm_seconds, took, statuses, latencies,
                 cpu, delta, after.get("interval", float("nan")), elapsed, log, rss)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meetings", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--leaves", type=int, default=10_000)
    parser.add_argument(
        "--storm-seconds", type=float, default=60,
        help="spread the leaves over this long (0: as fast as the receiver answers)",
    )  # fmt: skip
    parser.add_argument("--connections", type=int, default=8, help="that deliver the storm")
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
    sent, effect = storm(args).rows()
    print(table(Storm.SENT, [sent]))
    print(table(Storm.EFFECT, [effect]))


if __name__ == "__main__":
    main()
