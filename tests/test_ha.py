"""High availability end to end (issue 16): two real exporter processes on one token, a real
Debian ``redis-server`` on 127.0.0.1 (a temp dir, no persistence) and the simulator enforcing
the same budget as the exporters' config.

Each test is bounded (at most about 60 s) and waits on conditions; the sampling loops scrape both
replicas every 0.2 s until a deadline.
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.simulator import Simulator
from tests.support.api import TOKEN, sim_config
from tests.support.metrics import max_in_window, parse_metrics
from tests.support.process import ExporterProcess, Exporters, wait_for
from tests.support.redis import RedisServer

LEASE = 3.0
BUDGET = (60, 10)  # requests, seconds: the exporters' and the simulator's
MEETINGS = 8  # polled every 1 s: 8/s wanted, 6/s allowed, so polling stretches
SLACK = 4.0  # scheduling on a loaded 2-core machine
SAMPLE_EVERY = 0.2
PASSWORD = "redis-PASS-4b7e19c2d8"


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[Simulator]:
    simulator = Simulator(token=TOKEN, meetings=MEETINGS, auto=False, seed=1, rate_limit=BUDGET)
    simulator.start("127.0.0.1", 0)
    yield simulator
    simulator.stop()


@pytest.fixture
def start_replica(start_exporter: Exporters) -> Exporters:
    """``start_exporter``, whose replicas may log neither the token nor the Redis password."""
    start_exporter.forbidden.update({PASSWORD: "the Redis password"})
    return start_exporter


def ha_config(sim: Simulator, redis: RedisServer, **coordination: Any) -> dict[str, Any]:
    config = sim_config(sim)
    config["api"]["rate_limit"] = {"requests": BUDGET[0], "period_seconds": BUDGET[1]}
    config["coordination"] = {"redis_url": redis.url, "lease_seconds": LEASE, **coordination}
    return config


# --- observing the replicas ---------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """One scrape of one replica."""

    leader: float | None
    coordination_up: float | None
    up: dict[str, float]  # meeting id -> realtimekit_up
    last_success: dict[str, float]  # meeting id -> realtimekit_last_success_timestamp_seconds
    requests: float  # sum of realtimekit_api_requests_total
    effective_interval: float | None

    def serves_all(self) -> bool:
        return len(self.up) == MEETINGS

    def oldest_success(self) -> float:
        return min(self.last_success.values(), default=0.0)


def view(proc: ExporterProcess) -> View | None:
    """Scrape ``proc`` (None when it does not answer: killed)."""
    try:
        response = httpx.get(proc.base + "/metrics", timeout=3)
    except httpx.HTTPError:
        return None
    assert response.status_code == 200
    assert TOKEN not in response.text and PASSWORD not in response.text
    samples = parse_metrics(response.text)

    def per_meeting(name: str) -> dict[str, float]:
        return {dict(ls)["meeting_id"]: v for (n, ls), v in samples.items() if n == name}

    def single(name: str) -> float | None:
        found = [v for (n, _), v in samples.items() if n == name]
        return found[0] if found else None

    requests = [v for (n, _), v in samples.items() if n == "realtimekit_api_requests_total"]
    return View(
        leader=single("realtimekit_exporter_leader"),
        coordination_up=single("realtimekit_coordination_up"),
        up=per_meeting("realtimekit_up"),
        last_success=per_meeting("realtimekit_last_success_timestamp_seconds"),
        requests=sum(requests),
        effective_interval=single("realtimekit_poll_effective_interval_seconds"),
    )


def views(procs: list[ExporterProcess]) -> list[View | None]:
    return [view(p) for p in procs]


def the_leader(procs: list[ExporterProcess], timeout: float = 20) -> ExporterProcess:
    """Wait until exactly one replica leads and serves every meeting; return it."""

    def check() -> ExporterProcess | None:
        seen = list(zip(procs, views(procs), strict=True))
        leading = [(p, v) for p, v in seen if v is not None and v.leader == 1]
        serving = [p for p, v in seen if v is not None and v.up]
        if len(leading) == 1 and serving == [leading[0][0]] and leading[0][1].serves_all():
            return leading[0][0]
        return None

    leader: ExporterProcess = wait_for(check, timeout=timeout, interval=SAMPLE_EVERY)
    return leader


def start_pair(
    start_replica: Callable[..., ExporterProcess], config: dict[str, Any]
) -> tuple[ExporterProcess, ExporterProcess]:
    """Two replicas on the same config, both ready; returns (leader, standby)."""
    a, b = start_replica(config), start_replica(config)
    for proc in (a, b):
        proc.wait_ready(timeout=30)
    leader = the_leader([a, b])
    return leader, (b if leader is a else a)


@dataclass
class Sampler:
    """Scrape every replica every :data:`SAMPLE_EVERY` s in a thread, until stopped (bounded)."""

    procs: list[ExporterProcess]
    limit: float = 60.0
    samples: list[tuple[float, list[View | None]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.samples.append((time.monotonic(), views(self.procs)))
            self._stop.wait(SAMPLE_EVERY)

    def cover(self, seconds: float) -> None:
        """Wait until the samples reach ``seconds`` from now."""
        end = time.monotonic() + seconds
        wait_for(lambda: self.samples and self.samples[-1][0] >= end, timeout=seconds + 10)

    def longest_gap(self) -> float:
        """The longest time between two samples in which some replica served every meeting."""
        served = [t for t, seen in self.samples if any(v and v.serves_all() for v in seen)]
        assert served, "no replica ever served the meetings"
        ends = [self.samples[0][0], *served, self.samples[-1][0]]
        return max(b - a for a, b in itertools.pairwise(ends))


def request_times(sim: Simulator) -> list[float]:
    return [t for t, _, _ in sim.request_log()]


def assert_within_budget(sim: Simulator) -> None:
    """The simulator's own count: no 429, no window of the period over the budget."""
    assert 429 not in sim.status_counts(), sim.status_counts()
    assert max_in_window(request_times(sim), BUDGET[1]) <= BUDGET[0]


