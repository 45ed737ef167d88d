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
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Final, TypeVar

import httpx

from exporter import __version__
from exporter.errors import ApiError
from exporter.health import RequestStats
from exporter.model import (
    Answer,
    InvalidSession,
    MeetingKey,
    Paging,
    Session,
    SessionsPage,
    parse_active_session,
    parse_sessions_page,
)

#: Answers larger than this (decompressed) are not read to the end: ``invalid_response``.
MAX_BODY_BYTES: Final = 1 << 20
USER_AGENT: Final = f"realtimekit-exporter/{__version__}"
#: We decode these ourselves, counting decompressed bytes (so a zip bomb stops at the cap).
ACCEPT_ENCODING: Final = "gzip, deflate"
#: Header values longer than this are ignored.
MAX_HEADER_CHARS: Final = 4096
#: Cloudflare blocks a token for 5 minutes after an exceeded quota: the longest sane pause.
MAX_BLOCK_SECONDS: Final = 300.0
#: A ``Ratelimit-Policy`` window longer than a day is not believed.
MAX_POLICY_WINDOW: Final = 86400.0
#: An ``X-RateLimit-Reset`` number above this (2001-09-09) is a Unix time, not seconds.
UNIX_TIME_AFTER: Final = 1e9
#: The whole-request timeout when the httpx client has none.
DEFAULT_TIMEOUT_SECONDS: Final = 10.0

log = logging.getLogger(__name__)


class RateLimiter:
    """One token's request budget: requests are spaced evenly, never bursting, and paused after a
    429 until the API says it is safe to continue.

    ``requests`` per ``period_seconds`` becomes one slot every ``(period + margin) / usable``
    seconds, where ``usable = requests × (1 − reserve_fraction)`` and the margin (1 % of the
    period, at least 0.5 s) absorbs scheduling delay, so no window of ``period`` seconds ever
    sees more than ``requests`` of our requests. Callers reserve slots in arrival order; while
    paused, :meth:`acquire` fails at once with ``ApiError("rate_limited")`` instead of sending.

    Every pause is clamped to ``[1 s, max(period, 300 s)]`` (300 s: Cloudflare's block after an
    exceeded quota); a ``Ratelimit-Policy`` quota below the budget lowers the rate, never raises it.
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
        self._requests, self._reserve = requests, reserve_fraction
        self.spacing = _spacing(requests, period_seconds, reserve_fraction)
        self.configured_spacing = self.spacing  # before any Ratelimit-Policy lowered it
        self.period = period_seconds
        self._max_wait = max(period_seconds, MAX_BLOCK_SECONDS)
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
        """No request before ``seconds`` from now (a 429 or an exhausted quota said so); at most
        ``max(period, 300 s)``, however long it is asked for."""
        if not math.isfinite(seconds):
            seconds = self._max_wait if seconds > 0 else 0.0  # nan compares false: no pause
        until = self._clock() + min(max(0.0, seconds), self._max_wait)
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
        """Learn from an answer's headers: pause after a 429 or when the quota is used up, and
        slow down when the API's policy allows less than the configured budget. Never raises."""
        self._adopt_policy(_policy(headers))
        now = self._wall()
        wait = _quota_wait(headers, now)
        if status == 429:
            retry = _retry_after(headers, now)
            hint = retry if retry is not None else wait
            # Cloudflare blocks the token for the rest of its window; without a hint, assume all.
            self.pause(max(1.0, hint) if hint is not None else self.period)
        elif wait is not None:
            self.pause(max(1.0, wait))

    def _adopt_policy(self, policy: tuple[int, float] | None) -> None:
        if policy is None:
            return
        quota, window = policy
        if quota / window >= self._requests / self.period:
            return
        spacing = min(_spacing(quota, window, self._reserve), self._max_wait)
        if spacing <= self.spacing:
            return
        log.warning(
            "the API's Ratelimit-Policy allows %d requests per %gs, less than the configured "
            "%d per %gs: sending at most %.3g requests/s instead of %.3g",
            quota,
            window,
            self._requests,
            self.period,
            1 / spacing,
            1 / self.spacing,
        )
        self.spacing = spacing


