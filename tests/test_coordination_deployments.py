"""Two deployments on one Redis with the same ``key_prefix`` (issue 23, item 11): the one that
stands by for ever says so, in the log (once), in ``realtimekit_coordination_lease_conflict``
and on the status page. A real Debian ``redis-server`` on 127.0.0.1, real exporter processes
and the simulator; every wait is bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from exporter.coordination import CoordinationSettings, Lease, connect, deployment_of, link_for
from exporter.simulator import Simulator
from tests.support.api import TOKEN, sim_config
from tests.support.metrics import value
from tests.support.process import ExporterProcess, Exporters, wait_for
from tests.support.redis import RedisServer

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"


def test_the_lease_names_the_deployment_and_a_foreign_one_is_noticed(
    make_redis: Callable[..., RedisServer],
) -> None:
    server = make_redis()
    ours, theirs = deployment_of([(ACCOUNT, "app1")]), deployment_of([(ACCOUNT, "app2")])
    assert ours != theirs and ours == deployment_of([(ACCOUNT, "app1"), (ACCOUNT, "app1")])

    async def main() -> None:
        settings = CoordinationSettings(redis_url=server.url, key_prefix="t")
        client = connect(settings)

        def lease(name: str, deployment: str, shard: str = "0") -> Lease:
            link = link_for(settings, client)
            return Lease(link, shard, name, lease_seconds=3, deployment=deployment)

        holder, twin, stranger = lease("a", ours), lease("b", ours), lease("c", theirs)
        assert await holder.step() and not await twin.step() and not await stranger.step()
        assert await client.get("t:lease:0") == f"a {ours}".encode()
        assert twin.foreign == "" and stranger.foreign == ours
        await client.set("t:lease:1", b"old-replica", px=3000)  # a version without the name
        unknown = lease("d", theirs, "1")
        assert not await unknown.step() and unknown.foreign == ""
        await holder.release()
        assert await stranger.step() and stranger.foreign == ""
        await client.aclose()

    asyncio.run(asyncio.wait_for(main(), timeout=20))


@pytest.fixture
def start(start_exporter: Exporters) -> Exporters:
    """``start_exporter``, whose exporters may log no traceback either."""
    start_exporter.forbidden.update({"Traceback": "a traceback"})
    return start_exporter


def test_a_second_deployment_on_the_same_prefix_says_why_it_stands_by(
    make_redis: Callable[..., RedisServer], start: Callable[..., ExporterProcess]
) -> None:
    redis = make_redis()
    sim = Simulator(token=TOKEN, meetings=3, auto=False, seed=2)
    other = sim.add_app(ACCOUNT, "otherapp", 3)
    sim.start("127.0.0.1", 0)
    try:
        first = sim_config(sim)
        second = sim_config(sim)
        second["apps"] = [{"account_id": ACCOUNT, "app_id": "otherapp", "meetings": other}]
        for config in (first, second):  # both with the default key_prefix
            config["coordination"] = {"redis_url": redis.url, "lease_seconds": 3}
        a = start(first)
        a.wait_ready(timeout=30)
        wait_for(lambda: value(a.scrape(), "realtimekit_exporter_leader") == 1, timeout=15)
        twin = start(first)  # a standby of the same deployment: no conflict
        b = start(second)

        def conflict(proc: ExporterProcess) -> float | None:
            return value(proc.scrape(), "realtimekit_coordination_lease_conflict")

        wait_for(lambda: conflict(b) == 1, timeout=15)
        settled = time.monotonic() + 3.0  # several more lease steps: it stays, said once
        while time.monotonic() < settled:
            assert conflict(b) == 1 and conflict(twin) == 0
            time.sleep(0.2)
        page = b.get("/").text
        assert "held by another deployment" in page and "coordination.key_prefix" in page
        warnings = [line for line in b.log().splitlines() if "of another deployment" in line]
        assert len(warnings) == 1 and "level=warning" in warnings[0], warnings
        assert "key_prefix" in warnings[0]
        assert value(b.scrape(), "realtimekit_exporter_leader") == 0
        assert conflict(a) == 0 and value(a.scrape(), "realtimekit_exporter_leader") == 1
        assert "another deployment" not in twin.get("/").text
    finally:
        sim.stop()
