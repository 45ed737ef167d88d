"""Shared test helpers."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "test-token-Sn3lZJTBX6kkg7OdcBUAxOO963GEIyGQ"
NO_SESSION_BODY = {
    "success": False,
    "error": {"code": 404, "message": "No active session found for meeting_id m"},
}


class FakeTime:
    """One fake clock for every unit test: ``clock()`` (monotonic), ``wall()`` (Unix time),
    calling it gives ``now``; ``sleep`` is an asyncio-compatible sleep that only moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def clock(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + 1_700_000_000

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def reply(
    status: int,
    body: Any = None,
    *,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """One fake API answer: JSON for a dict or list (or None: no body), bytes as they are (HTML
    unless ``content_type`` says otherwise)."""
    if isinstance(body, bytes):
        content, ctype = body, content_type or "text/html"
    else:
        content = b"" if body is None else json.dumps(body).encode()
        ctype = content_type or "application/json"
    return httpx.Response(
        status, content=content, headers={"content-type": ctype, **(headers or {})}
    )


def replies(*items: tuple[int, Any]) -> Callable[[httpx.Request], httpx.Response]:
    """A MockTransport handler answering ``items`` in turn, then the last one for ever."""
    queue = list(items)

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = queue.pop(0) if len(queue) > 1 else queue[0]
        return reply(status, body)

    return handler


def require_binary(name: str) -> str:
    """Path of a Debian tool; skip visibly when absent, fail when RTK_REQUIRE_PROMETHEUS=1."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not installed (apt-get install prometheus)"
        if os.environ.get("RTK_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(message + " and RTK_REQUIRE_PROMETHEUS=1")
        pytest.skip(message)
    return path


class ExporterProcess:
    """A real ``python -m exporter`` process on 127.0.0.1 with a random port."""

    def __init__(
        self, config: dict[str, Any], tmp: Path, *args: str, env: dict[str, str] | None = None
    ):
        self.config_path = tmp / "config.yaml"
        self.write_config(config)
        self.log_path = tmp / "exporter.log"
        self._log = self.log_path.open("wb")
        full_env = {"PATH": "/usr/bin:/bin", "CLOUDFLARE_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "--config.file",
                str(self.config_path),
                "--web.listen-address",
                "127.0.0.1:0",
                "--log.level",
                "debug",
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        self.port = self._wait_for_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    def _wait_for_port(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"exporter exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"exporter did not start:\n{self.log()}")

    def wait_ready(self, timeout: float = 20) -> None:
        """Until every meeting has been polled once (``/-/ready`` answers 200)."""
        wait_for(lambda: self.get("/-/ready").status_code == 200, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.base + path, timeout=10, **kw)

    def metrics_text(self) -> str:
        response = self.get("/metrics")
        assert response.status_code == 200
        assert TOKEN not in response.text, "the API token leaked into /metrics"
        return response.text

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return parse_metrics(self.metrics_text())

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    """The value of the one sample of ``name`` whose labels include ``labels`` (None if absent)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    if len(found) > 1:
        raise AssertionError(f"{name} {labels} matches {len(found)} samples")
    return found[0] if found else None


def max_in_window(times: list[float], window: float) -> int:
    """The most of ``times`` that fall in any half-open window of ``window`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def wait_for(check: Callable[[], Any], timeout: float = 15, interval: float = 0.1) -> Any:
    """Call ``check`` until it returns a truthy value or raises nothing; bounded in time."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except AssertionError as err:
            last = err
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s: {last}")


@pytest.fixture
def simulator() -> Iterator[Any]:
    from exporter.simulator import Simulator

    sim = Simulator(token=TOKEN, meetings=4, auto=False, seed=1)
    sim.start("127.0.0.1", 0)
    yield sim
    sim.stop()


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[Callable[..., ExporterProcess]]:
    started: list[ExporterProcess] = []

    def start(
        config: dict[str, Any], *args: str, env: dict[str, str] | None = None
    ) -> ExporterProcess:
        proc = ExporterProcess(config, tmp_path, *args, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
    for proc in started:  # every log line of every exporter the tests ran
        assert TOKEN not in proc.log(), "the API token leaked into the log"


def sim_config(sim: Any, meetings: list[Any] | None = None, **poll: Any) -> dict[str, Any]:
    return {
        "api": {
            "base_url": sim.base_url,
            "timeout_seconds": 2,
            "rate_limit": {"requests": 200, "period_seconds": 10},
        },
        "poll": {"interval_seconds": 1, **poll},
        "apps": [
            {
                "account_id": "023e105f4ecef8ad9ca31a8372d0c353",
                "app_id": "6f0a8a2c3b8e4f62a1d2c3b4e5f60718",
                "meetings": meetings if meetings is not None else list(sim.meeting_ids),
            }
        ],
    }


# --- a real redis-server (the coordination and HA tests) ----------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A real ``redis-server`` on 127.0.0.1 that a test can stop and start again."""

    def __init__(self, path: str, tmp: Path, *extra: str) -> None:
        self.port = free_port()
        self.args = [path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self.args += ["--appendonly", "no", "--dir", str(tmp), *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"redis-server did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


def redis_server_path() -> str:
    path = shutil.which("redis-server")
    if path is None:
        message = "redis-server not installed (apt-get install redis-server)"
        if os.environ.get("RTK_REQUIRE_TOOLS") == "1":
            pytest.fail(message + " and RTK_REQUIRE_TOOLS=1")
        pytest.skip(message)
    return path


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start real redis-servers (extra flags: ``--requirepass …``), each in its own directory;
    each can be stopped and started again on the same port."""
    servers: list[RedisServer] = []

    def make(*extra: str) -> RedisServer:
        directory = tmp_path / f"redis{len(servers)}"
        directory.mkdir()
        server = RedisServer(redis_server_path(), directory, *extra)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def start_discovery(
    config: Any,
    client: Any,
    *,
    store: Any,
    health: Any,
    clock: Callable[[], float],
    stale_after: float = 30.0,
    interval: float = 10.0,
) -> Any:
    """A real Discovery over ``client`` for every app of ``config``, its meetings in ``store``;
    its scheduler is not started: tests run cycles with ``discover_app`` themselves."""
    import asyncio

    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from exporter.discovery import Discovery, DiscoveryPlan
    from exporter.logs import FailureLog

    discovery = Discovery(
        scheduler=AsyncIOScheduler(),
        store=store,
        health=health,
        failures=FailureLog(clock=clock),
        clock=clock,
    )
    apps = {app.key: (app, client) for app in config.apps}
    discovered = discovery.schedule(
        DiscoveryPlan(apps, interval, stale_after, asyncio.Semaphore(4))
    )
    store.set_targets({**config.targets(), **discovered})
    return discovery