def _spacing(requests: float, period: float, reserve_fraction: float) -> float:
    usable = max(1.0, requests * (1.0 - reserve_fraction))
    margin = max(0.5, 0.01 * period)
    return (period + margin) / usable


# --- rate-limit headers: linear-time parsing, never raising, absurd values ignored ---------------


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name) or ""
    return value.strip() if len(value) <= MAX_HEADER_CHARS else ""


def _seconds(text: str | None) -> float | None:
    """A finite non-negative decimal number, or ``None``."""
    if text is None or len(text) > 24:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _count(text: str | None) -> int | None:
    """A non-negative integer of at most 12 digits, or ``None``."""
    if text is None:
        return None
    text = text.strip()
    if not (0 < len(text) <= 12 and text.isascii() and text.isdigit()):
        return None
    return int(text)


def _http_date_wait(text: str, now: float) -> float | None:
    """Seconds from ``now`` until an HTTP (RFC 1123) date; ``None`` if unreadable or past."""
    try:
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        left = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return left if left > 0 else None


def _items(value: str) -> list[dict[str, str]]:
    """The parameters of each item of a structured-field list (``"a";r=1;t=2, "b";r=0``)."""
    items = []
    for item in value.split(","):
        params = {}
        for param in item.split(";")[1:]:
            key, _, val = param.partition("=")
            params[key.strip().lower()] = val.strip()
        items.append(params)
    return items


def _retry_after(headers: Mapping[str, str], now: float) -> float | None:
    value = _header(headers, "retry-after")
    if not value:
        return None
    seconds = _seconds(value)
    return seconds if seconds is not None else _http_date_wait(value, now)


