"""Discovery across the API conventions the spec leaves open (issue 11), over real HTTP.

Each row runs the real ``Discovery`` job with a real ``ApiClient`` against a real ``Simulator`` on
127.0.0.1: pages counted from 0 or 1, a per-page cap below what is asked (or not), ``paging``
full, partial or absent, at sizes 0, 1, cap - 1, cap, cap + 1 and 3 x cap + 7, with and without
sessions starting and ending between pages. The end-to-end tests run the real exporter process.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from exporter.client import ApiClient, make_http_client
from exporter.config import parse_config
from exporter.health import AppHealth, Health
from exporter.limiter import RateLimiter
from exporter.model import Session
from exporter.simulator import PageServed, Simulator
from exporter.store import MeetingState, Store
from tests.support.api import TOKEN, sim_config, start_discovery
from tests.support.metrics import value
from tests.support.process import wait_for

PAGE = 25  # the items a page really holds, in every row: the server's cap or what is asked
SIZES = [0, 1, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE + 7]
CYCLES = 3
#: ``paging`` as the simulator serves it, and the fields it then carries.
PAGINGS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "full": ({"paging": "full"}, ("total_count", "start_offset", "end_offset")),
    "offsets": ({"paging": "partial"}, ("start_offset", "end_offset")),  # no total_count
    "total": (
        {"paging": "partial", "paging_drop": ("start_offset", "end_offset")},
        ("total_count",),
    ),
    "end": ({"paging": "partial", "paging_drop": ("total_count", "start_offset")}, ("end_offset",)),
    "absent": ({"paging": "absent"}, ()),
}
#: (per_page_cap, discover.per_page): a cap below what is asked, or one above it.
SHAPES = {"capped": (PAGE, 100), "uncapped": (100, PAGE)}


def undetectable(fields: tuple[str, ...], n: int, base: int, capped: bool) -> str | None:
    """Why this row loses sessions (None: it must not): mostly because no answer can tell the
    convention apart from a shorter list; one row kind is a gap of the client (said so).

    As documented by the client's author (tests/test_client.py ``knowable``): pages from 0 with
    neither a count nor a page 1 that starts past item 1 (page 1 is then the second page, and
    looks like the end); a cap with no paging at all (a capped page looks like the last one)."""
    if n == 0:
        return None
    offsets = "start_offset" in fields or "end_offset" in fields
    if base == 0 and "total_count" not in fields and offsets and n > PAGE:
        return None  # page 1's offsets say it starts past item 1: it is not the first page
    if base == 0 and "total_count" not in fields:
        return "pages from 0 with neither total_count nor a page 1 past item 1: undetectable"
    if capped and not fields and n > PAGE:
        return "a per-page cap with no paging at all: a capped page looks like the last"
    return None


def rows(sizes: list[int], churn: int) -> list[Any]:
    """The table's rows; the undetectable ones are strict xfails without churn, and left out
    with churn (where luck decides whether a session sits past the part a walk reads)."""
    out = []
    for paging, (_, fields) in PAGINGS.items():
        for shape in SHAPES:
            for base in (1, 0):
                for n in sizes:
                    why = undetectable(fields, n, base, shape == "capped")
                    if why and churn:
                        continue
                    marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
                    row_id = f"{paging}-{shape}-base{base}-n{n}"
                    out.append(pytest.param(paging, shape, base, n, churn, id=row_id, marks=marks))
    return out


@dataclass
class Cycle:
    """What the simulator and the exporter held around one discovery cycle."""

    live_before: set[str]  # LIVE in the simulator just before the cycle
    live_after: set[str]  # LIVE in the simulator at its end
    states: dict[str, MeetingState]  # the store after it, by meeting id
    app: AppHealth
    last_page: PageServed | None  # the last /sessions page served


def live_in(sim: Simulator) -> set[str]:
    return {
        m for m in sim.meeting_ids if (s := sim.session(m)) is not None and s["status"] == "LIVE"
    }


def exported_live(states: dict[str, MeetingState]) -> set[str]:
    return {
        m
        for m, s in states.items()
        if s.up and isinstance(s.answer, Session) and s.answer.status == "LIVE"
    }


async def discover(sim: Simulator, per_page: int, pages: list[PageServed]) -> list[Cycle]:
    """CYCLES discovery cycles of the simulator's app; ``pages`` fills as pages are served."""
    config = parse_config(
        {
            "apps": [
                {
                    "account_id": sim.account_id,
                    "app_id": sim.app_id,
                    "meetings": [],
                    "discover": {"enabled": True, "per_page": per_page},
                }
            ]
        }
    )
    now = [1000.0]
    store, health = Store(), Health()
    http = make_http_client(timeout_seconds=5, max_connections=4)
    cycles = []
    async with http:
        client = ApiClient(http, base_url=sim.base_url, token=TOKEN, limiter=RateLimiter(10**9, 1))
        discovery = start_discovery(
            config, client, store=store, health=health, clock=lambda: now[0], stale_after=90
        )
        app_key = (sim.account_id, sim.app_id)
        for _ in range(CYCLES):
            before = live_in(sim)
            await discovery.discover_app(app_key)
            now[0] += 10
            states = {k.meeting_id: s for k, s in store.snapshot()[1].items()}
            app = health.snapshot().apps[app_key]
            cycles.append(Cycle(before, live_in(sim), states, app, pages[-1] if pages else None))
    return cycles