def assert_no_traceback(*procs: ExporterProcess) -> None:
    for proc in procs:
        assert proc.proc.poll() is None, f"replica exited {proc.proc.returncode}:\n{proc.log()}"
        assert "Traceback" not in proc.log(), proc.log()


# --- tests --------------------------------------------------------------------------------


def test_two_replicas_share_one_budget_and_exactly_one_serves(
    sim: Simulator,
    make_redis: Callable[..., RedisServer],
    start_replica: Callable[..., ExporterProcess],
) -> None:
    leader, standby = start_pair(start_replica, ha_config(sim, make_redis()))
    with Sampler([leader, standby]) as sampler:
        sampler.cover(20)
    assert len(sampler.samples) >= 40
    for _, (lead, stand) in sampler.samples:
        assert lead is not None and stand is not None
        assert lead.serves_all() and lead.leader == 1, lead
        assert stand.up == {} and stand.last_success == {} and stand.leader == 0, stand
    for proc in (leader, standby):
        assert proc.get("/-/ready").status_code == 200
    assert_within_budget(sim)
    final = view(leader)
    assert final is not None and final.effective_interval is not None
    assert final.effective_interval > 1.0  # the budget stretched polling: it was the limit
    assert len(request_times(sim)) >= 20 * BUDGET[0] / BUDGET[1] * 0.6
    assert_no_traceback(leader, standby)


def test_a_killed_leader_is_replaced_warm_without_a_gap_or_a_burst(
    sim: Simulator,
    make_redis: Callable[..., RedisServer],
    start_replica: Callable[..., ExporterProcess],
) -> None:
    leader, standby = start_pair(start_replica, ha_config(sim, make_redis()))
    before = view(leader)
    assert before is not None and before.effective_interval is not None
    allowed = LEASE + before.effective_interval + SLACK
    with Sampler([leader, standby]) as sampler:
        wait_for(lambda: len(sampler.samples) >= 10, timeout=10)
        killed, killed_wall = time.monotonic(), time.time()
        os.kill(leader.proc.pid, signal.SIGKILL)
        leader.proc.wait(5)

        def fresh() -> bool:
            now = view(standby)
            return bool(
                now
                and now.leader == 1
                and now.serves_all()
                and now.oldest_success() >= time.time() - allowed
            )

        wait_for(fresh, timeout=allowed, interval=SAMPLE_EVERY)
        took = time.monotonic() - killed
        sampler.cover(4)  # the new leader's first seconds of polling
    print(f"\nfailover: {took:.2f}s (allowed {allowed:.1f}s), gap {sampler.longest_gap():.2f}s")
    assert sampler.longest_gap() <= allowed
    assert_within_budget(sim)
    since = [t for t in request_times(sim) if t >= killed_wall]
    steady = BUDGET[0] / BUDGET[1]
    assert since and max_in_window(since, 1.0) <= 2 * steady  # no burst on takeover
    assert_no_traceback(standby)


