"""Paging counts written as floats (issue 22 item 3): Cloudflare's published types make
``total_count``, ``start_offset`` and ``end_offset`` numbers (floats in the official Python SDK),
so ``25.0`` is 25, while ``25.5`` is as unusable as before. The network is faked at the transport;
the server caps its pages at 10 items whatever is asked, so a walk that loses the paging stops
after the first page and calls 10 of 25 sessions complete."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from exporter.client import ApiClient, make_http_client
from exporter.config import parse_config
from exporter.health import AppHealth, Health
from exporter.limiter import RateLimiter
from exporter.model import Paging, Session, parse_sessions_page
from exporter.paging import PageModel, Walk
from exporter.store import Store
from tests.support.api import TOKEN, reply, start_discovery

ACC, APP = "acc", "app"
CAP, LIVE = 10, 25


def session(i: int) -> dict[str, Any]:
    return {
        "id": f"s-{i}",
        "associated_id": f"m{i}",
        "status": "LIVE",
        "live_participants": 2,
        "started_at": "2026-11-28T07:00:00Z",
    }


class CappedApi:
    """``/sessions`` of 25 live sessions, 1-based pages of at most 10; ``paging`` holds only the
    fields of ``fields``, each written as a float."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.fields = fields
        self.pages: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/sessions"), request.url.path
        page_no = int(request.url.params["page_no"])
        self.pages.append(page_no)
        index = max(page_no, 1) - 1
        items = [session(i) for i in range(LIVE)][index * CAP : (index + 1) * CAP]
        start = index * CAP + 1
        values = {
            "total_count": LIVE,
            "start_offset": start if items else 0,
            "end_offset": start + len(items) - 1 if items else 0,
            "per_page": CAP,
            "page_no": max(page_no, 1),
        }
        body: dict[str, Any] = {"success": True, "data": {"sessions": items}}
        if self.fields:
            body["paging"] = {name: float(values[name]) for name in self.fields}
        return reply(200, body)


def discover(api: CappedApi) -> tuple[AppHealth, set[str]]:
    """One discovery cycle of the app (``per_page: 100``): its health and the live meetings."""
    config = parse_config(
        {
            "poll": {"interval_seconds": 10, "stale_after_seconds": 30},
            "apps": [{"account_id": ACC, "app_id": APP, "discover": {"enabled": True}}],
        }
    )
    store, health = Store(), Health()

    async def run() -> None:
        transport = httpx.MockTransport(api)
        http = make_http_client(timeout_seconds=1, max_connections=4, transport=transport)
        client = ApiClient(
            http, base_url="https://api.test/v4", token=TOKEN, limiter=RateLimiter(10**9, 1)
        )
        discovery = start_discovery(config, client, store=store, health=health, clock=lambda: 1e3)
        await discovery.discover_app((ACC, APP))
        await http.aclose()

    asyncio.run(run())
    live = {
        k.meeting_id
        for k, s in store.snapshot()[1].items()
        if isinstance(s.answer, Session) and s.up
    }
    return health.snapshot().apps[(ACC, APP)], live


@pytest.mark.parametrize(
    "fields",
    [
        ("total_count",),
        ("start_offset",),
        ("end_offset",),
        ("per_page",),
        ("total_count", "start_offset", "end_offset", "per_page", "page_no"),
    ],
    ids=lambda f: "+".join(f),
)
def test_a_float_paging_field_is_read_and_every_session_is_discovered(fields: tuple[str, ...]):
    api = CappedApi(fields)
    stats, live = discover(api)
    assert live == {f"m{i}" for i in range(LIVE)}
    assert stats.up and stats.live_sessions == LIVE and stats.incomplete == 0
    assert api.pages[:3] == [1, 2, 3]


def test_without_any_usable_paging_the_capped_server_still_looks_complete_at_10():
    """The control: what every float field used to give (each an unreadable field)."""
    api = CappedApi(("page_no",))  # an echo of the page alone says nothing about its size
    stats, live = discover(api)
    assert len(live) == CAP and stats.live_sessions == CAP and api.pages == [1]


def page(paging: dict[str, Any], items: int = 3) -> Paging | None:
    body = {"success": True, "data": {"sessions": [session(i) for i in range(items)]}}
    body["paging"] = paging  # type: ignore[assignment]
    return parse_sessions_page(200, "application/json", json.dumps(body).encode()).paging


@pytest.mark.parametrize(
    "name", ["total_count", "start_offset", "end_offset", "per_page", "page_no"]
)
def test_each_paging_field_takes_an_integral_float_and_refuses_any_other(name: str):
    assert page({name: 25.0}) == Paging(**{name: 25})
    assert page({name: 25}) == Paging(**{name: 25})
    for bad in (25.5, -1.0, 1e300, True, "25", None):
        assert page({name: bad}) is None, bad
    other = "end_offset" if name == "total_count" else "total_count"
    assert page({name: 25.5, other: 3.0}) == Paging(**{other: 3})  # the others still count


def test_nan_and_infinity_are_unusable_not_an_error():
    raw = b'{"success": true, "data": {"sessions": []}, "paging": {"total_count": NaN, '
    raw += b'"start_offset": Infinity, "end_offset": -Infinity, "per_page": 1e309}}'
    assert parse_sessions_page(200, "application/json", raw).paging is None


def test_a_server_that_says_it_served_page_0_as_page_1_counts_pages_from_1():
    model = PageModel(base=0)
    walk = Walk(model, per_page=3, app="app")
    first = parse_sessions_page(
        200,
        "application/json",
        json.dumps(
            {
                "success": True,
                "data": {"sessions": [session(i) for i in range(3)]},
                "paging": {"per_page": 3.0, "page_no": 1.0},
            }
        ).encode(),
        page_no=0,
    )
    assert walk.add(0, first) == 2  # page 1 is the page just read: not asked for again
    assert model.base == 1 and model.size == 3
