"""The status page and the config page: pure renders, then a real headless Chromium loading them."""

from __future__ import annotations

import re
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.config import Config, parse_config
from exporter.errors import ApiError
from exporter.health import Health
from exporter.limiter import RateLimiter
from exporter.model import NO_ACTIVE_SESSION, MeetingKey, Session
from exporter.status import classify, config_page, redact, status_page
from exporter.store import MeetingState, Store
from tests.support.page import StatusPage
from tests.support.process import demo as demo_process
from tests.support.process import wait_for
from tests.support.tools import require_tool

ACCOUNT, APP, DISCO = "acc1", "app1", "app2"
NOW = 1_700_000_000.0
EVIL_NAME = '<script>alert("x")</script>'
EVIL_LABEL = "a\"b&c<d>'e"
FAKE_TOKEN = "fake-token-0a1b2c3d4e5f6a7b8c9d"
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+).*token (demo-\w+)", re.S)
MARKER = 'content="realtimekit-exporter status page"'


def make_config(**app: Any) -> Config:
    return parse_config(
        {
            "api": {"token_env": "MY_RTK_TOKEN"},
            "apps": [
                {
                    "account_id": ACCOUNT,
                    "app_id": APP,
                    "meetings": [{"id": "m-evil", "labels": {"team": EVIL_LABEL}}],
                    **app,
                },
                {"account_id": ACCOUNT, "app_id": DISCO, "discover": {"enabled": True}},
            ],
        }
    )


def session(name: str | None = "Weekly sync", live: float = 3, status: str = "LIVE") -> Session:
    return Session(
        id="s-" + (name or "x")[:4],
        status=status,
        live_participants=live,
        meeting_display_name=name,
        started_at=NOW - 600,
    )


def state(answer: Any = None, *, up: bool | None = True, age: float = 1, errors: int = 0) -> Any:
    """A MeetingState as a real Store leaves it after polls with these outcomes."""
    store, key = Store(), MeetingKey(ACCOUNT, APP, "m")
    store.set_targets({key: ()})
    for _ in range(errors):
        store.record(key, ApiError("http_5xx", "HTTP 500"), 0.2, NOW - age)
    if answer is not None:
        store.record(key, answer, 0.05, NOW - age)
    if up is False:
        store.record(key, ApiError("timeout", "timed out"), 4.0, NOW)
    return store.get(key)


def page(states: dict[MeetingKey, MeetingState], health: Health | None = None, **kw: Any) -> str:
    return status_page(
        states=states,
        health=(health or Health(clock=lambda: NOW)).snapshot(),
        config=kw.pop("config", make_config()),
        now=NOW,
        stale_after=90,
        version="9.9.9",
        telemetry_path="/metrics",
        **kw,
    )


def keys(prefix: str, n: int) -> list[MeetingKey]:
    return [MeetingKey(ACCOUNT, APP, f"{prefix}{i}") for i in range(n)]


def mixed() -> dict[MeetingKey, MeetingState]:
    """3 failing, 4 live, 3 idle meetings, inserted idle first."""
    states = {k: state(NO_ACTIVE_SESSION) for k in keys("idle", 3)}
    states |= {k: state(session(live=i + 1)) for i, k in enumerate(keys("live", 4))}
    states |= {k: state(session(), up=False, errors=i) for i, k in enumerate(keys("fail", 3))}
    return states


# -- unit -----------------------------------------------------------------------------------------


def test_classify() -> None:
    assert classify(state(session()), NOW, 90)[0] == "live"
    assert classify(state(session(status="ENDED", live=0)), NOW, 90)[0] == "idle"
    assert classify(state(NO_ACTIVE_SESSION), NOW, 90) == ("idle", NO_ACTIVE_SESSION)
    assert classify(state(session(), age=91), NOW, 90) == ("unknown", None)
    assert classify(MeetingState(), NOW, 90) == ("unknown", None)
    kind, answer = classify(state(session(), up=False), NOW, 90)
    assert kind == "failing" and isinstance(answer, Session)  # last values still exported


def test_failing_first_then_live_then_idle() -> None:
    parsed = StatusPage(page(mixed()))
    kinds = [cls for cls, _ in parsed.rows]
    assert kinds == ["failing"] * 3 + ["live"] * 4 + ["idle"] * 3
    ids = [cells[1] for _, cells in parsed.rows]
    # Among failing the most errors first, among live the most participants first.
    assert ids[:3] == [f"fail{i}app {APP}" for i in (2, 1, 0)]
    assert ids[3:7] == [f"live{i}app {APP}" for i in (3, 2, 1, 0)]
    fail2 = parsed.rows[0][1]
    assert "last poll failed" in fail2[6] and "http_5xx ×2" in fail2[6] and "timeout ×1" in fail2[6]
    assert fail2[3] == "3"  # the last good values, still fresh
    assert "1 s ago" in fail2[4] and fail2[5] == "4.000 s"


