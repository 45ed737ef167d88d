"""The simulator's endpoint tests (recordings, livestreams, usage, registrations, peers, webhook
deliveries): a started simulator with an API client on it, and a real loopback receiver that
keeps every webhook delivery."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

import httpx
import pytest

from exporter.simulator import Simulator

TOKEN = "sim-endpoints-token"
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z: where the simulator tests' FakeTime starts


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


class Post(NamedTuple):
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class Receiver:
    """A real HTTP server on 127.0.0.1 keeping every POST. It answers the scripted ``statuses``
    first, then 200; with a ``gate`` each answer waits until the gate is set."""

    def __init__(self, statuses: Iterable[int] = (), gate: threading.Event | None = None) -> None:
        self.posts: list[Post] = []
        self.cond = threading.Condition()
        self.statuses = list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.cond:
                    receiver.posts.append(Post(self.path, headers, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.cond.notify_all()
                if gate is not None:
                    gate.wait(20)
                self.send_response(status)
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

    @property
    def bodies(self) -> list[bytes]:
        with self.cond:
            return [post.body for post in self.posts]

    @property
    def headers(self) -> list[dict[str, str]]:
        with self.cond:
            return [post.headers for post in self.posts]

    def events(self, name: str) -> list[dict[str, Any]]:
        docs = [json.loads(b) for b in self.bodies]
        return [d for d in docs if d.get("event") == name]

    def wait_for(self, n: int, timeout: float = 15.0) -> list[Post]:
        """The posts, once there are at least ``n``."""
        with self.cond:
            got = self.cond.wait_for(lambda: len(self.posts) >= n, timeout)
            assert got, f"{len(self.posts)} of {n} webhook deliveries within {timeout} s"
            return list(self.posts)

    def wait_until(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until ``check`` holds (re-checked on every delivery), bounded by ``timeout``."""
        with self.cond:
            got = self.cond.wait_for(check, timeout)
            assert got, f"condition not met in {timeout} s ({len(self.posts)} posts)"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


MakeSim = Callable[..., tuple[Simulator, Api]]


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