def _quota_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds to wait when the answer says no requests remain, ``None`` otherwise.

    ``Ratelimit: "default";r=50;t=30, "burst";r=0;t=5``: of the items with ``r=0`` the longest
    ``t`` wins. Without a readable ``Ratelimit``, ``X-RateLimit-Remaining: 0`` with
    ``X-RateLimit-Reset`` (seconds, a Unix time or an HTTP date)."""
    items = [p for p in _items(_header(headers, "ratelimit")) if _count(p.get("r")) is not None]
    if items:
        waits = [_seconds(p.get("t")) for p in items if _count(p.get("r")) == 0]
        return max((w for w in waits if w is not None), default=None)
    if _count(_header(headers, "x-ratelimit-remaining")) != 0:
        return None
    reset = _header(headers, "x-ratelimit-reset")
    seconds = _seconds(reset)
    if seconds is None:
        return _http_date_wait(reset, now)
    if seconds <= UNIX_TIME_AFTER:
        return seconds
    left = seconds - now  # a Unix time
    return left if left > 0 else None


def _policy(headers: Mapping[str, str]) -> tuple[int, float] | None:
    """The most restrictive ``Ratelimit-Policy`` item (``"default";q=600;w=300``) as
    ``(quota, window)``, or ``None`` when there is no usable one."""
    best: tuple[int, float] | None = None
    for params in _items(_header(headers, "ratelimit-policy")):
        quota, window = _count(params.get("q")), _seconds(params.get("w"))
        if not quota or window is None or not 0 < window <= MAX_POLICY_WINDOW:
            continue
        if best is None or quota / window < best[0] / best[1]:
            best = (quota, window)
    return best


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
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
        },
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
    total_count: int | None  # what the API said (on the last page that said), when it said
    pages: int  # requests sent
    complete: bool  # the walk saw every session (see ApiClient.list_live_sessions)
    invalid: list[InvalidSession] = field(default_factory=list)  # listed but unreadable


@dataclass(slots=True)
class PageModel:
    """What walks learned about how an app's ``/sessions`` pages: kept between walks, re-checked
    on every page."""

    base: int = 1  # the page_no of the first page (0 or 1)
    size: int | None = None  # the items a full page holds, once a page proved to be full


class _Walk:
    """One walk through an app's pages: takes in each page and says which to read next."""

    def __init__(self, model: PageModel, per_page: int, app: str) -> None:
        self.model, self.per_page, self.app = model, per_page, app
        self.read: dict[int, SessionsPage] = {}
        self.ids: set[str] = set()
        self.invalid_keys: set[object] = set()
        self.total: int | None = None
        self.totals: set[int] = set()  # more than one: sessions came or went while we read
        self.ended = False  # an empty, short or last page was read
        self.saw_first = False  # a page started at item 1: the page base is certain

    def collected(self) -> int:
        return len(self.ids) + len(self.invalid_keys)

    def add(self, page_no: int, page: SessionsPage) -> int | None:
        """Take in one page; the page_no to read next, or ``None`` when the walk is done."""
        self.read[page_no] = page
        self.ids.update(s.id for s in page.sessions)
        self.invalid_keys.update(i.meeting_id or (i.page, i.index) for i in page.invalid)
        paging = page.paging or Paging()
        if paging.total_count is not None:
            self.total = paging.total_count
            self.totals.add(self.total)
        self._learn(page_no, page, paging)
        if (self.total is not None and self.collected() >= self.total) or self.ended:
            return None
        if page_no in (0, 1) and 1 - page_no not in self.read and self._misplaced(page_no, page):
            return 1 - page_no
        if self._at_end(page, paging):
            self.ended = True
            return self._last_resort()
        return max(self.read) + 1

    def _misplaced(self, page_no: int, page: SessionsPage) -> bool:
        """Page 1 is not the first page, or page 0 is not a page (the base is the other one)."""
        start = _first_offset(page)
        empty_but_some = page.items == 0 and (self.total or 0) > 0
        return empty_but_some or (page_no == 1 and (start or 0) > 1)

    def _at_end(self, page: SessionsPage, paging: Paging) -> bool:
        if page.items == 0:
            return True
        if self.total is not None:  # a short page proves nothing: only the count or the offset
            return paging.end_offset is not None and paging.end_offset >= self.total
        if page.paging is None:  # nothing to learn from: a page shorter than asked ends it
            return page.items < (self.model.size or self.per_page)
        return self.model.size is not None and page.items < self.model.size

    def _last_resort(self) -> int | None:
        """A walk that ended short of ``total_count`` without ever seeing item 1 reads page 0:
        the server may count pages from 0 without saying so in offsets."""
        short = self.total is not None and self.collected() < self.total
        return 0 if short and not self.saw_first and 0 not in self.read else None

    def _learn(self, page_no: int, page: SessionsPage, paging: Paging) -> None:
        start, some = _first_offset(page), (self.total or 0) > 0
        if page.items and start == 1 and page_no in (0, 1):
            self.saw_first = True
            self._set_base(page_no)
        elif page_no == 1 and ((start or 0) > 1 or (page.items == 0 and some)):
            self._set_base(0)
        elif page_no == 0 and page.items == 0 and some:
            self._set_base(1)
        if not page.items:
            return
        end, total = paging.end_offset, self.total
        if page.items >= self.per_page or (end is not None and total is not None and end < total):
            self._set_size(page.items)  # not the last page, so a full one
            return
        size, base = self.model.size, self.model.base
        if size is not None and (
            page.items > size or (start is not None and start != (page_no - base) * size + 1)
        ):
            self._set_size(None)  # it does not add up any more: learn it again

    def _set_base(self, base: int) -> None:
        if self.model.base != base:
            log.info("%s: /sessions pages count from %d", self.app, base)
            self.model.base = base

    def _set_size(self, size: int | None) -> None:
        if self.model.size != size:
            log.info("%s: /sessions pages hold %s items", self.app, size or "an unknown number of")
            self.model.size = size

    def listing(self, pages: int) -> Listing:
        sessions: dict[str, Session] = {}
        invalid: dict[object, InvalidSession] = {}
        for page_no in sorted(self.read):
            page = self.read[page_no]
            for session in page.sessions:
                sessions.setdefault(session.id, session)
            for bad in page.invalid:
                invalid.setdefault(bad.meeting_id or (bad.page, bad.index), bad)
        if self.total is not None:  # a count reached while others came and went proves little
            complete = self.collected() >= self.total and len(self.totals) == 1
        else:
            complete = self.ended
        return Listing(list(sessions.values()), self.total, pages, complete, list(invalid.values()))


