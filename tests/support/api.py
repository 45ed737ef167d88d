"""The RealtimeKit API as the tests fake it: the token, answers for ``httpx.MockTransport``, the
client tests' meeting and session, a config for a simulator, and a Discovery not yet started."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from exporter.model import MeetingKey

TOKEN = "test-token-Sn3lZJTBX6kkg7OdcBUAxOO963GEIyGQ"
NO_SESSION_BODY = {
    "success": False,
    "error": {"code": 404, "message": "No active session found for meeting_id m"},
}

#: The client tests' meeting, API base and LIVE session (``data`` of an active-session answer).
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


def answering(
    status: int, body: Any = None, *, content_type: str = "application/json", **kw: Any
) -> Callable[[httpx.Request], httpx.Response]:
    """A MockTransport handler giving every request the one answer: ``body`` as JSON (``None``
    is ``null``) or bytes as they are; ``kw`` goes to ``httpx.Response``."""

    def handler(request: httpx.Request) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content, headers={"content-type": content_type}, **kw)

    return handler


def sim_config(sim: Any, meetings: list[Any] | None = None, **poll: Any) -> dict[str, Any]:
    """An exporter config watching ``sim``'s meetings (or ``meetings``), polling every second."""
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
