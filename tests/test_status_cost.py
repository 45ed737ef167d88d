"""The status page stays cheap at scale (issue 23 item 12: 32 concurrent ``GET /`` at 10,000
meetings made 32 pages and pushed scrapes to 4 s): it is made at most once a second however
many ask, and shows its first rows without sorting every meeting."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from exporter.app import CachedPage
from exporter.simulator import Simulator
from tests.support.api import TOKEN, sim_config
from tests.support.clock import FakeTime
from tests.support.metrics import value
from tests.support.process import wait_for


def test_concurrent_requests_share_one_make() -> None:
    clock = FakeTime(100.0)
    release, started = threading.Event(), threading.Event()
    made: list[int] = []

    def make() -> str:
        made.append(1)
        started.set()
        assert release.wait(10)
        return f"page {len(made)}"

    page = CachedPage(make, seconds=1.0, clock=clock)
    with ThreadPoolExecutor(32) as pool:
        answers = [pool.submit(page) for _ in range(32)]
        assert started.wait(10)
        release.set()
        assert {a.result(timeout=10) for a in answers} == {"page 1"}
    assert len(made) == 1
    clock.now += 0.5
    assert page() == "page 1"  # within the second: the same page
    clock.now += 0.5
    assert page() == "page 2"  # a second later: made again
    clock.now -= 30  # a clock going backwards never keeps an old page for ever
    assert page() == "page 3"


def test_a_failing_make_is_not_cached() -> None:
    calls: list[int] = []

    def make() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return "ok"

    page = CachedPage(make, clock=FakeTime(0.0))
    with pytest.raises(RuntimeError):
        page()
    assert page() == "ok"


@pytest.fixture
def big_sim() -> Iterator[Simulator]:
    sim = Simulator(token=TOKEN, meetings=0, auto=False, seed=1)
    sim.add_app(sim.account_id, sim.app_id, 10_000, live=True, participants=3)
    sim.start("127.0.0.1", 0)
    yield sim
    sim.stop()


def test_32_concurrent_status_pages_at_10000_meetings(big_sim, start_exporter) -> None:
    config = sim_config(big_sim, meetings=[], interval_seconds=30)
    config["apps"][0]["discover"] = {"enabled": True, "per_page": 100, "max_meetings": 20_000}
    exporter = start_exporter(config)
    wait_for(
        lambda: value(exporter.scrape(), "realtimekit_app_session_participants_gcount") == 10_000,
        timeout=60,
    )
    url = exporter.base + "/"
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(32) as pool:
        pages = list(pool.map(lambda _: client.get(url), range(32)))
        scrape = client.get(exporter.base + "/metrics")
    assert all(page.status_code == 200 for page in pages)
    assert scrape.status_code == 200
    assert all("10000 exported: 0 failing, 10000 live, 0 idle." in page.text for page in pages)
    assert all("… and 9900 more (0 failing, 9900 live, 0 idle)" in page.text for page in pages)
    # They were served from few makes: a page says when it was made, to the second.
    made = {page.text.split("Page made ", 1)[1].split(";", 1)[0] for page in pages}
    assert len(made) <= 3, made