@dataclass(frozen=True, slots=True)
class RawAnswer:
    status: int
    content_type: str
    body: bytes
    headers: Mapping[str, str]


class _Body:
    """Collects an answer's raw bytes, decompressing gzip/deflate incrementally, and fails as
    soon as more than ``limit`` (decompressed) bytes arrive: never holds much more than that."""

    def __init__(self, encoding: str, limit: int, status: int) -> None:
        self._limit, self._status, self._size = limit, status, 0
        self._chunks: list[bytes] = []
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self._inflate = None
        elif encoding in ("gzip", "x-gzip", "deflate"):
            self._inflate = zlib.decompressobj(zlib.MAX_WBITS | (16 if "gzip" in encoding else 0))
        else:
            raise ApiError(
                "invalid_response", f"unsupported content-encoding {encoding[:40]!r}", status=status
            )

    def feed(self, data: bytes) -> None:
        if self._inflate is None:
            self._keep(data)
            return
        try:
            while data and not self._inflate.eof:  # each turn consumes all or fills the room
                self._keep(self._inflate.decompress(data, self._limit - self._size + 1))
                data = self._inflate.unconsumed_tail
        except zlib.error:
            raise ApiError(
                "invalid_response", "answer could not be decoded", status=self._status
            ) from None

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise ApiError(
                "invalid_response", f"answer larger than {self._limit} bytes", status=self._status
            )
        self._chunks.append(data)

    def bytes(self) -> bytes:
        # Nothing is left inside the decompressor: each feed drained it (no unconsumed tail).
        return b"".join(self._chunks)


T = TypeVar("T")


def _parse(parse: Callable[..., T], raw: RawAnswer, **kw: int) -> T:
    """Run a parser of :mod:`exporter.model` on an answer; whatever it cannot read is
    ``invalid_response``, never an uncaught exception."""
    try:
        return parse(raw.status, raw.content_type, raw.body, **kw)
    except (RecursionError, OverflowError, ValueError, TypeError, KeyError) as err:
        raise ApiError(
            "invalid_response", f"answer could not be read: {type(err).__name__}", status=raw.status
        ) from None


def _first_offset(page: SessionsPage) -> int | None:
    """The 1-based offset of the page's first item: ``start_offset``, or worked out from
    ``end_offset`` and the page's length when only that is given."""
    paging = page.paging
    if paging is None:
        return None
    if paging.start_offset is not None:
        return paging.start_offset
    if paging.end_offset is not None and page.items:
        return paging.end_offset - page.items + 1
    return None