def simulator(paging: str, shape: str, base: int, n: int, churn: int, **kw: Any) -> Simulator:
    """A started simulator of one convention whose app has ``n`` LIVE sessions."""
    options, _ = PAGINGS[paging]
    sim = Simulator(
        token=TOKEN,
        meetings=0,
        auto=False,
        seed=n + 1000 * base,
        page_base=base,
        per_page_cap=SHAPES[shape][0],
        churn_per_page=churn,
        **options,
        **kw,
    )
    sim.add_app(sim.account_id, sim.app_id, n, live=True)
    sim.start("127.0.0.1", 0)
    return sim


def run(paging: str, shape: str, base: int, n: int, churn: int) -> list[Cycle]:
    pages: list[PageServed] = []
    sim = simulator(paging, shape, base, n, churn, on_page=pages.append)
    try:
        return asyncio.run(discover(sim, SHAPES[shape][1], pages))
    finally:
        sim.stop()


@pytest.mark.parametrize(("paging", "shape", "base", "n", "churn"), rows(SIZES, churn=0))
def test_every_live_session_is_exported_once_every_cycle(
    paging: str, shape: str, base: int, n: int, churn: int
) -> None:
    for cycle in run(paging, shape, base, n, churn):
        assert cycle.live_after == cycle.live_before and len(cycle.live_after) == n
        assert exported_live(cycle.states) == cycle.live_after  # every live one, only those
        assert set(cycle.states) == cycle.live_after  # nothing else exported (nothing ended)
        # Each session counted once: the store is keyed by meeting, the app's numbers are not.
        assert cycle.app.up is True
        assert cycle.app.live_sessions == n
        assert cycle.app.live_participants == n  # one participant each
    assert cycle.app.invalid_sessions == 0


@pytest.mark.parametrize(
    ("paging", "shape", "base", "n", "churn"), rows([PAGE + 1, 3 * PAGE + 7], churn=2)
)
def test_sessions_coming_and_going_between_pages(
    paging: str, shape: str, base: int, n: int, churn: int
) -> None:
    """After every page 2 sessions end (and are cleared) and 2 new meetings go live.

    After the last cycle: a session live since before the cycle ahead of it began is exported
    LIVE and up; so is one exported LIVE before the last cycle and live all through it. A session
    that started later may lag one cycle: it slips back across a page boundary already read when
    earlier sessions end, and with total_count unchanged no answer shows it (see
    ``test_a_session_that_slips_back_a_page_is_exported_one_cycle_later``). Nothing that ended
    before the last cycle still shows LIVE; with ``total_count`` the app's live sessions are the
    count of the last page."""
    prev, last = run(paging, shape, base, n, churn)[-2:]
    exported = exported_live(last.states)
    settled = prev.live_before & last.live_after
    assert settled <= exported, f"{len(settled - exported)} long-live session(s) not exported"
    kept = exported_live(prev.states) & last.live_before & last.live_after
    assert kept <= exported, f"{len(kept - exported)} exported session(s) lost"
    assert exported <= last.live_before | last.live_after
    assert prev.app.up is True and last.app.up is True
    if "total_count" in PAGINGS[paging][1]:
        assert last.last_page is not None
        assert last.app.live_sessions == last.last_page.total_count


