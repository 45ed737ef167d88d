"""Scrape latency under a slowloris attack: the exporter at 1,000 meetings, 500 connections that
send their request one byte a second (reopened as soon as the server closes them, as an attacker
would), and 20 concurrent scrapers, for a bounded time.

    python bench/slowloris.py [--meetings 1000] [--connections 500] [--scrapers 20]
                              [--seconds 30] [--root DIR] [--webhooks]

With ``--webhooks`` the target is the webhook listener instead: the attackers announce a body
(``Content-Length: 100000``) and send it one byte a second, and the scrapers become senders of
genuine signed deliveries (``meeting.participantJoined`` of a listed meeting), each of which must
be answered in under a second.

The simulator and the exporter are real processes on 127.0.0.1 (the exporter polls every meeting
every 30 s with a budget it never reaches); the attack runs in a process of its own, so that the
scrapers' timings do not wait on its work. Prints the scrapes' median, p99 and max latency (send
to last byte), the failed scrapes, and the exporter's thread count (most seen, sampled each
second from /proc).
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import selectors
import socket
import sys
import threading
import time
from collections import Counter
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._common import (
    ACCOUNT_ID,
    APP_ID,
    ROOT,
    SimulatorProcess,
    bounded,
    exporter_config,
    machine,
    median,
    percentile,
    start_exporter,
    table,
    tmpdir,
)
from tests.support.ports import free_port
from tests.support.process import proc_status

#: What a slow client sends, a byte at a time; then one more header byte for ever.
SLOW_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
#: What a slow webhook sender sends: its head at once, then a lying body a byte at a time.
SLOW_BODY = b"POST /webhooks/%s/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"


class Slowloris:
    """``count`` connections to 127.0.0.1:``port`` that each send a request one byte at a time
    and never finish it. :meth:`trickle` sends the next byte on each and notes the ones the
    server closed (``lifetimes``: how long each lived); with ``reopen`` it opens new ones in
    their place."""

    def __init__(self, port: int, count: int, *, reopen: bool = False, head: bytes = b"") -> None:
        self.port = port
        self.head = head  # sent at once on each new connection
        self.count = count
        self.reopen = reopen
        self.lifetimes: list[float] = []
        self.failed_connects = 0
        self._open: dict[socket.socket, list[float]] = {}  # sock: [opened at, bytes sent]
        self._selector = selectors.DefaultSelector()
        self._fill()

    @property
    def alive(self) -> int:
        return len(self._open)

    def _fill(self) -> None:
        for _ in range(self.count - len(self._open)):
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                self.failed_connects += 1
                continue
            if self.head:
                sock.sendall(self.head)
            sock.setblocking(False)
            self._open[sock] = [time.monotonic(), len(SLOW_REQUEST) if self.head else 0]
            self._selector.register(sock, selectors.EVENT_READ)

    def trickle(self) -> None:
        """One more byte on every open connection; then reopen the closed ones if asked."""
        self.reap(0)
        for sock, state in list(self._open.items()):
            sent = int(state[1])
            try:
                sock.send(SLOW_REQUEST[sent : sent + 1] or b"a")
                state[1] += 1
            except OSError:
                self._closed(sock)
        if self.reopen:
            self._fill()

    def wait_closed(self, timeout: float) -> None:
        """Until the server has closed every connection, or ``timeout`` seconds."""
        more = bounded(timeout)
        while self._open and more():
            self.reap(0.05)

    def reap(self, timeout: float) -> int:
        """Note the connections the server closed within ``timeout`` s; how many so far."""
        # Readable: the server answered (408, 503) or closed; either way it is done with it.
        for key, _ in self._selector.select(timeout):
            self._closed(key.fileobj)  # type: ignore[arg-type]
        return len(self.lifetimes)

    def _closed(self, sock: socket.socket) -> None:
        opened, _ = self._open.pop(sock)
        self.lifetimes.append(time.monotonic() - opened)
        self._selector.unregister(sock)
        sock.close()

    def run(self, seconds: float, interval: float = 1.0) -> None:
        more = bounded(seconds)
        while more():
            self.trickle()
            time.sleep(interval)

    def close(self) -> None:
        for sock in list(self._open):
            self._selector.unregister(sock)
            sock.close()
        self._open.clear()
        self._selector.close()


def _attack(port: int, count: int, seconds: float, started: Event, head: bytes = b"") -> None:
    attack = Slowloris(port, count, reopen=True, head=head)
    started.set()
    try:
        attack.run(seconds)
    finally:
        print(
            f"# attack: {len(attack.lifetimes)} connection(s) closed by the server, "
            f"{attack.failed_connects} connect(s) failed, {attack.alive} open at the end"
        )
        attack.close()


def scraper(url: str, seconds: float, times: list[float], errors: list[str]) -> None:
    more = bounded(seconds)
    with httpx.Client(timeout=10) as client:
        while more():
            started = time.perf_counter()
            try:
                response = client.get(url, headers={"Accept-Encoding": "gzip"})
                response.read()
                if response.status_code != 200:
                    errors.append(str(response.status_code))
                    continue
            except httpx.HTTPError as err:
                errors.append(f"{type(err).__name__}: {err}")
                continue
            times.append(time.perf_counter() - started)


class Deliveries:
    """Genuine webhook deliveries: signed ``meeting.participantJoined`` events of listed
    meetings, to the listener at 127.0.0.1:``port``."""

    def __init__(self, tmp: Path, meetings: list[str]) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_file = tmp / "webhook-public.pem"
        self.key_file.write_bytes(
            self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.meetings = meetings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/webhooks/{ACCOUNT_ID}/{APP_ID}"

    def configure(self, config: dict[str, Any]) -> None:
        config["webhooks"] = {
            "listen_address": f"127.0.0.1:{self.port}",
            "public_key_file": str(self.key_file),
        }
        config["apps"][0]["webhooks"] = {"enabled": True}

    def post(self, client: httpx.Client, n: int) -> httpx.Response:
        meeting = self.meetings[n % len(self.meetings)]
        event = {
            "event": "meeting.participantJoined",
            "meeting": {"id": meeting, "sessionId": f"s-{meeting}"},
            "participant": {"peerId": f"peer-{n}-{time.monotonic_ns()}"},
        }
        body = json.dumps(event).encode()
        signature = self.key.sign(body, padding.PKCS1v15(), hashes.SHA256())
        headers = {"rtk-signature": base64.b64encode(signature).decode("ascii")}
        return client.post(self.url, content=body, headers=headers)


def deliverer(
    deliveries: Deliveries, seconds: float, times: list[float], errors: list[str]
) -> None:
    more = bounded(seconds)
    n = 0
    with httpx.Client(timeout=10) as client:
        while more():
            n += 1
            started = time.perf_counter()
            try:
                response = deliveries.post(client, n)
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text.strip()}")
                    continue
            except httpx.HTTPError as err:
                errors.append(f"{type(err).__name__}: {err}")
                continue
            times.append(time.perf_counter() - started)
            time.sleep(0.05)  # a sender, not a flood: the listener's budget is not the point


def measure(args: argparse.Namespace) -> list[object]:
    tmp = tmpdir("slowloris")
    sim = SimulatorProcess(args.meetings, tmp)
    exporter = None
    attack = None
    try:
        config = exporter_config(sim.base_url, sim.meeting_ids, interval=30, concurrency=20)
        hooks = Deliveries(tmp, sim.meeting_ids) if args.webhooks else None
        if hooks is not None:
            hooks.configure(config)
        exporter = start_exporter(config, tmp, root=args.root)
        exporter.wait_ready(timeout=60 + args.meetings / 20)
        before = proc_status(exporter.pid, "Threads")
        started = multiprocessing.Event()
        target_port = hooks.port if hooks is not None else exporter.port
        head = SLOW_BODY % (ACCOUNT_ID.encode(), APP_ID.encode()) if hooks is not None else b""
        attack = multiprocessing.Process(
            target=_attack,
            args=(target_port, args.connections, args.seconds + 5, started, head),
        )
        attack.start()
        if not started.wait(60):
            raise RuntimeError("the attack did not start")
        time.sleep(2)  # the attack's connections are all open and trickling
        times: list[float] = []
        errors: list[str] = []
        url = exporter.base + "/metrics"
        workers = [
            threading.Thread(target=scraper, args=(url, args.seconds, times, errors))
            if hooks is None
            else threading.Thread(target=deliverer, args=(hooks, args.seconds, times, errors))
            for _ in range(args.scrapers)
        ]
        for worker in workers:
            worker.start()
        most = before
        more = bounded(args.seconds + 15)
        while any(w.is_alive() for w in workers) and more():
            most = max(most, proc_status(exporter.pid, "Threads"))
            time.sleep(1)
        for worker in workers:
            worker.join(timeout=15)
        for error, n in Counter(errors).most_common():
            print(f"# failed scrape x{n}: {error}")
        ms = [t * 1000 for t in times]
        if not ms:
            raise RuntimeError(f"no scrape succeeded: {errors[:5]}")
        return [
            f"{args.meetings:,}", args.connections, args.scrapers, len(ms), len(errors),
            f"{median(ms):.0f}", f"{percentile(ms, 99):.0f}", f"{max(ms):.0f}",
            sum(t >= 1.0 for t in times), before, most,
        ]  # fmt: skip
    finally:
        if attack is not None:
            attack.join(timeout=args.seconds + 30)
            if attack.is_alive():
                attack.terminate()
        if exporter is not None:
            exporter.stop()
        sim.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--meetings", type=int, default=1000)
    p.add_argument("--connections", type=int, default=500, help="slowloris connections")
    p.add_argument("--scrapers", type=int, default=20, help="concurrent scrapers")
    p.add_argument("--seconds", type=float, default=30, help="how long the scrapers scrape")
    p.add_argument("--root", type=Path, default=ROOT, help="source tree to run the exporter from")
    p.add_argument(
        "--webhooks",
        action="store_true",
        help="attack the webhook listener with slow bodies; the scrapers deliver signed events",
    )
    args = p.parse_args()
    row = measure(args)
    target = "webhook deliveries" if args.webhooks else "/metrics"
    print(f"# {target} under slowloris for {args.seconds:g}s; exporter from {args.root}")
    print(f"# {machine()}")
    headers = ["meetings", "slow conns", "scrapers", "scrapes", "failed", "median ms", "p99 ms",
               "max ms", "scrapes ≥ 1 s", "threads before", "threads max"]  # fmt: skip
    print(table(headers, [row]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
