"""Golden end to end (in process): fixed API answers in, exact /metrics text out, promtool clean.

The API is faked at the transport; everything from the client to the exposition is real. To
update the golden file after an intended change: ``RTK_UPDATE_GOLDEN=1 pytest tests/test_golden.py``
and review the diff.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CollectorRegistry, generate_latest

from exporter.client import ApiClient, make_http_client
from exporter.collector import MeetingCollector
from exporter.config import MetricsOptions
from exporter.health import Health
from exporter.limiter import RateLimiter
from exporter.logs import FailureLog
from exporter.model import MeetingKey
from exporter.poller import Poller, PollPlan
from exporter.store import Store
from tests.support.api import LIVE, TOKEN, reply
from tests.support.tools import require_binary

GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"
#: The same with ``metrics: {display_name: false}``: no meeting_display_name anywhere.
GOLDEN_WITHOUT_NAME = Path(__file__).parent / "golden" / "metrics_without_display_name.txt"
ACC, APP = "023e105f4ecef8ad9ca31a8372d0c353", "6f0a8a2c3b8e4f62a1d2c3b4e5f60718"
T0 = 1795849800.0  # 2026-11-28T07:10:00Z


def session(**kw: Any) -> dict[str, Any]:
    """The client tests' LIVE session, as meeting m-live's, with ``kw`` changed."""
    return LIVE | {"id": "sess-live", "associated_id": "m-live"} | kw


NO_SESSION = (404, {"success": False, "error": {"code": 404, "message": "No active session"}})
# meeting id -> the answers of its successive polls
ANSWERS: dict[str, list[tuple[int, Any]]] = {
    "m-live": [(200, {"success": True, "data": session()})],
    "m-ended": [
        (
            200,
            {
                "success": True,
                "data": session(
                    id="sess-ended",
                    status="ENDED",
                    live_participants=0,
                    minutes_consumed=30,
                    ended_at="null",
                    type="livestream",
                ),
            },
        )
    ],
    "m-empty": [NO_SESSION],
    "m-broken": [(500, {"success": False, "errors": [{"code": 1, "message": "boom"}]})],
    "m-failing": [(200, {"success": True, "data": session(id="sess-f")}), (503, b"")],
    "m-limited": [NO_SESSION, (429, {"success": False, "errors": [{"code": 971, "message": "x"}]})],
    "m-escape": [
        (
            200,
            {
                "success": True,
                "data": session(
                    id="sess-e",
                    meeting_display_name='Ünïcode "quoted" back\\slash\nnewline',
                    max_concurrent_participants="n/a",
                    started_at="null",
                    minutes_consumed=None,
                ),
            },
        )
    ],
}
LABELS = {"m-live": (("team", "sales"),), "m-escape": (("floor", "3"), ("team", "eng"))}


def render(display_name: bool = True) -> str:
    queues = {meeting: list(answers) for meeting, answers in ANSWERS.items()}

    def handler(request: httpx.Request) -> httpx.Response:
        queue = queues[request.url.path.split("/")[-2]]
        status, body = queue.pop(0) if len(queue) > 1 else queue[0]  # the last answer sticks
        return reply(status, body, content_type="application/json")

    now = [T0]
    ticks = iter(i * 0.125 for i in range(1000))
    store = Store()
    keys = [MeetingKey(ACC, APP, m) for m in ANSWERS]
    store.set_targets({k: LABELS.get(k.meeting_id, ()) for k in keys})

    async def go() -> None:
        http = make_http_client(
            timeout_seconds=5, max_connections=4, transport=httpx.MockTransport(handler)
        )
        unlimited = RateLimiter(10**9, 1)
        client = ApiClient(
            http, base_url="https://api.test/client/v4", token=TOKEN, limiter=unlimited
        )
        poller = Poller(
            scheduler=AsyncIOScheduler(),
            store=store,
            health=Health(),
            failures=FailureLog(clock=lambda: now[0]),
            clock=lambda: now[0],
            timer=lambda: next(ticks),
        )
        poller.schedule(PollPlan(dict.fromkeys(keys, client), 30, 300, asyncio.Semaphore(1)))
        for when in (T0 - 100, T0 - 70):  # two rounds; meetings with one answer poll once
            now[0] = when
            for key in keys:
                if when == T0 - 100 or len(ANSWERS[key.meeting_id]) > 1:
                    await poller.poll_meeting(key)
        await http.aclose()

    asyncio.run(go())
    options = {(ACC, APP): MetricsOptions(display_name=display_name)}
    out = []
    for title, at in (("70 s after the first round", T0 - 30), ("100 s after: stale", T0)):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(
            MeetingCollector(
                store,
                stale_after_seconds=lambda: 90,
                options=lambda: options,
                clock=lambda at=at: at,
            )
        )
        out.append(f"# --- {title}\n" + generate_latest(registry).decode())
    return "".join(out)


@pytest.mark.parametrize("display_name", [True, False])
def test_golden_metrics(display_name: bool):
    text = render(display_name)
    golden = GOLDEN if display_name else GOLDEN_WITHOUT_NAME
    if os.environ.get("RTK_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert text == golden.read_text()


def test_display_name_false_removes_only_the_title():
    with_name, without = render(True).splitlines(), render(False).splitlines()
    changed = [(a, b) for a, b in zip(with_name, without, strict=True) if a != b]
    assert changed and "meeting_display_name" not in render(False)
    for a, b in changed:
        assert a.startswith("realtimekit_session_info{")
        assert re.sub(r',meeting_display_name="(?:[^"\\]|\\.)*"', "", a) == b


@pytest.mark.parametrize("display_name", [True, False])
@pytest.mark.process
def test_golden_output_passes_promtool(display_name: bool):
    promtool = require_binary("promtool")
    for part in render(display_name).split("# --- ")[1:]:
        body = part.split("\n", 1)[1]
        proc = subprocess.run(
            [promtool, "check", "metrics"], input=body, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr
