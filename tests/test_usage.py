"""Usage (daywise analytics) and the webhook registration check, with the network faked at the
transport (httpx.MockTransport)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from exporter.client import ApiClient, RateLimiter, make_http_client
from exporter.config import App
from exporter.errors import ApiError
from exporter.usage import Account, RegistrationPull, needed_events
from tests.support.clock import FakeTime

BASE = "https://api.test/client/v4"
APP = ("acc", "app")
NOON = datetime(2026, 12, 5, 12, tzinfo=UTC).timestamp()
DAY = 86400.0


def daywise(**over: Any) -> dict[str, Any]:
    data = {
        "session_stats": {
            "sessions_count": 40,
            "sessions_minutes_consumed": 1000,
            "day_stats": [
                {"day": "2026-12-05", "total_sessions": 3, "total_session_minutes": 30},
                {
                    "day": "2026-12-04T00:00:00.000Z",
                    "total_sessions": 5,
                    "total_session_minutes": 50.5,
                },
            ],
        },
        "recording_stats": {
            "recording_count": 2,
            "recording_minutes_consumed": 12,
            "day_stats": [
                {"day": "2026-12-01 00:00:00", "total_recordings": 2, "total_recording_minutes": 12}
            ],
        },
    }
    data.update(over)
    return {"success": True, "data": data}


def run_pull(pull: Any, answer: httpx.Response, seen: list[httpx.Request] | None = None) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return answer

    async def go() -> None:
        http = make_http_client(
            timeout_seconds=1, max_connections=1, transport=httpx.MockTransport(handler)
        )
        async with http:
            await pull.run(ApiClient(http, base_url=BASE, token="t", limiter=RateLimiter(10**9, 1)))

    asyncio.run(go())


def values(account: Account) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels["period"]): s.value
        for m in account.collect()
        for s in m.samples
        if "period" in s.labels
    }


def app(**kw: Any) -> App:
    return App.model_validate(
        {"account_id": "acc", "app_id": "app", "meetings": [{"id": "m"}], **kw}
    )


def usage_account(clock: FakeTime) -> Account:
    account = Account(clock)
    account.plan([app(usage={"enabled": True})], None, 600)
    return account


def test_usage_reads_today_yesterday_and_30_days_as_seconds():
    clock = FakeTime(NOON)
    account = usage_account(clock)
    seen: list[httpx.Request] = []
    run_pull(account.usage[APP], httpx.Response(200, json=daywise()), seen)
    assert (
        seen[0].url.params["start_date"] == "2026-11-06"
        and seen[0].url.params["end_date"] == "2026-12-05"
    )
    got = values(account)
    assert got[("realtimekit_app_usage_sessions", "today")] == 3
    assert got[("realtimekit_app_usage_sessions", "yesterday")] == 5
    assert got[("realtimekit_app_usage_sessions", "last_30_days")] == 40
    assert got[("realtimekit_app_usage_session_seconds", "yesterday")] == 50.5 * 60
    assert got[("realtimekit_app_usage_recordings", "today")] == 0  # not listed: 0
    assert got[("realtimekit_app_usage_recording_seconds", "last_30_days")] == 12 * 60


def test_today_turns_over_at_utc_midnight_without_a_new_pull():
    clock = FakeTime(NOON)
    account = usage_account(clock)
    run_pull(account.usage[APP], httpx.Response(200, json=daywise()))
    clock.now = NOON + DAY / 2 + 1  # 00:00:01 the next day
    got = values(account)
    assert got[("realtimekit_app_usage_sessions", "today")] == 0
    assert got[("realtimekit_app_usage_sessions", "yesterday")] == 3


def test_missing_fields_are_zero_or_summed_never_a_failure():
    clock = FakeTime(NOON)
    account = usage_account(clock)
    bare = {
        "session_stats": {
            "day_stats": [{"day": "2026-12-05", "total_sessions": 2}, {"day": "junk"}, "x"]
        }
    }
    run_pull(account.usage[APP], httpx.Response(200, json={"success": True, "data": bare}))
    got = values(account)
    assert got[("realtimekit_app_usage_sessions", "last_30_days")] == 2  # no total: the days summed
    assert got[("realtimekit_app_usage_session_seconds", "today")] == 0
    assert got[("realtimekit_app_usage_recordings", "last_30_days")] == 0


def test_no_usage_series_before_the_first_answer_and_a_bad_answer_fails_the_pull():
    clock = FakeTime(NOON)
    account = usage_account(clock)
    assert values(account) == {}
    with pytest.raises(ApiError, match="data"):
        run_pull(account.usage[APP], httpx.Response(200, json={"success": True, "data": []}))


URL = "https://exporter.example/"


def registrations(*items: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"success": True, "data": list(items)})


def reg(
    url: str = "https://exporter.example/webhooks/acc/app/",
    enabled: bool = True,
    events: Any = None,
) -> dict:
    events = ["meeting.started", "meeting.ended"] if events is None else events
    return {"id": "w1", "name": "n", "url": url, "enabled": enabled, "events": events}


def check_of(**kw: Any) -> RegistrationPull:
    account = Account(lambda: NOON)
    account.plan([app(webhooks={"enabled": True}, **kw)], URL, 600)
    return account.registrations[APP]


@pytest.mark.parametrize(
    ("answer", "registered", "said"),
    [
        (registrations(reg()), True, None),
        (registrations(reg(url="https://exporter.example/webhooks/acc/app")), True, None),
        (registrations(), False, "no registration for https://exporter.example/webhooks/acc/app"),
        (registrations(reg(url="https://other/webhooks/acc/app")), False, "no registration"),
        (registrations(reg(enabled=False)), False, "is disabled"),
        (registrations(reg(events=["meeting.started"])), False, "lacks event(s) meeting.ended"),
    ],
)
def test_the_registration_rule(answer, registered, said, caplog):
    check = check_of()
    with caplog.at_level("INFO", logger="exporter.usage"):
        run_pull(check, answer)
        run_pull(check, answer)
    assert check.registered is registered
    lines = [r.getMessage() for r in caplog.records]
    if said is None:
        assert lines == []
    else:
        assert len(lines) == 1 and said in lines[0]  # once per change, not per check


def test_recordings_and_livestreams_need_their_events_too():
    check = check_of(recordings={"enabled": True}, livestreams={"enabled": True})
    assert check.events == needed_events(
        app(recordings={"enabled": True}, livestreams={"enabled": True})
    )
    run_pull(check, registrations(reg()))
    assert check.registered is False
    run_pull(check, registrations(reg(events=[*sorted(check.events)])))
    assert check.registered is True


def test_a_403_fails_the_check_without_changing_what_is_known():
    check = check_of()
    run_pull(check, registrations(reg()))
    with pytest.raises(ApiError) as err:
        run_pull(
            check, httpx.Response(403, json={"success": False, "error": {"message": "forbidden"}})
        )
    assert err.value.reason == "auth" and check.registered is True


def test_apps_without_webhooks_or_without_a_public_url_are_not_checked():
    account = Account(lambda: NOON)
    assert account.plan([app(webhooks={"enabled": True})], None, 600) == []
    assert account.plan([app()], URL, 600) == []