def test_redis_down_and_back_keeps_the_leader_polling_within_the_budget(
    sim: Simulator,
    make_redis: Callable[..., RedisServer],
    start_replica: Callable[..., ExporterProcess],
) -> None:
    redis = make_redis()
    leader, standby = start_pair(start_replica, ha_config(sim, redis))
    standby_requests = view(standby).requests  # type: ignore[union-attr]
    redis.stop()
    down = time.time()
    with Sampler([leader, standby]) as sampler:
        both = [leader, standby]
        wait_for(lambda: all(v and v.coordination_up == 0 for v in views(both)), timeout=10)
        sampler.cover(LEASE + 2)  # longer than the lease
    for _, (lead, stand) in sampler.samples:
        assert lead is not None and stand is not None
        assert lead.leader == 1 and lead.serves_all(), lead  # holds on while Redis is out
        assert stand.leader == 0 and stand.up == {}, stand  # never starts on its own
        assert stand.requests == standby_requests
    last = sampler.samples[-1][1][0]
    assert last is not None and last.oldest_success() > down  # polled while Redis was out
    assert leader.log().count("Redis unreachable") == 1
    redis.start()
    wait_for(lambda: all(v and v.coordination_up == 1 for v in views(both)), timeout=15)
    the_leader(both, timeout=4 * LEASE + SLACK)
    with Sampler(both) as after:
        after.cover(2 * LEASE)  # and it stays so
    for _, seen in after.samples:
        assert sorted(v.leader for v in seen if v) == [0, 1], seen
        assert [bool(v.up) for v in seen if v and v.leader] == [True], seen
        assert [v.up for v in seen if v and not v.leader] == [{}], seen
    assert_within_budget(sim)
    assert_no_traceback(leader, standby)


def start_with_passwords(
    tmp_path: Path,
    sim: Simulator,
    make_redis: Callable[..., RedisServer],
    start_replica: Callable[..., ExporterProcess],
) -> tuple[ExporterProcess, ExporterProcess]:
    """A Redis with ``requirepass``; one replica with the right password file (leading, Redis
    up), one with a wrong one (reporting Redis down)."""
    redis = make_redis("--requirepass", PASSWORD)
    right, wrong = tmp_path / "right.pass", tmp_path / "wrong.pass"
    right.write_text(PASSWORD + "\n")
    wrong.write_text(PASSWORD + "-wrong\n")  # contains the right one: a leak of either shows
    good = start_replica(ha_config(sim, redis, password_file=str(right)))
    good.wait_ready(timeout=30)
    the_leader([good])
    assert view(good).coordination_up == 1  # type: ignore[union-attr]
    bad = start_replica(ha_config(sim, redis, password_file=str(wrong)))

    def reported_down() -> bool:
        now = view(bad)
        return bool(now and now.coordination_up == 0 and now.leader == 0)

    wait_for(reported_down, timeout=15)
    return good, bad


def test_the_redis_password_never_shows(
    tmp_path: Path,
    sim: Simulator,
    make_redis: Callable[..., RedisServer],
    start_replica: Callable[..., ExporterProcess],
) -> None:
    good, bad = start_with_passwords(tmp_path, sim, make_redis, start_replica)
    wait_for(lambda: "AuthenticationError" in bad.log(), timeout=10)  # it did try, and said why
    for proc in (good, bad):
        for path in ("/metrics", "/", "/config"):
            text = proc.get(path).text
            assert PASSWORD not in text, f"the password leaked into {path}"
        assert PASSWORD not in proc.log()
    assert_no_traceback(good, bad)


def test_a_wrong_password_is_reported_in_one_clear_line(
    tmp_path: Path,
    sim: Simulator,
    make_redis: Callable[..., RedisServer],
    start_replica: Callable[..., ExporterProcess],
) -> None:
    _, bad = start_with_passwords(tmp_path, sim, make_redis, start_replica)
    wait_for(lambda: warnings_about_redis(bad), timeout=5)
    with Sampler([bad]) as more:
        more.cover(LEASE)  # a few more lease steps: still one line
    lines = warnings_about_redis(bad)
    assert len(lines) == 1, lines
    assert "AuthenticationError" in lines[0] and PASSWORD not in lines[0], lines
    assert_no_traceback(bad)


def warnings_about_redis(proc: ExporterProcess) -> list[str]:
    """The replica's log lines above debug level that speak of Redis or coordination."""
    return [
        line
        for line in proc.log().splitlines()
        if "level=debug" not in line and ("Redis" in line or "coordination" in line)
    ]
