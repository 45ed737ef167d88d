"""The client and parsers, with the network faked at the transport (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from exporter.client import ApiClient, make_http_client
from exporter.errors import ApiError
from exporter.model import NO_ACTIVE_SESSION, MeetingKey, Session, parse_timestamp

from .conftest import TOKEN

KEY = MeetingKey("023e105f4ecef8ad9ca31a8372d0c353", "6f0a8a2c3b8e4f62a1d2c3b4e5f60718", "m-1")
BASE = "https://api.example.test/client/v4"

LIVE = {
    "id": "sess-1",
    "associated_id": "m-1",
    "created_at": "2026-11-28T07:00:00.000Z",
    "live_participants": 3,
    "max_concurrent_participants": 5,
    "meeting_display_name": "Weekly sync",
    "minutes_consumed": 12.5,
    "organization_id": "org",
    "started_at": "2026-11-28T07:00:00.000Z",
    "status": "LIVE",
    "type": "meeting",
    "updated_at": "2026-11-28T07:10:00.000Z",
    "breakout_rooms": [],
    "meta": {},
}
NO_SESSION_BODY = {"success": False, "error": {"code": 404, "message": "No active session found"}}
CF_ERROR = {
    "success": False,
    "errors": [{"code": 10000, "message": "Authentication error"}],
    "messages": [],
    "result": None,
}


def reply(status: int, body: Any = None, *, content_type: str = "application/json", **kw: Any):
    def handler(request: httpx.Request) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content, headers={"content-type": content_type}, **kw)

    return handler


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
        return reply(200, {"success": True, "data": LIVE})(request)

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
    )
    (request,) = seen
    assert request.method == "GET"
    assert str(request.url) == (
        f"{BASE}/accounts/{KEY.account_id}/realtime/kit/{KEY.app_id}/meetings/m-1/active-session"
    )
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


def test_ended_session_keeps_its_status_and_accepts_ended_at():
    data = {**LIVE, "status": "ENDED", "live_participants": 0, "ended_at": "2026-11-28T08:00:00Z"}
    got = fetch(reply(200, {"success": True, "data": data}))
    assert isinstance(got, Session)
    assert (got.status, got.live_participants) == ("ENDED", 0.0)


def test_404_in_realtimekit_envelope_means_no_active_session():
    assert fetch(reply(404, NO_SESSION_BODY)) is NO_ACTIVE_SESSION


def test_404_in_cloudflare_envelope_is_not_found_not_an_empty_meeting():
    body = {"success": False, "errors": [{"code": 7003, "message": "Could not route"}]}
    err = fail_reason(reply(404, body))
    assert (err.reason, err.status) == ("not_found", 404)  # issue 11: any other 404
    assert "Could not route" in str(err)


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize(
    "body", [CF_ERROR, {"success": False, "error": {"code": 401, "message": "x"}}]
)
def test_auth_failures(status: int, body: Any):
    assert fail_reason(reply(status, body)).reason == "auth"


def test_429_is_rate_limited_and_keeps_its_message():
    body = {"success": False, "errors": [{"code": 971, "message": "More than 1200 requests"}]}
    err = fail_reason(reply(429, body, content_type="application/json"))
    assert (err.reason, err.status) == ("rate_limited", 429)
    assert "More than 1200 requests" in str(err)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx(status: int):
    assert fail_reason(
        reply(status, b"<html>bad gateway</html>", content_type="text/html")
    ).reason == ("http_5xx")


def test_other_4xx():
    assert fail_reason(reply(400, CF_ERROR)).reason == "http_4xx"


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
    err = fail_reason(reply(200, b"{not json", content_type="application/json"))
    assert err.reason == "invalid_response"
    assert "not valid JSON" in str(err)


def test_wrong_content_type():
    err = fail_reason(reply(200, {"success": True, "data": LIVE}, content_type="text/html"))
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
    err = fail_reason(reply(200, {"success": True, "data": data}))
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
    got = fetch(reply(200, {"success": True, "data": data, "paging": {}}))
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
    got = fetch(reply(200, {"success": True, "data": data}))
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
    assert fail_reason(reply(200, body)).reason == "invalid_response"


def test_oversized_answer_is_cut_off():
    big = {"success": True, "data": {**LIVE, "meta": {"pad": "x" * 5000}}}
    err = fail_reason(reply(200, big), max_body_bytes=1000)
    assert err.reason == "invalid_response"
    assert "larger than 1000 bytes" in str(err)


def test_client_repr_hides_token():
    http = httpx.AsyncClient()
    assert TOKEN not in repr(ApiClient(http, base_url=BASE, token=TOKEN))