def test_limit_and_counts_of_the_rest() -> None:
    text = page(mixed(), limit=4)
    parsed = StatusPage(text)
    assert [cls for cls, _ in parsed.rows] == ["failing"] * 3 + ["live"]
    assert "… and 6 more (0 failing, 3 live, 3 idle)" in text
    assert "10 exported: 3 failing, 4 live, 3 idle." in text
    assert "more (" not in page(mixed(), limit=10)
    never_polled = {k: MeetingState() for k in keys("new", 3)}
    assert "… and 2 more (0 failing, 0 live, 0 idle, 2 unknown)" in page(never_polled, limit=1)


def test_values_are_escaped_and_there_is_no_script() -> None:
    key = MeetingKey(ACCOUNT, APP, "m-evil")
    evil = replace(state(session(EVIL_NAME)), labels=(("team", EVIL_LABEL),))
    text = page({key: evil})
    assert "<script" not in text.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert "a&quot;b&amp;c&lt;d&gt;&#x27;e" in text
    parsed = StatusPage(text)
    assert "script" not in parsed.tags
    (_, cells) = parsed.rows[0]
    assert cells[2] == f'team="{EVIL_LABEL}"' and cells[7].startswith(EVIL_NAME)


def test_paused_token_is_shown() -> None:
    clock = [100.0]
    limiter = RateLimiter(1200, 300, clock=lambda: clock[0], wall=lambda: NOW + clock[0] - 100)
    health = Health(clock=lambda: NOW)
    health.set_budgets([limiter], 30)
    assert "Not rate limited." in page({}, health)
    limiter.pause(42)
    text = page({}, health)
    assert "paused until 2023-11-14 22:14:02 UTC (42 s from now)" in text
    assert f"Budget {limiter.per_second:.2f} req/s" in text


def test_apps_show_mode_interval_demand_and_discovery_health() -> None:
    health = Health(clock=lambda: NOW)
    health.set_effective_intervals({(ACCOUNT, APP): 45.0})
    health.set_discovering({(ACCOUNT, DISCO): 30.0})
    health.update_app(
        (ACCOUNT, DISCO),
        lambda a: replace(a, up=True, live_sessions=150, pages=9, errors={"timeout": 2}),
    )
    health.requests.finished("200", 0.1)
    health.requests.finished("429", 0.1)
    states = {k: state(NO_ACTIVE_SESSION) for k in keys("m", 9)}
    text = page(states, health)
    apps = re.search(r"<h2>Apps</h2>(.*?)</table>", text, re.S)
    assert apps is not None
    row_plain, row_disco = apps.group(1).split("<tr>")[2:]
    assert "per meeting" in row_plain and "every 45 s (configured 30 s)" in row_plain
    assert "0.20 req/s" in row_plain and "$MY_RTK_TOKEN" in row_plain  # 9 meetings / 45 s
    assert "discovery" in row_disco and "every 30 s<" in row_disco
    assert "up, 150 live sessions" in row_disco and "9 pages read" in row_disco
    assert "errors: timeout ×2" in row_disco and "0.07 req/s" in row_disco  # 2 pages / 30 s
    assert "Requests sent 2: 200 ×1, 429 ×1" in text
    assert 'href="/metrics"' in text and 'href="/config"' in text and 'href="/-/ready"' in text


def test_no_token_on_either_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MY_RTK_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", FAKE_TOKEN)
    token_file = tmp_path / "token"
    token_file.write_text(FAKE_TOKEN)
    config = make_config(token_file=str(token_file))
    text = config_page(config)
    assert FAKE_TOKEN not in text and FAKE_TOKEN not in page(mixed(), config=config)
    assert "token_env: MY_RTK_TOKEN" in text and f"token_file: {token_file}" in text
    # nothing of the config is lost; defaults are shown as the values in force
    expected = config.model_dump(mode="json")
    expected["poll"]["stale_after_seconds"] = config.poll.stale_after
    if expected["api"]["token_env"] is None and expected["api"]["token_file"] is None:
        expected["api"]["token_env"] = "CLOUDFLARE_API_TOKEN"
    assert parse_config(yaml.safe_load(text)).model_dump(mode="json") == expected