def listed_pages(sim: Simulator, per_page: int, pages: int) -> list[list[dict[str, Any]]]:
    """The app's LIVE sessions as the simulator pages them (pages from 1)."""
    url = f"{sim.base_url}/accounts/{sim.account_id}/realtime/kit/{sim.app_id}/sessions"
    out = []
    for page_no in range(1, pages + 1):
        params: dict[str, str | int] = {"status": "LIVE", "per_page": per_page, "page_no": page_no}
        answer = httpx.get(url, params=params, headers={"Authorization": f"Bearer {TOKEN}"})
        out.append(answer.json()["data"]["sessions"])
    return out


def slipped_walk() -> tuple[str, list[Cycle]]:
    """26 LIVE sessions on pages capped at 25; while the first walk reads page 1, the oldest
    session ends and a new one starts: the 26th moves onto page 1, already read, and total_count
    stays 26. Returns that meeting and the cycles."""
    pages: list[PageServed] = []
    armed = [False]

    def on_page(page: PageServed) -> None:
        pages.append(page)
        if armed[0] and page.page_no == 1:
            armed[0] = False
            sim.end_session(oldest)
            sim.clear_session(oldest)
            sim.add_app(sim.account_id, sim.app_id, 1, live=True)

    sim = simulator("full", "capped", 1, PAGE + 1, 0, on_page=on_page)
    try:
        first, second = listed_pages(sim, PAGE, 2)
        oldest, slipping = first[0]["associated_id"], second[0]["associated_id"]
        armed[0] = True
        return slipping, asyncio.run(discover(sim, SHAPES["capped"][1], pages))
    finally:
        sim.stop()


def test_a_session_that_slips_back_a_page_is_exported_one_cycle_later() -> None:
    slipping, cycles = slipped_walk()
    for cycle in cycles[1:]:
        assert slipping in exported_live(cycle.states)
        assert exported_live(cycle.states) == cycle.live_after


@pytest.mark.xfail(
    strict=True,
    reason="offset paging: a session that moves back onto a page already read while the walk "
    "goes on (an earlier one ended, a new one started, total_count unchanged) is not listed, "
    "and no answer reveals it; the next cycle lists it",
)
def test_a_session_that_slips_back_a_page_is_exported_in_the_same_cycle() -> None:
    slipping, cycles = slipped_walk()
    assert slipping in exported_live(cycles[0].states)


# --- the real exporter process ------------------------------------------------------------------


def scrape_by_meeting(exporter: Any, name: str) -> dict[str, float]:
    return {
        dict(labels)["meeting_id"]: v
        for (metric, labels), v in exporter.scrape().items()
        if metric == name and "meeting_id" in dict(labels)
    }


def discovering_config(sim: Simulator, per_page: int, meetings: list[Any]) -> dict[str, Any]:
    config = sim_config(sim, meetings=meetings, stale_after_seconds=10)
    config["apps"][0]["discover"] = {"enabled": True, "per_page": per_page}
    return config


