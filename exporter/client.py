"""The RealtimeKit API client: builds request URLs from validated ids, sends them with the token
through the token's :class:`RateLimiter`, and hands back parsed answers or
:class:`~exporter.errors.ApiError`.

It knows nothing about Prometheus: what it counts goes into a
:class:`~exporter.health.RequestStats` that the collector exports. Every network or protocol
failure of httpx is translated here into an ``ApiError`` whose ``reason`` is one of
:data:`~exporter.errors.REASONS`.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import httpx

from exporter import __version__
from exporter.errors import ApiError
from exporter.health import RequestStats
from exporter.model import (
    Answer,
    InvalidSession,
    MeetingKey,
    Session,
    parse_active_session,
    parse_sessions_page,
)

#: Answers larger than this are not read to the end; they count as ``invalid_response``.
MAX_BODY_BYTES: Final = 1 << 20
USER_AGENT: Final = f"realtimekit-exporter/{__version__}"


class RateLimiter:
    """One token's request budget: requests are spaced evenly, never bursting, and paused after a
    429 until the API says it is safe to continue.

    ``requests`` per ``period_seconds`` becomes one slot every ``(period + margin) / usable``
    seconds, where ``usable = requests × (1 − reserve_fraction)`` and the margin (1 % of the
    period, at least 0.5 s) absorbs scheduling delay, so no window of ``period`` seconds ever
    sees more than ``requests`` of our requests. Callers reserve slots in arrival order; while
    paused, :meth:`acquire` fails at once with ``ApiError("rate_limited")`` instead of sending.
    """

    def __init__(
        self,
        requests: int,
        period_seconds: float,
        *,
        reserve_fraction: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        usable = max(1.0, requests * (1.0 - reserve_fraction))
        margin = max(0.5, 0.01 * period_seconds)
        self.spacing = (period_seconds + margin) / usable
        self.period = period_seconds
        self._clock, self._wall, self._sleep = clock, wall, sleep
        self._next = clock()
        self._paused_until = 0.0

    @property
    def per_second(self) -> float:
        return 1.0 / self.spacing

    def paused_until_wall(self) -> float:
        """Unix time until which requests are paused; 0 when they are not."""
        left = self._paused_until - self._clock()
        return self._wall() + left if left > 0 else 0.0

    def has_spare(self) -> bool:
        """True when nobody waits for a slot and the next one is at most a second away: a
        request now (a retry) would not delay anyone else's."""
        now = self._clock()
        return self._next <= now + min(self.spacing, 1.0) and self._paused_until <= now

    def pause(self, seconds: float) -> None:
        """No request before ``seconds`` from now (a 429 or an exhausted quota said so)."""
        until = self._clock() + max(0.0, seconds)
        self._paused_until = max(self._paused_until, until)
        self._next = max(self._next, self._paused_until)

    async def acquire(self) -> None:
        """Wait for this caller's slot. Raises ``ApiError("rate_limited")`` while paused."""
        now = self._clock()
        self._check_pause(now)
        slot = max(now, self._next)
        self._next = slot + self.spacing
        if slot > now:
            await self._sleep(slot - now)
            self._check_pause(self._clock())

    def _check_pause(self, now: float) -> None:
        if now < self._paused_until:
            left = self._paused_until - now
            raise ApiError("rate_limited", f"not sent: API rate limit, paused for {left:.0f}s more")

    def observe(self, status: int, headers: Mapping[str, str]) -> None:
        """Learn from an answer's headers: pause after a 429 or when the quota is used up."""
        wait = _quota_wait(headers)
        if status == 429:
            retry = _retry_after(headers, self._wall())
            # Cloudflare blocks the token for the rest of its window; without a hint, assume all.
            self.pause(retry if retry is not None else wait if wait is not None else self.period)
        elif wait is not None:
            self.pause(wait)


_RATELIMIT = re.compile(r"\br=(\d+).*?\bt=(\d+(?:\.\d+)?)|\bt=(\d+(?:\.\d+)?).*?\br=(\d+)")


def _retry_after(headers: Mapping[str, str], now: float) -> float | None:
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


