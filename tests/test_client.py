"""The client and parsers, with the network faked at the transport (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from exporter.client import ApiClient, make_http_client
from exporter.errors import REASONS, ApiError
from exporter.limiter import RateLimiter
from exporter.model import NO_ACTIVE_SESSION, InvalidSession, Session, parse_timestamp
from tests.support.api import BASE, KEY, LIVE, TOKEN, answering

NO_SESSION_BODY = {"success": False, "error": {"code": 404, "message": "No active session found"}}
CF_ERROR = {
    "success": False,
    "errors": [{"code": 10000, "message": "Authentication error"}],
    "messages": [],
    "result": None,
}


def fetch(handler: Callable[[httpx.Request], httpx.Response], **client_kw: Any):
    async def go():
        http = make_http_client(
            timeout_seconds=1, max_connections=2, transport=httpx.MockTransport(handler)
        )
        async with http:
            return await ApiClient(
                http, base_url=BASE, token=TOKEN, **client_kw
            ).get_active_session(KEY)

    return asyncio.run(go())


def fail_reason(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        fetch(handler, **kw)
    assert TOKEN not in str(info.value)
    return info.value


def test_live_session_is_parsed_and_request_is_well_formed():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answering(200, {"success": True, "data": LIVE})(request)

    got = fetch(handler)
    assert got == Session(
        id="sess-1",
        status="LIVE",
        live_participants=3.0,
        max_concurrent_participants=5.0,
        minutes_consumed=12.5,
        started_at=1795849200.0,
        type="meeting",
        meeting_display_name="Weekly sync",
        associated_id="m-1",
        created_at=1795849200.0,
    )
    (request,) = seen
    assert request.method == "GET"
    assert str(request.url) == (
        f"{BASE}/accounts/{KEY.account_id}/realtime/kit/{KEY.app_id}/meetings/m-1/active-session"
    )
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


def test_ended_session_keeps_its_status_and_accepts_ended_at():
    data = {**LIVE, "status": "ENDED", "live_participants": 0, "ended_at": "2026-11-28T08:00:00Z"}
    got = fetch(answering(200, {"success": True, "data": data}))
    assert isinstance(got, Session)
    assert (got.status, got.live_participants) == ("ENDED", 0.0)


def test_404_in_realtimekit_envelope_means_no_active_session():
    assert fetch(answering(404, NO_SESSION_BODY)) is NO_ACTIVE_SESSION


def test_404_in_cloudflare_envelope_is_not_found_not_an_empty_meeting():
    body = {"success": False, "errors": [{"code": 7003, "message": "Could not route"}]}
    err = fail_reason(answering(404, body))
    assert (err.reason, err.status) == ("not_found", 404)  # issue 11: any other 404
    assert "Could not route" in str(err)


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize(
    "body", [CF_ERROR, {"success": False, "error": {"code": 401, "message": "x"}}]
)
def test_auth_failures(status: int, body: Any):
    assert fail_reason(answering(status, body)).reason == "auth"


def test_429_is_rate_limited_and_keeps_its_message():
    body = {"success": False, "errors": [{"code": 971, "message": "More than 1200 requests"}]}
    err = fail_reason(answering(429, body, content_type="application/json"))
    assert (err.reason, err.status) == ("rate_limited", 429)
    assert "More than 1200 requests" in str(err)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx(status: int):
    assert fail_reason(
        answering(status, b"<html>bad gateway</html>", content_type="text/html")
    ).reason == ("http_5xx")


def test_other_4xx():
    assert fail_reason(answering(400, CF_ERROR)).reason == "http_4xx"


def test_timeout():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    assert fail_reason(handler).reason == "timeout"


def test_connection_refused():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    err = fail_reason(handler)
    assert err.reason == "connect"
    assert err.status is None


def test_non_json_body():
    err = fail_reason(answering(200, b"{not json", content_type="application/json"))
    assert err.reason == "invalid_response"
    assert "not valid JSON" in str(err)


def test_wrong_content_type():
    err = fail_reason(answering(200, {"success": True, "data": LIVE}, content_type="text/html"))
    assert err.reason == "invalid_response"
    assert "text/html" in str(err)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("id", None, "required field data.id is missing"),
        ("status", None, "required field data.status is missing"),
        ("live_participants", None, "required field data.live_participants is missing"),
        ("id", 42, "required field data.id is not a non-empty string: 42"),
        (
            "live_participants",
            "3",
            "required field data.live_participants is not a non-negative number: '3'",
        ),
        (
            "live_participants",
            True,
            "required field data.live_participants is not a non-negative number: True",
        ),
        (
            "live_participants",
            -1,
            "required field data.live_participants is not a non-negative number: -1",
        ),
        ("status", ["LIVE"], "required field data.status is not LIVE or ENDED: ['LIVE']"),
    ],
)
def test_missing_or_mistyped_required_field_names_the_field(field: str, value: Any, message: str):
    data = dict(LIVE)
    if value is None:
        del data[field]
    else:
        data[field] = value
    err = fail_reason(answering(200, {"success": True, "data": data}))
    assert err.reason == "invalid_response"
    assert str(err) == message


def test_extra_fields_are_ignored_and_optional_fields_may_be_missing_or_mistyped():
    data = {
        "id": "s",
        "status": "LIVE",
        "live_participants": 1,
        "max_concurrent_participants": "lots",  # mistyped optional: treated as missing
        "brand_new_field": {"x": [1, 2]},
    }
    got = fetch(answering(200, {"success": True, "data": data, "paging": {}}))
    assert got == Session(id="s", status="LIVE", live_participants=1.0)


@pytest.mark.parametrize("value", ["null", "", None, "yesterday", 12345])
def test_unusable_timestamps_become_none(value: Any):
    assert parse_timestamp(value) is None


def test_timestamp_forms():
    assert parse_timestamp("2026-11-28T07:00:00.000Z") == 1795849200.0
    assert parse_timestamp("2026-11-28T07:00:00") == 1795849200.0  # no zone: UTC
    assert parse_timestamp("2026-11-28T08:00:00+01:00") == 1795849200.0


def test_string_null_ended_at_and_started_at_are_tolerated():
    data = {**LIVE, "ended_at": "null", "started_at": "null"}
    got = fetch(answering(200, {"success": True, "data": data}))
    assert isinstance(got, Session)
    assert got.started_at is None


@pytest.mark.parametrize(
    "body",
    [
        [1, 2],
        {"success": True},
        {"success": True, "data": None},
        {"success": True, "data": "x"},
        {"success": False, "data": LIVE},
    ],
)
def test_malformed_200_envelopes(body: Any):
    assert fail_reason(answering(200, body)).reason == "invalid_response"


def test_oversized_answer_is_cut_off():
    big = {"success": True, "data": {**LIVE, "meta": {"pad": "x" * 5000}}}
    err = fail_reason(answering(200, big), max_body_bytes=1000)
    assert err.reason == "invalid_response"
    assert "larger than 1000 bytes" in str(err)


def test_client_repr_hides_token():
    http = httpx.AsyncClient()
    assert TOKEN not in repr(ApiClient(http, base_url=BASE, token=TOKEN))


# --- listings (issue 11): page size and base learned from offsets, partial paging, bad items ---

ACC, APP = KEY.account_id, KEY.app_id
PAGING_FIELDS = ("total_count", "start_offset", "end_offset")


def live(n: int, prefix: str = "m") -> list[dict[str, Any]]:
    return [{**LIVE, "id": f"s-{prefix}{i}", "associated_id": f"{prefix}{i}"} for i in range(n)]


class Pages:
    """Serves ``/sessions`` from ``live`` under one server convention: pages counted from
    ``base`` (a base-1 server reads page 0 as page 1), at most ``cap`` items per page, and only
    the ``paging`` fields named (none: no ``paging`` at all)."""

    def __init__(
        self,
        live: list[dict[str, Any]],
        *,
        base: int = 1,
        cap: int | None = None,
        fields: tuple[str, ...] = PAGING_FIELDS,
    ) -> None:
        self.live, self.base, self.cap, self.fields = live, base, cap, fields
        self.asked: list[int] = []
        self.before_page: Callable[[int], None] = lambda page_no: None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        page_no = int(request.url.params["page_no"])
        per_page = int(request.url.params["per_page"])
        self.asked.append(page_no)
        self.before_page(page_no)
        size = min(per_page, self.cap or per_page)
        index = max(page_no, self.base) - self.base
        items = self.live[index * size : (index + 1) * size]
        start = index * size + 1 if items else 0
        paging = {
            "total_count": len(self.live),
            "start_offset": start,
            "end_offset": start + len(items) - 1 if items else 0,
        }
        body: dict[str, Any] = {"success": True, "data": {"sessions": items}}
        if self.fields:
            body["paging"] = {k: v for k, v in paging.items() if k in self.fields}
        return answering(200, body)(request)


def walk(handler: Any, *, per_page: int = 100, max_pages: int = 50, walks: int = 1) -> list[Any]:
    """``walks`` listings in a row with one client (which remembers what it learned)."""

    async def go() -> list[Any]:
        http = make_http_client(
            timeout_seconds=1, max_connections=2, transport=httpx.MockTransport(handler)
        )
        async with http:
            client = ApiClient(http, base_url=BASE, token=TOKEN)
            client.limiter = RateLimiter(10**9, 1)
            return [
                await client.list_live_sessions(ACC, APP, per_page=per_page, max_pages=max_pages)
                for _ in range(walks)
            ]

    return asyncio.run(go())


def ids(listing: Any) -> list[str]:
    return [s.associated_id for s in listing.sessions]


def test_a_page_cap_below_per_page_still_lists_every_session():
    api = Pages(live(250), cap=25)
    (got,) = walk(api, per_page=100)
    assert ids(got) == [f"m{i}" for i in range(250)]
    assert (got.total_count, got.pages, got.complete, got.invalid) == (250, 10, True, [])
    assert api.asked == list(range(1, 11))


def test_the_real_page_size_is_learned_from_offsets_not_from_per_page():
    async def go() -> tuple[int | None, int | None]:
        http = make_http_client(
            timeout_seconds=1,
            max_connections=2,
            transport=httpx.MockTransport(Pages(live(60), cap=25)),
        )
        async with http:
            client = ApiClient(http, base_url=BASE, token=TOKEN, limiter=RateLimiter(10**9, 1))
            before = client.page_size(ACC, APP)
            await client.list_live_sessions(ACC, APP, per_page=100, max_pages=9)
            return before, client.page_size(ACC, APP)

    assert asyncio.run(go()) == (None, 25)


def test_pages_from_zero_with_everything_on_page_zero_are_found_and_remembered():
    api = Pages(live(5), base=0)
    first, second = walk(api, walks=2)
    assert ids(first) == ids(second) == [f"m{i}" for i in range(5)]
    assert first.complete and second.complete
    assert api.asked == [1, 0, 0]  # page 1 came back empty with total 5; next walk starts at 0
    assert (first.pages, second.pages) == (2, 1)


def test_pages_from_zero_over_several_pages_keep_the_api_order():
    api = Pages(live(12), base=0, cap=5)
    (got,) = walk(api, per_page=10)
    assert ids(got) == [f"m{i}" for i in range(12)]  # page 0 first, though read second
    assert got.complete and api.asked == [1, 0, 2]


def test_a_remembered_base_is_rechecked_when_it_stops_adding_up():
    api = Pages(live(5), base=0)

    def switch(page_no: int) -> None:
        if len(api.asked) == 3:  # from the second walk on, pages count from 1 (0 reads as 1)
            api.base = 1

    api.before_page = switch
    walks = walk(api, per_page=3, walks=3)
    assert [ids(w) for w in walks] == [[f"m{i}" for i in range(5)]] * 3
    assert all(w.complete for w in walks)
    # walk 1 learns base 0; walk 2 starts at 0, and page 1 restarting at item 1 tells base 1
    assert api.asked == [1, 0, 0, 1, 2, 1, 2]  # walks: [1, 0], [0, 1, 2], [1, 2]


def knowable(fields: tuple[str, ...], n: int, base: int, cap: int | None) -> bool:
    """Whether any answer tells the convention apart from a shorter list. Not so: a cap without
    any paging (a capped page looks like the last one), and pages from 0 with neither a count
    nor — when all fits on page 0 — a page 1 that starts past item 1."""
    if cap is not None and not fields:
        return False
    return base == 1 or "total_count" in fields or (n > 7 and "start_offset" in fields)


CONVENTIONS = [
    (fields, n, base, cap)
    for fields in [
        (),
        ("total_count",),
        ("start_offset", "end_offset"),
        ("end_offset",),
        PAGING_FIELDS,
    ]
    for n in [0, 1, 6, 7, 8, 28]  # 0, 1, cap - 1, cap, cap + 1, 3 x cap + 7
    for base, cap in [(1, None), (1, 7), (0, None), (0, 7)]
    if knowable(fields, n, base, cap)
]


@pytest.mark.parametrize(("fields", "n", "base", "cap"), CONVENTIONS)
def test_every_convention_lists_every_session_once(
    fields: tuple[str, ...], n: int, base: int, cap: int | None
):
    per_page = 10 if cap else 7  # a cap is below what is asked
    api = Pages(live(n), base=base, cap=cap, fields=fields)
    (got,) = walk(api, per_page=per_page)
    assert ids(got) == [f"m{i}" for i in range(n)]
    assert got.complete
    assert got.pages == len(api.asked) <= -(-n // 7) + 3  # pages needed, and at most 3 more


def test_paging_fields_mistyped_count_as_missing():
    def handler(request: httpx.Request) -> httpx.Response:
        items = live(3) if request.url.params["page_no"] == "1" else []
        data = json.dumps({"sessions": items})
        paging = '{"total_count": "3", "start_offset": true, "end_offset": 1e400}'
        body = f'{{"success": true, "data": {data}, "paging": {paging}}}'.encode()
        return answering(200, body)(request)

    (got,) = walk(handler, per_page=3)
    assert ids(got) == ["m0", "m1", "m2"]
    assert (got.total_count, got.complete, got.pages) == (None, True, 2)  # ended on an empty page


def test_a_session_moving_across_a_page_boundary_counts_once():
    api = Pages(live(6), cap=3)

    def start_one(page_no: int) -> None:
        if page_no == 2:
            api.live.insert(0, live(1, "new")[0])  # shifts m2 onto page 2 as well

    api.before_page = start_one
    (got,) = walk(api, per_page=3)
    assert ids(got) == [f"m{i}" for i in range(6)]  # m2 read twice, listed once
    assert (got.total_count, got.complete) == (7, False)  # new0 sorted onto a page already read


def test_max_pages_is_a_hard_bound_on_requests():
    api = Pages(live(100), cap=5)
    (got,) = walk(api, per_page=100, max_pages=3)
    assert (got.pages, len(api.asked), len(got.sessions), got.complete) == (3, 3, 15, False)


def test_a_walk_short_of_total_count_is_incomplete():
    api = Pages(live(6), cap=3)

    def end_one(page_no: int) -> None:
        if page_no == 2:
            del api.live[0]  # m0 ends; m3 slips onto page 1, already read

    api.before_page = end_one
    (got,) = walk(api, per_page=3)
    assert ids(got) == ["m0", "m1", "m2", "m4", "m5"]  # as many as total_count says...
    assert (got.total_count, got.complete) == (5, False)  # ...but the count moved: not complete


def test_a_malformed_session_is_skipped_and_reported_the_others_count():
    items = live(3)
    del items[1]["status"]
    items.append({"associated_id": "../etc", "status": "LIVE"})
    body = {
        "success": True,
        "data": {"sessions": items},
        "paging": {"total_count": 4, "start_offset": 1, "end_offset": 4},
    }
    (got,) = walk(answering(200, body))
    assert ids(got) == ["m0", "m2"]
    assert got.invalid == [
        InvalidSession(1, 1, "m1", "required field data.sessions[1].status is missing"),
        InvalidSession(3, 1, None, "required field data.sessions[3].id is missing"),
    ]
    assert (got.complete, got.pages) == (True, 1)  # every listed session was seen


def test_an_unknown_status_in_a_listing_is_an_invalid_session_naming_the_value():
    items = live(2)
    items[0]["status"] = "PAUSED"
    (got,) = walk(answering(200, {"success": True, "data": {"sessions": items}}), per_page=5)
    assert ids(got) == ["m1"]
    (bad,) = got.invalid
    assert (bad.meeting_id, bad.message) == (
        "m0",
        "required field data.sessions[0].status is not LIVE or ENDED: 'PAUSED'",
    )


# --- 404s (issue 11): "no active session" only when the message says so ---------------------


@pytest.mark.parametrize(
    "message",
    ["No active session found for meeting_id m-1", "no ACTIVE session", "No active session found"],
)
def test_404_saying_no_active_session_is_the_empty_meeting(message: str):
    body = {"success": False, "error": {"code": 404, "message": message}}
    assert fetch(answering(404, body)) is NO_ACTIVE_SESSION


@pytest.mark.parametrize(
    "body",
    [
        {"success": False, "error": {"code": 404, "message": "Meeting not found"}},
        {"success": False, "error": {"code": 404}},
        None,
    ],
)
def test_any_other_404_is_not_found_with_the_apis_message(body: Any):
    err = fail_reason(answering(404, body))
    assert (err.reason, err.status) == ("not_found", 404)
    if body and "message" in body["error"]:
        assert str(err) == "Meeting not found"


def test_a_404_listing_is_not_found():
    with pytest.raises(ApiError) as info:
        walk(answering(404, {"success": False, "error": {"code": 404, "message": "App not found"}}))
    assert (info.value.reason, str(info.value)) == ("not_found", "App not found")


def test_not_found_is_appended_to_the_reasons():
    assert REASONS[-1] == "not_found" and REASONS[:7] == (
        "timeout",
        "connect",
        "rate_limited",
        "auth",
        "http_4xx",
        "http_5xx",
        "invalid_response",
    )