def test_redact_secret_keys_at_any_depth() -> None:
    data = {
        "coordination": {"redis": {"url": "redis://r:6379", "password": "hunter2"}},
        "clients": [{"client_secret": "s3", "name": "x"}, {"Private_Key": "k"}],
        "token": "abc",
        "api_token": "def",
        "token_env": "CLOUDFLARE_API_TOKEN",
        "token_file": "/run/secrets/token",
        "basic_auth_password": None,
        "secret": "",
    }
    assert redact(data) == {
        "coordination": {"redis": {"url": "redis://r:6379", "password": "<secret>"}},
        "clients": [{"client_secret": "<secret>", "name": "x"}, {"Private_Key": "<secret>"}],
        "token": "<secret>",
        "api_token": "<secret>",
        "token_env": "CLOUDFLARE_API_TOKEN",
        "token_file": "/run/secrets/token",
        "basic_auth_password": None,
        "secret": "",
    }
    assert data["token"] == "abc"  # a copy: the input is untouched


# -- a real browser -------------------------------------------------------------------------------


def chromium(url: str, tmp: Path) -> tuple[str, bytes]:
    """The DOM headless Chromium renders of ``url``, and a 1280x900 screenshot of it (PNG)."""
    binary = require_tool("chromium", hint="apt-get install chromium")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
    ]
    dom = _run([binary, *flags, "--dump-dom", url]).decode()
    shot = tmp / "s.png"
    _run([binary, *flags, f"--screenshot={shot}", "--window-size=1280,900", url])
    return dom, shot.read_bytes()


def _run(command: list[str]) -> bytes:
    done = subprocess.run(command, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout


def assert_png(data: bytes, size: tuple[int, int] = (1280, 900)) -> None:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == size
    assert len(data) > 5000  # a rendered page, not a blank one


def assert_rendered(dom: str, meeting_ids: list[str]) -> None:
    parsed = StatusPage(dom)
    assert "script" not in parsed.tags, "the page has a script element"
    assert MARKER in dom
    shown = {cells[1] for _, cells in parsed.rows}
    for meeting_id in meeting_ids:
        assert any(cell.startswith(meeting_id) for cell in shown), meeting_id


@pytest.mark.process
def test_chromium_renders_a_page_of_a_real_store(tmp_path: Path) -> None:
    config = make_config()
    now = time.time()
    store, health = Store(), Health()
    store.set_targets(config.targets())
    evil = MeetingKey(ACCOUNT, APP, "m-evil")
    found = {MeetingKey(ACCOUNT, DISCO, f"d{i}"): () for i in range(3)}
    outcomes = [session(EVIL_NAME), NO_ACTIVE_SESSION, ApiError("auth", "HTTP 401")]
    store.merge(add=found, record=[(k, o, 0.1, now) for k, o in zip(found, outcomes, strict=True)])
    store.record(evil, session(EVIL_NAME, live=5), 0.05, now)
    text = status_page(
        states=store.snapshot()[1],
        health=health.snapshot(),
        config=config,
        now=now,
        stale_after=config.poll.stale_after,
        version="0.0.0",
        telemetry_path="/metrics",
    )
    (tmp_path / "status.html").write_text(text, encoding="utf-8")
    dom, png = chromium((tmp_path / "status.html").as_uri(), tmp_path)
    assert_rendered(dom, ["m-evil", "d0", "d1", "d2"])
    assert '&lt;script&gt;alert("x")&lt;/script&gt;' in dom  # shown as text
    assert_png(png)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real ``python -m exporter --demo``: its base URL and its simulator's token."""
    with demo_process(tmp_path / "demo.log", ready="(?s)" + LISTENING.pattern) as process:
        found = LISTENING.search(process.log())
        assert found, process.log()
        base = f"http://127.0.0.1:{found.group(1)}"
        wait_for(lambda: httpx.get(base + "/-/ready", timeout=5).status_code == 200, timeout=30)
        yield base, found.group(2)


@pytest.mark.process
def test_chromium_renders_the_live_status_page(demo: tuple[str, str], tmp_path: Path) -> None:
    base, token = demo
    landing = httpx.get(base + "/", timeout=10).text
    if MARKER not in landing:
        pytest.skip("/ does not serve exporter.status.status_page yet (not wired into server.py)")
    metrics = httpx.get(base + "/metrics", timeout=10).text
    ids = sorted(set(re.findall(r'realtimekit_up\{[^}]*meeting_id="([^"]+)"', metrics)))
    assert len(ids) == 6, metrics[:2000]
    assert token not in landing and token not in httpx.get(base + "/config", timeout=10).text
    dom, png = chromium(base + "/", tmp_path)
    assert_rendered(dom, ids)
    assert_png(png)