def test_exporter_finds_every_meeting_on_zero_based_capped_pages_without_a_count(
    start_exporter: Any,
) -> None:
    sim = Simulator(
        token=TOKEN, meetings=0, auto=False, seed=3, page_base=0, per_page_cap=25, paging="partial"
    )
    live = sim.add_app(sim.account_id, sim.app_id, 60, live=True)
    sim.start("127.0.0.1", 0)
    try:
        exporter = start_exporter(discovering_config(sim, 100, []))
        everyone = dict.fromkeys(live, 1.0)
        wait_for(lambda: scrape_by_meeting(exporter, "realtimekit_session_active") == everyone)
        samples = exporter.scrape()
        assert value(samples, "realtimekit_app_live_sessions") == 60
        assert value(samples, "realtimekit_discovery_up") == 1
        assert scrape_by_meeting(exporter, "realtimekit_up") == everyone
        asked = [path for _, path, _ in sim.request_log()]
        assert any("page_no=0" in p for p in asked)  # page 0 found, though never announced
        assert not any("/active-session" in p for p in asked)  # all listed: nothing confirmed
    finally:
        sim.stop()


def test_a_meeting_unknown_to_the_api_is_down_with_reason_not_found(start_exporter: Any) -> None:
    sim = Simulator(token=TOKEN, meetings=1, auto=False, seed=4, unknown_meeting="not_found")
    sim.start("127.0.0.1", 0)
    idle, ghost = sim.meeting_ids[0], "ghost-meeting-0001"
    try:
        exporter = start_exporter(sim_config(sim, meetings=[idle, ghost]), "--log.level", "info")

        def errors() -> float:
            got = value(
                exporter.scrape(),
                "realtimekit_poll_errors_total",
                meeting_id=ghost,
                reason="not_found",
            )
            return got or 0

        wait_for(lambda: errors() >= 2)  # polled at least twice, still logged once
        samples = exporter.scrape()
        assert value(samples, "realtimekit_up", meeting_id=ghost) == 0
        assert value(samples, "realtimekit_up", meeting_id=idle) == 1
        assert value(samples, "realtimekit_session_active", meeting_id=idle) == 0
        lines = [ln for ln in exporter.log().splitlines() if ghost in ln]
        assert len([ln for ln in lines if "Meeting not found" in ln]) == 1, lines
    finally:
        sim.stop()


def first_of_each_page(sim: Simulator, per_page: int, pages: int) -> list[str]:
    """The meetings whose sessions the listing fault breaks (status "PAUSED")."""
    return [
        s["associated_id"]
        for page in listed_pages(sim, per_page, pages)
        for s in page
        if s["status"] == "PAUSED"
    ]


def test_a_malformed_listed_session_hides_no_other_meeting(start_exporter: Any) -> None:
    sim = Simulator(token=TOKEN, meetings=0, auto=False, seed=6)
    live = sim.add_app(sim.account_id, sim.app_id, 12, live=True)
    sim.start("127.0.0.1", 0)
    try:
        exporter = start_exporter(discovering_config(sim, 5, []))
        everyone = dict.fromkeys(live, 1.0)
        wait_for(lambda: scrape_by_meeting(exporter, "realtimekit_session_active") == everyone)
        assert not any("/active-session" in p for _, p, _ in sim.request_log())
        sim.set_listing_fault("unknown_status")  # the first session of every page: "PAUSED"
        broken = first_of_each_page(sim, 5, 3)
        assert len(broken) == 3
        since = len(sim.request_log())

        def confirmed() -> set[str]:
            asked = [path for _, path, _ in sim.request_log()[since:]]
            return {m for m in broken if any(f"/meetings/{m}/active-session" in p for p in asked)}

        wait_for(lambda: confirmed() == set(broken))
        wait_for(
            lambda: value(exporter.scrape(), "realtimekit_discovery_invalid_sessions_total") >= 3
        )
        assert scrape_by_meeting(exporter, "realtimekit_session_active") == everyone
        assert scrape_by_meeting(exporter, "realtimekit_up") == everyone
        skipped = rf"skipped a malformed session \(page 1, index 0, meeting_id={broken[0]}\)"
        assert re.search(skipped, exporter.log())
    finally:
        sim.stop()