class ApiClient:
    """Reads the RealtimeKit API with one token. Several clients may share one ``httpx`` client.

    ``timeout_seconds`` bounds each request from connect to last byte (the wait for a slot of
    the budget is not part of it); by default the longest timeout of the httpx client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        token: str,
        limiter: RateLimiter | None = None,
        stats: RequestStats | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        timeout_seconds: float | None = None,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"Accept-Encoding": ACCEPT_ENCODING}
        if token:  # none for a public document (the webhook key)
            self._headers["Authorization"] = f"Bearer {token}"
        self._max_body = max_body_bytes
        self._timeout = timeout_seconds or _longest(http.timeout)
        self._timer = timer
        self._paging: dict[tuple[str, str], PageModel] = {}
        self.limiter = limiter or RateLimiter(1200, 300)
        self.stats = stats or RequestStats()

    def __repr__(self) -> str:  # never show the token
        return f"ApiClient(base_url={self._base!r})"

    async def get_active_session(self, key: MeetingKey) -> Answer:
        """``GET …/meetings/{id}/active-session``: a Session, NO_ACTIVE_SESSION, or ApiError
        (``not_found`` for a 404 that is not "no active session")."""
        path = (
            f"/accounts/{key.account_id}/realtime/kit/{key.app_id}"
            f"/meetings/{key.meeting_id}/active-session"
        )
        return _parse(parse_active_session, await self.get(path))

    def page_size(self, account_id: str, app_id: str) -> int | None:
        """How many items the app's ``/sessions`` pages were seen to hold (``None`` until a walk
        has proved a page full): a server may serve fewer than ``per_page`` asks, so a bound on
        pages is best computed from this."""
        model = self._paging.get((account_id, app_id))
        return model.size if model is not None else None

    async def list_live_sessions(
        self, account_id: str, app_id: str, *, per_page: int, max_pages: int
    ) -> Listing:
        """``GET …/sessions?status=LIVE`` page by page, at most ``max_pages`` requests.

        The walk goes on until the unique sessions collected (unreadable ones included) reach
        ``total_count``, or a page is empty, or the last one by its ``end_offset`` — a short page
        proves nothing when the server gives a count, as it may serve fewer items than asked.
        Without any ``paging`` a page shorter than ``per_page`` ends it too. The page base (0 or
        1) and the real page size are learned from the reported offsets, remembered per app and
        re-checked on every page: a page 1 that does not start at item 1 (or is empty while
        ``total_count`` > 0) has page 0 read too. Sessions are de-duplicated by id, so one that
        moves across a page boundary while we read (others starting or ending) counts once.

        ``complete`` is True when the walk saw every session: as many as ``total_count`` when
        it is known (and it did not change between pages: sessions that end while we read shift
        others onto pages already read), else when the walk ended on an empty or short page.
        """
        path = f"/accounts/{account_id}/realtime/kit/{app_id}/sessions"
        model = self._paging.setdefault((account_id, app_id), PageModel())
        walk = _Walk(model, per_page, f"account_id={account_id} app_id={app_id}")
        page_no: int | None = model.base
        pages = 0
        while page_no is not None and pages < max_pages:
            pages += 1
            try:
                raw = await self.get(path, _list_params(per_page, page_no))
                page = _parse(parse_sessions_page, raw, page_no=page_no)
            except ApiError:
                if not walk.ended:
                    raise
                break  # the last-resort page 0 failed: the walk stays as it was
            page_no = walk.add(page_no, page)
        return walk.listing(pages)

    async def get(self, path: str, params: Mapping[str, str | int] | None = None) -> RawAnswer:
        """Wait for a slot of the token's budget, send one GET and read the answer (at most
        ``max_body_bytes`` decompressed), all of it within ``timeout_seconds``."""
        await self.limiter.acquire()
        request = self._http.build_request(
            "GET", self._base + path, params=params, headers=self._headers
        )
        self.stats.started()
        started = self._timer()
        code = "error"
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._http.send(request, stream=True)
                code = str(response.status_code)
                try:
                    self.limiter.observe(response.status_code, response.headers)
                    body = await self._read(response)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            code = "timeout"
            raise ApiError("timeout", f"no complete answer within {self._timeout:g}s") from None
        except httpx.TransportError as err:
            code = "connect" if code == "error" else code
            raise ApiError("connect", f"connection failed: {type(err).__name__}") from None
        finally:
            self.stats.finished(code, self._timer() - started)
        return RawAnswer(
            status=response.status_code,
            content_type=response.headers.get("content-type", ""),
            body=body,
            headers=response.headers,
        )

    async def _read(self, response: httpx.Response) -> bytes:
        encoding = _header(response.headers, "content-encoding")
        if response.is_stream_consumed:  # the transport handed over a body already decoded
            encoding = ""
        body = _Body(encoding, self._max_body, response.status_code)
        if response.is_stream_consumed:
            body.feed(response.content)
        else:
            async for chunk in response.aiter_raw():
                body.feed(chunk)
        return body.bytes()


def _longest(timeout: httpx.Timeout) -> float:
    parts = (timeout.connect, timeout.read, timeout.write, timeout.pool)
    return max((p for p in parts if p is not None), default=DEFAULT_TIMEOUT_SECONDS)