def _quota_wait(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait when the answer says no requests remain (``Ratelimit: …;r=0;t=N`` or
    ``X-RateLimit-Remaining: 0`` with ``X-RateLimit-Reset``); ``None`` otherwise."""
    match = _RATELIMIT.search(headers.get("ratelimit", ""))
    if match:
        remaining = match.group(1) or match.group(4)
        reset = match.group(2) or match.group(3)
        return float(reset) if int(remaining) == 0 else None
    remaining_text = headers.get("x-ratelimit-remaining", "").strip()
    reset_text = headers.get("x-ratelimit-reset", "").strip()
    try:
        if int(remaining_text) != 0:
            return None
        reset = float(reset_text)
    except ValueError:
        return None
    # Either seconds until reset or a Unix time; a value past 2001 can only be the latter.
    return max(0.0, reset - time.time()) if reset > 1e9 else reset


def make_http_client(
    *,
    timeout_seconds: float,
    max_connections: int,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The one shared ``httpx.AsyncClient``: timeouts always set, connection pool bounded."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_seconds),
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        follow_redirects=False,
        transport=transport,
    )


def _list_params(per_page: int, page_no: int) -> dict[str, str | int]:
    return {
        "status": "LIVE",
        "per_page": per_page,
        "page_no": page_no,
        "sort_by": "createdAt",
        "sort_order": "ASC",
    }


@dataclass(frozen=True, slots=True)
class Listing:
    """The live sessions of an app, read page by page."""

    sessions: list[Session]  # each session once, in the API's order
    total_count: int | None  # what the API said, when it said
    pages: int  # requests it took
    complete: bool  # False when it stopped at max_pages
    invalid: list[InvalidSession] = field(default_factory=list)  # sessions that could not be read


@dataclass(frozen=True, slots=True)
class RawAnswer:
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str]


class ApiClient:
    """Reads the RealtimeKit API with one token. Several clients may share one ``httpx`` client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        token: str,
        limiter: RateLimiter | None = None,
        stats: RequestStats | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._auth = {"Authorization": f"Bearer {token}"}
        self._max_body = max_body_bytes
        self._timer = timer
        self.limiter = limiter or RateLimiter(1200, 300)
        self.stats = stats or RequestStats()

    def __repr__(self) -> str:  # never show the token
        return f"ApiClient(base_url={self._base!r})"

    async def get_active_session(self, key: MeetingKey) -> Answer:
        """``GET …/meetings/{id}/active-session``: a Session, NO_ACTIVE_SESSION, or ApiError."""
        path = (
            f"/accounts/{key.account_id}/realtime/kit/{key.app_id}"
            f"/meetings/{key.meeting_id}/active-session"
        )
        raw = await self.get(path)
        return parse_active_session(raw.status, raw.content_type, raw.body)

    async def list_live_sessions(
        self, account_id: str, app_id: str, *, per_page: int, max_pages: int
    ) -> Listing:
        """``GET …/sessions?status=LIVE`` page by page, until a short page, ``end_offset >=
        total_count``, an empty page, or ``max_pages``.

        Pages are asked for from ``page_no=1``. Whether the API counts pages from 0 or 1 is not
        documented: if page 1 does not start at the first item (``start_offset`` > 1), page 0 is
        read too. Sessions are de-duplicated by id, so a session that moves across a page boundary
        while we read (others starting or ending) is counted once.
        """
        path = f"/accounts/{account_id}/realtime/kit/{app_id}/sessions"
        seen: dict[str, Session] = {}
        total: int | None = None
        pages = 0
        page_no = 1
        complete = False
        read_page_zero = False
        while pages < max_pages:
            raw = await self.get(path, _list_params(per_page, page_no))
            sessions, paging = parse_sessions_page(raw.status, raw.content_type, raw.body)
            pages += 1
            for session in sessions:
                seen.setdefault(session.id, session)
            if paging is not None:
                total = paging.total_count
                if page_no == 1 and paging.start_offset > 1 and not read_page_zero:
                    read_page_zero = True
            if len(sessions) < per_page or (
                paging is not None and paging.end_offset >= paging.total_count
            ):
                complete = True
                break
            page_no += 1
        if read_page_zero:
            raw = await self.get(path, _list_params(per_page, 0))
            sessions, _ = parse_sessions_page(raw.status, raw.content_type, raw.body)
            pages += 1
            for session in sessions:
                seen.setdefault(session.id, session)
        return Listing(list(seen.values()), total, pages, complete)

    async def get(self, path: str, params: Mapping[str, str | int] | None = None) -> RawAnswer:
        """Wait for a slot of the token's budget, send one GET and read the answer (at most
        ``max_body_bytes``)."""
        await self.limiter.acquire()
        request = self._http.build_request(
            "GET", self._base + path, params=params, headers=self._auth
        )
        self.stats.started()
        started = self._timer()
        code = "error"
        try:
            response = await self._http.send(request, stream=True)
            code = str(response.status_code)
            try:
                self.limiter.observe(response.status_code, response.headers)
                body = await self._read(response)
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            code = "timeout"
            raise ApiError("timeout", "request timed out") from None
        except httpx.TransportError as err:
            code = "connect" if code == "error" else code
            raise ApiError("connect", f"connection failed: {type(err).__name__}") from None
        except httpx.DecodingError:
            raise ApiError("invalid_response", "answer could not be decoded") from None
        finally:
            self.stats.finished(code, self._timer() - started)
        return RawAnswer(
            status=response.status_code,
            content_type=response.headers.get("content-type", ""),
            body=body,
            headers=response.headers,
        )

    async def _read(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_body:
                raise ApiError(
                    "invalid_response",
                    f"answer larger than {self._max_body} bytes",
                    status=response.status_code,
                )
            chunks.append(chunk)
        return b"".join(chunks)
