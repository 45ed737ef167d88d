"""The client against hostile or broken answers (issue 13) and Cloudflare's documented rate-limit
headers (issue 11): the network faked at the transport, clocks faked for the limiter."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from exporter.client import ApiClient, make_http_client
from exporter.errors import ApiError
from exporter.limiter import RateLimiter
from exporter.model import TRUNCATED, Session
from tests.support.api import BASE, KEY, LIVE, TOKEN, answering
from tests.support.clock import FakeTime

# --- rate-limit headers ------------------------------------------------------------------------


def limiter(c: FakeTime, requests: int = 30, period: float = 10) -> RateLimiter:
    return RateLimiter(requests, period, clock=c.clock, wall=c.wall, sleep=c.sleep)


def pause_after(status: int, headers: dict[str, str], *, period: float = 10) -> float:
    """Seconds the limiter pauses after one answer with these headers (0: no pause)."""
    c = FakeTime()
    lim = limiter(c, period=period)
    lim.observe(status, httpx.Headers({k: v.encode("latin-1") for k, v in headers.items()}))
    until = lim.paused_until_wall()
    assert math.isfinite(until)
    return until - c.wall() if until else 0.0


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(FakeTime().wall() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("status", "headers", "pause"),
    [
        (200, {"Ratelimit": '"default";r=50;t=30, "burst";r=0;t=5'}, 5.0),
        (200, {"Ratelimit": '"burst";r=0;t=5, "default";r=0;t=30'}, 30.0),  # longest t wins
        (200, {"Ratelimit": '"default";r=50;t=30, "burst";r=2;t=5'}, 0.0),
        (429, {"Ratelimit": '"default";r=50;t=30, "burst";r=0;t=5'}, 5.0),
        (200, {"Ratelimit": '"default";t=8;r=0'}, 8.0),  # parameters in any order
        (200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": http_date(20)}, 20.0),
        (200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(FakeTime().wall() + 9)}, 9.0),
        (200, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": http_date(-20)}, 0.0),  # past
        (429, {"Retry-After": http_date(42)}, 42.0),
        (429, {"Retry-After": "0"}, 1.0),  # at least a second
    ],
)
def test_documented_rate_limit_headers(status: int, headers: dict[str, str], pause: float):
    assert pause_after(status, headers) == pytest.approx(pause, abs=1.0)


@pytest.mark.parametrize(
    ("headers", "pause"),
    [
        ({"Retry-After": "1000000000"}, 300.0),  # at most max(period, Cloudflare's 5 minutes)
        ({"Retry-After": "1e9"}, 300.0),
        ({"Retry-After": "inf"}, 10.0),  # unreadable: no hint, so the whole window
        ({"Retry-After": "nan"}, 10.0),
        ({"Retry-After": "-5"}, 10.0),
        ({"Retry-After": http_date(-3600)}, 10.0),  # past
        ({"Ratelimit": '"default";r=0;t=99999999999'}, 300.0),
        ({"Ratelimit": '"default";r=0;t=inf'}, 10.0),
        ({"Ratelimit": '"default";r=0;t=-5'}, 10.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "nan"}, 10.0),
    ],
)
def test_429_waits_are_clamped_and_unreadable_hints_ignored(headers: dict[str, str], pause: float):
    assert pause_after(429, headers) == pytest.approx(pause)


def test_the_clamp_follows_a_budget_window_longer_than_five_minutes():
    assert pause_after(429, {"Retry-After": "1e9"}, period=900) == pytest.approx(900)


def test_a_direct_pause_for_ever_is_finite():
    c = FakeTime()
    lim = limiter(c)
    lim.pause(math.inf)
    assert lim.paused_until_wall() == pytest.approx(c.wall() + 300)
    lim2 = limiter(c)
    lim2.pause(math.nan)
    assert lim2.paused_until_wall() == 0


@pytest.mark.parametrize(
    "value",
    [
        '"default";r=' + "9" * 5000 + ";t=5",
        '"default";r=0;t=' + "9" * 5000,
        '"default";r=0;t=1' + "0" * 400,
        "r=1 " * 20000,  # 80 KB: backtracked for ~44 s with the old regex
        "r=0;" * 1000 + "t=5",  # under the length cap, still linear
        ";;;,,,===\x00\xff" * 400,
    ],
    ids=["r-5000-digits", "t-5000-digits", "t-401-digits", "80KB", "4KB", "garbage"],
)
def test_absurd_rate_limit_headers_never_raise(value: str):
    headers = {"Ratelimit": value, "Ratelimit-Policy": value, "X-RateLimit-Reset": value}
    headers |= {"Retry-After": value, "X-RateLimit-Remaining": value}
    assert pause_after(200, headers) in (0.0, pytest.approx(5.0), pytest.approx(300.0))
    assert pause_after(429, {**headers, "Retry-After": "7"}) == pytest.approx(7.0)


def test_a_header_over_the_length_cap_is_ignored():
    value = '"default";r=0;t=5' + ', "pad";r=1;t=1' * 6000  # 90 KB
    assert pause_after(200, {"Ratelimit": value}) == 0.0


def test_ratelimit_policy_below_the_budget_lowers_the_rate_once(caplog: pytest.LogCaptureFixture):
    c = FakeTime()
    lim = RateLimiter(1200, 300, clock=c.clock, wall=c.wall, sleep=c.sleep)
    configured = lim.per_second
    caplog.set_level(logging.WARNING, logger="exporter.limiter.local")
    policy = httpx.Headers({"Ratelimit-Policy": '"default";q=600;w=300, "burst";q=5000;w=300'})
    for _ in range(3):
        lim.observe(200, policy)
    assert lim.per_second == pytest.approx(configured / 2, rel=0.01)
    assert lim.configured_spacing == pytest.approx(1 / configured)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "600 requests per 300s" in record.getMessage()
    assert "1200 per 300s" in record.getMessage()


@pytest.mark.parametrize(
    "policy",
    ['"default";q=5000;w=300', '"default";q=1200;w=300', '"x";q=0;w=300', '"x";q=10;w=nan'],
)
def test_ratelimit_policy_never_raises_the_rate(policy: str):
    c = FakeTime()
    lim = RateLimiter(1200, 300, clock=c.clock, wall=c.wall, sleep=c.sleep)
    before = lim.per_second
    lim.observe(200, httpx.Headers({"Ratelimit-Policy": policy}))
    assert lim.per_second == before


# --- whole-request timeout ---------------------------------------------------------------------


class Trickle(httpx.AsyncByteStream):
    """A body sent ``step`` bytes every ``delay`` seconds, at most ``limit`` bytes."""

    def __init__(self, body: bytes, delay: float, step: int = 1) -> None:
        self.body, self.delay, self.step = body, delay, step

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.body), self.step):
            await asyncio.sleep(self.delay)
            yield self.body[i : i + self.step]


JSON = {"content-type": "application/json"}
LIVE_BODY = json.dumps({"success": True, "data": LIVE}).encode()


def run(handler: Any, *, timeout: float = 1.0, **client_kw: Any) -> tuple[Any, ApiClient]:
    """One active-session call; returns its answer (or the ApiError) and the client."""

    async def go() -> tuple[Any, ApiClient]:
        http = make_http_client(
            timeout_seconds=timeout, max_connections=2, transport=httpx.MockTransport(handler)
        )
        async with http:
            client = ApiClient(http, base_url=BASE, token=TOKEN, **client_kw)
            try:
                return await client.get_active_session(KEY), client
            except ApiError as err:
                assert TOKEN not in str(err)
                return err, client

    return asyncio.run(go())


def test_a_trickling_body_times_out_as_a_whole():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=JSON, stream=Trickle(LIVE_BODY, delay=0.2))

    started = time.monotonic()
    err, client = run(handler, timeout=0.5)
    assert isinstance(err, ApiError) and err.reason == "timeout"
    assert time.monotonic() - started < 5  # not the ~50 s the whole body takes
    assert client.stats.snapshot()[0] == {"timeout": 1}


def test_a_chunked_body_that_never_ends_times_out():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=JSON, stream=Trickle(b" " * 100_000, delay=0.001))

    err, client = run(handler, timeout=0.3)
    assert isinstance(err, ApiError) and err.reason == "timeout"
    assert client.stats.snapshot()[0] == {"timeout": 1}


def test_the_wait_for_a_budget_slot_is_not_part_of_the_timeout():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=JSON, content=LIVE_BODY)

    async def go() -> list[Any]:
        http = make_http_client(
            timeout_seconds=0.3, max_connections=2, transport=httpx.MockTransport(handler)
        )
        async with http:
            lim = RateLimiter(1, 0.5)  # one slot a second
            client = ApiClient(http, base_url=BASE, token=TOKEN, limiter=lim)
            return [await client.get_active_session(KEY) for _ in range(2)]

    assert all(isinstance(a, Session) for a in asyncio.run(go()))


# --- bodies: compression bombs, caps ---------------------------------------------------------


class GzipZeros(httpx.AsyncByteStream):
    """1 GiB of zeros, gzip-compressed on the fly in chunks of 64 MiB each (~64 KB on the wire
    at level 9 — as a network read delivers it), so the test never holds much itself."""

    def __init__(self, gib: int = 1) -> None:
        self.chunks = 16 * gib
        self.zeros = bytes(1 << 20)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        squeeze = zlib.compressobj(1, zlib.DEFLATED, 31)
        for _ in range(self.chunks):
            yield b"".join(squeeze.compress(self.zeros) for _ in range(64))
        yield squeeze.flush()


def test_a_gzip_bomb_stops_at_the_cap_with_bounded_memory():
    bomb = GzipZeros()  # its 1 MiB of zeros exists before measuring

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {**JSON, "content-encoding": "gzip"}
        return httpx.Response(200, headers=headers, stream=bomb)

    tracemalloc.start()
    try:
        err, _ = run(handler)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(err, ApiError) and err.reason == "invalid_response"
    assert "larger than 1048576 bytes" in str(err)
    assert peak < 8 << 20  # the 1 MiB cap, one compressed chunk and change; not 64 MiB


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_compressed_answers_are_decoded_and_we_ask_only_for_what_we_decode(encoding: str):
    wbits = 31 if encoding == "gzip" else 15
    squeeze = zlib.compressobj(6, zlib.DEFLATED, wbits)
    packed = squeeze.compress(LIVE_BODY) + squeeze.flush()
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {**JSON, "content-encoding": encoding}
        return httpx.Response(200, headers=headers, stream=Trickle(packed, 0, step=7))

    got, _ = run(handler)
    assert isinstance(got, Session) and got.id == "sess-1"
    assert seen[0].headers["accept-encoding"] == "gzip, deflate"


@pytest.mark.parametrize(("encoding", "body"), [("br", b"\x0b\x02\x80{}\x03"), ("gzip", b"junk")])
def test_undecodable_or_unasked_encodings_are_invalid_responses(encoding: str, body: bytes):
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {**JSON, "content-encoding": encoding}
        return httpx.Response(200, headers=headers, stream=Trickle(body, 0, step=64))

    err, _ = run(handler)
    assert isinstance(err, ApiError) and err.reason == "invalid_response"


def test_a_streamed_plain_body_over_the_cap_stops_at_the_cap():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=JSON, stream=Trickle(b" " * 5000, 0, step=100))

    err, _ = run(handler, max_body_bytes=1000)
    assert isinstance(err, ApiError) and err.reason == "invalid_response"
    assert "larger than 1000 bytes" in str(err)


# --- values: every answer maps to a reason ---------------------------------------------------


def session_body(**fields: Any) -> bytes:
    return json.dumps({"success": True, "data": {**LIVE, **fields}}).encode()


def raw_answer(body: bytes) -> Any:
    return run(answering(200, body))[0]


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"success": true, "data": {"meta": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
        b'{"success": true, "data": {"id": "s", "status": "LIVE", "live_participants": 1'
        + b"0" * 5000
        + b"}}",
    ],
    ids=["deep-list", "deep-field", "5001-digit-int"],
)
def test_deep_json_and_giant_integers_are_invalid_responses(body: bytes):
    err = raw_answer(body)
    assert isinstance(err, ApiError) and err.reason == "invalid_response"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("live_participants", "1" + "0" * 400),  # an integer beyond float range
        ("live_participants", "1e308"),
        ("live_participants", "1e999"),  # parsed as +Inf
        ("live_participants", "NaN"),
        ("live_participants", "10000001"),
        ("status", '"PAUSED"'),
    ],
)
def test_required_values_out_of_range_are_invalid_responses_naming_the_field(
    field: str, value: str
):
    body = session_body(**{field: "@"}).replace(b'"@"', value.encode())
    err = raw_answer(body)
    assert isinstance(err, ApiError) and err.reason == "invalid_response"
    assert f"data.{field}" in str(err)
    if field == "status":
        assert "'PAUSED'" in str(err)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_concurrent_participants", "1" + "0" * 400),
        ("max_concurrent_participants", "1e308"),
        ("minutes_consumed", "1e999"),
        ("minutes_consumed", "2e10"),  # x 60 s is over 10^12
        ("minutes_consumed", "-Infinity"),
    ],
)
def test_optional_values_out_of_range_count_as_missing(field: str, value: str):
    body = session_body(**{field: "@"}).replace(b'"@"', value.encode())
    got = raw_answer(body)
    assert isinstance(got, Session)
    assert getattr(got, field) is None


def test_long_label_values_are_cut_with_a_marker():
    name = "x" * 900_000
    got = raw_answer(session_body(meeting_display_name=name, type="t" * 2000, id="i" * 5000))
    assert isinstance(got, Session)
    assert got.meeting_display_name == "x" * 1024 + TRUNCATED
    assert got.type == "t" * 1024 + TRUNCATED
    assert got.id == "i" * 1024 + TRUNCATED


def test_a_huge_error_message_is_cut():
    body = {"success": False, "error": {"code": 404, "message": "Meeting not found " * 50_000}}
    err = run(answering(404, body))[0]
    assert isinstance(err, ApiError) and err.reason == "not_found"
    assert len(str(err)) < 400 and str(err).endswith(TRUNCATED)
