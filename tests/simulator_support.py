"""Helpers of the simulator's endpoint tests (recordings, livestreams, usage, registrations,
peers): a started simulator on a fake clock, an API client, and a real loopback receiver that
keeps every webhook delivery."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from exporter.simulator import Simulator

TOKEN = "sim-endpoints-token"
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


class Clock:
    """A fake wall clock for the simulator, moved by ``advance``."""

    def __init__(self, t: float = T0) -> None:
        self.now = t

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Api:
    """GETs under an app of a simulator, with its token; JSON answers."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.client = httpx.Client(
            base_url=sim.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        )

    def get(self, path: str, **params: Any) -> httpx.Response:
        app = f"/accounts/{self.sim.account_id}/realtime/kit/{self.sim.app_id}"
        return self.client.get(app + path, params=params)

    def ok(self, path: str, **params: Any) -> Any:
        r = self.get(path, **params)
        assert r.status_code == 200, r.text[:300]
        body = r.json()
        assert body["success"] is True
        return body

    def close(self) -> None:
        self.client.close()


class Receiver:
    """A real HTTP server on 127.0.0.1 answering 200 to every POST and keeping the bodies."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.cond:
                    receiver.bodies.append(body)
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                    receiver.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        port = self.server.server_address[1]
        return f"http://127.0.0.1:{port}/webhooks/{{account_id}}/{{app_id}}"

    def events(self, name: str) -> list[dict[str, Any]]:
        with self.cond:
            docs = [json.loads(b) for b in self.bodies]
        return [d for d in docs if d.get("event") == name]

    def wait_for(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until ``check`` holds (re-checked on every delivery), bounded by ``timeout``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not check():
                left = deadline - time.monotonic()
                assert left > 0, f"condition not met in {timeout} s ({len(self.bodies)} posts)"
                self.cond.wait(min(left, 0.2))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


MakeSim = Callable[..., tuple[Simulator, "Api"]]


def make_sim_fixture(**defaults: Any) -> Any:
    """A ``make_sim`` fixture: ``make_sim(**options)`` starts a simulator (``defaults`` then
    ``options``; manual mode, the test token) with an :class:`Api` on it; all stop at teardown."""

    @pytest.fixture
    def make_sim() -> Iterator[MakeSim]:
        made: list[tuple[Simulator, Api]] = []

        def factory(**kwargs: Any) -> tuple[Simulator, Api]:
            sim = Simulator(**({"token": TOKEN, "auto": False} | defaults | kwargs))
            sim.start()
            made.append((sim, Api(sim)))
            return made[-1]

        yield factory
        for sim, api in made:
            api.close()
            sim.stop()

    return make_sim
